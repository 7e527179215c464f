//! Behaviour every [`StateStore`] backend must have, as a reusable async test suite.
//!
//! A backend's tests call [`run_all`] with a factory; each check gets a fresh handle from it.
//! Checks use unique agent and task ids, so a backend that persists (a file, a Redis server)
//! may hand out handles on the same data; only [`revocations_are_indexed`] reads the shared
//! revocation ledger, so run the suite against a store no one else writes to at the time.
//! Failures panic with the name of the check and what differed.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a conformance check reports a failure by panicking with what differed"
)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    AgentId, Approval, ArtifactRef, Checkpoint, ErrorCounts, GateDecision, Handoff, LockAttempt,
    LockOwner, MAX_OWNER_LEN, Packet, Quota, Revocation, StateStore, TaskId, Transition, Ttl,
};
use crate::id::MAX_ID_LEN;
use crate::packet::{
    Constraints, ErrorBudget, LastKnownState, PacketLimits, RevocationKind, RevocationReason,
};

mod coordination;
mod once;
mod quota;

pub use coordination::{
    board_insert_is_first_writer_wins, board_sections, concurrent_receives, concurrent_sends,
    coordination_ids_are_exact_keys, coordination_tasks_are_isolated,
    direct_and_broadcast_delivery, message_ids_and_order, proposals_and_votes,
    receive_advances_the_cursor,
};
pub use once::writes_given_once_happen_once;
pub use quota::{
    artifact_index_and_quota, artifact_pages_walk_the_task, board_quota_is_per_task_and_atomic,
    concurrent_artifact_writers_never_exceed_the_quota,
    concurrent_state_writers_never_exceed_the_quota, message_quota_counts_what_was_sent,
    state_quota_is_exact,
};

/// Short TTL for expiry checks: long enough for a slow CI machine to do a few round trips
/// before it passes, short enough to keep the suite quick.
const SHORT_TTL: Duration = Duration::from_millis(150);
/// Comfortably past [`SHORT_TTL`].
const PAST_SHORT_TTL: Duration = Duration::from_millis(400);
const LONG_TTL: Duration = Duration::from_secs(60);
/// A fixed RFC 3339 time for the records the checks store.
const AT: &str = "2025-01-02T03:04:05.678Z";

/// Run every check, each against a fresh handle from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn StateStore>>,
{
    packet_roundtrip(&*make().await).await;
    ids_are_exact_keys(&*make().await).await;
    kv_is_isolated_per_agent(&*make().await).await;
    error_counters(&*make().await).await;
    heartbeat_expires(&*make().await).await;
    lock_contention(&*make().await).await;
    lock_expiry_and_takeover(&*make().await).await;
    transition_requires_the_lock(&*make().await).await;
    active_agent_and_artifacts(&*make().await).await;
    revocations_are_indexed(&*make().await).await;
    handoffs_and_approvals(&*make().await).await;
    gate_decisions_are_first_writer_wins(make().await).await;
    concurrent_error_records(make().await).await;
    token_spend_is_atomic_and_per_task(make().await).await;

    board_sections(&*make().await).await;
    board_insert_is_first_writer_wins(make().await).await;
    coordination_tasks_are_isolated(&*make().await).await;
    message_ids_and_order(&*make().await).await;
    direct_and_broadcast_delivery(&*make().await).await;
    receive_advances_the_cursor(&*make().await).await;
    proposals_and_votes(&*make().await).await;
    coordination_ids_are_exact_keys(&*make().await).await;
    concurrent_sends(make().await).await;
    concurrent_receives(make().await).await;

    state_quota_is_exact(&*make().await).await;
    concurrent_state_writers_never_exceed_the_quota(make().await).await;
    artifact_index_and_quota(&*make().await).await;
    artifact_pages_walk_the_task(&*make().await).await;
    concurrent_artifact_writers_never_exceed_the_quota(make().await).await;
    board_quota_is_per_task_and_atomic(make().await).await;
    message_quota_counts_what_was_sent(make().await).await;

    writes_given_once_happen_once(&*make().await).await;
}

/// `prefix` and a fresh uuid: an id no other check (or earlier run against a persistent
/// store) uses. Prefixes of up to 31 bytes fit in [`MAX_ID_LEN`].
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A unique agent id starting with `prefix`.
fn unique_agent(prefix: &str) -> AgentId {
    agent(&unique(prefix))
}

