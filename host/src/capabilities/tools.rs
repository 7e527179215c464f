//! `warden:agent/tools`: operator-registered tools, run without a shell, check-mode below
//! their full tier.

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, scope_reaches, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::tools::{Host, ToolInfo, ToolOutput};
use crate::bindings::warden::agent::types::Tier as WitTier;
use crate::interface::Interface;
use crate::phase::Phase;
use crate::policy::PlanTools;
use crate::tier::Tier;
use crate::tools::ToolsError;
use crate::policy::{Linked, SectionSpec};

/// Its section (`[tiers.T1.tools]`) has no settings: present, the interface is linked.
pub(super) const SECTION: SectionSpec = SectionSpec::of::<Linked>(Interface::Tools);

pub(crate) fn wit_tier(tier: Tier) -> WitTier {
    match tier {
        Tier::Observer => WitTier::Observer,
        Tier::Operator => WitTier::Operator,
        Tier::Builder => WitTier::Builder,
        Tier::Executor => WitTier::Executor,
        Tier::Architect => WitTier::Architect,
    }
}

impl Host for AgentCtx {
    async fn list(&mut self) -> Result<Vec<ToolInfo>, WitError> {
        super::journal_call!(self, "tools.list", Json, super::journaled::args(&()), {
            const OP: &str = "tools.list";
            // A listing touches no tool: the tier must link the interface, and the packet's
            // scope narrows the answer to the tools a call in scope could reach instead of
            // refusing it (a packet scoped to `tool:ls *` lists `ls`).
            self.gov.gate_tier(Interface::Tools, OP).await?;
            let tier = self.gov.run.tier;
            let constraints = &self.gov.run.packet.constraints;
            let tools = self
                .gov
                .services
                .tools
                .tools()
                .filter(|t| t.min_tier <= tier)
                .filter(|t| scope_reaches(constraints, &format!("tool:{}", t.name)))
                .map(|t| ToolInfo {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    min_tier: wit_tier(t.min_tier),
                    full_tier: wit_tier(t.full_tier),
                })
                .collect();
            let result = Ok(tools);
            self.gov.record_result(OP, &result).await;
            result
        })
    }

