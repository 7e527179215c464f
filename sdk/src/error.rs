//! Error types: [`Error`] for refused capability calls, [`AgentError`] for a failed phase.

use std::fmt;

use crate::bindings::warden::agent::types::Error as WitError;

/// Why a capability call did not happen.
///
/// Mirrors the WIT `error` variant. Every message is written by the host and names what was
/// refused, why, and what would allow it, so it is fit to show to a human as is.
///
/// Note that the host counts refused calls against the agent's error budget: an agent that
/// retries a denied call in a loop is revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The call is above the agent's tier, outside its packet's scope, or forbidden.
    Denied(String),
    /// The agent has been revoked; nothing more will be allowed.
    Revoked(String),
    /// The agent's error budget, the task's token budget or one of the tier's quotas (ledger
    /// notes, artifacts, state, blackboard, messages) is spent.
    BudgetExhausted(String),
    /// The named item does not exist.
    NotFound(String),
    /// An argument was malformed.
    Invalid(String),
    /// A backend (LLM endpoint, tool, store) could not serve the call.
    Unavailable(String),
}

impl Error {
    /// The host's explanation, without the kind prefix that [`Display`](fmt::Display) adds.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m)
            | Self::Revoked(m)
            | Self::BudgetExhausted(m)
            | Self::NotFound(m)
            | Self::Invalid(m)
            | Self::Unavailable(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::Denied(_) => "denied",
            Self::Revoked(_) => "revoked",
            Self::BudgetExhausted(_) => "budget exhausted",
            Self::NotFound(_) => "not found",
            Self::Invalid(_) => "invalid argument",
            Self::Unavailable(_) => "unavailable",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(error: WitError) -> Self {
        match error {
            WitError::Denied(m) => Self::Denied(m),
            WitError::Revoked(m) => Self::Revoked(m),
            WitError::BudgetExhausted(m) => Self::BudgetExhausted(m),
            WitError::NotFound(m) => Self::NotFound(m),
            WitError::Invalid(m) => Self::Invalid(m),
            WitError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

/// The failure of a lifecycle phase, returned from an [`Agent`](crate::Agent) method.
///
/// The host records the message in the ledger and counts the failure against the agent's
/// error budget. Build one from a capability [`Error`] (usually with `?`), a `String` or a
/// `&str`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentError {
    message: String,
}

impl AgentError {
    /// An error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message the host will record.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Consumes the error, returning its message.
    pub fn into_message(self) -> String {
        self.message
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentError {}

impl From<Error> for AgentError {
    fn from(error: Error) -> Self {
        Self::new(error.to_string())
    }
}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for AgentError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}
