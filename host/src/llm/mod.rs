//! LLM providers behind `warden:agent/llm`.
//!
//! The host never lets an agent reach a model directly: the capability layer checks the tier's
//! model allowlist and the task's token budget, then calls an [`LlmProvider`]. Two providers
//! exist: [`ScriptedProvider`], deterministic and offline for demos and tests, and
//! [`OpenAiCompatible`], chat completions over HTTP (OpenRouter, Ollama, vLLM, …).

mod openai;
mod scripted;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use openai::OpenAiCompatible;
pub use scripted::{ScriptRule, ScriptedProvider};

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The asking side: the agent's prompt.
    User,
    /// The model's replies.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`, as chat-completion APIs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }

    /// A [`Role::System`] message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new(Role::System, content)
    }

    /// A [`Role::User`] message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new(Role::User, content)
    }

    /// A [`Role::Assistant`] message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::new(Role::Assistant, content)
    }
}

/// A completion request. `model: None` means the provider's [`LlmProvider::default_model`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRequest {
    /// The model asked for; `None` for the provider's default.
    pub model: Option<String>,
    /// The conversation, oldest message first.
    pub messages: Vec<ChatMessage>,
    /// Cap on the completion's tokens; `None` leaves it to the provider.
    pub max_tokens: Option<u32>,
    /// Sampling temperature; `None` leaves it to the provider.
    pub temperature: Option<f32>,
}

/// A completion. Token counts are the provider's when it reports them, an estimate
/// ([`estimate_tokens`]) otherwise; the host charges them to the task's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmResponse {
    /// The completion's text.
    pub text: String,
    /// The model that answered, which may differ from the one asked for (aliases, routing).
    pub model: String,
    /// Tokens of the request's messages.
    pub prompt_tokens: u32,
    /// Tokens of the completion.
    pub completion_tokens: u32,
}

/// A source of completions.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// The provider kind: `scripted`, `openai-compatible`.
    fn name(&self) -> &str;

    /// The model used when a request names none.
    fn default_model(&self) -> &str;

    /// Complete the conversation of `request`; fails when the provider cannot be reached,
    /// refuses, or answers with something that is not a completion.
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError>;

    /// A cheap liveness probe, for `warden doctor` and startup checks; it spends no tokens.
    async fn health(&self) -> Result<(), LlmError> {
        Ok(())
    }
}

/// A failed completion, or a provider that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider cannot be reached (connection refused, DNS, reset); retrying later may work.
    #[error("llm provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider did not answer within the configured time.
    #[error(
        "llm provider did not answer `{url}` within {}; raise `timeout` in `[llm]` or check the server",
        crate::duration::format(*timeout)
    )]
    Timeout {
        /// The URL requested.
        url: String,
        /// The whole-request timeout that passed.
        timeout: Duration,
    },
    /// The provider answered with a non-2xx status.
    #[error("llm provider answered http {status} to `{url}`: {body}")]
    Http {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most 512 bytes), for the operator.
        body: String,
    },
    /// The provider answered 2xx with a body that is not a chat completion.
    #[error("llm provider sent a response that is not a chat completion: {0}")]
    BadResponse(String),
    /// The scripted provider has no rule for the prompt and no `default`.
    #[error(
        "no scripted rule matches the prompt `{prompt}` and the rules have no `default`; add a `[[rule]]` whose `pattern` occurs in it, or a `default` response"
    )]
    NoRuleMatched {
        /// The prompt's first 80 characters.
        prompt: String,
    },
    /// A scripted rules file cannot be read.
    #[error("cannot read scripted llm rules `{path}`: {source}")]
    ReadRules {
        /// The rules file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A scripted rules file or rule list is malformed.
    #[error("scripted llm rules {origin} are invalid: {message}")]
    Rules {
        /// The rules: `` `path` `` for a file, `(inline)` for text, `(in code)` for a rule list.
        origin: String,
        /// What is wrong with them.
        message: String,
    },
    /// The `[llm]` configuration or a provider setting cannot be used.
    #[error("llm configuration is invalid: {0}")]
    Config(String),
}

/// Which provider `[llm]` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// `scripted`: [`ScriptedProvider`], canned responses from a rules file.
    Scripted,
    /// `openai-compatible`: [`OpenAiCompatible`], chat completions over HTTP.
    OpenaiCompatible,
}

