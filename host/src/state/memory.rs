//! [`StateStore`] in process memory: the keyspace of [`super`] as plain maps under one mutex.
//!
//! [`EmbeddedState::in_memory`](super::EmbeddedState::in_memory) pays SQLite's statement
//! machinery on every call (2–16 µs); this store answers in a few hundred nanoseconds, which
//! matters because a lifecycle step makes several state calls. It is private to its process,
//! so it is the default only when nothing is shared: no data directory, no remote backend.
//!
//! Every key of the shared keyspace has a typed home: `agent:{id}:*` in one `Agent` record,
//! `task:{id}:*` and `handoff:{id}:latest` in one `Task` record, the revocation ledger and
//! its per-agent index at the top level, `blackboard:{task}:*` and `msg:{task}:*` in one
//! `Board` per task (module `coordination`). Semantics, including which check fails first, match
//! [`EmbeddedState`](super::EmbeddedState); the conformance suite holds both to it.
//!
//! TTLs are validated in whole milliseconds by [`ttl_millis`] like every backend, but expire
//! against the monotonic clock: wall-clock TTLs exist so that several processes agree, and a
//! single process is better served by a clock that a time sync cannot move.
//!
//! Every operation is one short critical section with no `.await` inside; nothing blocks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    ErrorCounts, LockAttempt, StateError, StateStore, Transition, TransitionResult, ttl_millis,
    validate_id, validate_owner,
};

mod coordination;

const BACKEND: &str = "memory";

/// A [`StateStore`] held in this process's memory, gone when the last handle is dropped.
/// Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryState {
    inner: Arc<Mutex<Data>>,
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Data {
    agents: HashMap<String, Agent>,
    tasks: HashMap<String, Task>,
    /// `revocations:ledger`, newest first.
    ledger: VecDeque<String>,
    /// `revocations:by_agent`.
    revoked: HashMap<String, String>,
    /// `blackboard:{task}:*` and `msg:{task}:*`.
    boards: HashMap<String, coordination::Board>,
}

/// Everything under `agent:{id}:`.
#[derive(Default)]
struct Agent {
    /// `agent:{id}:packet`.
    packet: Option<String>,
    /// `agent:{id}:state` field `checkpoint`.
    checkpoint: Option<String>,
    /// `agent:{id}:state` fields `kv:<key>`; ordered because `kv_keys` is sorted.
    kv: BTreeMap<String, String>,
    /// `agent:{id}:errors`.
    errors: Errors,
    /// `agent:{id}:heartbeat`: wall-clock milliseconds of the beat.
    heartbeat: Option<Expiring<u64>>,
    /// `agent:{id}:lock`: the owner token.
    lock: Option<Expiring<String>>,
}

/// A value with a TTL; `deadline` is `None` when the TTL is beyond what `Instant` can hold.
struct Expiring<T> {
    value: T,
    deadline: Option<Instant>,
}

impl<T> Expiring<T> {
    fn new(value: T, now: Instant, ttl_ms: i64) -> Expiring<T> {
        let mut expiring = Expiring {
            value,
            deadline: None,
        };
        expiring.renew(now, ttl_ms);
        expiring
    }

    /// Keep the value, expire `ttl_ms` after `now`.
    fn renew(&mut self, now: Instant, ttl_ms: i64) {
        self.deadline = now.checked_add(Duration::from_millis(ttl_ms.unsigned_abs()));
    }

    fn live(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|deadline| deadline > now)
    }
}

/// `agent:{id}:errors`, with the worst signature kept up to date on every increment so
/// reading the counts does not scan the signatures. Counters saturate at `u32::MAX`, where
/// [`ErrorCounts::from_fields`] caps them for the other backends.
#[derive(Default)]
struct Errors {
    total: u32,
    procedure: u32,
    same: HashMap<String, u32>,
    max_same: u32,
    worst_signature: Option<String>,
}

