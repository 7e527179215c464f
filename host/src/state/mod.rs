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
//! | `agent:{id}:state_usage`   | hash          | `entries`, `bytes` of the agent's `kv:` fields (its state quota) |
//! | `agent:{id}:errors`        | hash          | `total`, `procedure`, `same:<signature>` counters |
//! | `agent:{id}:heartbeat`     | string + TTL  | wall-clock milliseconds of the last beat          |
//! | `agent:{id}:lock`          | string + TTL  | owner token                                       |
//! | `task:{id}:active_agent`   | string        | agent id                                          |
//! | `task:{id}:artifacts`      | list          | artifact references (JSON), oldest first (RPUSH): the history |
//! | `task:{id}:artifact_index` | hash          | artifact name → its latest reference (JSON)       |
//! | `task:{id}:artifact_names` | sorted set    | artifact names, all of score 0, paged by name (`ZRANGEBYLEX`) |
//! | `task:{id}:artifact_usage` | hash          | `entries` = distinct names, `bytes` = content of every version |
//! | `task:{id}:approval`       | string        | approval gate record (JSON)                       |
//! | `pipeline:{run}:gate:{stage}:{round}` | string | a pipeline gate's decision, set once (JSON) |
//! | `task:{id}:tokens`         | string        | LLM tokens the task has spent (counter)           |
//! | `handoff:{task}:latest`    | string        | latest handoff (JSON)                             |
//! | `revocations:ledger`       | list          | revocation records (JSON), newest first (LPUSH)   |
//! | `revocations:by_agent`     | hash          | agent id → its latest revocation record (JSON)    |
//! | `run:{id}:receipt`         | string        | the run's last effect: its call and answer, until the run ends |
//!
//! The blackboard, messages and consensus of multi-agent tasks (`blackboard:{task}:*`,
//! `msg:{task}:*`) are the [`Coordination`] half of the trait; see [`coordination`].
//!
//! `task:{id}:approval`, `revocations:by_agent`, the artifact index and the usage hashes are
//! ours. The revocation index exists because the reference answered "is this agent
//! revoked?" by scanning the last 50 ledger entries, so an agent revoked before 50 others was
//! silently un-revoked. The artifact index exists because a task's history grows with every
//! put: looking a name up, or listing the latest version of each, must not read it whole
//! (a task of tens of thousands of artifacts made every run of it read them all). The
//! history list stays, written in the same step, for audits and operators.
//!
//! Effects happen once: a write a guest asks for carries the [`Once`] of its call, and the
//! backend stores the call's receipt (`run:{id}:receipt`) in the same atomic step as the
//! write; the same call again is answered from the receipt and writes nothing. A run killed
//! between a write and the ledger commit of its journal record makes the same call on
//! resume, and so does not write twice.
//!
//! Writes an agent asks for are bounded by [`Quota`]s (its state; its task's artifacts,
//! blackboard and messages), checked and counted in the usage hashes in the same atomic step
//! as the write; see [`quota`].
//!
//! The trait is typed: ids are [`AgentId`] and [`TaskId`] (validated where they entered, so
//! they cannot forge another key), TTLs are [`Ttl`] and lock owners [`LockOwner`] (validated
//! when made), and records are the documents themselves ([`Packet`], [`Revocation`],
//! [`ArtifactRef`], …). A backend that stores text serializes them with [`encode`] and reads
//! them with [`decode`], so a stored value that does not parse is a [`StateError::Corrupt`]
//! naming its key, never a row silently skipped.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::artifacts::ArtifactRef;
pub use crate::id::{AgentId, RunId, TaskId};
pub use crate::packet::{Approval, Checkpoint, GateDecision, Handoff, Packet, Revocation};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod coordination;
mod embedded;
pub mod memory;
pub mod quota;
pub mod redis;

