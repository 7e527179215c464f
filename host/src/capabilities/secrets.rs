//! `warden:agent/secrets`: secrets scoped by tier, read through the agent's own session.
//!
//! Tier section `[tiers.Tn.secrets]`: `paths`, the secret paths (globs) the tier may read;
//! `{agent}` stands for the agent's id (`agents/{agent}/*`). The secrets backend checks its own
//! policy too (Vault: the tier's HCL), so a path needs both.
//!
//! `bound` binds secrets (globs) to hosts, in `[tiers.Tn.http] allow`'s grammar:
//! `bound = { "t3/github-token" = ["https://api.github.com"] }`. A bound secret is answered as
//! a placeholder (`warden-secret:` and 32 hex digits): the value never enters the guest, the
//! host puts it in the headers of requests to those hosts, and the placeholder sent anywhere
//! else is refused as `SECRET_LEAK`, a procedure violation.

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::secrets::Host;
use crate::interface::Interface;
use crate::pattern::Pattern;
use crate::phase::Phase;
use crate::policy::{SectionSpec, TierPolicy, TierTable};
use crate::secrets::{SecretsError, validate_path};
use crate::tier::Tier;
use serde::Deserialize;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Secrets);

/// `[tiers.Tn.secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Paths the tier may read.
    #[serde(default)]
    pub paths: Vec<Pattern>,
    /// Secrets (globs) answered as placeholders, and the hosts their values may go to.
    #[serde(default)]
    pub bound: std::collections::BTreeMap<String, Vec<super::http::HostRule>>,
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        paths: Vec::new(),
        bound: std::collections::BTreeMap::new(),
    };
}

impl Grant {
    fn admits(&self, agent: &str, path: &str) -> bool {
        self.paths.iter().any(|p| p.with_agent(agent).matches(path))
    }

    /// The hosts secret `path` is bound to, if it is.
    fn bound_to(&self, agent: &str, path: &str) -> Option<&[super::http::HostRule]> {
        self.bound
            .iter()
            .find(|(pattern, _)| Pattern::new(pattern.as_str()).with_agent(agent).matches(path))
            .map(|(_, hosts)| hosts.as_slice())
    }
}

/// Secrets are closed in PLAN, before the approval gate, unless the tier's
/// `[tiers.Tn.plan] secrets` opens them.
fn check_phase(policy: &TierPolicy, phase: Phase, op: &str, path: &str) -> Result<(), CallRefusal> {
    if phase == Phase::Plan && !policy.plan.secrets {
        return Err(CallRefusal {
            kind: ViolationKind::PhaseDenied,
            resource: format!("secret:{path}"),
            message: format!(
                "`{op}` of `{path}` refused: secrets are closed in PLAN, before the approval gate (`[tiers.{}.plan] secrets = false`); read it in EXECUTE",
                policy.tier.code()
            ),
        });
    }
    Ok(())
}

/// The path's shape first (a `..` is an escape attempt), then the tier's grant.
fn check_read(
    tiers: &TierTable,
    tier: Tier,
    op: &str,
    agent: &str,
    path: &str,
) -> Result<(), CallRefusal> {
    if let Err(error) = validate_path(path) {
        let escape = path.contains("..");
        return Err(CallRefusal {
            kind: if escape {
                ViolationKind::PathEscape
            } else {
                ViolationKind::Invalid
            },
            resource: format!("secret:{path}"),
            message: format!("`{op}` refused: {error}"),
        });
    }
    let admits = |tier: Tier| {
        tiers
            .policy(tier)
            .grant::<Grant>(Interface::Secrets)
            .admits(agent, path)
    };
    if admits(tier) {
        return Ok(());
    }
    let lowest = Tier::ALL.into_iter().find(|t| admits(*t));
    Err(CallRefusal::tier_denied(
        format!("secret:{path}"),
        format!(
            "`{op}` refused: secret `{path}` is above tier {tier}; lowest tier that may read it: {}",
            lowest.map_or("none".to_string(), |t| t.to_string())
        ),
    ))
}

