//! Runtime state: packets, checkpoints, error budgets, heartbeats, locks, revocations.
//!
//! Every backend stores the same logical keyspace, the one of the Redis/DragonflyDB deployment
//! this runtime replaces, so a Redis backend is a direct mapping and operators can inspect
//! either with the same mental model:
//!
//! | key                        | type          | contents                                          |
//! |----------------------------|---------------|---------------------------------------------------|
//! | `agent:{id}:packet`        | string        | the agent's packet (JSON)                         |
//! | `agent:{id}:state`         | hash          | `checkpoint` = last lifecycle checkpoint (JSON); `kv:<key>` = the agent's own state |
//! | `agent:{id}:errors`        | hash          | `total`, `procedure`, `same:<signature>` counters |
//! | `agent:{id}:heartbeat`     | string + TTL  | wall-clock milliseconds of the last beat          |
//! | `agent:{id}:lock`          | string + TTL  | owner token                                       |
//! | `task:{id}:active_agent`   | string        | agent id                                          |
//! | `task:{id}:artifacts`      | list          | artifact references (JSON), oldest first (RPUSH)  |
//! | `task:{id}:approval`       | string        | approval gate record (JSON)                       |
//! | `handoff:{task}:latest`    | string        | latest handoff (JSON)                             |
//! | `revocations:ledger`       | list          | revocation records (JSON), newest first (LPUSH)   |
//! | `revocations:by_agent`     | hash          | agent id → its latest revocation record (JSON)    |
//!
//! The blackboard, messages and consensus of multi-agent tasks (`blackboard:{task}:*`,
//! `msg:{task}:*`) are the [`Coordination`] half of the trait; see [`coordination`].
//!
//! `task:{id}:approval` and `revocations:by_agent` are ours. The index exists because the
//! reference answered "is this agent revoked?" by scanning the last 50 ledger entries, so an
//! agent revoked before 50 others was silently un-revoked.
//!
//! Agent and task ids are interpolated into keys, so backends reject ids that could forge
//! another key (see [`validate_id`]).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub mod conformance;
pub mod coordination;
mod embedded;
pub mod memory;
pub mod redis;

pub use coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, ProposalRecord,
    Resolution, ResolveOutcome, Section, Tally, Vote, VoteChoice,
};
pub use embedded::EmbeddedState;
pub use memory::MemoryState;
pub use redis::RedisState;

/// Boxed error of a backend's client library, kept as the `source` of [`StateError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// An agent or task id that cannot be used in a key.
    #[error(
        "invalid {kind} id `{id}`: expected 1 to {MAX_ID_LEN} bytes without `:`, whitespace or control characters"
    )]
    InvalidId { kind: &'static str, id: String },
    /// A lock owner token that cannot be stored.
    #[error(
        "invalid lock owner `{owner}`: expected 1 to {MAX_ID_LEN} bytes without control characters"
    )]
    InvalidOwner { owner: String },
    /// A TTL the backend cannot express.
    #[error("invalid {what} ttl `{ttl:?}`: expected at least 1 ms")]
    InvalidTtl { what: &'static str, ttl: Duration },
    /// A stored value that does not have the shape this module writes.
    #[error("corrupt value in `{key}`: {message}")]
    Corrupt { key: String, message: String },
    /// The store could not be opened.
    #[error("cannot open the {backend} state store at `{location}`: {source}")]
    Open {
        backend: &'static str,
        location: String,
        source: BoxError,
    },
    /// The store failed or is unreachable.
    #[error("the {backend} state store failed: {source}")]
    Backend {
        backend: &'static str,
        source: BoxError,
    },
    /// The store's circuit breaker is open after failures in a row: the call was not
    /// attempted. It is let through again once the breaker's cool-down has passed.
    #[error("the {backend} state store at `{location}` is unavailable ({reason})")]
    Unavailable {
        backend: &'static str,
        location: String,
        reason: crate::breaker::CircuitOpen,
    },
}

impl StateError {
    /// Whether the store could not be reached or did not work (as opposed to a request it
    /// refused): [`StateError::Backend`] and [`StateError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StateError::Backend { .. } | StateError::Unavailable { .. }
        )
    }
}

/// Longest agent id, task id or lock owner accepted by [`validate_id`].
pub const MAX_ID_LEN: usize = 128;