    async fn invoke(&mut self, name: String, args: Vec<String>) -> Result<ToolOutput, WitError> {
        super::journal_call!(self, "tools.invoke", Json, super::journaled::args(&(&name, &args)), {
            const OP: &str = "tools.invoke";
            self.gov
                .gate(Interface::Tools, OP, || {
                    let mut resource = format!("tool:{name}");
                    for arg in &args {
                        resource.push(' ');
                        resource.push_str(arg);
                    }
                    resource
                })
                .await?;
            let data: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            self.refuse_placeholders(OP, || format!("tool:{name}"), &data).await?;
            let tier = self.gov.run.tier;
            // Before the approval gate a tool only shows what it would do.
            let check_only = self.gov.run.phase() == Phase::Plan
                && self.gov.policy().plan.tools == PlanTools::Check;
            let invocation = match self
                .gov
                .services
                .tools
                .prepare_with(&name, &args, tier, check_only)
            {
                Ok(invocation) => invocation,
                Err(error) => {
                    let refusal = |kind| CallRefusal {
                        kind,
                        resource: format!("tool:{name}"),
                        message: format!("`{OP}` refused: {error}"),
                    };
                    return Err(match &error {
                        ToolsError::Denied { .. } => {
                            self.gov.refuse(OP, refusal(ViolationKind::TierDenied)).await
                        }
                        // A name the tier cannot see is a malformed call like any other: charged,
                        // and answered as not found (naming only the tools the tier may call).
                        ToolsError::NotFound { .. } => {
                            match self.gov.refuse(OP, refusal(ViolationKind::Invalid)).await {
                                WitError::Invalid(message) => WitError::NotFound(message),
                                other => other,
                            }
                        }
                        _ => self.gov.refuse(OP, refusal(ViolationKind::Invalid)).await,
                    });
                }
            };
            // A tool's world is outside the host: before it runs for real, its intent is
            // durable (a check-mode run only shows what it would do, and may run again).
            if !invocation.check_mode() {
                let intent = crate::journal::ToolIntent {
                    tool: name.clone(),
                    args: args.clone(),
                };
                self.journal_intent(OP, super::journaled::args(&(&name, &args)), &intent)
                    .await?;
            }
            let workspace = self.gov.run.workspace.clone();
            match invocation.run(Some(&workspace)).await {
                Ok(output) => {
                    // Whether the process ran confined is part of the record of every call.
                    let details = serde_json::json!({
                        "exit_code": output.exit_code,
                        "check_mode": output.check_mode,
                        "confined": output.confined,
                        "truncated": output.truncated,
                    });
                    self.gov.record_details(OP, details.to_string()).await;
                    Ok(ToolOutput {
                        exit_code: output.exit_code,
                        stdout: output.stdout,
                        stderr: output.stderr,
                        check_mode: output.check_mode,
                    })
                }
                Err(error) => {
                    let result = Err(unavailable(&format!("tool `{name}`"), error));
                    self.gov.record_result::<ToolOutput>(OP, &result).await;
                    result
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;

    const TOOLS: &str = r#"
[[tool]]
name = "greet"
description = "print a greeting"
min_tier = "T1"
full_tier = "T2"
argv = ["/bin/echo", "hello", "{0}"]
check_argv = ["/bin/echo", "would greet", "{0}"]
args = ["^[a-z]{1,16}$"]
max_args = 1

[[tool]]
name = "deploy"
description = "deploy"
min_tier = "T3"
full_tier = "T4"
argv = ["/bin/echo", "deploying"]
"#;

    async fn agent(tier: Tier) -> crate::capabilities::testing::TestAgent {
        TestEnv::new()
            .tools(crate::tools::ToolRegistry::from_toml_str(TOOLS).unwrap())
            .agent(tier, json!({}))
            .await
    }

    #[tokio::test]
    async fn below_its_full_tier_a_tool_runs_in_check_mode() {
        let mut operator = agent(Tier::Operator).await;
        let output = operator
            .ctx
            .invoke("greet".into(), vec!["world".into()])
            .await
            .unwrap();
        assert!(output.check_mode);
        assert_eq!(output.stdout.trim(), "would greet world");
        let mut builder = agent(Tier::Builder).await;
        let output = builder
            .ctx
            .invoke("greet".into(), vec!["world".into()])
            .await
            .unwrap();
        assert!(!output.check_mode);
        assert_eq!(output.stdout.trim(), "hello world");
    }

    #[tokio::test]
    async fn in_plan_every_tool_runs_in_check_mode() {
        let mut builder = agent(Tier::Builder).await;
        builder.ctx.gov.run.set_phase(crate::phase::Phase::Plan);
        let output = builder
            .ctx
            .invoke("greet".into(), vec!["world".into()])
            .await
            .unwrap();
        assert!(output.check_mode);
        assert_eq!(output.stdout.trim(), "would greet world");
    }

    #[tokio::test]
    async fn the_list_shows_what_the_tier_may_call() {
        let mut operator = agent(Tier::Operator).await;
        let names: Vec<String> = operator
            .ctx
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["greet"]);
    }

    /// A listing touches no tool, so a scoped packet is answered, not refused: the tools a
    /// call in its scope could reach.
    #[tokio::test]
    async fn a_scoped_packet_lists_the_tools_its_scope_reaches() {
        let scoped = json!({ "constraints": { "scope": ["state:*", "tool:greet *"] } });
        let mut executor = TestEnv::new()
            .tools(crate::tools::ToolRegistry::from_toml_str(TOOLS).unwrap())
            .agent(Tier::Executor, scoped)
            .await;
        let names: Vec<String> = executor
            .ctx
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["greet"], "`deploy` is the tier's but out of scope");
        assert!(executor.violations().is_empty(), "{:?}", executor.violations());
        assert_eq!(executor.errors().await.total, 0);
    }

    #[tokio::test]
    async fn refusals_are_typed_by_cause() {
        let budget = json!({ "error_budget": { "max_same_error_repeats": 5 } });
        let mut operator = TestEnv::new()
            .tools(crate::tools::ToolRegistry::from_toml_str(TOOLS).unwrap())
            .agent(Tier::Operator, budget)
            .await;
        let err = operator.ctx.invoke("deploy".into(), vec![]).await.unwrap_err();
        assert!(matches!(err, WitError::Denied(_)), "{err:?}");
        assert_eq!(operator.violations(), ["TIER_DENIED"]);
        let err = operator
            .ctx
            .invoke("greet".into(), vec!["NOT ALLOWED".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, WitError::Invalid(_)), "{err:?}");
        let err = operator.ctx.invoke("nope".into(), vec![]).await.unwrap_err();
        assert!(matches!(err, WitError::NotFound(_)), "{err:?}");
        assert_eq!(operator.errors().await.total, 3, "not found is charged");
        // Malformed input: charged, no violation row.
        assert_eq!(operator.violations(), ["TIER_DENIED"]);
    }

    #[tokio::test]
    async fn an_unknown_tool_names_only_what_the_tier_may_call_and_repeats_revoke() {
        let mut operator = agent(Tier::Operator).await;
        let err = operator.ctx.invoke("nope".into(), vec![]).await.unwrap_err();
        let WitError::NotFound(message) = &err else {
            panic!("{err:?}");
        };
        assert!(message.contains("tools it may call: `greet`"), "{message}");
        assert!(!message.contains("deploy"), "a T3 tool named to T1: {message}");
        assert_eq!(
            operator.actions().last(),
            Some(&(
                "tools.invoke".to_string(),
                "denied".to_string(),
                Some("INVALID_ARGUMENT".to_string())
            ))
        );
        // The default budget allows the same error twice: guessing names ends the run.
        let err = operator.ctx.invoke("nope2".into(), vec![]).await.unwrap_err();
        assert!(matches!(err, WitError::Revoked(_)), "{err:?}");
        assert!(operator.is_revoked());
    }

    #[tokio::test]
    async fn the_record_of_a_run_says_whether_it_was_confined() {
        let mut builder = agent(Tier::Builder).await;
        builder
            .ctx
            .invoke("greet".into(), vec!["world".into()])
            .await
            .unwrap();
        // The intent is recorded before the tool starts, the result after it ends.
        assert_eq!(
            builder.details("tools.invoke"),
            [
                json!({ "tool": "greet", "args": ["world"] }),
                json!({ "exit_code": 0, "check_mode": false, "confined": true, "truncated": false })
            ]
        );

        let unconfined = format!("confinement = \"none\"\n{TOOLS}");
        let mut builder = TestEnv::new()
            .tools(crate::tools::ToolRegistry::from_toml_str(&unconfined).unwrap())
            .agent(Tier::Builder, json!({}))
            .await;
        let output = builder
            .ctx
            .invoke("greet".into(), vec!["world".into()])
            .await
            .unwrap();
        assert_eq!(output.stdout.trim(), "hello world");
        assert_eq!(builder.details("tools.invoke")[1]["confined"], json!(false));
    }

    #[tokio::test]
    async fn a_forbidden_invocation_revokes() {
        let packet = json!({ "constraints": { "forbidden": ["tool:greet root*"] } });
        let mut operator = TestEnv::new()
            .tools(crate::tools::ToolRegistry::from_toml_str(TOOLS).unwrap())
            .agent(Tier::Operator, packet)
            .await;
        let err = operator
            .ctx
            .invoke("greet".into(), vec!["root".into()])
            .await
            .unwrap_err();
        assert!(matches!(err, WitError::Revoked(_)), "{err:?}");
        assert_eq!(operator.violations(), ["FORBIDDEN_ACTION"]);
    }
}
