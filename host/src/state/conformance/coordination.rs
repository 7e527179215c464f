//! Conformance checks of the [`Coordination`](crate::state::Coordination) half of a store:
//! blackboard, messages, proposals and votes. [`run_all`](super::run_all) runs them.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{agent, look_alikes, task, unique_task};
use crate::state::{
    Admission, AgentId, CastOutcome, Message, NewMessage, NewProposal, Proposal, Quota, Resolution,
    ResolveOutcome, Section, StateStore, TaskId, Vote, VoteChoice,
};

pub(super) fn message<'a>(
    sender: &'a AgentId,
    recipient: Option<&'a AgentId>,
    body: &'a str,
) -> NewMessage<'a> {
    NewMessage {
        sender,
        recipient,
        kind: "FEEDBACK",
        body,
        sent_at_ms: 1_700_000_000_123,
    }
}

pub(super) fn vote(agent: &AgentId, choice: VoteChoice, at_ms: u64) -> Vote {
    Vote {
        agent: agent.clone(),
        choice,
        reasoning: format!("{agent} says {}", choice.as_str()),
        at_ms,
    }
}

pub(super) fn proposal<'a>(proposer: &'a AgentId, required: &'a [AgentId]) -> NewProposal<'a> {
    NewProposal {
        proposer,
        title: "t",
        body: "b",
        required,
        voters: required,
        quorum: 1,
        created_at_ms: 0,
    }
}

pub(super) fn resolution(by: &AgentId, note: &str) -> Resolution {
    Resolution {
        by: by.clone(),
        note: note.to_string(),
        at_ms: 42,
    }
}