/// The `[llm]` table of `warden.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `scripted` or `openai-compatible`.
    pub provider: ProviderKind,
    /// Scripted: the rules file (required).
    pub rules: Option<PathBuf>,
    /// OpenAI-compatible: the API root, e.g. `https://openrouter.ai/api/v1` (required).
    pub base_url: Option<String>,
    /// The default model; required for `openai-compatible`, overrides the rules file's for
    /// `scripted`.
    pub model: Option<String>,
    /// OpenAI-compatible: the secrets path of the API key. The caller resolves it and passes
    /// the key to [`provider_from_config`], so this module never touches the secrets store.
    pub api_key_secret: Option<String>,
    /// OpenAI-compatible: the whole-request timeout (`"60s"`, the default).
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub timeout: Option<Duration>,
    /// The old form of `timeout`, refused with the new one.
    #[serde(default)]
    #[doc(hidden)]
    pub timeout_ms: Option<u64>,
}

/// The default whole-request timeout of HTTP providers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Build the provider `cfg` describes. `api_key` is the resolved `api_key_secret`, if any.
///
/// Settings that do not apply to the chosen provider are refused rather than ignored, so a
/// typo'd or misplaced setting never silently changes nothing.
pub fn provider_from_config(
    cfg: &LlmConfig,
    api_key: Option<String>,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    let inapplicable = |field: &str, provider: &str| {
        LlmError::Config(format!(
            "`{field}` does not apply to provider `{provider}`; remove it"
        ))
    };
    match cfg.provider {
        ProviderKind::Scripted => {
            if cfg.base_url.is_some() {
                return Err(inapplicable("base_url", "scripted"));
            }
            if cfg.api_key_secret.is_some() {
                return Err(inapplicable("api_key_secret", "scripted"));
            }
            if let Some(ms) = cfg.timeout_ms {
                return Err(LlmError::Config(crate::duration::old_key("timeout_ms", ms)));
            }
            if cfg.timeout.is_some() {
                return Err(inapplicable("timeout", "scripted"));
            }
            let Some(rules) = &cfg.rules else {
                return Err(LlmError::Config(
                    "provider `scripted` needs `rules = \"<path of a rules file>\"`".into(),
                ));
            };
            let mut provider = ScriptedProvider::from_file(rules)?;
            if let Some(model) = &cfg.model {
                provider = provider.with_model(model.clone());
            }
            Ok(Arc::new(provider))
        }
        ProviderKind::OpenaiCompatible => {
            if cfg.rules.is_some() {
                return Err(inapplicable("rules", "openai-compatible"));
            }
            let Some(base_url) = &cfg.base_url else {
                return Err(LlmError::Config(
                    "provider `openai-compatible` needs `base_url`, e.g. `http://127.0.0.1:11434/v1`"
                        .into(),
                ));
            };
            openai::check_base_url(base_url)?;
            let Some(model) = cfg.model.as_deref().filter(|m| !m.trim().is_empty()) else {
                return Err(LlmError::Config(
                    "provider `openai-compatible` needs `model`, the model used when an agent names none"
                        .into(),
                ));
            };
            if let (Some(secret), None) = (&cfg.api_key_secret, &api_key) {
                return Err(LlmError::Config(format!(
                    "`api_key_secret = \"{secret}\"` is set but its key was not resolved; store it with `warden secrets set {secret}`"
                )));
            }
            let mut provider = OpenAiCompatible::new(base_url.as_str()).default_model(model);
            if let Some(key) = api_key {
                provider = provider.api_key(key);
            }
            if let Some(ms) = cfg.timeout_ms {
                return Err(LlmError::Config(crate::duration::old_key("timeout_ms", ms)));
            }
            match cfg.timeout {
                Some(timeout) if timeout < Duration::from_millis(1) => {
                    return Err(LlmError::Config(
                        "`timeout = \"0s\"` would fail every request; use at least `1ms`".into(),
                    ));
                }
                Some(timeout) => provider = provider.timeout(timeout),
                None => {}
            }
            Ok(Arc::new(provider))
        }
    }
}

