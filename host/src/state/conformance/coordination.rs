//! Conformance checks of the [`Coordination`](crate::state::Coordination) half of a store:
//! blackboard, messages, proposals and votes. [`run_all`](super::run_all) runs them.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::unique;
use crate::state::{
    CastOutcome, Message, NewMessage, NewProposal, Proposal, Resolution, ResolveOutcome, Section,
    StateError, StateStore, Vote, VoteChoice,
};

fn message<'a>(sender: &'a str, recipient: Option<&'a str>, body: &'a str) -> NewMessage<'a> {
    NewMessage {
        sender,
        recipient,
        kind: "FEEDBACK",
        body,
        sent_at_ms: 1_700_000_000_123,
    }
}

fn vote(agent: &str, choice: VoteChoice, at_ms: u64) -> Vote {
    Vote {
        agent: agent.to_string(),
        choice,
        reasoning: format!("{agent} says {}", choice.as_str()),
        at_ms,
    }
}

fn proposal<'a>(proposer: &'a str, required: &'a [String]) -> NewProposal<'a> {
    NewProposal {
        proposer,
        title: "t",
        body: "b",
        required,
        created_at_ms: 0,
    }
}

fn resolution(by: &str, note: &str) -> Resolution {
    Resolution {
        by: by.to_string(),
        note: note.to_string(),
        at_ms: 42,
    }
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

pub async fn board_sections(store: &dyn StateStore) {
    let task = unique("board");
    assert_eq!(
        store
            .board_read(&task, Section::Problem, "objective")
            .await
            .unwrap(),
        None,
        "board: unknown task has an entry"
    );
    assert!(
        store
            .board_entries(&task, Section::Problem)
            .await
            .unwrap()
            .is_empty(),
        "board: unknown task has entries"
    );
    // Keys and values are opaque: colons, spaces, quotes and non-ASCII included.
    let odd = "key: with \"quotes\" — ünïcode";
    for (key, value) in [
        ("objective", "v1"),
        ("analysis", "a"),
        (odd, "{\"json\": [1, 2]}\n"),
        ("objective", "v2"),
    ] {
        store
            .board_write(&task, Section::Problem, key, value)
            .await
            .unwrap();
    }
    store
        .board_write(&task, Section::Solutions, "objective", "a solution")
        .await
        .unwrap();
    assert_eq!(
        store
            .board_read(&task, Section::Problem, "objective")
            .await
            .unwrap()
            .as_deref(),
        Some("v2"),
        "board: a write must replace the previous value"
    );
    assert_eq!(
        store
            .board_read(&task, Section::Problem, odd)
            .await
            .unwrap()
            .as_deref(),
        Some("{\"json\": [1, 2]}\n"),
        "board: opaque key and value roundtrip"
    );
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        store.board_entries(&task, Section::Problem).await.unwrap(),
        owned(&[
            ("analysis", "a"),
            (odd, "{\"json\": [1, 2]}\n"),
            ("objective", "v2"),
        ]),
        "board: entries are sorted by key"
    );
    assert_eq!(
        store
            .board_entries(&task, Section::Solutions)
            .await
            .unwrap(),
        owned(&[("objective", "a solution")]),
        "board: sections are separate"
    );
    for section in [Section::Progress, Section::Consensus] {
        assert!(
            store
                .board_entries(&task, section)
                .await
                .unwrap()
                .is_empty(),
            "board: {section} has entries written to other sections"
        );
    }
}