pub use coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, ProposalRecord,
    Resolution, ResolveOutcome, Section, Tally, Vote, VoteChoice,
};
pub use embedded::EmbeddedState;
pub use memory::MemoryState;
pub use quota::{Admission, Bound, OverQuota, Quota, Usage};
pub use redis::RedisState;

/// Boxed error of a backend's client library, kept as the `source` of [`StateError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A lock owner token that cannot be stored.
    #[error(
        "invalid lock owner `{owner}`: expected 1 to {MAX_OWNER_LEN} bytes without control characters"
    )]
    InvalidOwner {
        /// The token, with control characters escaped.
        owner: String,
    },
    /// A TTL the backend cannot express.
    #[error("invalid {what} ttl `{ttl:?}`: expected at least 1 ms")]
    InvalidTtl {
        /// What the TTL is for (`lock`, `heartbeat`).
        what: &'static str,
        /// The TTL asked for.
        ttl: Duration,
    },
    /// A stored value that does not have the shape this module writes.
    #[error("corrupt value in `{key}`: {message}")]
    Corrupt {
        /// The key (with `[index]` for a list element) holding the value.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// The store could not be opened.
    #[error("cannot open the {backend} state store at `{location}`: {source}")]
    Open {
        /// The backend's name (`embedded`, `redis`).
        backend: &'static str,
        /// Where it was opened: a file path, `:memory:`, or a Redis address with the password
        /// redacted.
        location: String,
        /// The client library's error.
        source: BoxError,
    },
    /// The store failed or is unreachable.
    #[error("the {backend} state store failed: {source}")]
    Backend {
        /// The backend's name (`embedded`, `redis`).
        backend: &'static str,
        /// The client library's error.
        source: BoxError,
    },
    /// The store's circuit breaker is open after failures in a row: the call was not
    /// attempted. It is let through again once the breaker's cool-down has passed.
    #[error("the {backend} state store at `{location}` is unavailable ({reason})")]
    Unavailable {
        /// The backend's name (`redis`).
        backend: &'static str,
        /// The store's address (`host:port/db`).
        location: String,
        /// The failures that opened the breaker and when it lets a call through again.
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

/// Longest lock owner token accepted by [`LockOwner::new`].
pub const MAX_OWNER_LEN: usize = 128;

/// A lock owner token (`<host>:<run>`): 1 to [`MAX_OWNER_LEN`] bytes without control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockOwner(String);

impl LockOwner {
    /// Validate an owner token.
    pub fn new(owner: impl Into<String>) -> Result<LockOwner, StateError> {
        let owner = owner.into();
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
            return Err(StateError::InvalidOwner {
                owner: owner.escape_debug().to_string(),
            });
        }
        Ok(LockOwner(owner))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LockOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One call of one run, given to a write so it happens at most once.
///
/// A backend given a `Once` stores a receipt under `run:{id}:receipt` — the call's token and
/// what the write answered — in the same atomic step as the write (one SQLite transaction,
/// one Redis script). A write whose token is the receipt's is not made again: it answers what
/// the first one did. A run has one receipt, replaced by each of its writes: its calls are
/// sequential and the journal record of each write is committed before the next call starts,
/// so only a run's last write can be missing from its journal (killed between the write and
/// that commit); its resume makes that call first and finds its receipt.
/// [`StateStore::forget_receipt`] drops it when the run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    run: RunId,
    token: String,
}

impl Once {
    /// Call `seq` of run `run`: `op` with arguments of digest `args_digest`. The token names
    /// all three, so a different call at that position is not answered by the receipt.
    pub fn new(run: &RunId, seq: u64, op: &str, args_digest: &str) -> Once {
        Once {
            run: run.clone(),
            token: format!("{seq} {op} {args_digest}"),
        }
    }

    /// The run.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// What the receipt holds to name the call: `<seq> <op> <args digest>`.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A receipt as the embedded and in-memory stores keep it: the call's token and the write's
/// answer (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Receipt {
    pub token: String,
    pub answer: serde_json::Value,
}

impl Receipt {
    /// What `once` was answered, if the receipt is its call's.
    pub(crate) fn answer_of<T: DeserializeOwned>(
        &self,
        key: &str,
        once: &Once,
    ) -> Result<Option<T>, StateError> {
        if self.token != once.token {
            return Ok(None);
        }
        serde_json::from_value(self.answer.clone())
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                key: key.to_string(),
                message: format!("holds an answer this write does not give: {e}"),
            })
    }

    /// The receipt of `once`, answered `answer`.
    pub(crate) fn of<T: Serialize>(
        key: &str,
        once: &Once,
        answer: &T,
    ) -> Result<Receipt, StateError> {
        Ok(Receipt {
            token: once.token.clone(),
            answer: serde_json::to_value(answer).map_err(|e| StateError::Corrupt {
                key: key.to_string(),
                message: format!("cannot encode the answer: {e}"),
            })?,
        })
    }
}

