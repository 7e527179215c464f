//! `warden:agent/llm`: completions under the tier's model allowlist and the task's token budget.

use super::{AgentCtx, Refusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::llm::{Completion, CompletionRequest, Host, Role};
use crate::llm::{ChatMessage, LlmError, LlmRequest, Role as LlmRole};
use crate::pattern::first_match;
use crate::policy::Interface;

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
        let policy = self.gov.policy();
        if first_match(&policy.llm_models, &model).is_none() {
            let allowed: Vec<&str> = policy.llm_models.iter().map(|p| p.as_str()).collect();
            let refusal = Refusal {
                kind: ViolationKind::TierDenied,
                resource: format!("llm:{model}"),
                message: format!(
                    "`{OP}` refused: model `{model}` is not in tier {}'s allowlist {allowed:?}",
                    self.gov.run.tier
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let budget = policy.llm_token_budget;
        let reserve = request.max_tokens.map_or(DEFAULT_MAX_TOKENS, u64::from);
        let used = self.gov.services.tokens_used(self.gov.task_id());
        if used >= budget {
            let refusal = Refusal {
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