pub async fn coordination_tasks_are_isolated(store: &dyn StateStore) {
    let (a, b) = (unique("coord-a"), unique("coord-b"));
    store
        .board_write(&a, Section::Progress, "status", "running")
        .await
        .unwrap();
    store
        .send_message(&a, &message("alpha", None, "for task a"))
        .await
        .unwrap();
    let required = ["alpha".to_string()];
    let proposal = proposal("alpha", &required);
    assert_eq!(store.propose(&a, &proposal).await.unwrap(), "p1");

    assert_eq!(
        store
            .board_read(&b, Section::Progress, "status")
            .await
            .unwrap(),
        None,
        "isolation: board entry leaked into another task"
    );
    assert!(
        store.messages(&b).await.unwrap().is_empty(),
        "isolation: message leaked into another task"
    );
    assert!(
        store
            .receive_messages(&b, "beta", 10)
            .await
            .unwrap()
            .is_empty(),
        "isolation: message delivered in another task"
    );
    assert_eq!(
        store.proposal(&b, "p1").await.unwrap(),
        None,
        "isolation: proposal leaked into another task"
    );
    assert!(store.proposals(&b).await.unwrap().is_empty());
    assert_eq!(
        store
            .cast_vote(&b, "p1", &vote("alpha", VoteChoice::Accept, 1))
            .await
            .unwrap(),
        CastOutcome::UnknownProposal,
        "isolation: vote on another task's proposal"
    );
    // Ids are per task.
    assert_eq!(
        store
            .send_message(&b, &message("alpha", None, "for task b"))
            .await
            .unwrap(),
        1,
        "isolation: message ids must start at 1 in every task"
    );
    assert_eq!(
        store.propose(&b, &proposal).await.unwrap(),
        "p1",
        "isolation: proposal ids must start at p1 in every task"
    );
    assert!(
        store.proposal(&a, "p1").await.unwrap().is_some()
            && store.proposal(&b, "p1").await.unwrap().is_some()
    );
    assert_eq!(
        store
            .receive_messages(&a, "beta", 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        ["for task a"],
        "isolation: receive in task a"
    );
}

pub async fn message_ids_and_order(store: &dyn StateStore) {
    let task = unique("messages");
    assert!(store.messages(&task).await.unwrap().is_empty());
    let body = "\"quoted\"\n\\ ünïcode {}";
    let sent = [
        ("alpha", None, "a1"),
        ("beta", Some("alpha"), "b1"),
        ("alpha", Some("beta"), "a2"),
        ("gamma", None, body),
        ("alpha", None, "a3"),
    ];
    for (n, &(sender, recipient, body)) in sent.iter().enumerate() {
        let id = store
            .send_message(&task, &message(sender, recipient, body))
            .await
            .unwrap();
        assert_eq!(id, n as u64 + 1, "messages: ids are 1, 2, … in send order");
    }
    let expected: Vec<Message> = sent
        .iter()
        .enumerate()
        .map(|(n, &(sender, recipient, body))| {
            message(sender, recipient, body).with_id(n as u64 + 1)
        })
        .collect();
    assert_eq!(
        store.messages(&task).await.unwrap(),
        expected,
        "messages: the log holds every message as sent, oldest first"
    );
}

pub async fn direct_and_broadcast_delivery(store: &dyn StateStore) {
    let task = unique("delivery");
    store
        .send_message(&task, &message("alpha", None, "broadcast by alpha"))
        .await
        .unwrap();
    store
        .send_message(&task, &message("alpha", Some("beta"), "alpha to beta"))
        .await
        .unwrap();
    store
        .send_message(&task, &message("beta", Some("alpha"), "beta to alpha"))
        .await
        .unwrap();
    store
        .send_message(&task, &message("gamma", None, "broadcast by gamma"))
        .await
        .unwrap();
    store
        .send_message(&task, &message("alpha", Some("alpha"), "alpha to itself"))
        .await
        .unwrap();
    let bodies = |messages: Vec<Message>| -> Vec<String> {
        messages.into_iter().map(|m| m.body).collect::<Vec<_>>()
    };
    assert_eq!(
        bodies(store.receive_messages(&task, "alpha", 100).await.unwrap()),
        ["beta to alpha", "broadcast by gamma", "alpha to itself"],
        "delivery: alpha gets what is addressed to it and others' broadcasts"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, "beta", 100).await.unwrap()),
        ["broadcast by alpha", "alpha to beta", "broadcast by gamma"],
        "delivery: beta"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, "gamma", 100).await.unwrap()),
        ["broadcast by alpha"],
        "delivery: gamma never gets its own broadcast nor others' direct messages"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, "delta", 100).await.unwrap()),
        ["broadcast by alpha", "broadcast by gamma"],
        "delivery: an agent that never sent gets the broadcasts"
    );
}

