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
    /// Tokens (prompt and completion) a task may spend, across its runs.
    #[serde(default)]
    pub token_budget: u64,
    /// The largest prompt, in bytes of message text, the tier may send.
    #[serde(default = "default_max_prompt_bytes")]
    pub max_prompt_bytes: u64,
}

/// A prompt's size bound when the tier's section does not set one: 256 KiB.
const DEFAULT_MAX_PROMPT_BYTES: u64 = 256 * 1024;

fn default_max_prompt_bytes() -> u64 {
    DEFAULT_MAX_PROMPT_BYTES
}

/// What a request will cost at least, before it is sent: a token per word or per four bytes,
/// whichever is more, so a prompt without spaces is not free.
fn prompt_estimate(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| {
            let words = u64::from(crate::llm::estimate_tokens(&m.content));
            words.max(u64::try_from(m.content.len().div_ceil(4)).unwrap_or(u64::MAX))
        })
        .fold(0u64, u64::saturating_add)
}

/// The prompt's size and the task's budget, before anything is sent: what the request may
/// still spend on its completion.
fn check_budget(
    grant: &Grant,
    op: &str,
    task: &str,
    model: &str,
    prompt_bytes: u64,
    prompt_tokens: u64,
    spent: u64,
) -> Result<u64, CallRefusal> {
    let refuse = |kind, message| CallRefusal {
        kind,
        resource: format!("llm:{model}"),
        message,
    };
    if prompt_bytes > grant.max_prompt_bytes {
        return Err(refuse(
            ViolationKind::Invalid,
            format!(
                "`{op}` refused: the prompt is {prompt_bytes} bytes; the tier sends at most {} (`[tiers.Tn.llm] max_prompt_bytes`)",
                grant.max_prompt_bytes
            ),
        ));
    }
    let budget = grant.token_budget;
    if spent.saturating_add(prompt_tokens) >= budget {
        return Err(refuse(
            ViolationKind::TokenBudget,
            format!(
                "`{op}` refused: task `{task}` has spent {spent} of its {budget} llm tokens and the prompt is about {prompt_tokens} more; a higher tier has a larger budget"
            ),
        ));
    }
    Ok(budget - spent - prompt_tokens)
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        models: Vec::new(),
        token_budget: 0,
        max_prompt_bytes: 0,
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
        super::journal_call!(self, "llm.complete", Json, super::journaled::args(&(&request,)), {
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
            let prompt: Vec<&[u8]> = request.messages.iter().map(|m| m.content.as_bytes()).collect();
            self.refuse_placeholders(OP, || format!("llm:{model}"), &prompt)
                .await?;
            let messages: Vec<ChatMessage> = request
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
                .collect();
            let prompt_bytes = messages
                .iter()
                .map(|m| u64::try_from(m.content.len()).unwrap_or(u64::MAX))
                .fold(0u64, u64::saturating_add);
            let spent = self
                .gov
                .services
                .state
                .tokens_spent(self.gov.task_id())
                .await;
            let spent = match spent {
                Ok(spent) => spent,
                Err(e) => {
                    let error = unavailable("the state store", e);
                    self.gov.record_result::<()>(OP, &Err(error.clone())).await;
                    return Err(error);
                }
            };
            let decision = check_budget(
                self.gov.policy().grant::<Grant>(Interface::Llm),
                OP,
                self.gov.task_id(),
                &model,
                prompt_bytes,
                prompt_estimate(&messages),
                spent,
            );
            let left = match decision {
                Ok(left) => left,
                Err(refusal) => return Err(self.gov.refuse(OP, refusal).await),
            };
            let reserve = request.max_tokens.map_or(DEFAULT_MAX_TOKENS, u64::from);
            let llm_request = LlmRequest {
                model: Some(model.clone()),
                messages,
                max_tokens: Some(u32::try_from(reserve.min(left)).unwrap_or(u32::MAX)),
                temperature: request.temperature,
            };
            let response = match provider.complete(&llm_request).await {
                Ok(response) => response,
                Err(LlmError::Unavailable(message)) => {
                    let error = unavailable("the llm provider", message);
                    self.gov.record_result::<()>(OP, &Err(error.clone())).await;
                    return Err(error);
                }
                Err(error) => {
                    let error = unavailable("the llm provider", error);
                    self.gov.record_result::<()>(OP, &Err(error.clone())).await;
                    return Err(error);
                }
            };
            // Charged from what the provider reports, once per answer the guest sees: an answer
            // that cannot be charged is not given.
            let used = u64::from(response.prompt_tokens) + u64::from(response.completion_tokens);
            let total = match self
                .gov
                .services
                .state
                .charge_tokens(self.gov.task_id(), used)
                .await
            {
                Ok(total) => total,
                Err(e) => {
                    let error = unavailable("the state store", e);
                    self.gov.record_result::<()>(OP, &Err(error.clone())).await;
                    return Err(error);
                }
            };
            let details = serde_json::json!({
                "model": response.model,
                "prompt_tokens": response.prompt_tokens,
                "completion_tokens": response.completion_tokens,
                "task_tokens": total,
            });
            self.gov.record_details(OP, details.to_string()).await;
            Ok(Completion {
                text: response.text,
                model: response.model,
                prompt_tokens: response.prompt_tokens,
                completion_tokens: response.completion_tokens,
            })
        })
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
        let task = agent.ctx.gov.task_id().clone();
        assert_eq!(agent.state().tokens_spent(&task).await.unwrap(), spent);
        assert_eq!(agent.actions()[0].1, "allowed");
        // The row says what was spent, so the spend can be rebuilt from the ledger.
        let row = agent.services.ledger.tail(1).unwrap().remove(0);
        let details: serde_json::Value =
            serde_json::from_str(row.fields["details"].as_str().unwrap()).unwrap();
        assert_eq!(details["model"], "scripted-1");
        assert_eq!(
            details["prompt_tokens"].as_u64().unwrap() + details["completion_tokens"].as_u64().unwrap(),
            spent
        );
        // A second run of the same task spends the same budget.
        let mut again = agent.peer("agent-2", Tier::Observer).await;
        again.ctx.complete(ask(None)).await.unwrap();
        assert_eq!(agent.state().tokens_spent(&task).await.unwrap(), 2 * spent);
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
        let text = BUILTIN_TIERS_TOML.replacen("token_budget = 20000", "token_budget = 8", 1);
        let mut agent = TestEnv::new()
            .tiers(TierTable::from_toml_str(&text).unwrap())
            .llm(provider())
            .agent(Tier::Observer, json!({}))
            .await;
        agent.ctx.complete(ask(None)).await.unwrap();
        let err = agent.ctx.complete(ask(None)).await.unwrap_err();
        assert!(matches!(&err, WitError::BudgetExhausted(m) if m.contains("of its 8 llm tokens")), "{err:?}");
        assert_eq!(agent.violations(), ["TOKEN_BUDGET_EXHAUSTED"]);
    }

    #[tokio::test]
    async fn a_prompt_over_the_tier_bound_is_refused_before_it_is_sent() {
        let text = BUILTIN_TIERS_TOML.replacen(
            "max_prompt_bytes = 262144     # bytes of one prompt",
            "max_prompt_bytes = 64     # bytes of one prompt",
            1,
        );
        let mut agent = TestEnv::new()
            .tiers(TierTable::from_toml_str(&text).unwrap())
            .llm(provider())
            .agent(Tier::Observer, json!({}))
            .await;
        let mut request = ask(None);
        request.messages[0].content = "x".repeat(65);
        let err = agent.ctx.complete(request).await.unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("the prompt is 65 bytes; the tier sends at most 64")), "{err:?}");
        let task = agent.ctx.gov.task_id().clone();
        assert_eq!(agent.state().tokens_spent(&task).await.unwrap(), 0, "nothing was sent");
    }

    #[test]
    fn a_prompt_without_spaces_is_not_free() {
        let message = ChatMessage {
            role: LlmRole::User,
            content: "x".repeat(4000),
        };
        assert_eq!(prompt_estimate(&[message]), 1000);
    }

    #[test]
    fn a_tier_without_the_section_allows_no_model() {
        let text = BUILTIN_TIERS_TOML
            .replacen("[tiers.T0.llm]\nmodels = [\"*\"]                # models the tier may ask for (glob)\ntoken_budget = 20000          # tokens a task may spend\nmax_prompt_bytes = 262144     # bytes of one prompt, refused before it is sent (256 KiB)\n", "", 1);
        let tiers = TierTable::from_toml_str(&text).unwrap();
        let policy = tiers.policy(Tier::Observer);
        assert!(!policy.interfaces.contains(Interface::Llm));
        assert!(check_model(policy, "llm.complete", "any").is_err());
        assert_eq!(policy.grant::<Grant>(Interface::Llm).token_budget, 0);
    }
}
