//! Named secrets, scoped by tier. Available from T3.
//!
//! A secret the tier binds to hosts (`[tiers.T3.secrets] bound = { "t3/github-token" =
//! ["https://api.github.com"] }`) is returned as a placeholder (`warden-secret:…`), never its
//! value: put it in a header of an [`http`](crate::http) request to one of those hosts and the
//! host sends the value. The placeholder sent anywhere else (another host, a URL or body, a
//! tool argument, a message, an artifact, a prompt) is refused as a procedure violation.

use std::fmt;

use crate::Error;
use crate::bindings::warden::agent::secrets as wit;

/// A secret value. Its `Debug` output is redacted so it does not end up in logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value (the placeholder, for a secret bound to hosts).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Consumes the wrapper, returning the secret value.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads the secret at `path` (for example `t3/staging/db-password`).
pub fn get(path: &str) -> Result<Secret, Error> {
    Ok(Secret(wit::get(path)?))
}