/// Check that an agent or task id can be interpolated into a key: 1 to [`MAX_ID_LEN`] bytes,
/// no `:` (which would let `a:lock` address another agent's keys), no whitespace or control
/// characters. Every backend calls this before touching a key. `kind` names the id in errors.
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId {
            kind,
            id: id.to_string(),
        })
    }
}

/// Check a lock owner token: 1 to [`MAX_ID_LEN`] bytes without control characters.
pub fn validate_owner(owner: &str) -> Result<(), StateError> {
    if owner.is_empty() || owner.len() > MAX_ID_LEN || owner.chars().any(char::is_control) {
        return Err(StateError::InvalidOwner {
            owner: owner.to_string(),
        });
    }
    Ok(())
}

/// A TTL in whole milliseconds, the unit both SQLite rows and Redis `PX` use.
/// Sub-millisecond TTLs are refused rather than rounded to a lock that never exists.
pub fn ttl_millis(what: &'static str, ttl: Duration) -> Result<i64, StateError> {
    match i64::try_from(ttl.as_millis()) {
        Ok(ms) if ms >= 1 => Ok(ms),
        Ok(_) => Err(StateError::InvalidTtl { what, ttl }),
        Err(_) => Ok(i64::MAX / 4),
    }
}

/// Key and field names of the shared keyspace, for every backend.
pub mod keys {
    /// Hash field of `agent:{id}:state` holding the last checkpoint.
    pub const CHECKPOINT_FIELD: &str = "checkpoint";
    /// Prefix of `agent:{id}:state` fields holding the agent's own key/value state.
    pub const KV_PREFIX: &str = "kv:";
    /// Counter field of `agent:{id}:errors`: every error.
    pub const TOTAL_FIELD: &str = "total";
    /// Counter field of `agent:{id}:errors`: procedure violations.
    pub const PROCEDURE_FIELD: &str = "procedure";
    /// Prefix of `agent:{id}:errors` counter fields per error signature.
    pub const SAME_PREFIX: &str = "same:";
    /// List of revocation records, newest first.
    pub const REVOCATIONS_LEDGER: &str = "revocations:ledger";
    /// Hash: agent id → its latest revocation record.
    pub const REVOCATIONS_BY_AGENT: &str = "revocations:by_agent";

    pub fn packet(agent: &str) -> String {
        format!("agent:{agent}:packet")
    }
    pub fn state(agent: &str) -> String {
        format!("agent:{agent}:state")
    }
    pub fn errors(agent: &str) -> String {
        format!("agent:{agent}:errors")
    }
    pub fn heartbeat(agent: &str) -> String {
        format!("agent:{agent}:heartbeat")
    }
    pub fn lock(agent: &str) -> String {
        format!("agent:{agent}:lock")
    }
    pub fn active_agent(task: &str) -> String {
        format!("task:{task}:active_agent")
    }
    pub fn artifacts(task: &str) -> String {
        format!("task:{task}:artifacts")
    }
    pub fn approval(task: &str) -> String {
        format!("task:{task}:approval")
    }
    pub fn handoff(task: &str) -> String {
        format!("handoff:{task}:latest")
    }
}

/// An agent's error budget use, read from `agent:{id}:errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Every recorded error.
    pub total: u32,
    /// Errors recorded as procedure violations (also counted in `total`).
    pub procedure: u32,
    /// The highest count of any single error signature.
    pub max_same: u32,
    /// The signature with that count; ties go to the smallest signature so every backend agrees.
    pub worst_signature: Option<String>,
}