/// The agents the checks talk about.
fn agents<const N: usize>(names: [&str; N]) -> [AgentId; N] {
    names.map(agent)
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

/// Blackboard entries are opaque, replaced by a write, sorted by key and separate per
/// section.
pub async fn board_sections(store: &dyn StateStore) {
    let task = unique_task("board");
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
            .board_write(&task, Section::Problem, key, value, Quota::UNLIMITED, None)
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    store
        .board_write(
            &task,
            Section::Solutions,
            "objective",
            "a solution",
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
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

/// A record set once (the final decision): the first insert wins and later ones change
/// nothing, even when they race.
pub async fn board_insert_is_first_writer_wins(store: Arc<dyn StateStore>) {
    let task = unique_task("insert");
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (store, task) = (store.clone(), task.clone());
            tokio::spawn(async move {
                let value = format!("decision {i}");
                let won = store
                    .board_insert(&task, Section::Consensus, "final", &value, None)
                    .await
                    .unwrap();
                (won, value)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (won, value) = racer.await.unwrap();
        if won {
            winners.push(value);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "board insert: exactly one winner, got {winners:?}"
    );
    assert_eq!(
        store
            .board_read(&task, Section::Consensus, "final")
            .await
            .unwrap(),
        Some(winners[0].clone()),
        "board insert: the winner's value stands"
    );
    assert!(
        store
            .board_insert(&task, Section::Progress, "final", "other section", None)
            .await
            .unwrap(),
        "board insert: per section"
    );
    // The two inserted entries count against the task's blackboard like any write: a quota
    // of two entries admits no third.
    let quota = Quota {
        max_entries: 2,
        max_bytes: u64::MAX,
    };
    let third = store
        .board_write(&task, Section::Problem, "third", "x", quota, None)
        .await
        .unwrap();
    assert!(
        matches!(third, Admission::Refused(_)),
        "board insert: inserted entries are counted, got {third:?}"
    );
}

/// A task's board, messages and proposals are its own, and message and proposal ids
/// start afresh in every task.
pub async fn coordination_tasks_are_isolated(store: &dyn StateStore) {
    let (a, b) = (unique_task("coord-a"), unique_task("coord-b"));
    let [alpha, beta] = agents(["alpha", "beta"]);
    store
        .board_write(
            &a,
            Section::Progress,
            "status",
            "running",
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .send_message(
            &a,
            &message(&alpha, None, "for task a"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let required = [alpha.clone()];
    let proposal = proposal(&alpha, &required);
    assert_eq!(store.propose(&a, &proposal, None).await.unwrap(), "p1");

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
            .receive_messages(&b, &beta, 10)
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
            .cast_vote(&b, "p1", &vote(&alpha, VoteChoice::Accept, 1), None)
            .await
            .unwrap(),
        CastOutcome::UnknownProposal,
        "isolation: vote on another task's proposal"
    );
    // Ids are per task.
    assert_eq!(
        store
            .send_message(
                &b,
                &message(&alpha, None, "for task b"),
                Quota::UNLIMITED,
                None
            )
            .await
            .unwrap()
            .into_result()
            .unwrap(),
        1,
        "isolation: message ids must start at 1 in every task"
    );
    assert_eq!(
        store.propose(&b, &proposal, None).await.unwrap(),
        "p1",
        "isolation: proposal ids must start at p1 in every task"
    );
    assert!(
        store.proposal(&a, "p1").await.unwrap().is_some()
            && store.proposal(&b, "p1").await.unwrap().is_some()
    );
    assert_eq!(
        store
            .receive_messages(&a, &beta, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        ["for task a"],
        "isolation: receive in task a"
    );
}

/// Messages get ids 1, 2, … in send order and the log holds them as sent.
pub async fn message_ids_and_order(store: &dyn StateStore) {
    let task = unique_task("messages");
    let [alpha, beta, gamma] = agents(["alpha", "beta", "gamma"]);
    assert!(store.messages(&task).await.unwrap().is_empty());
    let body = "\"quoted\"\n\\ ünïcode {}";
    let sent = [
        (&alpha, None, "a1"),
        (&beta, Some(&alpha), "b1"),
        (&alpha, Some(&beta), "a2"),
        (&gamma, None, body),
        (&alpha, None, "a3"),
    ];
    for (n, &(sender, recipient, body)) in sent.iter().enumerate() {
        let id = store
            .send_message(
                &task,
                &message(sender, recipient, body),
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
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

/// An agent receives what is addressed to it and the broadcasts of others.
pub async fn direct_and_broadcast_delivery(store: &dyn StateStore) {
    let task = unique_task("delivery");
    let [alpha, beta, gamma, delta] = agents(["alpha", "beta", "gamma", "delta"]);
    store
        .send_message(
            &task,
            &message(&alpha, None, "broadcast by alpha"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .send_message(
            &task,
            &message(&alpha, Some(&beta), "alpha to beta"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .send_message(
            &task,
            &message(&beta, Some(&alpha), "beta to alpha"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .send_message(
            &task,
            &message(&gamma, None, "broadcast by gamma"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store
        .send_message(
            &task,
            &message(&alpha, Some(&alpha), "alpha to itself"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let bodies = |messages: Vec<Message>| -> Vec<String> {
        messages.into_iter().map(|m| m.body).collect::<Vec<_>>()
    };
    assert_eq!(
        bodies(store.receive_messages(&task, &alpha, 100).await.unwrap()),
        ["beta to alpha", "broadcast by gamma", "alpha to itself"],
        "delivery: alpha gets what is addressed to it and others' broadcasts"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, &beta, 100).await.unwrap()),
        ["broadcast by alpha", "alpha to beta", "broadcast by gamma"],
        "delivery: beta"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, &gamma, 100).await.unwrap()),
        ["broadcast by alpha"],
        "delivery: gamma never gets its own broadcast nor others' direct messages"
    );
    assert_eq!(
        bodies(store.receive_messages(&task, &delta, 100).await.unwrap()),
        ["broadcast by alpha", "broadcast by gamma"],
        "delivery: an agent that never sent gets the broadcasts"
    );
}

/// Receiving advances the agent's own cursor past what it read, limit honoured, without
/// removing messages from the log.
pub async fn receive_advances_the_cursor(store: &dyn StateStore) {
    let task = unique_task("cursor");
    let [alpha, beta, gamma] = agents(["alpha", "beta", "gamma"]);
    for n in 1..=5 {
        store
            .send_message(
                &task,
                &message(&alpha, None, &format!("m{n}")),
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    // Not for beta: skipped, but the cursor still moves past it.
    store
        .send_message(
            &task,
            &message(&alpha, Some(&gamma), "m6"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert!(
        store
            .receive_messages(&task, &beta, 0)
            .await
            .unwrap()
            .is_empty(),
        "cursor: limit 0 delivers nothing"
    );
    let first = store.receive_messages(&task, &beta, 2).await.unwrap();
    assert_eq!(ids(&first), [1, 2], "cursor: limit is respected");
    let second = store.receive_messages(&task, &beta, 2).await.unwrap();
    assert_eq!(ids(&second), [3, 4], "cursor: the rest follows next call");
    let third = store.receive_messages(&task, &beta, 10).await.unwrap();
    assert_eq!(ids(&third), [5], "cursor: the remainder");
    assert!(
        store
            .receive_messages(&task, &beta, 10)
            .await
            .unwrap()
            .is_empty(),
        "cursor: a message was delivered twice"
    );
    // gamma's cursor is its own: it starts from the beginning.
    let gamma_got = store.receive_messages(&task, &gamma, 3).await.unwrap();
    assert_eq!(
        ids(&gamma_got),
        [1, 2, 3],
        "cursor: agents' cursors are independent"
    );
    store
        .send_message(&task, &message(&gamma, None, "m7"), Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(
        ids(&store.receive_messages(&task, &beta, 10).await.unwrap()),
        [7],
        "cursor: only messages sent since the last receive"
    );
    assert_eq!(
        ids(&store.receive_messages(&task, &gamma, 10).await.unwrap()),
        [4, 5, 6],
        "cursor: gamma continues where it stopped, without its own broadcast"
    );
    assert_eq!(
        store.messages(&task).await.unwrap().len(),
        7,
        "cursor: receiving must not remove messages from the log"
    );
    // A resumed run puts its cursor back to what its journal says it read.
    store.rewind_inbox(&task, &beta, 3).await.unwrap();
    assert_eq!(
        ids(&store.receive_messages(&task, &beta, 10).await.unwrap()),
        [4, 5, 7],
        "rewind: delivery starts after the given message, skipping others' as before"
    );
    store.rewind_inbox(&task, &gamma, 0).await.unwrap();
    assert_eq!(
        ids(&store.receive_messages(&task, &gamma, 2).await.unwrap()),
        [1, 2],
        "rewind: 0 starts at the beginning of the log"
    );
    let fresh = unique_task("cursor-rewind");
    store.rewind_inbox(&fresh, &beta, 0).await.unwrap();
    assert!(
        store
            .receive_messages(&fresh, &beta, 10)
            .await
            .unwrap()
            .is_empty(),
        "rewind: a task with no messages still has none"
    );
}

/// Proposal ids are `p1`, `p2`, … in numeric order; the first vote and the first
/// resolution stand; votes are listed oldest first.
pub async fn proposals_and_votes(store: &dyn StateStore) {
    let task = unique_task("consensus");
    let [alpha, beta, gamma] = agents(["alpha", "beta", "gamma"]);
    assert!(store.proposals(&task).await.unwrap().is_empty());
    let required = [alpha.clone(), beta.clone()];
    let voters = [alpha.clone(), beta.clone(), gamma.clone()];
    let new = |title: &'static str| NewProposal {
        proposer: &alpha,
        title,
        body: "details \"quoted\" ünïcode",
        required: &required,
        voters: &voters,
        quorum: 3,
        created_at_ms: 1_700_000_000_000,
    };
    // More than nine, so id order is numeric (p10 after p9), not lexical.
    let mut opened = Vec::new();
    for n in 1..=11 {
        let id = store.propose(&task, &new("plan"), None).await.unwrap();
        assert_eq!(id, format!("p{n}"), "proposals: ids are p1, p2, …");
        opened.push(id);
    }
    assert_eq!(
        store
            .cast_vote(&task, "p2", &vote(&beta, VoteChoice::Accept, 5), None)
            .await
            .unwrap(),
        CastOutcome::Recorded,
        "votes: first vote"
    );
    assert_eq!(
        store
            .cast_vote(&task, "p2", &vote(&beta, VoteChoice::Reject, 9), None)
            .await
            .unwrap(),
        CastOutcome::AlreadyVoted(vote(&beta, VoteChoice::Accept, 5)),
        "votes: the first vote stands"
    );
    for v in [
        vote(&alpha, VoteChoice::Reject, 5),
        vote(&gamma, VoteChoice::Abstain, 1),
    ] {
        assert_eq!(
            store.cast_vote(&task, "p2", &v, None).await.unwrap(),
            CastOutcome::Recorded
        );
    }
    assert_eq!(
        store
            .cast_vote(&task, "p10", &vote(&beta, VoteChoice::Accept, 7), None)
            .await
            .unwrap(),
        CastOutcome::Recorded,
        "votes: per proposal"
    );
    for bad in ["p12", "p0", "p01", "p", "", "x1", "p1:votes", "p1 ", "P1"] {
        assert_eq!(
            store
                .cast_vote(&task, bad, &vote(&beta, VoteChoice::Accept, 1), None)
                .await
                .unwrap(),
            CastOutcome::UnknownProposal,
            "votes: proposal `{bad}`"
        );
        assert_eq!(
            store
                .resolve_proposal(&task, bad, &resolution(&alpha, "n"), None)
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
            .resolve_proposal(&task, "p3", &resolution(&alpha, "merged into p11"), None)
            .await
            .unwrap(),
        ResolveOutcome::Resolved
    );
    assert_eq!(
        store
            .resolve_proposal(&task, "p3", &resolution(&beta, "withdrawn"), None)
            .await
            .unwrap(),
        ResolveOutcome::AlreadyResolved(resolution(&alpha, "merged into p11")),
        "resolve: only once"
    );

    let p2 = store.proposal(&task, "p2").await.unwrap().unwrap();
    let expected_p2 = Proposal {
        record: new("plan").with_id("p2".into()),
        votes: vec![
            vote(&gamma, VoteChoice::Abstain, 1),
            vote(&alpha, VoteChoice::Reject, 5),
            vote(&beta, VoteChoice::Accept, 5),
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
        Some(resolution(&alpha, "merged into p11")),
        "proposals: the resolution is stored"
    );
    assert_eq!(
        all[9].votes,
        [vote(&beta, VoteChoice::Accept, 7)],
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

/// Ids are exact keys here too: tasks whose ids differ only in case or in `.`, `_` and `-`
/// have separate boards, message logs and proposal sequences, agents whose ids differ so
/// have separate receive cursors and votes, and the longest ids come back exactly as given.
pub async fn coordination_ids_are_exact_keys(store: &dyn StateStore) {
    let tasks: Vec<TaskId> = look_alikes("exact").iter().map(|id| task(id)).collect();
    let agents: Vec<AgentId> = look_alikes("exact").iter().map(|id| agent(id)).collect();
    for (i, (task, author)) in tasks.iter().zip(&agents).enumerate() {
        let n = i.to_string();
        store
            .board_write(
                task,
                Section::Progress,
                "status",
                &n,
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
        store
            .send_message(task, &message(author, None, &n), Quota::UNLIMITED, None)
            .await
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(
            store
                .propose(task, &proposal(author, &agents), None)
                .await
                .unwrap(),
            "p1",
            "exact keys: task `{task}` continues another task's proposal ids"
        );
    }
    for (i, (task, author)) in tasks.iter().zip(&agents).enumerate() {
        let n = i.to_string();
        assert_eq!(
            store
                .board_read(task, Section::Progress, "status")
                .await
                .unwrap(),
            Some(n.clone()),
            "exact keys: task `{task}` reads another task's board"
        );
        assert_eq!(
            store.messages(task).await.unwrap(),
            [message(author, None, &n).with_id(1)],
            "exact keys: task `{task}` reads another task's messages"
        );
        assert_eq!(
            store.proposals(task).await.unwrap(),
            [Proposal {
                record: proposal(author, &agents).with_id("p1".into()),
                votes: Vec::new(),
            }],
            "exact keys: task `{task}` reads another task's proposals"
        );
    }

    // One task, look-alike agents: each has its own cursor, deliveries and vote.
    let room = unique_task("exact-room");
    let sender = agent("sender");
    store
        .send_message(
            &room,
            &message(&sender, None, "to all"),
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    for (i, agent) in agents.iter().enumerate() {
        store
            .send_message(
                &room,
                &message(&sender, Some(agent), &format!("to {i}")),
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    for (i, agent) in agents.iter().enumerate() {
        let bodies: Vec<String> = store
            .receive_messages(&room, agent, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(
            bodies,
            ["to all".to_string(), format!("to {i}")],
            "exact keys: agent `{agent}` shares another agent's cursor or messages"
        );
    }
    assert_eq!(
        store
            .propose(&room, &proposal(&sender, &agents), None)
            .await
            .unwrap(),
        "p1"
    );
    let votes: Vec<Vote> = (0u64..)
        .zip(&agents)
        .map(|(at_ms, agent)| vote(agent, VoteChoice::Accept, at_ms))
        .collect();
    for v in &votes {
        assert_eq!(
            store.cast_vote(&room, "p1", v, None).await.unwrap(),
            CastOutcome::Recorded,
            "exact keys: agent `{}`'s vote was taken for another agent's",
            v.agent
        );
    }
    let p1 = store
        .proposal(&room, "p1")
        .await
        .unwrap()
        .expect("exact keys: the proposal is gone");
    assert_eq!(p1.votes, votes, "exact keys: every look-alike's vote");
    assert_eq!(
        p1.record.required, agents,
        "exact keys: the required agents as given"
    );
    assert!(
        p1.tally().reached,
        "exact keys: every required agent accepted"
    );
}

/// 4 tasks × 50 `send_message` on one task: ids 1..=200, no gap or duplicate, and each
/// sender's messages in the order it sent them.
pub async fn concurrent_sends(store: Arc<dyn StateStore>) {
    let task = unique_task("concurrent-send");
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (store, task) = (Arc::clone(&store), task.clone());
            tokio::spawn(async move {
                let sender = agent(&format!("sender-{s}"));
                let mut ids = Vec::new();
                for n in 0..50 {
                    let body = n.to_string();
                    ids.push(
                        store
                            .send_message(
                                &task,
                                &message(&sender, None, &body),
                                Quota::UNLIMITED,
                                None,
                            )
                            .await
                            .unwrap()
                            .into_result()
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
        let sender = agent(&format!("sender-{s}"));
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
    let task = unique_task("concurrent-receive");
    let [alpha, reader, someone_else] = agents(["alpha", "reader", "someone-else"]);
    let mut for_reader = BTreeSet::new();
    for n in 0..120u32 {
        let (sender, recipient) = match n % 4 {
            0 => (&alpha, None),
            1 => (&alpha, Some(&reader)),
            2 => (&alpha, Some(&someone_else)),
            _ => (&reader, None),
        };
        let id = store
            .send_message(
                &task,
                &message(sender, recipient, &n.to_string()),
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
        if n % 4 < 2 {
            for_reader.insert(id);
        }
    }
    let receivers: Vec<_> = (0..4)
        .map(|_| {
            let (store, task, reader) = (Arc::clone(&store), task.clone(), reader.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store.receive_messages(&task, &reader, 3).await.unwrap();
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