/// A deterministic token estimate for providers that report none: the number of
/// whitespace-separated words, at least 1, so every message costs budget.
pub fn estimate_tokens(text: &str) -> u32 {
    let words = text.split_whitespace().count().max(1);
    u32::try_from(words).unwrap_or(u32::MAX)
}

/// [`estimate_tokens`] summed over a conversation.
pub fn estimate_prompt_tokens(messages: &[ChatMessage]) -> u32 {
    messages.iter().fold(0u32, |sum, m| {
        sum.saturating_add(estimate_tokens(&m.content))
    })
}

/// The first `max` characters of `text`, with `…` when cut; for error messages.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<LlmConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn estimates_are_deterministic_and_never_zero() {
        assert_eq!(estimate_tokens(""), 1);
        assert_eq!(estimate_tokens("  one two\tthree\n"), 3);
        let messages = [ChatMessage::system(""), ChatMessage::user("a b")];
        assert_eq!(estimate_prompt_tokens(&messages), 3);
    }

    #[test]
    fn excerpt_cuts_on_characters() {
        assert_eq!(excerpt("héllo", 2), "hé…");
        assert_eq!(excerpt("hi", 2), "hi");
    }

    #[test]
    fn config_rejects_unknown_fields_and_providers() {
        let error = config("provider = \"scripted\"\nrule = \"x\"").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `rule`"),
            "{error}"
        );
        let error = config("provider = \"anthropic\"").unwrap_err();
        assert!(error.to_string().contains("openai-compatible"), "{error}");
    }

    #[test]
    fn config_builds_a_scripted_provider() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, "default = \"ok\"\n").unwrap();
        let cfg = LlmConfig {
            provider: ProviderKind::Scripted,
            rules: Some(rules),
            base_url: None,
            model: Some("demo-model".into()),
            api_key_secret: None,
            timeout: None,
            timeout_ms: None,
        };
        let provider = provider_from_config(&cfg, None).unwrap();
        assert_eq!(provider.name(), "scripted");
        assert_eq!(provider.default_model(), "demo-model");
    }

    #[test]
    fn config_refuses_missing_and_inapplicable_settings() {
        let scripted_without_rules = config("provider = \"scripted\"").unwrap();
        let error = provider_from_config(&scripted_without_rules, None)
            .err()
            .unwrap();
        assert!(error.to_string().contains("needs `rules"), "{error}");

        let scripted_with_url =
            config("provider = \"scripted\"\nrules = \"r.toml\"\nbase_url = \"http://x\"").unwrap();
        let error = provider_from_config(&scripted_with_url, None)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("`base_url` does not apply"),
            "{error}"
        );

        let no_model =
            config("provider = \"openai-compatible\"\nbase_url = \"http://x/v1\"").unwrap();
        let error = provider_from_config(&no_model, None).err().unwrap();
        assert!(error.to_string().contains("needs `model`"), "{error}");

        let bad_url =
            config("provider = \"openai-compatible\"\nbase_url = \"ftp://x\"\nmodel = \"m\"")
                .unwrap();
        let error = provider_from_config(&bad_url, None).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("\"ftp://x\"` is not an http(s) url"),
            "{error}"
        );

        let unresolved = config(
            "provider = \"openai-compatible\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\napi_key_secret = \"llm/key\"",
        )
        .unwrap();
        let error = provider_from_config(&unresolved, None).err().unwrap();
        assert!(
            error.to_string().contains("`warden secrets set llm/key`"),
            "{error}"
        );

        let zero = config(
            "provider = \"openai-compatible\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\ntimeout = \"0s\"",
        )
        .unwrap();
        let error = provider_from_config(&zero, None).err().unwrap();
        assert!(error.to_string().contains("timeout = \"0s\""), "{error}");
    }

    #[test]
    fn config_builds_an_openai_compatible_provider() {
        let cfg = config(
            "provider = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:1/v1/\"\nmodel = \"llama3\"\napi_key_secret = \"llm/key\"\ntimeout = \"1500ms\"",
        )
        .unwrap();
        let provider = provider_from_config(&cfg, Some("sk-secret".into())).unwrap();
        assert_eq!(provider.name(), "openai-compatible");
        assert_eq!(provider.default_model(), "llama3");
    }
}