impl ErrorCounts {
    /// Fold the fields of an `agent:{id}:errors` hash (as Redis `HGETALL` returns them) into
    /// counts. Unknown fields are ignored; counters above `u32::MAX` saturate.
    pub fn from_fields<F, V>(
        key: &str,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> Result<ErrorCounts, StateError>
    where
        F: AsRef<str>,
        V: AsRef<str>,
    {
        let mut counts = ErrorCounts::default();
        for (field, value) in fields {
            let (field, value) = (field.as_ref(), value.as_ref());
            let counter = field == keys::TOTAL_FIELD
                || field == keys::PROCEDURE_FIELD
                || field.starts_with(keys::SAME_PREFIX);
            if !counter {
                continue;
            }
            let n: u64 = value.parse().map_err(|_| StateError::Corrupt {
                key: key.to_string(),
                message: format!(
                    "field `{field}` holds `{value}`, expected a non-negative integer"
                ),
            })?;
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            if field == keys::TOTAL_FIELD {
                counts.total = n;
            } else if field == keys::PROCEDURE_FIELD {
                counts.procedure = n;
            } else if let Some(signature) = field.strip_prefix(keys::SAME_PREFIX) {
                let better = match &counts.worst_signature {
                    None => true,
                    Some(worst) => {
                        n > counts.max_same || (n == counts.max_same && signature < worst.as_str())
                    }
                };
                if better {
                    counts.max_same = n;
                    counts.worst_signature = Some(signature.to_string());
                }
            }
        }
        Ok(counts)
    }
}

/// One lifecycle transition, applied atomically by [`StateStore::transition`].
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    pub agent: &'a str,
    /// The run's lock owner token.
    pub owner: &'a str,
    /// New lock TTL, from now.
    pub lock_ttl: Duration,
    /// New heartbeat TTL, from now.
    pub heartbeat_ttl: Duration,
    /// Checkpoint to store in `agent:{id}:state` field `checkpoint`.
    pub checkpoint_json: &'a str,
}

/// What [`StateStore::transition`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionResult {
    /// Whether `owner` still held the lock. When false nothing was written.
    pub lock_held: bool,
    /// The agent's error counts, read in the same step.
    pub errors: ErrorCounts,
}

/// Outcome of [`StateStore::acquire_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The caller now holds the lock (or already did, and its TTL was renewed).
    Acquired,
    /// Someone else holds a live lock.
    Held { owner: String },
}

/// Runtime state shared by every run on this host (and, with a shared backend, every host).
///
/// Ids are checked with [`validate_id`]; values are opaque strings (the callers store JSON).
/// Expired heartbeats and locks read as absent.
#[async_trait]
pub trait StateStore: Coordination + Send + Sync + 'static {
    /// Backend name for logs and health output: `"memory"`, `"embedded"`, later `"redis"`.
    fn backend(&self) -> &'static str;

    /// Store the agent's packet (replacing any previous one).
    async fn put_packet(&self, agent: &str, packet_json: &str) -> Result<(), StateError>;
    async fn packet(&self, agent: &str) -> Result<Option<String>, StateError>;
    /// The last checkpoint written by [`StateStore::transition`].
    async fn checkpoint(&self, agent: &str) -> Result<Option<String>, StateError>;

    async fn kv_get(&self, agent: &str, key: &str) -> Result<Option<String>, StateError>;
    async fn kv_set(&self, agent: &str, key: &str, value: &str) -> Result<(), StateError>;
    /// Whether the key existed.
    async fn kv_delete(&self, agent: &str, key: &str) -> Result<bool, StateError>;
    /// The agent's keys, sorted.
    async fn kv_keys(&self, agent: &str) -> Result<Vec<String>, StateError>;

    /// Count one error (and one procedure violation if `procedure`) atomically, so concurrent
    /// callers never lose an increment; returns the counts after it.
    async fn record_error(
        &self,
        agent: &str,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError>;
    async fn error_counts(&self, agent: &str) -> Result<ErrorCounts, StateError>;
    async fn reset_errors(&self, agent: &str) -> Result<(), StateError>;

    /// Record that the agent is alive for the next `ttl`.
    async fn heartbeat(&self, agent: &str, ttl: Duration) -> Result<(), StateError>;
    /// When the agent last beat; `None` once that beat's TTL passed.
    async fn last_heartbeat(&self, agent: &str) -> Result<Option<SystemTime>, StateError>;

    /// Take the agent's lock for `ttl` unless another owner holds a live one. An expired lock
    /// is taken over; re-acquiring a lock the caller holds renews it (so a retried request
    /// whose first reply was lost does not contend with itself).
    async fn acquire_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt, StateError>;
    /// Extend the lock to `ttl` from now; false unless `owner` holds it and it is live.
    async fn refresh_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StateError>;
    /// Release the lock; false unless `owner` holds it and it is live.
    async fn release_lock(&self, agent: &str, owner: &str) -> Result<bool, StateError>;
    /// The owner of the live lock, if any.
    async fn lock_owner(&self, agent: &str) -> Result<Option<String>, StateError>;

    /// One lifecycle transition in one round trip: lock refresh (owner-checked), then — only
    /// if the lock is still held — heartbeat and checkpoint write; then the error-budget read.
    /// A run that lost its lock writes nothing, so it can neither overwrite the new holder's
    /// checkpoint nor claim the agent is alive on its behalf.
    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError>;

    async fn set_active_agent(&self, task: &str, agent: &str) -> Result<(), StateError>;
    async fn active_agent(&self, task: &str) -> Result<Option<String>, StateError>;

    /// Append an artifact reference to the task.
    async fn push_artifact(&self, task: &str, artifact_json: &str) -> Result<(), StateError>;
    /// The task's artifact references, oldest first.
    async fn artifacts(&self, task: &str) -> Result<Vec<String>, StateError>;

    /// Prepend to `revocations:ledger` and index the record under the agent, atomically.
    async fn record_revocation(&self, agent: &str, revocation_json: &str)
    -> Result<(), StateError>;
    /// The agent's latest revocation record, if it was ever revoked. Never scans the ledger.
    async fn revocation(&self, agent: &str) -> Result<Option<String>, StateError>;
    /// Up to `limit` revocation records, newest first.
    async fn revocations(&self, limit: usize) -> Result<Vec<String>, StateError>;

    async fn put_handoff(&self, task: &str, handoff_json: &str) -> Result<(), StateError>;
    async fn handoff(&self, task: &str) -> Result<Option<String>, StateError>;

    async fn put_approval(&self, task: &str, approval_json: &str) -> Result<(), StateError>;
    async fn approval(&self, task: &str) -> Result<Option<String>, StateError>;

    /// Revocations recorded by any host sharing this backend, pushed as agent ids, when the
    /// backend can push them (Redis publish/subscribe). `None`: the host polls `revocation`.
    fn revocation_events(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }

    /// A cheap liveness probe (`warden health`): one read round trip.
    async fn health(&self) -> Result<(), StateError> {
        self.revocations(1).await.map(drop)
    }

    /// The circuit breaker's state, for backends that have one (Redis). Reads no network.
    fn breaker(&self) -> Option<crate::breaker::BreakerStatus> {
        None
    }
}

