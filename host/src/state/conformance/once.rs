//! Conformance of [`Once`]: every write a guest can ask for happens at most once per call.

use super::coordination::{message, proposal, resolution, vote};
use super::{artifact, unique_agent, unique_task};
use crate::state::{
    Admission, CastOutcome, Once, Quota, ResolveOutcome, RunId, Section, StateStore, VoteChoice,
};

/// A write given a [`Once`] happens once: the same call again (a resume of a run killed
/// between a write and its journal record) answers what the first did and writes nothing.
/// Another call of the run writes, and so does a different call at the same position; once
/// the run's receipt is forgotten the same call writes again (the receipt, not the data, is
/// what answered it); and a write without a `Once` always writes.
pub async fn writes_given_once_happen_once(store: &dyn StateStore) {
    let run = RunId::generate();
    let call = |seq: u64, op: &str| Once::new(&run, seq, op, "sha256:args");
    let (me, other) = (unique_agent("once"), unique_agent("once-other"));
    let t = unique_task("once");
    let none = Quota::UNLIMITED;

    // The agent's own state: a delete made again still says the key existed.
    let set = call(1, "state.set");
    assert_eq!(
        store.kv_set(&me, "k", "v", none, Some(&set)).await.unwrap(),
        Admission::Stored(())
    );
    let delete = call(2, "state.delete");
    for attempt in 0..2 {
        assert!(
            store.kv_delete(&me, "k", Some(&delete)).await.unwrap(),
            "once: the delete answers `true` on attempt {attempt}"
        );
    }
    assert_eq!(store.kv_get(&me, "k").await.unwrap(), None);
    // The receipt is of the run's last write only: an earlier call writes again.
    assert_eq!(
        store
            .kv_set(&me, "k", "v2", none, Some(&set))
            .await
            .unwrap(),
        Admission::Stored(())
    );
    assert_eq!(store.kv_get(&me, "k").await.unwrap().as_deref(), Some("v2"));

    // A message: one in the log, the same id answered.
    let body = "hello";
    let send = call(3, "messaging.send");
    let first = store
        .send_message(&t, &message(&me, Some(&other), body), none, Some(&send))
        .await
        .unwrap();
    let again = store
        .send_message(&t, &message(&me, Some(&other), body), none, Some(&send))
        .await
        .unwrap();
    assert_eq!(first, again, "once: the same message id");
    assert_eq!(
        store.messages(&t).await.unwrap().len(),
        1,
        "once: one message"
    );

    // An artifact: one version in the history.
    let put = call(4, "artifacts.put");
    for _ in 0..2 {
        assert_eq!(
            store
                .push_artifact(&t, &artifact("out.md", 7), none, Some(&put))
                .await
                .unwrap(),
            Admission::Stored(())
        );
    }
    assert_eq!(
        store.artifacts(&t).await.unwrap().len(),
        1,
        "once: one version"
    );

    // The blackboard: a write-once record is answered `true` both times.
    let write = call(5, "blackboard.write");
    for _ in 0..2 {
        assert_eq!(
            store
                .board_write(&t, Section::Solutions, "k", "v", none, Some(&write))
                .await
                .unwrap(),
            Admission::Stored(())
        );
    }
    let insert = call(6, "consensus.finalize");
    for attempt in 0..2 {
        assert!(
            store
                .board_insert(&t, Section::Consensus, "final", "{}", Some(&insert))
                .await
                .unwrap(),
            "once: the insert answers `true` on attempt {attempt}"
        );
    }

    // A proposal, a vote and a resolution: one each, each answered as the first time.
    let required = [other.clone()];
    let propose = call(7, "consensus.propose");
    let id = store
        .propose(&t, &proposal(&me, &required), Some(&propose))
        .await
        .unwrap();
    assert_eq!(
        store
            .propose(&t, &proposal(&me, &required), Some(&propose))
            .await
            .unwrap(),
        id
    );
    assert_eq!(
        store.proposals(&t).await.unwrap().len(),
        1,
        "once: one proposal"
    );
    let cast = call(8, "consensus.cast");
    for _ in 0..2 {
        assert_eq!(
            store
                .cast_vote(&t, &id, &vote(&other, VoteChoice::Accept, 1), Some(&cast))
                .await
                .unwrap(),
            CastOutcome::Recorded
        );
    }
    let resolve = call(9, "consensus.resolve");
    for _ in 0..2 {
        assert_eq!(
            store
                .resolve_proposal(&t, &id, &resolution(&me, "merged"), Some(&resolve))
                .await
                .unwrap(),
            ResolveOutcome::Resolved
        );
    }
    let settled = store.proposal(&t, &id).await.unwrap().unwrap();
    assert_eq!(settled.votes.len(), 1, "once: one vote");

    // Another call at the same position is not answered by the receipt.
    let other_call = call(9, "messaging.send");
    let sent = store
        .send_message(&t, &message(&me, None, body), none, Some(&other_call))
        .await
        .unwrap();
    assert_ne!(sent, first, "a different call writes");
    assert_eq!(store.messages(&t).await.unwrap().len(), 2);

    // Forgotten, the receipt answers nothing: the same call writes again.
    store.forget_receipt(&run).await.unwrap();
    let _ = store
        .send_message(&t, &message(&me, None, body), none, Some(&other_call))
        .await
        .unwrap();
    assert_eq!(
        store.messages(&t).await.unwrap().len(),
        3,
        "forgotten: a new write"
    );

    // Without a `Once`, every call writes.
    for _ in 0..2 {
        let _ = store
            .send_message(&t, &message(&me, None, body), none, None)
            .await
            .unwrap();
    }
    assert_eq!(store.messages(&t).await.unwrap().len(), 5);
    store.forget_receipt(&run).await.unwrap();
}
