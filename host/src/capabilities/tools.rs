//! `warden:agent/tools`: operator-registered tools, run without a shell, check-mode below
//! their full tier.

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::tools::{Host, ToolInfo, ToolOutput};
use crate::bindings::warden::agent::types::Tier as WitTier;
use crate::interface::Interface;
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
        const OP: &str = "tools.list";
        self.gov
            .gate(Interface::Tools, OP, || "tool:*".to_string())
            .await?;
        let tier = self.gov.run.tier;
        let tools = self
            .gov
            .services
            .tools
            .tools()
            .filter(|t| t.min_tier <= tier)
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
    }

    async fn invoke(&mut self, name: String, args: Vec<String>) -> Result<ToolOutput, WitError> {
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
        let tier = self.gov.run.tier;
        let invocation = match self.gov.services.tools.prepare(&name, &args, tier) {
            Ok(invocation) => invocation,
            Err(error) => {
                let kind = match &error {
                    ToolsError::Denied { .. } => ViolationKind::TierDenied,
                    ToolsError::NotFound { .. } => {
                        let error = WitError::NotFound(error.to_string());
                        self.gov.record_result::<()>(OP, &Err(error.clone())).await;
                        return Err(error);
                    }
                    _ => ViolationKind::Invalid,
                };
                let refusal = CallRefusal {
                    kind,
                    resource: format!("tool:{name}"),
                    message: format!("`{OP}` refused: {error}"),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
        };
        let workspace = self.gov.run.workspace.clone();
        let result = match invocation.run(Some(&workspace)).await {
            Ok(output) => Ok(ToolOutput {
                exit_code: output.exit_code,
                stdout: output.stdout,
                stderr: output.stderr,
                check_mode: output.check_mode,
            }),
            Err(error) => Err(unavailable(&format!("tool `{name}`"), error)),
        };
        self.gov.record_result(OP, &result).await;
        result
    }
}
