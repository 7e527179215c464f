//! Behaviour every [`StateStore`] backend must have, as a reusable async test suite.
//!
//! A backend's tests call [`run_all`] with a factory; each check gets a fresh handle from it.
//! Checks use unique agent and task ids, so a backend that persists (a file, a Redis server)
//! may hand out handles on the same data; only [`revocations_are_indexed`] reads the shared
//! revocation ledger, so run the suite against a store no one else writes to at the time.
//! Failures panic with the name of the check and what differed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{ErrorCounts, LockAttempt, StateError, StateStore, Transition};

mod coordination;

pub use coordination::{
    board_sections, concurrent_receives, concurrent_sends, coordination_ids_are_rejected,
    coordination_tasks_are_isolated, direct_and_broadcast_delivery, message_ids_and_order,
    proposals_and_votes, receive_advances_the_cursor,
};

/// Short TTL for expiry checks: long enough for a slow CI machine to do a few round trips
/// before it passes, short enough to keep the suite quick.
const SHORT_TTL: Duration = Duration::from_millis(150);
/// Comfortably past [`SHORT_TTL`].
const PAST_SHORT_TTL: Duration = Duration::from_millis(400);
const LONG_TTL: Duration = Duration::from_secs(60);

/// Run every check, each against a fresh handle from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn StateStore>>,
{
    packet_roundtrip(&*make().await).await;
    invalid_ids_are_rejected(&*make().await).await;
    kv_is_isolated_per_agent(&*make().await).await;
    error_counters(&*make().await).await;
    heartbeat_expires(&*make().await).await;
    lock_contention(&*make().await).await;
    lock_expiry_and_takeover(&*make().await).await;
    transition_requires_the_lock(&*make().await).await;
    active_agent_and_artifacts(&*make().await).await;
    revocations_are_indexed(&*make().await).await;
    handoffs_and_approvals(&*make().await).await;
    concurrent_error_records(make().await).await;

    board_sections(&*make().await).await;
    coordination_tasks_are_isolated(&*make().await).await;
    message_ids_and_order(&*make().await).await;
    direct_and_broadcast_delivery(&*make().await).await;
    receive_advances_the_cursor(&*make().await).await;
    proposals_and_votes(&*make().await).await;
    coordination_ids_are_rejected(&*make().await).await;
    concurrent_sends(make().await).await;
    concurrent_receives(make().await).await;
}