/// A TTL the keyspace can hold: whole milliseconds, at least one, the unit both SQLite rows
/// and Redis `PX` use. Sub-millisecond TTLs are refused rather than rounded to a lock that
/// never exists; TTLs past `i64::MAX / 4` ms saturate there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(i64);

impl Ttl {
    /// Validate `ttl`; `what` names it in the error (`lock`, `heartbeat`).
    pub fn new(what: &'static str, ttl: Duration) -> Result<Ttl, StateError> {
        match i64::try_from(ttl.as_millis()) {
            Ok(ms) if ms >= 1 => Ok(Ttl(ms.min(i64::MAX / 4))),
            Ok(_) => Err(StateError::InvalidTtl { what, ttl }),
            Err(_) => Ok(Ttl(i64::MAX / 4)),
        }
    }

    /// `ttl` rounded up to 1 ms, for durations already validated as positive (the tier
    /// table's).
    pub fn at_least_1ms(ttl: Duration) -> Ttl {
        Ttl::new("ttl", ttl.max(Duration::from_millis(1))).unwrap_or(Ttl(1))
    }

    /// The TTL in milliseconds, at least 1.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// The TTL as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0.unsigned_abs())
    }
}

/// A record as a backend stores it under `key`: JSON.
pub fn encode<T: Serialize>(key: &str, value: &T) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        message: format!("cannot encode the record: {e}"),
    })
}

/// An optional stored record (`GET`, `HGET`), decoded.
pub fn decoded<T: DeserializeOwned>(
    key: &str,
    json: Option<String>,
) -> Result<Option<T>, StateError> {
    json.map(|json| decode(key, &json)).transpose()
}

/// Every record of a list, decoded; the first that does not parse is an error naming the
/// list and its position.
pub fn decode_all<T: DeserializeOwned>(key: &str, rows: &[String]) -> Result<Vec<T>, StateError> {
    rows.iter()
        .enumerate()
        .map(|(i, json)| decode(&format!("{key}[{i}]"), json))
        .collect()
}

