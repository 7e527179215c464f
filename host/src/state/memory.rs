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
//! TTLs are whole milliseconds ([`Ttl`]) like in every backend, but expire against the
//! monotonic clock: wall-clock TTLs exist so that several processes agree, and a
//! single process is better served by a clock that a time sync cannot move.
//!
//! Every operation is one short critical section with no `.await` inside; nothing blocks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::quota::entry_bytes;
use super::{
    Admission, AgentId, Approval, ArtifactRef, Checkpoint, ErrorCounts, GateDecision, Handoff,
    LockAttempt, LockOwner, Once, Packet, Quota, Receipt, Revocation, RunId, StateError,
    StateStore, TaskId, Transition, TransitionResult, Ttl, Usage, keys,
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
    ledger: VecDeque<Revocation>,
    /// `revocations:by_agent`.
    revoked: HashMap<String, Revocation>,
    /// `blackboard:{task}:*` and `msg:{task}:*`.
    boards: HashMap<String, coordination::Board>,
    /// `run:{id}:receipt`.
    receipts: HashMap<String, Receipt>,
}

/// Everything under `agent:{id}:`.
#[derive(Default)]
struct Agent {
    /// `agent:{id}:packet`.
    packet: Option<Packet>,
    /// `agent:{id}:state` field `checkpoint`.
    checkpoint: Option<Checkpoint>,
    /// `agent:{id}:state` fields `kv:<key>`; ordered because `kv_keys` is sorted.
    kv: BTreeMap<String, String>,
    /// `agent:{id}:state_usage`.
    kv_usage: Usage,
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
    active_agent: Option<AgentId>,
    /// `task:{id}:artifacts`, oldest first.
    artifacts: Vec<ArtifactRef>,
    /// `task:{id}:artifact_index` and `…:artifact_names`: the latest version per name, in
    /// name order.
    index: BTreeMap<String, ArtifactRef>,
    /// `task:{id}:artifact_usage`.
    artifact_usage: Usage,
    approval: Option<Approval>,
    /// `pipeline:{run}:gate:{stage}:{round}`, for a pipeline run's task.
    gates: HashMap<(String, u32), GateDecision>,
    handoff: Option<Handoff>,
    /// `task:{id}:tokens`.
    tokens: u64,
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
    /// `write` unless `once`'s receipt says it was made (then what it answered), and the
    /// receipt of it after. Not one step under the lock, as the other backends' are: this
    /// store does not outlive its process, so no crash can come between the two, and a run's
    /// receipt is only touched by the run's own calls, one at a time.
    fn once<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        once: Option<&Once>,
        write: impl FnOnce() -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let Some(once) = once else {
            return write();
        };
        let key = keys::receipt(once.run().as_str());
        if let Some(receipt) = self.inner.lock().receipts.get(once.run().as_str())
            && let Some(answer) = receipt.answer_of(&key, once)?
        {
            return Ok(answer);
        }
        let answer = write()?;
        let receipt = Receipt::of(&key, once, &answer)?;
        self.inner
            .lock()
            .receipts
            .insert(once.run().as_str().to_string(), receipt);
        Ok(answer)
    }
    /// An empty store.
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn agent<R>(
        &self,
        agent: &AgentId,
        f: impl FnOnce(&Agent) -> R,
    ) -> Result<Option<R>, StateError> {
        Ok(self.inner.lock().agents.get(agent.as_str()).map(f))
    }

    fn agent_mut<R>(
        &self,
        agent: &AgentId,
        f: impl FnOnce(&mut Agent) -> R,
    ) -> Result<R, StateError> {
        Ok(upsert(&mut self.inner.lock().agents, agent, f))
    }

    fn task<R>(&self, task: &TaskId, f: impl FnOnce(&Task) -> R) -> Result<Option<R>, StateError> {
        Ok(self.inner.lock().tasks.get(task.as_str()).map(f))
    }

    fn task_mut(&self, task: &TaskId, f: impl FnOnce(&mut Task)) -> Result<(), StateError> {
        upsert(&mut self.inner.lock().tasks, task, f);
        Ok(())
    }
}

