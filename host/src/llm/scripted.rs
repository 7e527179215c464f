//! A deterministic, offline provider: canned responses chosen by rules, for demos and tests.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use super::{
    ChatMessage, LlmError, LlmProvider, LlmRequest, LlmResponse, Role, estimate_prompt_tokens,
    estimate_tokens, excerpt,
};

/// One rule: when `pattern` occurs in a message (of `role`, if set), answer `response`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    /// A case-sensitive substring, or with `regex = true` a regex searched for anywhere in the
    /// message (anchor it with `^`/`$` to match whole messages).
    pub pattern: String,
    /// The completion returned when the rule matches.
    pub response: String,
    /// Match only messages of this role; `None` matches any message.
    #[serde(default)]
    pub role: Option<Role>,
    /// Whether `pattern` is a regex rather than a substring; default `false`.
    #[serde(default)]
    pub regex: bool,
}

impl ScriptRule {
    /// A substring rule matching messages of any role.
    pub fn new(pattern: impl Into<String>, response: impl Into<String>) -> Self {
        ScriptRule {
            pattern: pattern.into(),
            response: response.into(),
            role: None,
            regex: false,
        }
    }
}

/// The rules file: `model`, `default`, and `[[rule]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    model: Option<String>,
    default: Option<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<ScriptRule>,
}

#[derive(Debug)]
enum Matcher {
    Substring(String),
    Regex(Regex),
}

#[derive(Debug)]
struct CompiledRule {
    matcher: Matcher,
    role: Option<Role>,
    response: String,
}

impl CompiledRule {
    fn matches(&self, message: &ChatMessage) -> bool {
        if self.role.is_some_and(|role| role != message.role) {
            return false;
        }
        match &self.matcher {
            Matcher::Substring(needle) => message.content.contains(needle.as_str()),
            Matcher::Regex(regex) => regex.is_match(&message.content),
        }
    }
}

/// Answers each request with the response of the first rule, in file order, that matches any
/// of its messages; with `default` when none does. `max_tokens` and `temperature` are ignored
/// so that answers never depend on them.
#[derive(Debug)]
pub struct ScriptedProvider {
    model: String,
    default: Option<String>,
    rules: Vec<CompiledRule>,
}

/// The model name when the rules give none.
const DEFAULT_MODEL: &str = "scripted";

impl ScriptedProvider {
    /// Load a rules file (TOML: `model`, `default`, `[[rule]]` with `pattern`, `response`,
    /// `role`, `regex`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LlmError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LlmError::ReadRules {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &format!("`{}`", path.display()))
    }

    /// Rules from TOML text, as in a rules file.
    pub fn from_toml_str(text: &str) -> Result<Self, LlmError> {
        Self::parse(text, "(inline)")
    }

    /// Rules built in code. `default` answers prompts no rule matches.
    pub fn from_rules(rules: Vec<ScriptRule>, default: Option<String>) -> Result<Self, LlmError> {
        Self::build(DEFAULT_MODEL.to_string(), rules, default, "(in code)")
    }

    /// Use `model` as the default model instead of the rules file's.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    fn parse(text: &str, origin: &str) -> Result<Self, LlmError> {
        let file: RulesFile = toml::from_str(text).map_err(|error| LlmError::Rules {
            origin: origin.to_string(),
            message: format!(
                "{}; expected optional `model` and `default` strings and `[[rule]]` tables with `pattern` and `response` strings, optional `role` (system, user, assistant) and `regex` (bool)",
                toml_error(text, &error)
            ),
        })?;
        let model = file.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());
        Self::build(model, file.rules, file.default, origin)
    }

    fn build(
        model: String,
        rules: Vec<ScriptRule>,
        default: Option<String>,
        origin: &str,
    ) -> Result<Self, LlmError> {
        let invalid = |message: String| LlmError::Rules {
            origin: origin.to_string(),
            message,
        };
        if model.trim().is_empty() {
            return Err(invalid(
                "`model` is empty; name the model or leave it out".into(),
            ));
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| {
                let number = index + 1;
                if rule.pattern.is_empty() {
                    return Err(invalid(format!(
                        "rule {number}: `pattern` is empty and would match every prompt; use `default` for that"
                    )));
                }
                let matcher = if rule.regex {
                    let regex = Regex::new(&rule.pattern).map_err(|error| {
                        invalid(format!(
                            "rule {number}: `pattern` `{}` is not a valid regex: {error}",
                            rule.pattern
                        ))
                    })?;
                    Matcher::Regex(regex)
                } else {
                    Matcher::Substring(rule.pattern)
                };
                Ok(CompiledRule {
                    matcher,
                    role: rule.role,
                    response: rule.response,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScriptedProvider {
            model,
            default,
            rules,
        })
    }

    fn answer(&self, messages: &[ChatMessage]) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| messages.iter().any(|m| rule.matches(m)))
            .map(|rule| rule.response.as_str())
            .or(self.default.as_deref())
    }
}