/// An agent id read back from the store (`task:{id}:active_agent`).
pub fn stored_id(key: &str, id: &str) -> Result<AgentId, StateError> {
    AgentId::new(id).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// A stored record, or [`StateError::Corrupt`] naming its key.
pub fn decode<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StateError> {
    serde_json::from_str(json).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        message: format!("holds a value that is not a valid record: {e}"),
    })
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

    /// `agent:{id}:packet`: the agent's packet.
    pub fn packet(agent: &str) -> String {
        format!("agent:{agent}:packet")
    }
    /// `agent:{id}:state`: the checkpoint and the agent's own key/value state.
    pub fn state(agent: &str) -> String {
        format!("agent:{agent}:state")
    }
    /// `agent:{id}:errors`: the error budget counters.
    pub fn errors(agent: &str) -> String {
        format!("agent:{agent}:errors")
    }
    /// `agent:{id}:heartbeat`: milliseconds of the last beat, with a TTL.
    pub fn heartbeat(agent: &str) -> String {
        format!("agent:{agent}:heartbeat")
    }
    /// `agent:{id}:lock`: the lock owner token, with a TTL.
    pub fn lock(agent: &str) -> String {
        format!("agent:{agent}:lock")
    }
    /// `task:{id}:active_agent`: the agent last started on the task.
    pub fn active_agent(task: &str) -> String {
        format!("task:{task}:active_agent")
    }
    /// `task:{id}:artifacts`: the task's artifact references, oldest first.
    pub fn artifacts(task: &str) -> String {
        format!("task:{task}:artifacts")
    }
    /// `task:{id}:artifact_index`: artifact name → its latest reference.
    pub fn artifact_index(task: &str) -> String {
        format!("task:{task}:artifact_index")
    }
    /// `task:{id}:artifact_names`: the artifact names, a sorted set paged by name.
    pub fn artifact_names(task: &str) -> String {
        format!("task:{task}:artifact_names")
    }
    /// `task:{id}:artifact_usage`: distinct names and bytes of every version pushed.
    pub fn artifact_usage(task: &str) -> String {
        format!("task:{task}:artifact_usage")
    }
    /// `agent:{id}:state_usage`: keys and bytes of the agent's own state.
    pub fn state_usage(agent: &str) -> String {
        format!("agent:{agent}:state_usage")
    }
    /// `task:{id}:approval`: the approval gate record.
    pub fn approval(task: &str) -> String {
        format!("task:{task}:approval")
    }
    /// `pipeline:{run}:gate:{stage}:{round}`: a human gate's decision, written once.
    pub fn gate(run: &str, stage: &str, round: u32) -> String {
        format!("pipeline:{run}:gate:{stage}:{round}")
    }
    /// `handoff:{task}:latest`: the task's latest handoff.
    pub fn handoff(task: &str) -> String {
        format!("handoff:{task}:latest")
    }
    /// `task:{id}:tokens`: the task's LLM spend, a counter.
    pub fn tokens(task: &str) -> String {
        format!("task:{task}:tokens")
    }
    /// `run:{id}:receipt`: the run's last write, for [`Once`](super::Once).
    pub fn receipt(run: &str) -> String {
        format!("run:{run}:receipt")
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
    /// The agent in transition.
    pub agent: &'a AgentId,
    /// The run's lock owner token.
    pub owner: &'a LockOwner,
    /// New lock TTL, from now.
    pub lock_ttl: Ttl,
    /// New heartbeat TTL, from now.
    pub heartbeat_ttl: Ttl,
    /// Checkpoint to store in `agent:{id}:state` field `checkpoint`.
    pub checkpoint: &'a Checkpoint,
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
    Held {
        /// The holder's owner token.
        owner: String,
    },
}

