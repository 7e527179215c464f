//! Agent and task ids, validated once where they enter (a packet, a CLI argument, a library
//! call, a guest's recipient) and carried as types from there, so no backend checks them again.
//!
//! An id is 1 to [`MAX_ID_LEN`] letters, digits, `.`, `_` and `-`, not starting with `.`. Ids
//! are interpolated into state keys (`agent:{id}:lock`), ledger rows and file names, so nothing
//! that could forge another key (`:`), break a line or leave a directory is accepted.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest agent or task id.
pub const MAX_ID_LEN: usize = 64;

/// An id that is not an agent or task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id `{id}`: {reason}")]
pub struct IdError {
    /// `agent` or `task`.
    pub kind: &'static str,
    /// The id as given (escaped for display).
    pub id: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

fn check(kind: &'static str, id: &str) -> Result<(), IdError> {
    let error = |reason: String| IdError {
        kind,
        id: id.escape_debug().to_string(),
        reason,
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(error(format!(
            "it is {} bytes; ids are 1 to {MAX_ID_LEN} letters, digits, `.`, `_` and `-`",
            id.len()
        )));
    }
    if id.starts_with('.') {
        return Err(error("ids must not start with `.`".into()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(error(format!(
            "it contains `{}`; only letters, digits, `.`, `_` and `-` are accepted",
            c.escape_debug()
        )));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validate `id`.
            pub fn new(id: &str) -> Result<$name, IdError> {
                check($kind, id)?;
                Ok($name(Arc::from(id)))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are those of the string, so maps keyed by ids are looked up by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(&s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl From<&$name> for Arc<str> {
            fn from(id: &$name) -> Arc<str> {
                id.0.clone()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }
    };
}

id_type!(
    /// An agent's id (`planner-1`): its registration in the ledger and its keys in the state
    /// store (`agent:{id}:*`).
    AgentId,
    "agent"
);

id_type!(
    /// A task's id (`deploy-42`): the artifacts, blackboard and messages its agents share.
    TaskId,
    "task"
);

/// A run's id: `run-` and 32 lowercase hex digits of a UUIDv7, so ids sort by the time the
/// run began. Every ledger row of the run carries it, and so do its journal and its `runs` row.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(Arc<str>);

/// The prefix of every [`RunId`].
const RUN_PREFIX: &str = "run-";

impl RunId {
    /// A new id, ordered after every id this process made before.
    pub fn generate() -> RunId {
        RunId(Arc::from(format!(
            "{RUN_PREFIX}{}",
            uuid::Uuid::now_v7().simple()
        )))
    }

    /// Validate `id`: `run-` and 32 lowercase hex digits.
    pub fn new(id: &str) -> Result<RunId, IdError> {
        let hex = id.strip_prefix(RUN_PREFIX);
        let ok = hex.is_some_and(|h| {
            h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !ok {
            return Err(IdError {
                kind: "run",
                id: crate::text::clip(&id.escape_debug().to_string(), 80),
                reason: "run ids are `run-` and 32 lowercase hex digits, as `warden run` and `warden runs list` print them".into(),
            });
        }
        Ok(RunId(Arc::from(id)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for RunId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        RunId::new(s)
    }
}

impl TryFrom<String> for RunId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        RunId::new(&s)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0.to_string()
    }
}

impl From<&RunId> for Arc<str> {
    fn from(id: &RunId) -> Arc<str> {
        id.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_forge_keys_or_lines_are_refused() {
        assert_eq!(
            AgentId::new("planner-1.a_b").unwrap().as_str(),
            "planner-1.a_b"
        );
        for (bad, reason) in [
            ("", "it is 0 bytes"),
            ("a:lock", "it contains `:`"),
            ("a b", "it contains ` `"),
            ("a\nb", "it contains `\\n`"),
            (".hidden", "must not start with `.`"),
        ] {
            let err = AgentId::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid agent id `"), "{err}");
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(
            TaskId::new(&long)
                .unwrap_err()
                .to_string()
                .contains("it is 65 bytes")
        );
    }

    #[test]
    fn ids_round_trip_through_serde_and_refuse_bad_input() {
        let id: TaskId = serde_json::from_str("\"t-1\"").unwrap();
        assert_eq!(id, "t-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"t-1\"");
        let err = serde_json::from_str::<TaskId>("\"t:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid task id `t:1`"), "{err}");
    }

    #[test]
    fn run_ids_are_generated_in_order_and_validated() {
        let a = RunId::generate();
        let b = RunId::generate();
        assert!(a < b, "{a} then {b}");
        assert_eq!(RunId::new(a.as_str()).unwrap(), a);
        for bad in [
            "",
            "run-",
            "run-XYZ",
            "0192f1",
            &format!("{a}0"),
            &a.as_str().to_uppercase(),
        ] {
            let err = RunId::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid run id `"), "{bad:?}: {err}");
            assert!(err.contains("32 lowercase hex digits"), "{err}");
        }
    }
}
