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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::bindings::warden::agent::llm::Message;
    use crate::capabilities::testing::TestEnv;
    use crate::llm::ScriptedProvider;
    use crate::policy::{BUILTIN_TIERS_TOML, TierTable};
    use crate::tier::Tier;

    fn provider() -> Arc<ScriptedProvider> {
        let rules = "model = \"scripted-1\"\ndefault = \"four words of text\"\n";
        Arc::new(ScriptedProvider::from_toml_str(rules).unwrap())
    }

    fn ask(model: Option<&str>) -> CompletionRequest {
        CompletionRequest {
            model: model.map(str::to_string),
            messages: vec![Message {
                role: Role::User,
                content: "say something".into(),
            }],
            max_tokens: None,
            temperature: None,
        }
    }

    #[tokio::test]
    async fn a_completion_is_charged_to_the_task() {
        let mut agent = TestEnv::new()
            .llm(provider())
            .agent(Tier::Observer, json!({}))
            .await;
        let completion = agent.ctx.complete(ask(None)).await.unwrap();
        assert_eq!(completion.model, "scripted-1");
        let spent = u64::from(completion.prompt_tokens + completion.completion_tokens);
        assert!(spent > 0);
        assert_eq!(agent.services.tokens_used(agent.ctx.gov.task_id()), spent);
        assert_eq!(agent.actions()[0].1, "allowed");
    }

    #[tokio::test]
    async fn without_a_provider_the_call_is_unavailable_not_an_error() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        let err = agent.ctx.complete(ask(None)).await.unwrap_err();
        assert!(matches!(&err, WitError::Unavailable(m) if m.contains("set `[llm]` in warden.toml")), "{err:?}");
        assert_eq!(agent.errors().await.total, 0);
    }

    #[tokio::test]
    async fn a_model_outside_the_allowlist_is_denied() {
        let text = BUILTIN_TIERS_TOML.replacen("models = [\"*\"]", "models = [\"gpt-*\"]", 1);
        let mut agent = TestEnv::new()
            .tiers(TierTable::from_toml_str(&text).unwrap())
            .llm(provider())
            .agent(Tier::Observer, json!({}))
            .await;
        let err = agent.ctx.complete(ask(Some("llama3"))).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("model `llama3` is not in tier T0 (observer)'s allowlist [\"gpt-*\"]")), "{err:?}");
        assert_eq!(agent.violations(), ["TIER_DENIED"]);
    }

    #[tokio::test]
    async fn a_spent_budget_is_refused_before_the_provider_is_asked() {
        let text = BUILTIN_TIERS_TOML.replacen("token_budget = 20000", "token_budget = 3", 1);
        let mut agent = TestEnv::new()
            .tiers(TierTable::from_toml_str(&text).unwrap())
            .llm(provider())
            .agent(Tier::Observer, json!({}))
            .await;
        agent.ctx.complete(ask(None)).await.unwrap();
        let err = agent.ctx.complete(ask(None)).await.unwrap_err();
        assert!(matches!(&err, WitError::BudgetExhausted(m) if m.contains("of its 3 llm tokens")), "{err:?}");
        assert_eq!(agent.violations(), ["TOKEN_BUDGET_EXHAUSTED"]);
    }

    #[test]
    fn a_tier_without_the_section_allows_no_model() {
        let text = BUILTIN_TIERS_TOML
            .replacen("[tiers.T0.llm]\nmodels = [\"*\"]                # models the tier may ask for (glob)\ntoken_budget = 20000          # tokens a task may spend\n", "", 1);
        let tiers = TierTable::from_toml_str(&text).unwrap();
        let policy = tiers.policy(Tier::Observer);
        assert!(!policy.interfaces.contains(Interface::Llm));
        assert!(check_model(policy, "llm.complete", "any").is_err());
        assert_eq!(policy.grant::<Grant>(Interface::Llm).token_budget, 0);
    }
}