/// Runtime state shared by every run on this host (and, with a shared backend, every host).
///
/// Everything it is given is already valid (typed ids, TTLs and owners); records go in and
/// come out as their types. Expired heartbeats and locks read as absent.
#[async_trait]
pub trait StateStore: Coordination + Send + Sync + 'static {
    /// Backend name for logs and health output: `"memory"`, `"embedded"`, `"redis"`.
    fn backend(&self) -> &'static str;

    /// Store the packet under its agent (replacing any previous one).
    async fn put_packet(&self, packet: &Packet) -> Result<(), StateError>;
    /// The agent's packet; `None` if none was stored.
    async fn packet(&self, agent: &AgentId) -> Result<Option<Packet>, StateError>;
    /// The last checkpoint written by [`StateStore::transition`].
    async fn checkpoint(&self, agent: &AgentId) -> Result<Option<Checkpoint>, StateError>;

    /// The value of the agent's own `key`; `None` if it is not set.
    async fn kv_get(&self, agent: &AgentId, key: &str) -> Result<Option<String>, StateError>;
    /// Set the agent's own `key` (replacing any value) unless that takes its state past
    /// `quota` (keys, and bytes of key + value, counted in `agent:{id}:state_usage`). The
    /// check, the write and the new usage are one atomic step.
    async fn kv_set(
        &self,
        agent: &AgentId,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError>;
    /// Delete the agent's own `key`, giving its bytes back to the quota; whether it existed.
    async fn kv_delete(
        &self,
        agent: &AgentId,
        key: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError>;
    /// The agent's keys, sorted.
    async fn kv_keys(&self, agent: &AgentId) -> Result<Vec<String>, StateError>;

    /// Count one error (and one procedure violation if `procedure`) atomically, so concurrent
    /// callers never lose an increment; returns the counts after it.
    async fn record_error(
        &self,
        agent: &AgentId,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError>;
    /// The agent's error counts; all zero if it has none.
    async fn error_counts(&self, agent: &AgentId) -> Result<ErrorCounts, StateError>;
    /// Clear the agent's error counters (done at every bootstrap).
    async fn reset_errors(&self, agent: &AgentId) -> Result<(), StateError>;

    /// Record that the agent is alive for the next `ttl`.
    async fn heartbeat(&self, agent: &AgentId, ttl: Ttl) -> Result<(), StateError>;
    /// When the agent last beat; `None` once that beat's TTL passed.
    async fn last_heartbeat(&self, agent: &AgentId) -> Result<Option<SystemTime>, StateError>;

    /// Take the agent's lock for `ttl` unless another owner holds a live one. An expired lock
    /// is taken over; re-acquiring a lock the caller holds renews it (so a retried request
    /// whose first reply was lost does not contend with itself).
    async fn acquire_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<LockAttempt, StateError>;
    /// Extend the lock to `ttl` from now; false unless `owner` holds it and it is live.
    async fn refresh_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<bool, StateError>;
    /// Release the lock; false unless `owner` holds it and it is live.
    async fn release_lock(&self, agent: &AgentId, owner: &LockOwner) -> Result<bool, StateError>;
    /// The owner of the live lock, if any.
    async fn lock_owner(&self, agent: &AgentId) -> Result<Option<String>, StateError>;

    /// One lifecycle transition in one round trip: lock refresh (owner-checked), then — only
    /// if the lock is still held — heartbeat and checkpoint write; then the error-budget read.
    /// A run that lost its lock writes nothing, so it can neither overwrite the new holder's
    /// checkpoint nor claim the agent is alive on its behalf.
    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError>;

    /// Record `agent` as the task's active agent (replacing any previous one).
    async fn set_active_agent(&self, task: &TaskId, agent: &AgentId) -> Result<(), StateError>;
    /// The task's active agent; `None` if no agent was started on it.
    async fn active_agent(&self, task: &TaskId) -> Result<Option<AgentId>, StateError>;

    /// Record a new version of an artifact unless that takes the task past `quota` (distinct
    /// names; bytes of every version pushed): append it to the history, make it its name's
    /// latest in the index, and count it, in one atomic step.
    async fn push_artifact(
        &self,
        task: &TaskId,
        artifact: &ArtifactRef,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError>;
    /// The latest version of the task's artifact `name`: an indexed lookup.
    async fn artifact(&self, task: &TaskId, name: &str) -> Result<Option<ArtifactRef>, StateError>;
    /// Up to `limit` of the task's artifacts, the latest version of each name, sorted by name
    /// (byte order), starting after `after` (from the first with `None`). Costs the page, not
    /// the task: a cursor over the index.
    async fn artifact_page(
        &self,
        task: &TaskId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ArtifactRef>, StateError>;
    /// The task's whole history of artifact references, oldest first. For audits and
    /// operators: it grows with every put, so no path a run takes reads it.
    async fn artifacts(&self, task: &TaskId) -> Result<Vec<ArtifactRef>, StateError>;

    /// Prepend to `revocations:ledger` and index the record under its agent, atomically.
    async fn record_revocation(&self, revocation: &Revocation) -> Result<(), StateError>;
    /// The agent's latest revocation record, if it was ever revoked. Never scans the ledger.
    async fn revocation(&self, agent: &AgentId) -> Result<Option<Revocation>, StateError>;
    /// Lift the agent's revocation (an operator's reinstatement): its entry in
    /// `revocations:by_agent` goes, the history in `revocations:ledger` stays. Whether there
    /// was one.
    async fn clear_revocation(&self, agent: &AgentId) -> Result<bool, StateError>;
    /// Up to `limit` revocation records, newest first.
    async fn revocations(&self, limit: usize) -> Result<Vec<Revocation>, StateError>;

    /// Store the handoff as its task's latest.
    async fn put_handoff(&self, handoff: &Handoff) -> Result<(), StateError>;
    /// The task's latest handoff; `None` if no agent of it was revoked.
    async fn handoff(&self, task: &TaskId) -> Result<Option<Handoff>, StateError>;

    /// Store the approval of its task.
    async fn put_approval(&self, approval: &Approval) -> Result<(), StateError>;
    /// The task's approval; `None` until it is approved.
    async fn approval(&self, task: &TaskId) -> Result<Option<Approval>, StateError>;

    /// Record a pipeline gate's decision unless one is recorded, in one atomic step, so two
    /// deciders racing on any hosts sharing the store cannot both win: `None` when this one
    /// was stored, else the decision that was there first (nothing is written).
    async fn decide_gate(
        &self,
        decision: &GateDecision,
    ) -> Result<Option<GateDecision>, StateError>;
    /// A gate's decision; `None` until it is decided.
    async fn gate_decision(
        &self,
        run: &TaskId,
        stage: &str,
        round: u32,
    ) -> Result<Option<GateDecision>, StateError>;

    /// Add `tokens` to the task's LLM spend atomically, so the budget holds across runs,
    /// processes and hosts sharing the store; returns the spend after it (saturating).
    async fn charge_tokens(&self, task: &TaskId, tokens: u64) -> Result<u64, StateError>;
    /// The task's LLM spend so far.
    async fn tokens_spent(&self, task: &TaskId) -> Result<u64, StateError>;

    /// Drop the run's receipt ([`Once`]): its journal holds every write it made. Done when
    /// the run ends; a run that never ends (killed, never resumed) leaves one key.
    async fn forget_receipt(&self, run: &RunId) -> Result<(), StateError>;

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

/// The `agent:{id}:state` field of an agent's own key.
pub(crate) fn kv_field(key: &str) -> String {
    format!("{}{key}", keys::KV_PREFIX)
}

/// Typed values for the backends' own tests.
#[cfg(test)]
pub(crate) mod test_values {
    use std::time::Duration;

    use super::{AgentId, LockOwner, TaskId, Ttl};

    pub fn agent(id: &str) -> AgentId {
        AgentId::new(id).unwrap()
    }

    pub fn task(id: &str) -> TaskId {
        TaskId::new(id).unwrap()
    }

    pub fn owner(token: &str) -> LockOwner {
        LockOwner::new(token).unwrap()
    }

    pub fn ttl(duration: Duration) -> Ttl {
        Ttl::new("test", duration).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_ttls_are_validated_when_made() {
        assert!(LockOwner::new("host-1:run-2").is_ok());
        assert!(LockOwner::new("").is_err());
        assert!(LockOwner::new("a\nb").is_err());
        assert_eq!(
            Ttl::new("lock", Duration::from_millis(150))
                .unwrap()
                .millis(),
            150
        );
        let err = Ttl::new("lock", Duration::from_micros(999))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid lock ttl `999µs`: expected at least 1 ms");
        assert!(Ttl::new("lock", Duration::MAX).unwrap().millis() > 0);
    }

    #[test]
    fn a_record_that_does_not_parse_names_its_key() {
        let err = decode::<Revocation>("revocations:by_agent/a", "{").unwrap_err();
        assert!(
            err.to_string().starts_with("corrupt value in `revocations:by_agent/a`: holds a value that is not a valid record"),
            "{err}"
        );
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