impl Host for AgentCtx {
    async fn get(&mut self, path: String) -> Result<String, WitError> {
        super::journal_call!(self, "secrets.get", Secret, super::journaled::args(&(&path,)), {
            const OP: &str = "secrets.get";
            self.gov
                .gate(Interface::Secrets, OP, || format!("secret:{path}"))
                .await?;
            let decision = check_phase(self.gov.policy(), self.gov.run.phase(), OP, &path);
            self.gov.check(OP, decision).await?;
            let decision = check_read(
                &self.gov.services.tiers,
                self.gov.run.tier,
                OP,
                self.gov.agent_id(),
                &path,
            );
            self.gov.check(OP, decision).await?;
            let result = match &self.gov.secrets {
                None => Err(WitError::Unavailable(
                    "no secrets session: the agent was not logged in at bootstrap".into(),
                )),
                Some(session) => match session.read(&path).await {
                    Ok(Some(value)) => Ok(value),
                    Ok(None) => Err(WitError::NotFound(format!(
                        "secret `{path}` does not exist"
                    ))),
                    Err(SecretsError::Revoked) => Err(WitError::Revoked(
                        "the agent's secrets session was revoked".into(),
                    )),
                    // The backend's own policy refused what the tier table allowed: the second
                    // line of defence held, and the refusal is recorded like the host's own.
                    Err(SecretsError::Denied { .. }) => {
                        let refusal = CallRefusal {
                            kind: ViolationKind::TierDenied,
                            resource: format!("secret:{path}"),
                            message: format!(
                                "`{OP}` refused: the secrets backend's policy for tier {} denies `{path}`",
                                self.gov.run.tier
                            ),
                        };
                        return Err(self.gov.refuse(OP, refusal).await);
                    }
                    Err(error) => Err(unavailable("the secrets store", error)),
                },
            };
            // Never the value: only that the read happened and how it ended.
            self.gov
                .record_result(OP, &result.as_ref().map(|_| ()).map_err(Clone::clone))
                .await;
            // A secret bound to hosts never enters the guest: it gets a placeholder.
            let policy = self.gov.services.tiers.policy(self.gov.run.tier);
            let hosts = policy
                .grant::<Grant>(Interface::Secrets)
                .bound_to(self.gov.agent_id().as_str(), &path)
                .map(<[_]>::to_vec);
            match (result, hosts) {
                (Ok(value), Some(hosts)) => Ok(self.bind_secret(&path, value, &hosts)),
                (result, _) => result,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::{TestAgent, TestEnv};
    use crate::secrets::{EmbeddedSecrets, SecretBackend};

    /// A T3 agent whose tier binds `t3/github-token` to `https://api.github.com`.
    async fn bound_agent() -> TestAgent {
        let store = Arc::new(EmbeddedSecrets::in_memory());
        store.put("t3/github-token", "ghp_real").await.unwrap();
        store.put("t3/db", "s3cret").await.unwrap();
        let text = crate::policy::BUILTIN_TIERS_TOML.replacen(
            "paths = [\"t3/*\", \"agents/{agent}/*\"]",
            "paths = [\"t3/*\", \"agents/{agent}/*\"]\nbound = { \"t3/github-*\" = [\"https://api.github.com\"] }",
            1,
        );
        let tiers = TierTable::from_toml_str(&text).unwrap();
        TestEnv::new()
            .tiers(tiers)
            .secrets(store)
            .agent(Tier::Executor, json!({}))
            .await
    }

    #[tokio::test]
    async fn a_bound_secret_is_a_placeholder_and_the_placeholder_stays_in_the_sandbox() {
        use crate::bindings::warden::agent::state::Host as State;
        let mut agent = bound_agent().await;
        let placeholder = Host::get(&mut agent.ctx, "t3/github-token".into()).await.unwrap();
        assert!(placeholder.starts_with("warden-secret:") && placeholder.len() == 14 + 32, "{placeholder}");
        assert!(!placeholder.contains("ghp_real"));
        // An unbound secret is its value, as before.
        assert_eq!(Host::get(&mut agent.ctx, "t3/db".into()).await.unwrap(), "s3cret");
        // Written anywhere, the placeholder is refused as a leak.
        let refused = State::set(&mut agent.ctx, "copy".into(), format!("token={placeholder}"))
            .await
            .unwrap_err();
        let WitError::Revoked(message) = refused else {
            panic!("a leak is a procedure violation: {refused:?}");
        };
        assert!(
            message.contains("carries the placeholder of secret `t3/github-token`")
                && message.contains("`https://api.github.com`"),
            "{message}"
        );
        assert_eq!(agent.violations(), ["SECRET_LEAK"]);
    }

    async fn agent(tier: Tier) -> TestAgent {
        let store = Arc::new(EmbeddedSecrets::in_memory());
        store.put("t3/db", "s3cret").await.unwrap();
        store.put("t4/root", "r00t").await.unwrap();
        store.put("agents/agent-1/key", "mine").await.unwrap();
        TestEnv::new().secrets(store).agent(tier, json!({})).await
    }

    #[tokio::test]
    async fn an_executor_reads_its_tier_and_its_own_paths() {
        let mut executor = agent(Tier::Executor).await;
        assert_eq!(executor.ctx.get("t3/db".into()).await.unwrap(), "s3cret");
        assert_eq!(executor.ctx.get("agents/agent-1/key".into()).await.unwrap(), "mine");
        let err = executor.ctx.get("t3/missing".into()).await.unwrap_err();
        assert!(matches!(err, WitError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_path_above_the_tier_names_the_tier_that_may_read_it() {
        let mut executor = agent(Tier::Executor).await;
        let err = executor.ctx.get("t4/root".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("secret `t4/root` is above tier T3 (executor); lowest tier that may read it: T4 (architect)")), "{err:?}");
        assert_eq!(executor.violations(), ["TIER_DENIED"]);
        let err = executor.ctx.get("agents/other/key".into()).await.unwrap_err();
        // The second refusal of the same kind spends `max_same_error_repeats`.
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("lowest tier that may read it: none")), "{err:?}");
    }

    #[tokio::test]
    async fn a_traversal_is_a_procedure_violation() {
        let mut executor = agent(Tier::Executor).await;
        let err = executor.ctx.get("t3/../t4/root".into()).await.unwrap_err();
        assert!(matches!(err, WitError::Revoked(_)), "{err:?}");
        assert_eq!(executor.violations(), ["PATH_ESCAPE"]);
    }

    #[tokio::test]
    async fn secrets_are_closed_in_plan() {
        let mut architect = agent(Tier::Architect).await;
        architect.ctx.gov.run.set_phase(crate::phase::Phase::Plan);
        let err = architect.ctx.get("t3/db".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("secrets are closed in PLAN")), "{err:?}");
        assert_eq!(architect.violations(), ["PHASE_DENIED"]);
        architect.ctx.gov.run.set_phase(crate::phase::Phase::Execute);
        assert_eq!(architect.ctx.get("t3/db".into()).await.unwrap(), "s3cret");
    }

    #[tokio::test]
    async fn the_value_is_never_recorded() {
        let mut executor = agent(Tier::Executor).await;
        executor.ctx.get("t3/db".into()).await.unwrap();
        executor.services.ledger.flush().unwrap();
        let rows = executor
            .services
            .ledger
            .query(&crate::ledger::LedgerQuery::default())
            .unwrap();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| !serde_json::to_string(&r.fields).unwrap().contains("s3cret")));
    }
}