pub async fn receive_advances_the_cursor(store: &dyn StateStore) {
    let task = unique("cursor");
    for n in 1..=5 {
        store
            .send_message(&task, &message("alpha", None, &format!("m{n}")))
            .await
            .unwrap();
    }
    // Not for beta: skipped, but the cursor still moves past it.
    store
        .send_message(&task, &message("alpha", Some("gamma"), "m6"))
        .await
        .unwrap();
    assert!(
        store
            .receive_messages(&task, "beta", 0)
            .await
            .unwrap()
            .is_empty(),
        "cursor: limit 0 delivers nothing"
    );
    let first = store.receive_messages(&task, "beta", 2).await.unwrap();
    assert_eq!(ids(&first), [1, 2], "cursor: limit is respected");
    let second = store.receive_messages(&task, "beta", 2).await.unwrap();
    assert_eq!(ids(&second), [3, 4], "cursor: the rest follows next call");
    let third = store.receive_messages(&task, "beta", 10).await.unwrap();
    assert_eq!(ids(&third), [5], "cursor: the remainder");
    assert!(
        store
            .receive_messages(&task, "beta", 10)
            .await
            .unwrap()
            .is_empty(),
        "cursor: a message was delivered twice"
    );
    // gamma's cursor is its own: it starts from the beginning.
    let gamma = store.receive_messages(&task, "gamma", 3).await.unwrap();
    assert_eq!(
        ids(&gamma),
        [1, 2, 3],
        "cursor: agents' cursors are independent"
    );
    store
        .send_message(&task, &message("gamma", None, "m7"))
        .await
        .unwrap();
    assert_eq!(
        ids(&store.receive_messages(&task, "beta", 10).await.unwrap()),
        [7],
        "cursor: only messages sent since the last receive"
    );
    assert_eq!(
        ids(&store.receive_messages(&task, "gamma", 10).await.unwrap()),
        [4, 5, 6],
        "cursor: gamma continues where it stopped, without its own broadcast"
    );
    assert_eq!(
        store.messages(&task).await.unwrap().len(),
        7,
        "cursor: receiving must not remove messages from the log"
    );
}

pub async fn proposals_and_votes(store: &dyn StateStore) {
    let task = unique("consensus");
    assert!(store.proposals(&task).await.unwrap().is_empty());
    let required = ["alpha".to_string(), "beta".to_string()];
    let new = |title: &'static str| NewProposal {
        proposer: "alpha",
        title,
        body: "details \"quoted\" ünïcode",
        required: &required,
        created_at_ms: 1_700_000_000_000,
    };
    // More than nine, so id order is numeric (p10 after p9), not lexical.
    let mut opened = Vec::new();
    for n in 1..=11 {
        let id = store.propose(&task, &new("plan")).await.unwrap();
        assert_eq!(id, format!("p{n}"), "proposals: ids are p1, p2, …");
        opened.push(id);
    }
    assert_eq!(
        store
            .cast_vote(&task, "p2", &vote("beta", VoteChoice::Accept, 5))
            .await
            .unwrap(),
        CastOutcome::Recorded,
        "votes: first vote"
    );
    assert_eq!(
        store
            .cast_vote(&task, "p2", &vote("beta", VoteChoice::Reject, 9))
            .await
            .unwrap(),
        CastOutcome::AlreadyVoted(vote("beta", VoteChoice::Accept, 5)),
        "votes: the first vote stands"
    );
    for v in [
        vote("alpha", VoteChoice::Reject, 5),
        vote("gamma", VoteChoice::Abstain, 1),
    ] {
        assert_eq!(
            store.cast_vote(&task, "p2", &v).await.unwrap(),
            CastOutcome::Recorded
        );
    }
    assert_eq!(
        store
            .cast_vote(&task, "p10", &vote("beta", VoteChoice::Accept, 7))
            .await
            .unwrap(),
        CastOutcome::Recorded,
        "votes: per proposal"
    );
    for bad in ["p12", "p0", "p01", "p", "", "x1", "p1:votes", "p1 ", "P1"] {
        assert_eq!(
            store
                .cast_vote(&task, bad, &vote("beta", VoteChoice::Accept, 1))
                .await
                .unwrap(),
            CastOutcome::UnknownProposal,
            "votes: proposal `{bad}`"
        );
        assert_eq!(
            store
                .resolve_proposal(&task, bad, &resolution("alpha", "n"))
                .await
                .unwrap(),
            ResolveOutcome::UnknownProposal,
            "resolve: proposal `{bad}`"
        );
        assert_eq!(
            store.proposal(&task, bad).await.unwrap(),
            None,
            "proposal: `{bad}`"
        );
    }

    assert_eq!(
        store
            .resolve_proposal(&task, "p3", &resolution("alpha", "merged into p11"))
            .await
            .unwrap(),
        ResolveOutcome::Resolved
    );
    assert_eq!(
        store
            .resolve_proposal(&task, "p3", &resolution("beta", "withdrawn"))
            .await
            .unwrap(),
        ResolveOutcome::AlreadyResolved(resolution("alpha", "merged into p11")),
        "resolve: only once"
    );

    let p2 = store.proposal(&task, "p2").await.unwrap().unwrap();
    let expected_p2 = Proposal {
        record: new("plan").with_id("p2".into()),
        votes: vec![
            vote("gamma", VoteChoice::Abstain, 1),
            vote("alpha", VoteChoice::Reject, 5),
            vote("beta", VoteChoice::Accept, 5),
        ],
    };
    assert_eq!(
        p2, expected_p2,
        "proposal: votes oldest first, ties by agent"
    );
    assert!(
        p2.in_conflict(),
        "proposal: a required reject is a conflict"
    );

    let all = store.proposals(&task).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.record.id.as_str()).collect::<Vec<_>>(),
        opened.iter().map(String::as_str).collect::<Vec<_>>(),
        "proposals: in id order"
    );
    assert_eq!(all[1], expected_p2, "proposals: p2 with its votes");
    assert_eq!(
        all[2].record.resolution,
        Some(resolution("alpha", "merged into p11")),
        "proposals: the resolution is stored"
    );
    assert_eq!(
        all[9].votes,
        [vote("beta", VoteChoice::Accept, 7)],
        "proposals: p10's votes"
    );
    assert!(
        all.iter()
            .enumerate()
            .filter(|&(i, _)| i != 1 && i != 9)
            .all(|(_, p)| p.votes.is_empty()),
        "proposals: votes leaked between proposals"
    );
}