/// The key of a validated agent id (`keys::packet`, `keys::lock`, …), shared by backends
/// that store the reference keyspace as keys.
pub(crate) fn agent_key(agent: &str, key: fn(&str) -> String) -> Result<String, StateError> {
    validate_id("agent", agent)?;
    Ok(key(agent))
}

/// The key of a validated task id.
pub(crate) fn task_key(task: &str, key: fn(&str) -> String) -> Result<String, StateError> {
    validate_id("task", task)?;
    Ok(key(task))
}

/// The `agent:{id}:state` field of an agent's own key.
pub(crate) fn kv_field(key: &str) -> String {
    format!("{}{key}", keys::KV_PREFIX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_forge_keys_are_rejected() {
        assert!(validate_id("agent", "planner-1.a_b").is_ok());
        for bad in ["", "a:lock", "a b", "a\n", &"x".repeat(MAX_ID_LEN + 1)] {
            let err = validate_id("agent", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid agent id `"), "{err}");
        }
        assert!(validate_owner("host-1:run-2").is_ok());
        assert!(validate_owner("").is_err());
    }

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(ttl_millis("lock", Duration::from_millis(150)).unwrap(), 150);
        let err = ttl_millis("lock", Duration::from_micros(999))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid lock ttl `999µs`: expected at least 1 ms");
        assert!(ttl_millis("lock", Duration::MAX).unwrap() > 0);
    }

    #[test]
    fn error_counts_fold_hash_fields() {
        let fields = [
            ("total", "5"),
            ("procedure", "1"),
            ("same:b", "2"),
            ("same:a", "2"),
            ("same:c", "1"),
            ("other", "not a counter"),
        ];
        let counts = ErrorCounts::from_fields("agent:x:errors", fields).unwrap();
        assert_eq!(
            counts,
            ErrorCounts {
                total: 5,
                procedure: 1,
                max_same: 2,
                worst_signature: Some("a".into()),
            }
        );
        let err = ErrorCounts::from_fields("agent:x:errors", [("total", "x")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt value in `agent:x:errors`: field `total` holds `x`, expected a non-negative integer"
        );
    }
}