/// `PEXPIRE` the lock if `owner` holds it and it is live.
fn refresh(agent: Option<&mut Agent>, owner: &LockOwner, now: Instant, ttl_ms: i64) -> bool {
    match agent.and_then(|a| a.lock.as_mut()) {
        Some(lock) if lock.value == owner.as_str() && lock.live(now) => {
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

    async fn put_packet(&self, packet: &Packet) -> Result<(), StateError> {
        let value = packet.clone();
        self.agent_mut(&packet.agent_id, |a| a.packet = Some(value))
    }

    async fn packet(&self, agent: &AgentId) -> Result<Option<Packet>, StateError> {
        Ok(self.agent(agent, |a| a.packet.clone())?.flatten())
    }

    async fn checkpoint(&self, agent: &AgentId) -> Result<Option<Checkpoint>, StateError> {
        Ok(self.agent(agent, |a| a.checkpoint.clone())?.flatten())
    }

    async fn kv_get(&self, agent: &AgentId, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.agent(agent, |a| a.kv.get(key).cloned())?.flatten())
    }

    async fn kv_set(
        &self,
        agent: &AgentId,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let before = data
                .agents
                .get(agent.as_str())
                .map_or_else(Usage::default, |a| a.kv_usage);
            let old = data
                .agents
                .get(agent.as_str())
                .and_then(|a| a.kv.get(key))
                .map(|old| entry_bytes(key, old));
            let after =
                before.after_write(old.is_none(), entry_bytes(key, value), old.unwrap_or(0));
            if let Err(over) = quota.admit(before, after) {
                return Ok(Admission::Refused(over));
            }
            let value = value.to_string();
            upsert(&mut data.agents, agent, |a| {
                match a.kv.get_mut(key) {
                    Some(slot) => *slot = value,
                    None => {
                        a.kv.insert(key.to_string(), value);
                    }
                }
                a.kv_usage = after;
            });
            Ok(Admission::Stored(()))
        })
    }

    async fn kv_delete(
        &self,
        agent: &AgentId,
        key: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let Some(a) = data.agents.get_mut(agent.as_str()) else {
                return Ok(false);
            };
            let Some(old) = a.kv.remove(key) else {
                return Ok(false);
            };
            a.kv_usage = a.kv_usage.after_delete(entry_bytes(key, &old));
            Ok(true)
        })
    }

    async fn kv_keys(&self, agent: &AgentId) -> Result<Vec<String>, StateError> {
        Ok(self
            .agent(agent, |a| a.kv.keys().cloned().collect())?
            .unwrap_or_default())
    }

    async fn record_error(
        &self,
        agent: &AgentId,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError> {
        self.agent_mut(agent, |a| {
            a.errors.record(signature, procedure);
            a.errors.counts()
        })
    }

    async fn error_counts(&self, agent: &AgentId) -> Result<ErrorCounts, StateError> {
        Ok(self
            .agent(agent, |a| a.errors.counts())?
            .unwrap_or_default())
    }

    async fn reset_errors(&self, agent: &AgentId) -> Result<(), StateError> {
        if let Some(a) = self.inner.lock().agents.get_mut(agent.as_str()) {
            a.errors = Errors::default();
        }
        Ok(())
    }

    async fn heartbeat(&self, agent: &AgentId, ttl: Ttl) -> Result<(), StateError> {
        let ttl = ttl.millis();
        let mut data = self.inner.lock();
        let (now, beat) = (Instant::now(), now_ms());
        upsert(&mut data.agents, agent, |a| {
            a.heartbeat = Some(Expiring::new(beat, now, ttl));
        });
        Ok(())
    }

    async fn last_heartbeat(&self, agent: &AgentId) -> Result<Option<SystemTime>, StateError> {
        let data = self.inner.lock();
        let now = Instant::now();
        Ok(data
            .agents
            .get(agent.as_str())
            .and_then(|a| a.heartbeat.as_ref())
            .filter(|beat| beat.live(now))
            .and_then(|beat| UNIX_EPOCH.checked_add(Duration::from_millis(beat.value))))
    }

    async fn acquire_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<LockAttempt, StateError> {
        let ttl = ttl.millis();
        let mut data = self.inner.lock();
        let now = Instant::now();
        Ok(upsert(&mut data.agents, agent, |a| {
            // `SET key owner NX PX ttl`, except that the owner may renew its own lock.
            match &mut a.lock {
                Some(lock) if lock.value == owner.as_str() => lock.renew(now, ttl),
                Some(lock) if lock.live(now) => {
                    return LockAttempt::Held {
                        owner: lock.value.clone(),
                    };
                }
                _ => a.lock = Some(Expiring::new(owner.as_str().to_string(), now, ttl)),
            }
            LockAttempt::Acquired
        }))
    }

    async fn refresh_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<bool, StateError> {
        let ttl = ttl.millis();
        let mut data = self.inner.lock();
        Ok(refresh(
            data.agents.get_mut(agent.as_str()),
            owner,
            Instant::now(),
            ttl,
        ))
    }

    async fn release_lock(&self, agent: &AgentId, owner: &LockOwner) -> Result<bool, StateError> {
        let mut data = self.inner.lock();
        let now = Instant::now();
        let Some(a) = data.agents.get_mut(agent.as_str()) else {
            return Ok(false);
        };
        let held = a
            .lock
            .as_ref()
            .is_some_and(|lock| lock.value == owner.as_str() && lock.live(now));
        if held {
            a.lock = None;
        }
        Ok(held)
    }

    async fn lock_owner(&self, agent: &AgentId) -> Result<Option<String>, StateError> {
        let data = self.inner.lock();
        let now = Instant::now();
        Ok(data
            .agents
            .get(agent.as_str())
            .and_then(|a| a.lock.as_ref())
            .filter(|lock| lock.live(now))
            .map(|lock| lock.value.clone()))
    }

    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError> {
        let (lock_ttl, heartbeat_ttl) = (t.lock_ttl.millis(), t.heartbeat_ttl.millis());
        let mut data = self.inner.lock();
        let now = Instant::now();
        // No lock means no record: a transition that writes nothing must not create one.
        let Some(a) = data.agents.get_mut(t.agent.as_str()) else {
            return Ok(TransitionResult {
                lock_held: false,
                errors: ErrorCounts::default(),
            });
        };
        let lock_held = refresh(Some(&mut *a), t.owner, now, lock_ttl);
        if lock_held {
            a.heartbeat = Some(Expiring::new(now_ms(), now, heartbeat_ttl));
            a.checkpoint = Some(t.checkpoint.clone());
        }
        Ok(TransitionResult {
            lock_held,
            errors: a.errors.counts(),
        })
    }

    async fn set_active_agent(&self, task: &TaskId, agent: &AgentId) -> Result<(), StateError> {
        let agent = agent.clone();
        upsert(&mut self.inner.lock().tasks, task, |t| {
            t.active_agent = Some(agent);
        });
        Ok(())
    }

    async fn active_agent(&self, task: &TaskId) -> Result<Option<AgentId>, StateError> {
        Ok(self.task(task, |t| t.active_agent.clone())?.flatten())
    }

    async fn push_artifact(
        &self,
        task: &TaskId,
        artifact: &ArtifactRef,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let (before, exists) = data.tasks.get(task.as_str()).map_or_else(
                || (Usage::default(), false),
                |t| (t.artifact_usage, t.index.contains_key(&artifact.name)),
            );
            let after = before.after_write(!exists, artifact.size, 0);
            if let Err(over) = quota.admit(before, after) {
                return Ok(Admission::Refused(over));
            }
            upsert(&mut data.tasks, task, |t| {
                t.artifacts.push(artifact.clone());
                match t.index.get_mut(&artifact.name) {
                    Some(latest) => *latest = artifact.clone(),
                    None => {
                        t.index.insert(artifact.name.clone(), artifact.clone());
                    }
                }
                t.artifact_usage = after;
            });
            Ok(Admission::Stored(()))
        })
    }

    async fn artifact(&self, task: &TaskId, name: &str) -> Result<Option<ArtifactRef>, StateError> {
        Ok(self.task(task, |t| t.index.get(name).cloned())?.flatten())
    }

    async fn artifact_page(
        &self,
        task: &TaskId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ArtifactRef>, StateError> {
        use std::ops::Bound::{Excluded, Unbounded};
        Ok(self
            .task(task, |t| {
                let start = after.map_or(Unbounded, Excluded);
                t.index
                    .range::<str, _>((start, Unbounded))
                    .take(limit)
                    .map(|(_, artifact)| artifact.clone())
                    .collect()
            })?
            .unwrap_or_default())
    }

    async fn artifacts(&self, task: &TaskId) -> Result<Vec<ArtifactRef>, StateError> {
        Ok(self
            .task(task, |t| t.artifacts.clone())?
            .unwrap_or_default())
    }

    async fn record_revocation(&self, revocation: &Revocation) -> Result<(), StateError> {
        let mut data = self.inner.lock();
        data.ledger.push_front(revocation.clone());
        data.revoked
            .insert(revocation.agent_id.to_string(), revocation.clone());
        Ok(())
    }

    async fn revocation(&self, agent: &AgentId) -> Result<Option<Revocation>, StateError> {
        Ok(self.inner.lock().revoked.get(agent.as_str()).cloned())
    }

    async fn clear_revocation(&self, agent: &AgentId) -> Result<bool, StateError> {
        Ok(self.inner.lock().revoked.remove(agent.as_str()).is_some())
    }

    async fn revocations(&self, limit: usize) -> Result<Vec<Revocation>, StateError> {
        let data = self.inner.lock();
        Ok(data.ledger.iter().take(limit).cloned().collect())
    }

    async fn forget_receipt(&self, run: &RunId) -> Result<(), StateError> {
        self.inner.lock().receipts.remove(run.as_str());
        Ok(())
    }

    async fn put_handoff(&self, handoff: &Handoff) -> Result<(), StateError> {
        let value = handoff.clone();
        self.task_mut(&handoff.task_id, |t| t.handoff = Some(value))
    }

    async fn handoff(&self, task: &TaskId) -> Result<Option<Handoff>, StateError> {
        Ok(self.task(task, |t| t.handoff.clone())?.flatten())
    }

    async fn put_approval(&self, approval: &Approval) -> Result<(), StateError> {
        let value = approval.clone();
        self.task_mut(&approval.task_id, |t| t.approval = Some(value))
    }

    async fn approval(&self, task: &TaskId) -> Result<Option<Approval>, StateError> {
        Ok(self.task(task, |t| t.approval.clone())?.flatten())
    }

    async fn decide_gate(
        &self,
        decision: &GateDecision,
    ) -> Result<Option<GateDecision>, StateError> {
        let mut earlier = None;
        self.task_mut(&decision.run, |t| {
            match t.gates.entry((decision.stage.clone(), decision.round)) {
                std::collections::hash_map::Entry::Occupied(e) => earlier = Some(e.get().clone()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(decision.clone());
                }
            }
        })?;
        Ok(earlier)
    }

    async fn gate_decision(
        &self,
        run: &TaskId,
        stage: &str,
        round: u32,
    ) -> Result<Option<GateDecision>, StateError> {
        Ok(self
            .task(run, |t| t.gates.get(&(stage.to_string(), round)).cloned())?
            .flatten())
    }

    async fn charge_tokens(&self, task: &TaskId, tokens: u64) -> Result<u64, StateError> {
        let mut data = self.inner.lock();
        Ok(upsert(&mut data.tasks, task, |t| {
            t.tokens = t.tokens.saturating_add(tokens);
            t.tokens
        }))
    }

    async fn tokens_spent(&self, task: &TaskId) -> Result<u64, StateError> {
        Ok(self.task(task, |t| t.tokens)?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{LastKnownState, RevocationReason};
    use crate::state::test_values::{agent, owner, task, ttl};
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
        let a = agent("a");
        let worst = |c: ErrorCounts| (c.max_same, c.worst_signature.unwrap());
        let step = |sig| store.record_error(&a, sig, false);
        assert_eq!(worst(step("b").await.unwrap()), (1, "b".into()));
        assert_eq!(worst(step("a").await.unwrap()), (1, "a".into()));
        assert_eq!(worst(step("b").await.unwrap()), (2, "b".into()));
        assert_eq!(worst(step("c").await.unwrap()), (2, "b".into()));
        assert_eq!(worst(step("a").await.unwrap()), (2, "a".into()));
        assert_eq!(worst(step("a").await.unwrap()), (3, "a".into()));
        store.reset_errors(&a).await.unwrap();
        assert_eq!(worst(step("z").await.unwrap()), (1, "z".into()));
    }

    fn checkpoint(task: &TaskId) -> Checkpoint {
        Checkpoint {
            phase: "PLAN".into(),
            step: "enter".into(),
            task_id: task.clone(),
            component_digest: "sha256:0".into(),
            at: "2026-12-01T00:00:00.000Z".into(),
        }
    }

    /// Reads, and writes that change nothing, must not create records: the store would grow
    /// with every id a caller ever asked about.
    #[tokio::test]
    async fn reads_do_not_create_records() {
        let store = MemoryState::new();
        let (a, o, t) = (agent("a"), owner("o"), task("t"));
        let second = ttl(Duration::from_secs(1));
        let checkpoint = checkpoint(&t);
        let transition = Transition {
            agent: &a,
            owner: &o,
            lock_ttl: second,
            heartbeat_ttl: second,
            checkpoint: &checkpoint,
        };
        assert!(!store.transition(&transition).await.unwrap().lock_held);
        assert!(!store.refresh_lock(&a, &o, second).await.unwrap());
        assert!(!store.release_lock(&a, &o).await.unwrap());
        assert!(!store.kv_delete(&a, "k", None).await.unwrap());
        store.reset_errors(&a).await.unwrap();
        store.packet(&a).await.unwrap();
        store.artifacts(&t).await.unwrap();
        store.artifact(&t, "x").await.unwrap();
        store.artifact_page(&t, None, 10).await.unwrap();
        store.revocation(&a).await.unwrap();
        // Refused writes write nothing, not even an empty record.
        let none = Quota {
            max_entries: 0,
            max_bytes: 0,
        };
        assert!(matches!(
            store.kv_set(&a, "k", "v", none, None).await.unwrap(),
            Admission::Refused(_)
        ));
        let artifact = ArtifactRef {
            name: "x".into(),
            digest: "sha256:0".into(),
            size: 1,
            author: "a".into(),
            created_at: "2026-12-01T00:00:00.000Z".into(),
        };
        assert!(matches!(
            store
                .push_artifact(&t, &artifact, none, None)
                .await
                .unwrap(),
            Admission::Refused(_)
        ));
        let data = store.inner.lock();
        assert!(data.agents.is_empty() && data.tasks.is_empty() && data.revoked.is_empty());
    }

    /// The same pseudo-random operations against both backends must give the same answers,
    /// errors included. Heartbeats are compared by presence: their timestamps are the clock's.
    #[tokio::test]
    async fn answers_like_the_embedded_store() {
        let memory = MemoryState::new();
        let embedded = EmbeddedState::in_memory().unwrap();
        let agents = [agent("a"), agent("b"), agent("c")];
        let tasks = [task("t"), task("u")];
        let owners = [owner("o1"), owner("o2")];
        let ttls = [ttl(Duration::from_secs(60)), ttl(Duration::from_secs(30))];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for step in 0..4000 {
            let agent = &agents[next(agents.len())];
            let task = &tasks[next(tasks.len())];
            let owner = &owners[next(owners.len())];
            let ttl = ttls[usize::from(next(8) == 0)];
            let value = format!("v{}", next(5));
            let op = next(30);
            let kv_quota = Quota {
                max_entries: 3,
                max_bytes: 16,
            };
            let artifact_quota = Quota {
                max_entries: 3,
                max_bytes: 100,
            };
            let packet = Packet::from_json(&format!(
                r#"{{"agent_id":"{agent}","task_id":"{task}","objective":"{value}"}}"#
            ))
            .unwrap();
            let artifact = ArtifactRef {
                name: value.clone(),
                digest: format!("sha256:{value}"),
                size: (step % 5) as u64,
                author: agent.to_string(),
                created_at: "2026-12-01T00:00:00.000Z".into(),
            };
            let reason = RevocationReason {
                kind: crate::packet::RevocationKind::Operator,
                details: value.clone(),
            };
            let revocation = Revocation {
                agent_id: agent.clone(),
                task_id: Some(task.clone()),
                reason: reason.clone(),
                revoked_by: "test".into(),
                revoked_at: "2026-12-01T00:00:00.000Z".into(),
            };
            let handoff = Handoff {
                task_id: task.clone(),
                previous_agent_id: agent.clone(),
                revoked: true,
                revocation_reason: reason,
                last_known_state: LastKnownState {
                    phase: "EXECUTE".into(),
                    step: value.clone(),
                },
                what_was_tried: Vec::new(),
                blocking_issue: value.clone(),
                required_next_actions: Vec::new(),
                constraints_reminder: Vec::new(),
                artifacts: Vec::new(),
                created_at: "2026-12-01T00:00:00.000Z".into(),
            };
            let approval = Approval {
                task_id: task.clone(),
                approved_by: value.clone(),
                approved_at: "2026-12-01T00:00:00.000Z".into(),
            };
            let checkpoint = checkpoint(task);
            let mut answers = Vec::new();
            for store in [&memory as &dyn StateStore, &embedded] {
                let answer = match op {
                    0 => format!("{:?}", store.put_packet(&packet).await),
                    1 => format!("{:?}", store.packet(agent).await),
                    2 => format!("{:?}", store.checkpoint(agent).await),
                    3 => {
                        let text = "x".repeat(step % 7);
                        format!(
                            "{:?}",
                            store.kv_set(agent, &value, &text, kv_quota, None).await
                        )
                    }
                    4 => format!("{:?}", store.kv_get(agent, &value).await),
                    5 => format!("{:?}", store.kv_delete(agent, &value, None).await),
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
                            checkpoint: &checkpoint,
                        };
                        format!("{:?}", store.transition(&t).await)
                    }
                    18 => format!("{:?}", store.set_active_agent(task, agent).await),
                    19 => format!("{:?}", store.active_agent(task).await),
                    20 => format!(
                        "{:?}",
                        store
                            .push_artifact(task, &artifact, artifact_quota, None)
                            .await
                    ),
                    21 => format!("{:?}", store.artifacts(task).await),
                    22 => format!("{:?}", store.record_revocation(&revocation).await),
                    23 => format!("{:?}", store.revocation(agent).await),
                    24 => format!("{:?}", store.revocations(step % 7).await),
                    25 => format!("{:?}", store.put_handoff(&handoff).await),
                    27 => format!("{:?}", store.artifact(task, &value).await),
                    28 => format!(
                        "{:?}",
                        store.artifact_page(task, Some(&value), step % 3).await
                    ),
                    29 => format!("{:?}", store.artifact_page(task, None, 2).await),
                    _ => format!(
                        "{:?} {:?} {:?}",
                        store.put_approval(&approval).await,
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