pub async fn coordination_ids_are_rejected(store: &dyn StateStore) {
    fn kind_of(err: StateError) -> &'static str {
        match err {
            StateError::InvalidId { kind, .. } => kind,
            other => panic!("coordination ids: expected InvalidId, got {other:?}"),
        }
    }
    let good = unique("coord-ids");
    let required = ["alpha".to_string()];
    for bad in ["", "a:b", "has space", "tab\t"] {
        let bad_required = [bad.to_string()];
        let results: Vec<(&str, &str, Result<(), StateError>)> = vec![
            (
                "board_write",
                "task",
                store
                    .board_write(bad, Section::Problem, "k", "v")
                    .await
                    .map(drop),
            ),
            (
                "board_read",
                "task",
                store.board_read(bad, Section::Problem, "k").await.map(drop),
            ),
            (
                "board_entries",
                "task",
                store.board_entries(bad, Section::Problem).await.map(drop),
            ),
            (
                "send_message task",
                "task",
                store
                    .send_message(bad, &message("alpha", None, "x"))
                    .await
                    .map(drop),
            ),
            (
                "send_message sender",
                "agent",
                store
                    .send_message(&good, &message(bad, None, "x"))
                    .await
                    .map(drop),
            ),
            (
                "send_message recipient",
                "agent",
                store
                    .send_message(&good, &message("alpha", Some(bad), "x"))
                    .await
                    .map(drop),
            ),
            (
                "receive_messages task",
                "task",
                store.receive_messages(bad, "alpha", 1).await.map(drop),
            ),
            (
                "receive_messages agent",
                "agent",
                store.receive_messages(&good, bad, 1).await.map(drop),
            ),
            ("messages", "task", store.messages(bad).await.map(drop)),
            (
                "propose task",
                "task",
                store
                    .propose(bad, &proposal("alpha", &required))
                    .await
                    .map(drop),
            ),
            (
                "propose proposer",
                "agent",
                store
                    .propose(&good, &proposal(bad, &required))
                    .await
                    .map(drop),
            ),
            (
                "propose required",
                "agent",
                store
                    .propose(&good, &proposal("alpha", &bad_required))
                    .await
                    .map(drop),
            ),
            (
                "cast_vote task",
                "task",
                store
                    .cast_vote(bad, "p1", &vote("alpha", VoteChoice::Accept, 0))
                    .await
                    .map(drop),
            ),
            (
                "cast_vote agent",
                "agent",
                store
                    .cast_vote(&good, "p1", &vote(bad, VoteChoice::Accept, 0))
                    .await
                    .map(drop),
            ),
            (
                "resolve_proposal task",
                "task",
                store
                    .resolve_proposal(bad, "p1", &resolution("alpha", "n"))
                    .await
                    .map(drop),
            ),
            (
                "resolve_proposal by",
                "agent",
                store
                    .resolve_proposal(&good, "p1", &resolution(bad, "n"))
                    .await
                    .map(drop),
            ),
            (
                "proposal",
                "task",
                store.proposal(bad, "p1").await.map(drop),
            ),
            ("proposals", "task", store.proposals(bad).await.map(drop)),
        ];
        for (op, kind, result) in results {
            let err = result.expect_err(&format!("coordination ids: {op} accepted `{bad}`"));
            assert_eq!(kind_of(err), kind, "coordination ids: {op} with `{bad}`");
        }
    }
    // Nothing was written under the good task by the rejected calls.
    assert!(store.messages(&good).await.unwrap().is_empty());
    assert!(store.proposals(&good).await.unwrap().is_empty());
}