/// A unique task id starting with `prefix`.
fn unique_task(prefix: &str) -> TaskId {
    task(&unique(prefix))
}

fn agent(id: &str) -> AgentId {
    AgentId::new(id).expect("conformance: a check made an invalid agent id")
}

fn task(id: &str) -> TaskId {
    TaskId::new(id).expect("conformance: a check made an invalid task id")
}

/// Distinct ids a sloppy backend could confuse: a unique id, the same in upper case, with
/// its `-` replaced by `_` and by `.`, and padded to [`MAX_ID_LEN`] bytes.
fn look_alikes(prefix: &str) -> Vec<String> {
    let base = unique(prefix);
    let longest = format!("{base}-{}", "x".repeat(MAX_ID_LEN - base.len() - 1));
    vec![
        base.to_uppercase(),
        base.replace('-', "_"),
        base.replace('-', "."),
        longest,
        base,
    ]
}

fn ttl(ttl: Duration) -> Ttl {
    Ttl::new("conformance", ttl).unwrap()
}

fn owner(token: &str) -> LockOwner {
    LockOwner::new(token).unwrap()
}

fn packet(agent: &AgentId, task: &TaskId, objective: &str) -> Packet {
    Packet {
        agent_id: agent.clone(),
        task_id: task.clone(),
        created_for: "conformance".into(),
        objective: objective.into(),
        deliverables: vec!["plan.md".into(), "out/report.json".into()],
        constraints: Constraints {
            required_steps: vec!["plan".into()],
            ..Constraints::default()
        },
        success_criteria: vec!["\"quoted\" ünïcode".into()],
        error_budget: ErrorBudget {
            max_total_errors: 3,
            max_same_error_repeats: 2,
            max_procedure_violations: 1,
        },
        escalation_rules: Vec::new(),
        created_at: AT.into(),
        limits: PacketLimits {
            phase_wall_ms: Some(5_000),
            ..PacketLimits::default()
        },
    }
}

fn checkpoint(task: &TaskId, phase: &str) -> Checkpoint {
    Checkpoint {
        phase: phase.into(),
        step: "enter".into(),
        task_id: task.clone(),
        component_digest: format!("sha256:{}", "ab".repeat(32)),
        at: AT.into(),
    }
}

fn artifact(name: &str, n: u64) -> ArtifactRef {
    ArtifactRef {
        name: name.into(),
        digest: format!("sha256:{n:064x}"),
        size: n,
        author: "conformance".into(),
        created_at: AT.into(),
    }
}

fn revocation(agent: &AgentId, task: Option<&TaskId>, n: usize) -> Revocation {
    Revocation {
        agent_id: agent.clone(),
        task_id: task.cloned(),
        reason: RevocationReason {
            kind: RevocationKind::Operator,
            details: format!("revocation {n}"),
        },
        revoked_by: "conformance".into(),
        revoked_at: AT.into(),
    }
}

fn handoff(task: &TaskId, previous: &AgentId, blocking_issue: &str) -> Handoff {
    Handoff {
        task_id: task.clone(),
        previous_agent_id: previous.clone(),
        revoked: true,
        revocation_reason: RevocationReason {
            kind: RevocationKind::ErrorBudgetExceeded,
            details: "3 errors".into(),
        },
        last_known_state: LastKnownState {
            phase: "EXECUTE".into(),
            step: "enter".into(),
        },
        what_was_tried: vec!["retry".into()],
        blocking_issue: blocking_issue.into(),
        required_next_actions: vec!["ask".into()],
        constraints_reminder: Vec::new(),
        artifacts: vec!["plan.md".into()],
        created_at: AT.into(),
    }
}

/// A packet reads back as stored, a second put replaces the first, and storing a packet
/// writes no checkpoint.
pub async fn packet_roundtrip(store: &dyn StateStore) {
    let agent = unique_agent("packet");
    let task = unique_task("packet");
    assert_eq!(
        store.packet(&agent).await.unwrap(),
        None,
        "packet_roundtrip: unknown agent has a packet"
    );
    let second = packet(&agent, &task, "second objective");
    store
        .put_packet(&packet(&agent, &task, "first objective"))
        .await
        .unwrap();
    store.put_packet(&second).await.unwrap();
    assert_eq!(
        store.packet(&agent).await.unwrap(),
        Some(second),
        "packet_roundtrip: the second put must replace the first"
    );
    assert_eq!(
        store.checkpoint(&agent).await.unwrap(),
        None,
        "packet_roundtrip: no checkpoint yet"
    );
}