impl Errors {
    fn record(&mut self, signature: &str, procedure: bool) {
        self.total = self.total.saturating_add(1);
        if procedure {
            self.procedure = self.procedure.saturating_add(1);
        }
        let n = match self.same.get_mut(signature) {
            Some(n) => {
                *n = n.saturating_add(1);
                *n
            }
            None => {
                self.same.insert(signature.to_string(), 1);
                1
            }
        };
        // Counters only grow, so the maximum is either the old one or this signature; ties
        // go to the smallest signature, as `ErrorCounts::from_fields` decides them.
        let better = match &self.worst_signature {
            None => true,
            Some(worst) => n > self.max_same || (n == self.max_same && signature <= worst.as_str()),
        };
        if better {
            self.max_same = n;
            if self.worst_signature.as_deref() != Some(signature) {
                self.worst_signature = Some(signature.to_string());
            }
        }
    }

    fn counts(&self) -> ErrorCounts {
        ErrorCounts {
            total: self.total,
            procedure: self.procedure,
            max_same: self.max_same,
            worst_signature: self.worst_signature.clone(),
        }
    }
}

/// Everything under `task:{id}:` and `handoff:{id}:latest`.
#[derive(Default)]
struct Task {
    active_agent: Option<String>,
    /// Oldest first.
    artifacts: Vec<String>,
    approval: Option<String>,
    handoff: Option<String>,
}

/// Wall-clock milliseconds since the epoch, the heartbeat's value in every backend.
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Run `f` on the record for `id`, creating it (and allocating its key) only if absent.
fn upsert<V: Default, R>(map: &mut HashMap<String, V>, id: &str, f: impl FnOnce(&mut V) -> R) -> R {
    if let Some(record) = map.get_mut(id) {
        return f(record);
    }
    let mut record = V::default();
    let result = f(&mut record);
    map.insert(id.to_string(), record);
    result
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn agent<R>(&self, agent: &str, f: impl FnOnce(&Agent) -> R) -> Result<Option<R>, StateError> {
        validate_id("agent", agent)?;
        Ok(self.inner.lock().agents.get(agent).map(f))
    }

    fn agent_mut<R>(&self, agent: &str, f: impl FnOnce(&mut Agent) -> R) -> Result<R, StateError> {
        validate_id("agent", agent)?;
        Ok(upsert(&mut self.inner.lock().agents, agent, f))
    }

    fn task<R>(&self, task: &str, f: impl FnOnce(&Task) -> R) -> Result<Option<R>, StateError> {
        validate_id("task", task)?;
        Ok(self.inner.lock().tasks.get(task).map(f))
    }

    fn task_mut(&self, task: &str, f: impl FnOnce(&mut Task)) -> Result<(), StateError> {
        validate_id("task", task)?;
        upsert(&mut self.inner.lock().tasks, task, f);
        Ok(())
    }
}

/// `PEXPIRE` the lock if `owner` holds it and it is live.
fn refresh(agent: Option<&mut Agent>, owner: &str, now: Instant, ttl_ms: i64) -> bool {
    match agent.and_then(|a| a.lock.as_mut()) {
        Some(lock) if lock.value == owner && lock.live(now) => {
            lock.renew(now, ttl_ms);
            true
        }
        _ => false,
    }
}