/// 4 tasks × 50 `send_message` on one task: ids 1..=200, no gap or duplicate, and each
/// sender's messages in the order it sent them.
pub async fn concurrent_sends(store: Arc<dyn StateStore>) {
    let task = unique("concurrent-send");
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (store, task) = (Arc::clone(&store), task.clone());
            tokio::spawn(async move {
                let sender = format!("sender-{s}");
                let mut ids = Vec::new();
                for n in 0..50 {
                    let body = n.to_string();
                    ids.push(
                        store
                            .send_message(&task, &message(&sender, None, &body))
                            .await
                            .unwrap(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for sender in senders {
        let ids = sender.await.expect("concurrent_sends: a sender panicked");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "concurrent_sends: a sender's ids must increase"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "concurrent_sends: ids have gaps or duplicates"
    );
    let log = store.messages(&task).await.unwrap();
    assert_eq!(
        ids(&log),
        (1..=200).collect::<Vec<u64>>(),
        "concurrent_sends: the log's ids"
    );
    for s in 0..4 {
        let sender = format!("sender-{s}");
        let bodies: Vec<String> = log
            .iter()
            .filter(|m| m.sender == sender)
            .map(|m| m.body.clone())
            .collect();
        let sent: Vec<String> = (0..50).map(|n: u32| n.to_string()).collect();
        assert_eq!(bodies, sent, "concurrent_sends: {sender}'s order");
    }
}

/// Four concurrent receivers of one agent: every message for it is delivered exactly once.
pub async fn concurrent_receives(store: Arc<dyn StateStore>) {
    let task = unique("concurrent-receive");
    let mut for_reader = BTreeSet::new();
    for n in 0..120u32 {
        let (sender, recipient) = match n % 4 {
            0 => ("alpha", None),
            1 => ("alpha", Some("reader")),
            2 => ("alpha", Some("someone-else")),
            _ => ("reader", None),
        };
        let id = store
            .send_message(&task, &message(sender, recipient, &n.to_string()))
            .await
            .unwrap();
        if n % 4 < 2 {
            for_reader.insert(id);
        }
    }
    let receivers: Vec<_> = (0..4)
        .map(|_| {
            let (store, task) = (Arc::clone(&store), task.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store.receive_messages(&task, "reader", 3).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    assert!(batch.len() <= 3, "concurrent_receives: limit exceeded");
                    got.extend(ids(&batch));
                }
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for receiver in receivers {
        let got = receiver
            .await
            .expect("concurrent_receives: a receiver panicked");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "concurrent_receives: one receiver got messages out of order"
        );
        delivered.extend(got);
    }
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        for_reader.into_iter().collect::<Vec<_>>(),
        "concurrent_receives: a message was delivered twice or not at all"
    );
}
