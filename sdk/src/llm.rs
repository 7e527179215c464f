//! Chat completions. Available from T0, within the tier's model allowlist and the task's
//! token budget.

use crate::Error;
use crate::bindings::warden::agent::llm as wit;

pub use wit::{Completion, CompletionRequest, Message, Role};

impl Message {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

impl CompletionRequest {
    /// A request for the host's default model, with its default limits.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            model: None,
            messages,
            max_tokens: None,
            temperature: None,
        }
    }

    /// Asks for `model` instead of the host's default; it must be allowed for the tier.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Caps the completion at `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }
}

/// Runs a chat completion.
pub fn complete(request: &CompletionRequest) -> Result<Completion, Error> {
    Ok(wit::complete(request)?)
}

/// Asks the default model one question. The answer is the whole [`Completion`]: it reads as
/// its text (`&answer`, `answer.trim()`: it derefs to `str`) and keeps the model and the tokens
/// it cost.
pub fn ask(system: &str, user: &str) -> Result<Completion, Error> {
    let request = CompletionRequest::new(vec![Message::system(system), Message::user(user)]);
    complete(&request)
}

impl Completion {
    /// Tokens the completion cost: the prompt's and the answer's.
    pub fn tokens(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl std::ops::Deref for Completion {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
