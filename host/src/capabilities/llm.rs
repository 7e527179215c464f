//! `warden:agent/llm`: completions under the tier's model allowlist and the task's token budget.
//!
//! Tier section `[tiers.Tn.llm]`: `models`, the model names (globs) the tier may ask for, and
//! `token_budget`, the tokens a task of the tier may spend. Without them nothing is allowed.

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::llm::{Completion, CompletionRequest, Host, Role};
use crate::llm::{ChatMessage, LlmError, LlmRequest, Role as LlmRole};
use crate::interface::Interface;
use crate::pattern::{Pattern, first_match};
use crate::policy::{SectionSpec, TierPolicy};
use serde::Deserialize;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Llm);

/// `[tiers.Tn.llm]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Models the tier may ask for.
    #[serde(default)]
    pub models: Vec<Pattern>,
    /// Tokens (prompt and completion) a task may spend.
    #[serde(default)]
    pub token_budget: u64,
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        models: Vec::new(),
        token_budget: 0,
    };
}

/// The tier's allowlist for `model`.
fn check_model(policy: &TierPolicy, op: &str, model: &str) -> Result<(), CallRefusal> {
    let grant = policy.grant::<Grant>(Interface::Llm);
    if first_match(&grant.models, model).is_some() {
        return Ok(());
    }
    let allowed: Vec<&str> = grant.models.iter().map(Pattern::as_str).collect();
    Err(CallRefusal::tier_denied(
        format!("llm:{model}"),
        format!(
            "`{op}` refused: model `{model}` is not in tier {}'s allowlist {allowed:?}",
            policy.tier
        ),
    ))
}

/// Tokens reserved for a completion whose request does not say.
const DEFAULT_MAX_TOKENS: u64 = 1024;

impl Host for AgentCtx {
    async fn complete(&mut self, request: CompletionRequest) -> Result<Completion, WitError> {
        const OP: &str = "llm.complete";
        let Some(provider) = self.gov.services.llm.clone() else {
            self.gov
                .gate(Interface::Llm, OP, || "llm:*".to_string())
                .await?;
            let error = WitError::Unavailable(
                "no llm provider is configured on this host; set `[llm]` in warden.toml or call `HostBuilder::llm`".into(),
            );
            self.gov.record_result::<()>(OP, &Err(error.clone())).await;
            return Err(error);
        };
        let model = request
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model().to_string());
        self.gov
            .gate(Interface::Llm, OP, || format!("llm:{model}"))
            .await?;
        let decision = check_model(self.gov.policy(), OP, &model);
        self.gov.check(OP, decision).await?;
        let budget = self.gov.policy().grant::<Grant>(Interface::Llm).token_budget;
        let reserve = request.max_tokens.map_or(DEFAULT_MAX_TOKENS, u64::from);
        let used = self.gov.services.tokens_used(self.gov.task_id());
        if used >= budget {
            let refusal = CallRefusal {
                kind: ViolationKind::TokenBudget,
                resource: format!("llm:{model}"),
                message: format!(
                    "`{OP}` refused: task `{}` has used {used} of its {budget} llm tokens; a higher tier has a larger budget",
                    self.gov.task_id()
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let llm_request = LlmRequest {
            model: Some(model),
            messages: request
                .messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: match m.role {
                        Role::System => LlmRole::System,
                        Role::User => LlmRole::User,
                        Role::Assistant => LlmRole::Assistant,
                    },
                    content: m.content,
                })
                .collect(),
            max_tokens: Some(u32::try_from(reserve.min(budget - used)).unwrap_or(u32::MAX)),
            temperature: request.temperature,
        };
        let result = match provider.complete(&llm_request).await {
            Ok(response) => {
                let spent =
                    u64::from(response.prompt_tokens) + u64::from(response.completion_tokens);
                self.gov.services.add_tokens(self.gov.task_id(), spent);
                Ok(Completion {
                    text: response.text,
                    model: response.model,
                    prompt_tokens: response.prompt_tokens,
                    completion_tokens: response.completion_tokens,
                })
            }
            Err(LlmError::Unavailable(message)) => Err(unavailable("the llm provider", message)),
            Err(error) => Err(unavailable("the llm provider", error)),
        };
        self.gov.record_result(OP, &result).await;
        result
    }
}