#[async_trait]
impl StateStore for MemoryState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put_packet(&self, agent: &str, packet_json: &str) -> Result<(), StateError> {
        let value = packet_json.to_string();
        self.agent_mut(agent, |a| a.packet = Some(value))
    }

    async fn packet(&self, agent: &str) -> Result<Option<String>, StateError> {
        Ok(self.agent(agent, |a| a.packet.clone())?.flatten())
    }

    async fn checkpoint(&self, agent: &str) -> Result<Option<String>, StateError> {
        Ok(self.agent(agent, |a| a.checkpoint.clone())?.flatten())
    }

    async fn kv_get(&self, agent: &str, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.agent(agent, |a| a.kv.get(key).cloned())?.flatten())
    }

    async fn kv_set(&self, agent: &str, key: &str, value: &str) -> Result<(), StateError> {
        let value = value.to_string();
        self.agent_mut(agent, |a| match a.kv.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                a.kv.insert(key.to_string(), value);
            }
        })
    }

    async fn kv_delete(&self, agent: &str, key: &str) -> Result<bool, StateError> {
        validate_id("agent", agent)?;
        let mut data = self.inner.lock();
        Ok(data
            .agents
            .get_mut(agent)
            .is_some_and(|a| a.kv.remove(key).is_some()))
    }

    async fn kv_keys(&self, agent: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .agent(agent, |a| a.kv.keys().cloned().collect())?
            .unwrap_or_default())
    }

    async fn record_error(
        &self,
        agent: &str,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError> {
        self.agent_mut(agent, |a| {
            a.errors.record(signature, procedure);
            a.errors.counts()
        })
    }

    async fn error_counts(&self, agent: &str) -> Result<ErrorCounts, StateError> {
        Ok(self
            .agent(agent, |a| a.errors.counts())?
            .unwrap_or_default())
    }

    async fn reset_errors(&self, agent: &str) -> Result<(), StateError> {
        validate_id("agent", agent)?;
        if let Some(a) = self.inner.lock().agents.get_mut(agent) {
            a.errors = Errors::default();
        }
        Ok(())
    }

    async fn heartbeat(&self, agent: &str, ttl: Duration) -> Result<(), StateError> {
        validate_id("agent", agent)?;
        let ttl = ttl_millis("heartbeat", ttl)?;
        let mut data = self.inner.lock();
        let (now, beat) = (Instant::now(), now_ms());
        upsert(&mut data.agents, agent, |a| {
            a.heartbeat = Some(Expiring::new(beat, now, ttl));
        });
        Ok(())
    }

    async fn last_heartbeat(&self, agent: &str) -> Result<Option<SystemTime>, StateError> {
        validate_id("agent", agent)?;
        let data = self.inner.lock();
        let now = Instant::now();
        Ok(data
            .agents
            .get(agent)
            .and_then(|a| a.heartbeat.as_ref())
            .filter(|beat| beat.live(now))
            .and_then(|beat| UNIX_EPOCH.checked_add(Duration::from_millis(beat.value))))
    }

    async fn acquire_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt, StateError> {
        validate_id("agent", agent)?;
        validate_owner(owner)?;
        let ttl = ttl_millis("lock", ttl)?;
        let mut data = self.inner.lock();
        let now = Instant::now();
        Ok(upsert(&mut data.agents, agent, |a| {
            // `SET key owner NX PX ttl`, except that the owner may renew its own lock.
            match &mut a.lock {
                Some(lock) if lock.value == owner => lock.renew(now, ttl),
                Some(lock) if lock.live(now) => {
                    return LockAttempt::Held {
                        owner: lock.value.clone(),
                    };
                }
                _ => a.lock = Some(Expiring::new(owner.to_string(), now, ttl)),
            }
            LockAttempt::Acquired
        }))
    }

    async fn refresh_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        validate_id("agent", agent)?;
        validate_owner(owner)?;
        let ttl = ttl_millis("lock", ttl)?;
        let mut data = self.inner.lock();
        Ok(refresh(
            data.agents.get_mut(agent),
            owner,
            Instant::now(),
            ttl,
        ))
    }

    async fn release_lock(&self, agent: &str, owner: &str) -> Result<bool, StateError> {
        validate_id("agent", agent)?;
        validate_owner(owner)?;
        let mut data = self.inner.lock();
        let now = Instant::now();
        let Some(a) = data.agents.get_mut(agent) else {
            return Ok(false);
        };
        let held = a
            .lock
            .as_ref()
            .is_some_and(|lock| lock.value == owner && lock.live(now));
        if held {
            a.lock = None;
        }
        Ok(held)
    }

    async fn lock_owner(&self, agent: &str) -> Result<Option<String>, StateError> {
        validate_id("agent", agent)?;
        let data = self.inner.lock();
        let now = Instant::now();
        Ok(data
            .agents
            .get(agent)
            .and_then(|a| a.lock.as_ref())
            .filter(|lock| lock.live(now))
            .map(|lock| lock.value.clone()))
    }

    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError> {
        validate_id("agent", t.agent)?;
        validate_owner(t.owner)?;
        let lock_ttl = ttl_millis("lock", t.lock_ttl)?;
        let heartbeat_ttl = ttl_millis("heartbeat", t.heartbeat_ttl)?;
        let mut data = self.inner.lock();
        let now = Instant::now();
        // No lock means no record: a transition that writes nothing must not create one.
        let Some(a) = data.agents.get_mut(t.agent) else {
            return Ok(TransitionResult {
                lock_held: false,
                errors: ErrorCounts::default(),
            });
        };
        let lock_held = refresh(Some(&mut *a), t.owner, now, lock_ttl);
        if lock_held {
            a.heartbeat = Some(Expiring::new(now_ms(), now, heartbeat_ttl));
            match &mut a.checkpoint {
                Some(checkpoint) => {
                    checkpoint.clear();
                    checkpoint.push_str(t.checkpoint_json);
                }
                None => a.checkpoint = Some(t.checkpoint_json.to_string()),
            }
        }
        Ok(TransitionResult {
            lock_held,
            errors: a.errors.counts(),
        })
    }

    async fn set_active_agent(&self, task: &str, agent: &str) -> Result<(), StateError> {
        validate_id("task", task)?;
        validate_id("agent", agent)?;
        let agent = agent.to_string();
        upsert(&mut self.inner.lock().tasks, task, |t| {
            t.active_agent = Some(agent);
        });
        Ok(())
    }

    async fn active_agent(&self, task: &str) -> Result<Option<String>, StateError> {
        Ok(self.task(task, |t| t.active_agent.clone())?.flatten())
    }

    async fn push_artifact(&self, task: &str, artifact_json: &str) -> Result<(), StateError> {
        let value = artifact_json.to_string();
        self.task_mut(task, |t| t.artifacts.push(value))
    }

    async fn artifacts(&self, task: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .task(task, |t| t.artifacts.clone())?
            .unwrap_or_default())
    }

    async fn record_revocation(
        &self,
        agent: &str,
        revocation_json: &str,
    ) -> Result<(), StateError> {
        validate_id("agent", agent)?;
        let (entry, latest) = (revocation_json.to_string(), revocation_json.to_string());
        let mut data = self.inner.lock();
        data.ledger.push_front(entry);
        upsert(&mut data.revoked, agent, |slot: &mut String| *slot = latest);
        Ok(())
    }

    async fn revocation(&self, agent: &str) -> Result<Option<String>, StateError> {
        validate_id("agent", agent)?;
        Ok(self.inner.lock().revoked.get(agent).cloned())
    }

    async fn revocations(&self, limit: usize) -> Result<Vec<String>, StateError> {
        let data = self.inner.lock();
        Ok(data.ledger.iter().take(limit).cloned().collect())
    }

    async fn put_handoff(&self, task: &str, handoff_json: &str) -> Result<(), StateError> {
        let value = handoff_json.to_string();
        self.task_mut(task, |t| t.handoff = Some(value))
    }

    async fn handoff(&self, task: &str) -> Result<Option<String>, StateError> {
        Ok(self.task(task, |t| t.handoff.clone())?.flatten())
    }

    async fn put_approval(&self, task: &str, approval_json: &str) -> Result<(), StateError> {
        let value = approval_json.to_string();
        self.task_mut(task, |t| t.approval = Some(value))
    }

    async fn approval(&self, task: &str) -> Result<Option<String>, StateError> {
        Ok(self.task(task, |t| t.approval.clone())?.flatten())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::state::{EmbeddedState, conformance};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_fresh_stores() {
        conformance::run_all(|| async { Arc::new(MemoryState::new()) as Arc<dyn StateStore> })
            .await;
    }

    /// Clones are handles on one store, as reopening the same file is for the embedded one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_clones_of_one_store() {
        let store = MemoryState::new();
        conformance::run_all(|| {
            let store = store.clone();
            async move { Arc::new(store) as Arc<dyn StateStore> }
        })
        .await;
    }

    #[tokio::test]
    async fn worst_signature_ties_go_to_the_smallest() {
        let store = MemoryState::new();
        let worst = |c: ErrorCounts| (c.max_same, c.worst_signature.unwrap());
        let step = |sig| store.record_error("a", sig, false);
        assert_eq!(worst(step("b").await.unwrap()), (1, "b".into()));
        assert_eq!(worst(step("a").await.unwrap()), (1, "a".into()));
        assert_eq!(worst(step("b").await.unwrap()), (2, "b".into()));
        assert_eq!(worst(step("c").await.unwrap()), (2, "b".into()));
        assert_eq!(worst(step("a").await.unwrap()), (2, "a".into()));
        assert_eq!(worst(step("a").await.unwrap()), (3, "a".into()));
        store.reset_errors("a").await.unwrap();
        assert_eq!(worst(step("z").await.unwrap()), (1, "z".into()));
    }

    /// Reads, and writes that change nothing, must not create records: the store would grow
    /// with every id a caller ever asked about.
    #[tokio::test]
    async fn reads_do_not_create_records() {
        let store = MemoryState::new();
        let t = Transition {
            agent: "a",
            owner: "o",
            lock_ttl: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(1),
            checkpoint_json: "{}",
        };
        assert!(!store.transition(&t).await.unwrap().lock_held);
        assert!(
            !store
                .refresh_lock("a", "o", Duration::from_secs(1))
                .await
                .unwrap()
        );
        assert!(!store.release_lock("a", "o").await.unwrap());
        assert!(!store.kv_delete("a", "k").await.unwrap());
        store.reset_errors("a").await.unwrap();
        store.packet("a").await.unwrap();
        store.artifacts("t").await.unwrap();
        store.revocation("a").await.unwrap();
        let data = store.inner.lock();
        assert!(data.agents.is_empty() && data.tasks.is_empty() && data.revoked.is_empty());
    }

    /// The same pseudo-random operations against both backends must give the same answers,
    /// errors included. Heartbeats are compared by presence: their timestamps are the clock's.
    #[tokio::test]
    async fn answers_like_the_embedded_store() {
        let memory = MemoryState::new();
        let embedded = EmbeddedState::in_memory().unwrap();
        let agents = ["a", "b", "c:bad", ""];
        let tasks = ["t", "u", "bad task"];
        let owners = ["o1", "o2", "\n"];
        let ttls = [Duration::from_secs(60), Duration::from_micros(5)];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for step in 0..4000 {
            let agent = agents[next(agents.len())];
            let task = tasks[next(tasks.len())];
            let owner = owners[next(owners.len())];
            let ttl = ttls[usize::from(next(8) == 0)];
            let value = format!("v{}", next(5));
            let op = next(27);
            let mut answers = Vec::new();
            for store in [&memory as &dyn StateStore, &embedded] {
                let answer = match op {
                    0 => format!("{:?}", store.put_packet(agent, &value).await),
                    1 => format!("{:?}", store.packet(agent).await),
                    2 => format!("{:?}", store.checkpoint(agent).await),
                    3 => format!("{:?}", store.kv_set(agent, &value, &value).await),
                    4 => format!("{:?}", store.kv_get(agent, &value).await),
                    5 => format!("{:?}", store.kv_delete(agent, &value).await),
                    6 => format!("{:?}", store.kv_keys(agent).await),
                    7 | 8 => format!("{:?}", store.record_error(agent, &value, op == 8).await),
                    9 => format!("{:?}", store.error_counts(agent).await),
                    10 => format!("{:?}", store.reset_errors(agent).await),
                    11 => format!("{:?}", store.heartbeat(agent, ttl).await),
                    12 => format!(
                        "{:?}",
                        store.last_heartbeat(agent).await.map(|b| b.is_some())
                    ),
                    13 => format!("{:?}", store.acquire_lock(agent, owner, ttl).await),
                    14 => format!("{:?}", store.refresh_lock(agent, owner, ttl).await),
                    15 => format!("{:?}", store.release_lock(agent, owner).await),
                    16 => format!("{:?}", store.lock_owner(agent).await),
                    17 => {
                        let t = Transition {
                            agent,
                            owner,
                            lock_ttl: ttl,
                            heartbeat_ttl: ttls[0],
                            checkpoint_json: &value,
                        };
                        format!("{:?}", store.transition(&t).await)
                    }
                    18 => format!("{:?}", store.set_active_agent(task, agent).await),
                    19 => format!("{:?}", store.active_agent(task).await),
                    20 => format!("{:?}", store.push_artifact(task, &value).await),
                    21 => format!("{:?}", store.artifacts(task).await),
                    22 => format!("{:?}", store.record_revocation(agent, &value).await),
                    23 => format!("{:?}", store.revocation(agent).await),
                    24 => format!("{:?}", store.revocations(step % 7).await),
                    25 => format!("{:?}", store.put_handoff(task, &value).await),
                    _ => format!(
                        "{:?} {:?} {:?}",
                        store.put_approval(task, &value).await,
                        store.approval(task).await,
                        store.handoff(task).await
                    ),
                };
                answers.push(answer);
            }
            assert_eq!(answers[0], answers[1], "step {step}, op {op}");
        }
    }
}