/// An id no other check (or earlier run against a persistent store) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn packet_roundtrip(store: &dyn StateStore) {
    let agent = unique("packet");
    assert_eq!(
        store.packet(&agent).await.unwrap(),
        None,
        "packet_roundtrip: unknown agent has a packet"
    );
    store.put_packet(&agent, r#"{"v":1}"#).await.unwrap();
    store.put_packet(&agent, r#"{"v":2}"#).await.unwrap();
    assert_eq!(
        store.packet(&agent).await.unwrap().as_deref(),
        Some(r#"{"v":2}"#),
        "packet_roundtrip: the second put must replace the first"
    );
    assert_eq!(
        store.checkpoint(&agent).await.unwrap(),
        None,
        "packet_roundtrip: no checkpoint yet"
    );
}

pub async fn invalid_ids_are_rejected(store: &dyn StateStore) {
    for bad in ["", "a:lock", "has space"] {
        let err = store
            .packet(bad)
            .await
            .expect_err("invalid_ids_are_rejected: agent id accepted");
        assert!(
            matches!(err, StateError::InvalidId { kind: "agent", .. }),
            "invalid_ids_are_rejected: agent `{bad}` gave {err:?}"
        );
        let err = store
            .artifacts(bad)
            .await
            .expect_err("invalid_ids_are_rejected: task id accepted");
        assert!(
            matches!(err, StateError::InvalidId { kind: "task", .. }),
            "invalid_ids_are_rejected: task `{bad}` gave {err:?}"
        );
    }
    let err = store
        .heartbeat("ok", Duration::from_micros(10))
        .await
        .expect_err("invalid_ids_are_rejected: sub-millisecond ttl accepted");
    assert!(
        matches!(err, StateError::InvalidTtl { .. }),
        "invalid_ids_are_rejected: {err:?}"
    );
}

pub async fn kv_is_isolated_per_agent(store: &dyn StateStore) {
    let (a, b) = (unique("kv-a"), unique("kv-b"));
    store.kv_set(&a, "k", "a1").await.unwrap();
    store.kv_set(&b, "k", "b1").await.unwrap();
    store.kv_set(&a, "z:with:colons", "a2").await.unwrap();
    store
        .kv_set(&a, "checkpoint", "not the checkpoint")
        .await
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
        store.kv_delete(&a, "k").await.unwrap(),
        "kv: deleting an existing key returns true"
    );
    assert!(
        !store.kv_delete(&a, "k").await.unwrap(),
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
        store.kv_keys(&unique("kv-none")).await.unwrap().is_empty(),
        "kv: unknown agent has keys"
    );
}

pub async fn error_counters(store: &dyn StateStore) {
    let (agent, other) = (unique("errors"), unique("errors-other"));
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

pub async fn heartbeat_expires(store: &dyn StateStore) {
    let agent = unique("heartbeat");
    assert_eq!(
        store.last_heartbeat(&agent).await.unwrap(),
        None,
        "heartbeat: unknown agent has one"
    );
    let before = SystemTime::now() - Duration::from_secs(1);
    store.heartbeat(&agent, SHORT_TTL).await.unwrap();
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

pub async fn lock_contention(store: &dyn StateStore) {
    let agent = unique("lock");
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "lock: unknown agent is locked"
    );
    assert_eq!(
        store.acquire_lock(&agent, "a", LONG_TTL).await.unwrap(),
        LockAttempt::Acquired,
        "lock: a acquires"
    );
    assert_eq!(
        store.acquire_lock(&agent, "b", LONG_TTL).await.unwrap(),
        LockAttempt::Held { owner: "a".into() },
        "lock: b must see a's lock"
    );
    assert!(
        !store.refresh_lock(&agent, "b", LONG_TTL).await.unwrap(),
        "lock: b refreshed a's lock"
    );
    assert!(
        !store.release_lock(&agent, "b").await.unwrap(),
        "lock: b released a's lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("a"),
        "lock: owner after b's attempts"
    );
    assert!(
        store.refresh_lock(&agent, "a", LONG_TTL).await.unwrap(),
        "lock: a cannot refresh its lock"
    );
    assert_eq!(
        store.acquire_lock(&agent, "a", LONG_TTL).await.unwrap(),
        LockAttempt::Acquired,
        "lock: re-acquiring one's own lock renews it"
    );
    assert!(
        store.release_lock(&agent, "a").await.unwrap(),
        "lock: a cannot release its lock"
    );
    assert!(
        !store.release_lock(&agent, "a").await.unwrap(),
        "lock: released twice"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap(),
        None,
        "lock: still owned after release"
    );
    assert_eq!(
        store.acquire_lock(&agent, "b", LONG_TTL).await.unwrap(),
        LockAttempt::Acquired,
        "lock: b after release"
    );
}

pub async fn lock_expiry_and_takeover(store: &dyn StateStore) {
    let agent = unique("lock-expiry");
    assert_eq!(
        store.acquire_lock(&agent, "a", SHORT_TTL).await.unwrap(),
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
        !store.refresh_lock(&agent, "a", LONG_TTL).await.unwrap(),
        "lock expiry: an expired lock was refreshed"
    );
    assert_eq!(
        store.acquire_lock(&agent, "b", LONG_TTL).await.unwrap(),
        LockAttempt::Acquired,
        "lock expiry: b cannot take over an expired lock"
    );
    assert!(
        !store.release_lock(&agent, "a").await.unwrap(),
        "lock expiry: a released b's lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("b"),
        "lock expiry: owner after takeover"
    );
}

pub async fn transition_requires_the_lock(store: &dyn StateStore) {
    let agent = unique("transition");
    let step = |checkpoint_json| Transition {
        agent: &agent,
        owner: "run-1",
        lock_ttl: LONG_TTL,
        heartbeat_ttl: LONG_TTL,
        checkpoint_json,
    };
    store.record_error(&agent, "E", true).await.unwrap();

    let lost = store
        .transition(&step(r#"{"phase":"NOLOCK"}"#))
        .await
        .unwrap();
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
        .acquire_lock(&agent, "run-1", SHORT_TTL)
        .await
        .unwrap();
    let held = store
        .transition(&step(r#"{"phase":"PLAN"}"#))
        .await
        .unwrap();
    assert!(held.lock_held, "transition: lock not held by its owner");
    assert_eq!(held.errors.total, 1, "transition: error counts");
    assert_eq!(held.errors.procedure, 1, "transition: procedure count");
    assert_eq!(
        store.checkpoint(&agent).await.unwrap().as_deref(),
        Some(r#"{"phase":"PLAN"}"#),
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
    assert!(store.release_lock(&agent, "run-1").await.unwrap());
    store.acquire_lock(&agent, "run-2", LONG_TTL).await.unwrap();
    store.record_error(&agent, "E", false).await.unwrap();
    let stale = store
        .transition(&step(r#"{"phase":"EXECUTE"}"#))
        .await
        .unwrap();
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
        store.checkpoint(&agent).await.unwrap().as_deref(),
        Some(r#"{"phase":"PLAN"}"#),
        "transition: overwrote the checkpoint without the lock"
    );
    assert_eq!(
        store.lock_owner(&agent).await.unwrap().as_deref(),
        Some("run-2"),
        "transition: stole the lock"
    );
}

pub async fn active_agent_and_artifacts(store: &dyn StateStore) {
    let (task, other) = (unique("task"), unique("task-other"));
    assert_eq!(
        store.active_agent(&task).await.unwrap(),
        None,
        "task: unknown task has an active agent"
    );
    store.set_active_agent(&task, "agent-1").await.unwrap();
    store.set_active_agent(&task, "agent-2").await.unwrap();
    assert_eq!(
        store.active_agent(&task).await.unwrap().as_deref(),
        Some("agent-2"),
        "task: active agent"
    );
    assert!(
        store.artifacts(&task).await.unwrap().is_empty(),
        "artifacts: unknown task has artifacts"
    );
    for i in 0..5 {
        store
            .push_artifact(&task, &format!(r#"{{"n":{i}}}"#))
            .await
            .unwrap();
    }
    store
        .push_artifact(&other, r#"{"n":"other"}"#)
        .await
        .unwrap();
    let expected: Vec<String> = (0..5).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    assert_eq!(
        store.artifacts(&task).await.unwrap(),
        expected,
        "artifacts: oldest first, only the task's"
    );
}

pub async fn revocations_are_indexed(store: &dyn StateStore) {
    let old = unique("revoked-long-ago");
    let record = |agent: &str, n: usize| format!(r#"{{"agent_id":"{agent}","n":{n}}}"#);
    store
        .record_revocation(&old, &record(&old, 0))
        .await
        .unwrap();
    let mut others = Vec::new();
    for n in 1..=100 {
        let agent = unique("revoked");
        store
            .record_revocation(&agent, &record(&agent, n))
            .await
            .unwrap();
        others.push(agent);
    }
    assert_eq!(
        store.revocation(&old).await.unwrap(),
        Some(record(&old, 0)),
        "revocations: an agent revoked before 100 others must still be revoked"
    );
    assert_eq!(
        store.revocation(&unique("never")).await.unwrap(),
        None,
        "revocations: never-revoked agent"
    );
    let newest: Vec<String> = others
        .iter()
        .enumerate()
        .rev()
        .take(3)
        .map(|(i, a)| record(a, i + 1))
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
        .record_revocation(&old, &record(&old, 101))
        .await
        .unwrap();
    assert_eq!(
        store.revocation(&old).await.unwrap(),
        Some(record(&old, 101)),
        "revocations: per-agent lookup returns the latest record"
    );
    assert_eq!(
        store.revocations(1).await.unwrap(),
        [record(&old, 101)],
        "revocations: newest first after re-revocation"
    );
}

pub async fn handoffs_and_approvals(store: &dyn StateStore) {
    let (task, other) = (unique("handoff"), unique("handoff-other"));
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
    store.put_handoff(&task, r#"{"h":1}"#).await.unwrap();
    store.put_handoff(&task, r#"{"h":2}"#).await.unwrap();
    store
        .put_approval(&task, r#"{"approved":true}"#)
        .await
        .unwrap();
    assert_eq!(
        store.handoff(&task).await.unwrap().as_deref(),
        Some(r#"{"h":2}"#),
        "handoff: latest wins"
    );
    assert_eq!(
        store.approval(&task).await.unwrap().as_deref(),
        Some(r#"{"approved":true}"#),
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
    let agent = unique("concurrent");
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