#[async_trait::async_trait]
impl LlmProvider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn default_model(&self) -> &str {
        &self.model
    }

    /// The response names the requested model: a scripted provider plays whichever model the
    /// tier's allowlist let through.
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let Some(text) = self.answer(&request.messages) else {
            let prompt = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .or(request.messages.last())
                .map_or("", |m| m.content.as_str());
            return Err(LlmError::NoRuleMatched {
                prompt: excerpt(prompt, 80),
            });
        };
        Ok(LlmResponse {
            text: text.to_string(),
            model: request.model.clone().unwrap_or_else(|| self.model.clone()),
            prompt_tokens: estimate_prompt_tokens(&request.messages),
            completion_tokens: estimate_tokens(text),
        })
    }
}

/// A TOML error on one line, `line L, column C: message`, for logs and the ledger (toml's own
/// rendering spans several lines).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(before) = error.span().and_then(|span| text.get(..span.start)) else {
        return message.to_string();
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Vec<ChatMessage>) -> LlmRequest {
        LlmRequest {
            messages,
            ..LlmRequest::default()
        }
    }

    const RULES: &str = r#"
model = "scripted-1"
default = '{"summary":"default","steps":[],"confidence":0.5}'

[[rule]]
pattern = "microservices"
response = "split it"

[[rule]]
pattern = "^plan: (a|b)$"
regex = true
response = "regex plan"

[[rule]]
pattern = "secret"
role = "system"
response = "system only"

[[rule]]
pattern = "micro"
response = "never reached for microservices"
"#;

    #[tokio::test]
    async fn first_matching_rule_in_file_order_wins() {
        let provider = ScriptedProvider::from_toml_str(RULES).unwrap();
        assert_eq!(provider.default_model(), "scripted-1");
        let response = provider
            .complete(&request(vec![
                ChatMessage::system("You are a planner."),
                ChatMessage::user("Design microservices for a shop"),
            ]))
            .await
            .unwrap();
        assert_eq!(response.text, "split it");
        assert_eq!(response.model, "scripted-1");
        assert_eq!(response.prompt_tokens, 4 + 5);
        assert_eq!(response.completion_tokens, 2);

        let response = provider
            .complete(&request(vec![ChatMessage::user("a micro kernel")]))
            .await
            .unwrap();
        assert_eq!(response.text, "never reached for microservices");
    }

    #[tokio::test]
    async fn regex_role_and_default_rules() {
        let provider = ScriptedProvider::from_toml_str(RULES).unwrap();
        let complete = |messages| {
            let provider = &provider;
            async move { provider.complete(&request(messages)).await.unwrap().text }
        };
        assert_eq!(
            complete(vec![ChatMessage::user("plan: b")]).await,
            "regex plan"
        );
        assert!(
            complete(vec![ChatMessage::user("plan: c")])
                .await
                .contains("default")
        );
        assert_eq!(
            complete(vec![ChatMessage::system("a secret")]).await,
            "system only"
        );
        assert!(
            complete(vec![ChatMessage::user("a secret")])
                .await
                .contains("default")
        );
    }

    #[tokio::test]
    async fn the_requested_model_is_echoed() {
        let provider = ScriptedProvider::from_toml_str(RULES).unwrap();
        let mut req = request(vec![ChatMessage::user("x")]);
        req.model = Some("gpt-test".into());
        assert_eq!(provider.complete(&req).await.unwrap().model, "gpt-test");
    }

    #[tokio::test]
    async fn an_unmatched_prompt_without_default_names_the_prompt() {
        let provider =
            ScriptedProvider::from_rules(vec![ScriptRule::new("hello", "hi")], None).unwrap();
        assert_eq!(provider.default_model(), "scripted");
        let long = format!("{}tail", "x".repeat(80));
        let error = provider
            .complete(&request(vec![ChatMessage::user(long)]))
            .await
            .unwrap_err();
        match &error {
            LlmError::NoRuleMatched { prompt } => {
                assert_eq!(prompt, &format!("{}…", "x".repeat(80)))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(error.to_string().contains("`default`"), "{error}");
    }

    #[test]
    fn malformed_rules_name_the_file_and_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[[rule]]\npattern = \"x\"\n").unwrap();
        let error = ScriptedProvider::from_file(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("line 1"), "{error}");
        assert!(error.contains("missing field `response`"), "{error}");

        let error = ScriptedProvider::from_toml_str(
            "[[rule]]\npattern = \"x\"\nresponse = \"y\"\nrole = \"bot\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 4") && error.contains("`user`"),
            "{error}"
        );

        let error = ScriptedProvider::from_toml_str("modle = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `modle`"), "{error}");

        let error = ScriptedProvider::from_toml_str(
            "[[rule]]\npattern = \"ok\"\nresponse = \"y\"\n[[rule]]\npattern = \"(\"\nregex = true\nresponse = \"y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("rule 2") && error.contains("not a valid regex"),
            "{error}"
        );

        let error = ScriptedProvider::from_file(dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.toml"), "{error}");
    }

    #[test]
    fn empty_patterns_are_refused() {
        let error = ScriptedProvider::from_rules(vec![ScriptRule::new("", "y")], None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("rule 1") && error.contains("`default`"),
            "{error}"
        );
    }
}