/// Ids are exact keys: agents and tasks whose ids differ only in case or in `.`, `_` and
/// `-` are separate, and the longest id and lock owners with colons, spaces and non-ASCII
/// (up to [`MAX_OWNER_LEN`] bytes) come back exactly as given.
pub async fn ids_are_exact_keys(store: &dyn StateStore) {
    let agents: Vec<AgentId> = look_alikes("exact").iter().map(|id| agent(id)).collect();
    let tasks: Vec<TaskId> = look_alikes("exact").iter().map(|id| task(id)).collect();
    let owners: Vec<LockOwner> = (0..agents.len())
        .map(|i| match i {
            0 => owner(&"ü".repeat(MAX_OWNER_LEN / 2)),
            _ => owner(&format!("host-{i}:run {i} — ünï")),
        })
        .collect();
    for (i, ((agent, task), owner)) in agents.iter().zip(&tasks).zip(&owners).enumerate() {
        let n = i.to_string();
        store
            .kv_set(agent, "k", &n, Quota::UNLIMITED, None)
            .await
            .unwrap()
            .into_result()
            .unwrap();
        store
            .put_packet(&packet(agent, task, &format!("objective {i}")))
            .await
            .unwrap();
        assert_eq!(
            store
                .acquire_lock(agent, owner, ttl(LONG_TTL))
                .await
                .unwrap(),
            LockAttempt::Acquired,
            "exact keys: agent `{agent}` found another agent's lock"
        );
        store.set_active_agent(task, agent).await.unwrap();
    }
    for (i, ((agent, task), owner)) in agents.iter().zip(&tasks).zip(&owners).enumerate() {
        assert_eq!(
            store.kv_get(agent, "k").await.unwrap(),
            Some(i.to_string()),
            "exact keys: agent `{agent}` reads another agent's kv"
        );
        assert_eq!(
            store.packet(agent).await.unwrap(),
            Some(packet(agent, task, &format!("objective {i}"))),
            "exact keys: agent `{agent}` reads another agent's packet"
        );
        assert_eq!(
            store.lock_owner(agent).await.unwrap().as_deref(),
            Some(owner.as_str()),
            "exact keys: agent `{agent}`'s lock owner"
        );
        assert_eq!(
            store.active_agent(task).await.unwrap().as_ref(),
            Some(agent),
            "exact keys: task `{task}`'s active agent"
        );
    }
}

