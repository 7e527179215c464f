//! Secrets: an operator-written store, read by agents through per-run sessions.
//!
//! Which paths a tier may read is decided by the caller from the tier table before any read
//! reaches a backend; the backend is the second line of defence (for Vault, the policy
//! attached to the AppRole), so the embedded backend enforces none of its own.
//!
//! Values never appear in `Debug` output, errors or logs; only paths do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::tier::Tier;

mod embedded;
pub mod vault;

pub use embedded::EmbeddedSecrets;
pub use vault::{VaultConfig, VaultSecrets};

/// Longest accepted secret path, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// Why a secrets operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    #[error(
        "invalid secret path `{path}`: {problem}; expected `/`-separated segments of `a-z`, `0-9`, `_` and `-`, at most {MAX_PATH_LEN} bytes"
    )]
    /// A path that breaks [`validate_path`]'s rules.
    InvalidPath {
        /// The path given.
        path: String,
        /// Which rule it breaks.
        problem: String,
    },
    #[error(
        "invalid secrets session ttl `{ttl:?}`: expected more than zero and less than a century"
    )]
    /// A session TTL of zero, or longer than a century.
    InvalidTtl {
        /// The TTL asked for.
        ttl: Duration,
    },
    /// The session was revoked (the agent was revoked or its run ended).
    #[error("the secrets session was revoked")]
    Revoked,
    /// The session outlived its TTL; the agent must be logged in again.
    #[error("the secrets session expired")]
    Expired,
    /// The backend itself refused the session this path (Vault: the token's policies do
    /// not grant it), after the caller's tier check let it through.
    #[error("the {backend} secret backend denied access to secret `{path}`")]
    Denied {
        /// The backend's name (`vault`).
        backend: &'static str,
        /// The secret path asked for.
        path: String,
    },
    #[error(
        "secrets file `{path}` is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`",
        path = .path.display()
    )]
    /// The embedded secrets file can be read or written by group or others.
    InsecurePermissions {
        /// The secrets file.
        path: PathBuf,
        /// Its permission bits (`0o644`).
        mode: u32,
    },
    #[error(
        "secrets file `{path}` is not a secrets file: {problem}; expected {{\"version\":1,\"secrets\":{{\"<path>\":\"<value>\"}}}}",
        path = .path.display()
    )]
    /// The embedded secrets file does not have the expected JSON shape.
    Corrupt {
        /// The secrets file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    #[error("cannot {action} secrets file `{path}`: {source}", path = .path.display())]
    /// A file of the backend cannot be read or written.
    Io {
        /// What was being done (`open`, `read`, `create`, `write`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The backend failed or is unreachable.
    #[error("the {backend} secret backend failed: {source}")]
    Backend {
        /// The backend's name (`embedded`, `vault`).
        backend: &'static str,
        /// What failed: the Vault client's error, or the embedded store's worker.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The backend's circuit breaker is open after failures in a row: the call was not
    /// attempted. It is let through again once the breaker's cool-down has passed.
    #[error("the {backend} secret backend at `{location}` is unavailable ({reason})")]
    Unavailable {
        /// The backend's name (`vault`).
        backend: &'static str,
        /// The backend's address.
        location: String,
        /// The failures that opened the breaker and when it lets a call through again.
        reason: crate::breaker::CircuitOpen,
    },
}

/// Check a secret path: `[a-z0-9_-]+` segments separated by `/`, no empty segments (so no
/// leading, trailing or doubled `/`), at most [`MAX_PATH_LEN`] bytes. `.` is not a path
/// character, so `..` cannot occur. Every backend validates with this, so a path means the
/// same thing in the tier table, the embedded file and Vault.
pub fn validate_path(path: &str) -> Result<(), SecretsError> {
    let invalid = |problem: String| SecretsError::InvalidPath {
        path: path.to_string(),
        problem,
    };
    if path.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(invalid(format!("it is {} bytes long", path.len())));
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(invalid("it has an empty segment".into()));
        }
        if segment == ".." || segment == "." {
            return Err(invalid(format!("it has a `{segment}` segment")));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(invalid(format!("it contains `{}`", c.escape_default())));
        }
    }
    Ok(())
}

/// A secret store: operators write, agents read through a [`SecretSession`].
#[async_trait]
pub trait SecretBackend: Send + Sync + 'static {
    /// Backend name for logs and `warden status`: `"embedded"`, later `"vault"`.
    fn backend(&self) -> &'static str;

    /// Log an agent in for `ttl` (Vault: AppRole login; the token TTL is its tier's).
    /// Called once at BOOTSTRAP; the session lives as long as the run.
    async fn login(
        &self,
        agent: &str,
        tier: Tier,
        ttl: Duration,
    ) -> Result<Arc<dyn SecretSession>, SecretsError>;

    /// Create or move `agent`'s backend identity to `tier`, with sessions lasting `ttl`
    /// (Vault: the agent's AppRole role and policies). A backend without identities of its
    /// own has nothing to do.
    async fn bind_agent(
        &self,
        _agent: &str,
        _tier: Tier,
        _ttl: Duration,
    ) -> Result<(), SecretsError> {
        Ok(())
    }

    /// A cheap liveness probe (`warden health`). The default lists paths; Vault asks
    /// `sys/health`.
    async fn health(&self) -> Result<(), SecretsError> {
        self.list().await.map(drop)
    }

    /// The circuit breaker's state, for backends that have one (Vault). Reads no network.
    fn breaker(&self) -> Option<crate::breaker::BreakerStatus> {
        None
    }

    /// Operator write (CLI `warden secrets set`, demo setup). Not reachable from agents.
    async fn put(&self, path: &str, value: &str) -> Result<(), SecretsError>;

    /// Every stored path, sorted; never values.
    async fn list(&self) -> Result<Vec<String>, SecretsError>;
}

/// One agent run's access to secrets.
#[async_trait]
pub trait SecretSession: Send + Sync {
    /// The value at `path`, if any. Backends serve repeated reads from memory within the
    /// session (Vault: never a network call per read).
    async fn read(&self, path: &str) -> Result<Option<String>, SecretsError>;

    /// End the session now; every later read fails with [`SecretsError::Revoked`].
    async fn revoke(&self) -> Result<(), SecretsError>;

    /// Reads from this instant on fail with [`SecretsError::Expired`].
    fn expires_at(&self) -> SystemTime;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_lowercase_segments() {
        for ok in ["db", "db/password", "llm/openai-key", "a_b/c-d/0"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_PATH_LEN + 1);
        for (bad, problem) in [
            ("", "it is empty"),
            ("/db", "it has an empty segment"),
            ("db/", "it has an empty segment"),
            ("db//x", "it has an empty segment"),
            ("db/../x", "it has a `..` segment"),
            ("DB", "it contains `D`"),
            ("db.password", "it contains `.`"),
            ("db\npassword", "it contains `\\n`"),
            (long.as_str(), "it is 257 bytes long"),
        ] {
            let err = validate_path(bad).unwrap_err();
            assert!(
                matches!(&err, SecretsError::InvalidPath { problem: p, .. } if p == problem),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            validate_path("a b").unwrap_err().to_string(),
            "invalid secret path `a b`: it contains ` `; expected `/`-separated segments of `a-z`, `0-9`, `_` and `-`, at most 256 bytes"
        );
    }
}