/// An agent's own keys are separate from other agents' and from its checkpoint, listed
/// sorted, and deleted one at a time.
pub async fn kv_is_isolated_per_agent(store: &dyn StateStore) {
    let (a, b) = (unique_agent("kv-a"), unique_agent("kv-b"));
    store
        .kv_set(&a, "k", "a1", Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .kv_set(&b, "k", "b1", Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .kv_set(&a, "z:with:colons", "a2", Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .kv_set(
            &a,
            "checkpoint",
            "not the checkpoint",
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(
        store.kv_get(&a, "k").await.unwrap().as_deref(),
        Some("a1"),
        "kv: agent a reads its own value"
    );
    assert_eq!(
        store.kv_get(&b, "k").await.unwrap().as_deref(),
        Some("b1"),
        "kv: agent b reads its own value"
    );
    assert_eq!(
        store.kv_keys(&a).await.unwrap(),
        ["checkpoint", "k", "z:with:colons"],
        "kv: keys are sorted and only the agent's"
    );
    assert_eq!(
        store.checkpoint(&a).await.unwrap(),
        None,
        "kv: a kv key named `checkpoint` must not be the checkpoint"
    );
    assert!(
        store.kv_delete(&a, "k", None).await.unwrap(),
        "kv: deleting an existing key returns true"
    );
    assert!(
        !store.kv_delete(&a, "k", None).await.unwrap(),
        "kv: deleting a missing key returns false"
    );
    assert_eq!(
        store.kv_get(&a, "k").await.unwrap(),
        None,
        "kv: deleted key still readable"
    );
    assert_eq!(
        store.kv_get(&b, "k").await.unwrap().as_deref(),
        Some("b1"),
        "kv: delete leaked into another agent"
    );
    assert!(
        store
            .kv_keys(&unique_agent("kv-none"))
            .await
            .unwrap()
            .is_empty(),
        "kv: unknown agent has keys"
    );
}

/// Errors and procedure violations are counted per agent and per signature, and reset
/// per agent.
pub async fn error_counters(store: &dyn StateStore) {
    let (agent, other) = (unique_agent("errors"), unique_agent("errors-other"));
    assert_eq!(
        store.error_counts(&agent).await.unwrap(),
        ErrorCounts::default(),
        "errors: fresh agent has counts"
    );
    for _ in 0..3 {
        store
            .record_error(&agent, "E_TIMEOUT", false)
            .await
            .unwrap();
    }
    store.record_error(&agent, "E_PARSE", true).await.unwrap();
    let after = store.record_error(&agent, "E_PARSE", false).await.unwrap();
    let expected = ErrorCounts {
        total: 5,
        procedure: 1,
        max_same: 3,
        worst_signature: Some("E_TIMEOUT".into()),
    };
    assert_eq!(
        after, expected,
        "errors: record_error returns the counts after the increment"
    );
    assert_eq!(
        store.error_counts(&agent).await.unwrap(),
        expected,
        "errors: error_counts"
    );
    store.record_error(&other, "E_OTHER", true).await.unwrap();
    store.reset_errors(&agent).await.unwrap();
    assert_eq!(
        store.error_counts(&agent).await.unwrap(),
        ErrorCounts::default(),
        "errors: reset"
    );
    assert_eq!(
        store.error_counts(&other).await.unwrap().total,
        1,
        "errors: reset leaked into another agent"
    );
}

/// A heartbeat reads back as the time of the beat until its TTL passes.
pub async fn heartbeat_expires(store: &dyn StateStore) {
    let agent = unique_agent("heartbeat");
    assert_eq!(
        store.last_heartbeat(&agent).await.unwrap(),
        None,
        "heartbeat: unknown agent has one"
    );
    let before = SystemTime::now() - Duration::from_secs(1);
    store.heartbeat(&agent, ttl(SHORT_TTL)).await.unwrap();
    let beat = store
        .last_heartbeat(&agent)
        .await
        .unwrap()
        .expect("heartbeat: missing right after the beat");
    assert!(
        beat >= before && beat <= SystemTime::now() + Duration::from_secs(1),
        "heartbeat: {beat:?} is not the time of the beat"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        store.last_heartbeat(&agent).await.unwrap(),
        None,
        "heartbeat: still present after its ttl"
    );
}

/// A live lock has one owner: only it can refresh, renew or release it.
pub async fn lock_contention(store: &dyn StateStore) {
    let agent = unique_agent("lock");
    let (a, b) = (owner("a"), owner("b"));
    let long = ttl(LONG_TTL);
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "lock: unknown agent is locked"
    );
    assert_eq!(
        store.acquire_lock(&agent, &a, long).await.unwrap(),
        LockAttempt::Acquired,
        "lock: a acquires"
    );
    assert_eq!(
        store.acquire_lock(&agent, &b, long).await.unwrap(),
        LockAttempt::Held { owner: "a".into() },
        "lock: b must see a's lock"
    );
    assert!(
        !store.refresh_lock(&agent, &b, long).await.unwrap(),
        "lock: b refreshed a's lock"
    );
    assert!(
        !store.release_lock(&agent, &b).await.unwrap(),
        "lock: b released a's lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("a"),
        "lock: owner after b's attempts"
    );
    assert!(
        store.refresh_lock(&agent, &a, long).await.unwrap(),
        "lock: a cannot refresh its lock"
    );
    assert_eq!(
        store.acquire_lock(&agent, &a, long).await.unwrap(),
        LockAttempt::Acquired,
        "lock: re-acquiring one's own lock renews it"
    );
    assert!(
        store.release_lock(&agent, &a).await.unwrap(),
        "lock: a cannot release its lock"
    );
    assert!(
        !store.release_lock(&agent, &a).await.unwrap(),
        "lock: released twice"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "lock: still owned after release"
    );
    assert_eq!(
        store.acquire_lock(&agent, &b, long).await.unwrap(),
        LockAttempt::Acquired,
        "lock: b after release"
    );
}

/// An expired lock is no one's: it cannot be refreshed and another owner can take it.
pub async fn lock_expiry_and_takeover(store: &dyn StateStore) {
    let agent = unique_agent("lock-expiry");
    let (a, b) = (owner("a"), owner("b"));
    assert_eq!(
        store
            .acquire_lock(&agent, &a, ttl(SHORT_TTL))
            .await
            .unwrap(),
        LockAttempt::Acquired,
        "lock expiry: a acquires"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "lock expiry: expired lock still owned"
    );
    assert!(
        !store.refresh_lock(&agent, &a, ttl(LONG_TTL)).await.unwrap(),
        "lock expiry: an expired lock was refreshed"
    );
    assert_eq!(
        store.acquire_lock(&agent, &b, ttl(LONG_TTL)).await.unwrap(),
        LockAttempt::Acquired,
        "lock expiry: b cannot take over an expired lock"
    );
    assert!(
        !store.release_lock(&agent, &a).await.unwrap(),
        "lock expiry: a released b's lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("b"),
        "lock expiry: owner after takeover"
    );
}

/// A transition writes its checkpoint and heartbeat and extends the lock only while its
/// owner holds the lock, and always returns the error counts.
pub async fn transition_requires_the_lock(store: &dyn StateStore) {
    let agent = unique_agent("transition");
    let task = unique_task("transition");
    let (run_1, run_2) = (owner("run-1"), owner("run-2"));
    let (nolock, plan, execute) = (
        checkpoint(&task, "NOLOCK"),
        checkpoint(&task, "PLAN"),
        checkpoint(&task, "EXECUTE"),
    );
    let step = |checkpoint| Transition {
        agent: &agent,
        owner: &run_1,
        lock_ttl: ttl(LONG_TTL),
        heartbeat_ttl: ttl(LONG_TTL),
        checkpoint,
    };
    store.record_error(&agent, "E", true).await.unwrap();

    let lost = store.transition(&step(&nolock)).await.unwrap();
    assert!(
        !lost.lock_held,
        "transition: reported a lock that was never taken"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "transition: must not acquire the lock"
    );
    assert_eq!(
        store.checkpoint(&agent).await.unwrap(),
        None,
        "transition: wrote a checkpoint without the lock"
    );

    // A short lock that the transition extends: it must outlive its original TTL.
    store
        .acquire_lock(&agent, &run_1, ttl(SHORT_TTL))
        .await
        .unwrap();
    let held = store.transition(&step(&plan)).await.unwrap();
    assert!(held.lock_held, "transition: lock not held by its owner");
    assert_eq!(held.errors.total, 1, "transition: error counts");
    assert_eq!(held.errors.procedure, 1, "transition: procedure count");
    assert_eq!(
        store.checkpoint(&agent).await.unwrap().as_ref(),
        Some(&plan),
        "transition: checkpoint"
    );
    assert!(
        store.last_heartbeat(&agent).await.unwrap().is_some(),
        "transition: no heartbeat"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("run-1"),
        "transition: did not refresh the lock ttl"
    );

    // Another run takes the lock: the old run's transition must write nothing.
    assert!(store.release_lock(&agent, &run_1).await.unwrap());
    store
        .acquire_lock(&agent, &run_2, ttl(LONG_TTL))
        .await
        .unwrap();
    store.record_error(&agent, "E", false).await.unwrap();
    let stale = store.transition(&step(&execute)).await.unwrap();
    assert!(
        !stale.lock_held,
        "transition: run-1 still holds run-2's lock"
    );
    assert_eq!(
        stale.errors.total, 2,
        "transition: counts must be returned when the lock is lost"
    );
    assert_eq!(
        stale.errors.max_same, 2,
        "transition: same-signature count when the lock is lost"
    );
    assert_eq!(
        store.checkpoint(&agent).await.unwrap().as_ref(),
        Some(&plan),
        "transition: overwrote the checkpoint without the lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("run-2"),
        "transition: stole the lock"
    );
}

/// A task's active agent is the last one set; its artifacts are listed oldest first and
/// only its own.
pub async fn active_agent_and_artifacts(store: &dyn StateStore) {
    let (task, other) = (unique_task("task"), unique_task("task-other"));
    let (agent_1, agent_2) = (agent("agent-1"), agent("agent-2"));
    assert_eq!(
        store.active_agent(&task).await.unwrap(),
        None,
        "task: unknown task has an active agent"
    );
    store.set_active_agent(&task, &agent_1).await.unwrap();
    store.set_active_agent(&task, &agent_2).await.unwrap();
    assert_eq!(
        store.active_agent(&task).await.unwrap(),
        Some(agent_2),
        "task: active agent"
    );
    assert!(
        store.artifacts(&task).await.unwrap().is_empty(),
        "artifacts: unknown task has artifacts"
    );
    let expected: Vec<ArtifactRef> = (0..5)
        .map(|i| artifact(&format!("out/{i}.txt"), i))
        .collect();
    for artifact in &expected {
        store
            .push_artifact(&task, artifact, Quota::UNLIMITED, None)
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    store
        .push_artifact(&other, &artifact("other.txt", 99), Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(
        store.artifacts(&task).await.unwrap(),
        expected,
        "artifacts: oldest first, only the task's"
    );
}

/// Revocations are indexed per agent however many came after, listed newest first, and
/// the limit is honoured.
pub async fn revocations_are_indexed(store: &dyn StateStore) {
    let old = unique_agent("revoked-long-ago");
    let task = unique_task("revoked");
    store
        .record_revocation(&revocation(&old, Some(&task), 0))
        .await
        .unwrap();
    let mut others = Vec::new();
    for n in 1..=100 {
        let agent = unique_agent("revoked");
        store
            .record_revocation(&revocation(&agent, None, n))
            .await
            .unwrap();
        others.push(agent);
    }
    assert_eq!(
        store.revocation(&old).await.unwrap(),
        Some(revocation(&old, Some(&task), 0)),
        "revocations: an agent revoked before 100 others must still be revoked"
    );
    assert_eq!(
        store.revocation(&unique_agent("never")).await.unwrap(),
        None,
        "revocations: never-revoked agent"
    );
    let newest: Vec<Revocation> = others
        .iter()
        .enumerate()
        .rev()
        .take(3)
        .map(|(i, a)| revocation(a, None, i + 1))
        .collect();
    assert_eq!(
        store.revocations(3).await.unwrap(),
        newest,
        "revocations: newest first"
    );
    assert!(
        store.revocations(0).await.unwrap().is_empty(),
        "revocations: limit 0"
    );

    store
        .record_revocation(&revocation(&old, None, 101))
        .await
        .unwrap();
    assert_eq!(
        store.revocation(&old).await.unwrap(),
        Some(revocation(&old, None, 101)),
        "revocations: per-agent lookup returns the latest record"
    );
    assert_eq!(
        store.revocations(1).await.unwrap(),
        [revocation(&old, None, 101)],
        "revocations: newest first after re-revocation"
    );

    // Reinstatement lifts the standing, not the history.
    assert!(
        store.clear_revocation(&old).await.unwrap(),
        "revocations: clearing a revoked agent"
    );
    assert_eq!(
        store.revocation(&old).await.unwrap(),
        None,
        "revocations: a reinstated agent is still revoked"
    );
    assert!(
        !store.clear_revocation(&old).await.unwrap(),
        "revocations: clearing twice"
    );
    assert_eq!(
        store.revocations(1).await.unwrap(),
        [revocation(&old, None, 101)],
        "revocations: reinstatement erased the history"
    );
}

/// A pipeline gate is decided once: of many deciders racing, exactly one is stored and every
/// other is told the winner's decision; rounds and stages are apart.
pub async fn gate_decisions_are_first_writer_wins(store: Arc<dyn StateStore>) {
    let run = unique_task("gate");
    let decision = |by: &str, approved: bool, round: u32| GateDecision {
        run: run.clone(),
        stage: "review".into(),
        round,
        approved,
        decided_by: by.into(),
        comment: "ok: ünï".into(),
        decided_at: AT.into(),
        timed_out: false,
    };
    assert_eq!(
        store.gate_decision(&run, "review", 0).await.unwrap(),
        None,
        "gate: undecided"
    );
    let mut racers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        let d = decision(&format!("decider-{n}"), n % 2 == 0, 0);
        racers.spawn(async move { (d.clone(), store.decide_gate(&d).await.unwrap()) });
    }
    let mut winners = Vec::new();
    let mut told = Vec::new();
    while let Some(joined) = racers.join_next().await {
        let (mine, earlier) = joined.unwrap();
        match earlier {
            None => winners.push(mine),
            Some(first) => told.push(first),
        }
    }
    assert_eq!(winners.len(), 1, "gate: exactly one decision is stored");
    assert!(
        told.iter().all(|t| *t == winners[0]),
        "gate: every later decider is told the first decision"
    );
    assert_eq!(
        store
            .gate_decision(&run, "review", 0)
            .await
            .unwrap()
            .as_ref(),
        Some(&winners[0]),
        "gate: the stored decision reads back"
    );
    assert_eq!(
        store
            .decide_gate(&decision("later", true, 1))
            .await
            .unwrap(),
        None,
        "gate: a new round is decided apart"
    );
    assert_eq!(
        store.gate_decision(&run, "deploy", 0).await.unwrap(),
        None,
        "gate: stages are apart"
    );
}

/// A task's latest handoff and its approval read back as stored, and only for that task.
pub async fn handoffs_and_approvals(store: &dyn StateStore) {
    let (task, other) = (unique_task("handoff"), unique_task("handoff-other"));
    let (first, second) = (unique_agent("handoff-1"), unique_agent("handoff-2"));
    assert_eq!(
        store.handoff(&task).await.unwrap(),
        None,
        "handoff: unknown task"
    );
    assert_eq!(
        store.approval(&task).await.unwrap(),
        None,
        "approval: unknown task"
    );
    let latest = handoff(&task, &second, "still blocked");
    let approval = Approval {
        task_id: task.clone(),
        approved_by: "operator: ünï".into(),
        approved_at: AT.into(),
    };
    store
        .put_handoff(&handoff(&task, &first, "blocked"))
        .await
        .unwrap();
    store.put_handoff(&latest).await.unwrap();
    store.put_approval(&approval).await.unwrap();
    assert_eq!(
        store.handoff(&task).await.unwrap(),
        Some(latest),
        "handoff: latest wins"
    );
    assert_eq!(
        store.approval(&task).await.unwrap(),
        Some(approval),
        "approval: roundtrip"
    );
    assert_eq!(
        store.handoff(&other).await.unwrap(),
        None,
        "handoff: leaked into another task"
    );
    assert_eq!(
        store.approval(&other).await.unwrap(),
        None,
        "approval: leaked into another task"
    );
}

/// 16 tasks × 50 `record_error` on one agent: no increment may be lost.
pub async fn concurrent_error_records(store: Arc<dyn StateStore>) {
    let agent = unique_agent("concurrent");
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (store, agent) = (Arc::clone(&store), agent.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    store
                        .record_error(&agent, "E_SAME", task % 2 == 0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("concurrent_error_records: a writer panicked");
    }
    let counts = store.error_counts(&agent).await.unwrap();
    assert_eq!(
        counts,
        ErrorCounts {
            total: 800,
            procedure: 400,
            max_same: 800,
            worst_signature: Some("E_SAME".into()),
        },
        "concurrent_error_records: increments were lost"
    );
}

/// The task's LLM spend: charges from many callers at once all count, and each task has its
/// own.
pub async fn token_spend_is_atomic_and_per_task(store: Arc<dyn StateStore>) {
    let (task, other) = (unique_task("tokens"), unique_task("tokens-other"));
    assert_eq!(
        store.tokens_spent(&task).await.unwrap(),
        0,
        "token_spend: a new task has spent something"
    );
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (store, task) = (Arc::clone(&store), task.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    store.charge_tokens(&task, 3).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("token_spend: a writer panicked");
    }
    assert_eq!(
        store.tokens_spent(&task).await.unwrap(),
        600,
        "token_spend: charges were lost"
    );
    assert_eq!(
        store.charge_tokens(&task, 0).await.unwrap(),
        600,
        "token_spend: a charge returns the total"
    );
    assert_eq!(
        store.tokens_spent(&other).await.unwrap(),
        0,
        "token_spend: tasks share a counter"
    );
}
