//! Ten agents flood every capability that makes the host keep something at once (two each:
//! ledger notes, artifacts, state, blackboard, messages), in one task on the embedded file
//! store, as a runaway swarm would. Each stops at its tier's quota: it is revoked on the
//! repeat of its refusal, both refusals are chained ledger rows, the task's store holds no
//! more than the quotas allow, the chain verifies, and the host's resident set stays within
//! [`RSS_BOUND`] whatever the guests tried (each of them would write gigabytes unrefused).
//!
//! Its own test binary, so the peak resident set it reads (`VmHWM`) is its own.

use serde_json::json;
use warden::ledger::{LedgerQuery, Table};
use warden::packet::RevocationKind;
use warden::state::Section;
use warden::{AgentId, RunOutcome, TaskId, Tier};
use warden_tests::{agent, builder_with, packet, peak_resident_set_bytes as rss, violations};

const MIB: u64 = 1 << 20;

/// What the host may grow by while the swarm runs: what the shipped quotas let the task keep
/// in the store's caches and queues, plus ten live instances (each a few MiB of linear
/// memory and its compiled code mapped once). Measured at about 15 MiB on this machine; unbounded,
/// the state floods alone would keep 32 GB.
const RSS_BOUND: u64 = 96 * MIB;

/// The floods, two agents each.
const FLOODS: [&str; 5] = [
    "flood-notes",
    "flood-artifacts",
    "flood-state",
    "flood-board",
    "flood-messages",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_flooding_every_capability_at_once_stays_bounded_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let host = builder_with("[]").data_dir(dir.path()).build().unwrap();
    let rogue = agent("rogue");
    let task = "swarm";

    // Warm up: the engine, the component cache and a first instance.
    host.register_agent("warm-up", Tier::Executor, Some(&rogue), "test")
        .unwrap();
    host.submit_packet(&packet(
        "warm-up",
        "warm",
        "attempt: behave",
        &[],
        json!({}),
    ))
    .await
    .unwrap();
    host.run("warm-up", &rogue).await.unwrap();

    let mut ids = Vec::new();
    for attempt in FLOODS {
        for n in 0..2 {
            let id = format!("{attempt}-{n}");
            host.register_agent(&id, Tier::Executor, Some(&rogue), "test")
                .unwrap();
            host.submit_packet(&packet(
                &id,
                task,
                &format!("attempt: {attempt}"),
                &[],
                json!({}),
            ))
            .await
            .unwrap();
            ids.push(id);
        }
    }

    let before = rss();
    let mut runs = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let (host, rogue) = (host.clone(), rogue.clone());
        runs.spawn(async move {
            let report = host.run(&id, &rogue).await.unwrap();
            (id, report)
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = runs.join_next().await {
        reports.push(done.unwrap());
    }
    let grew = rss().saturating_sub(before);
    eprintln!(
        "10 agents flooding at once: peak resident set grew by {} MiB (bound {} MiB)",
        grew / MIB,
        RSS_BOUND / MIB
    );

    // Every agent stopped at a quota: its refusal and the repeat that revoked it, both rows.
    for (id, report) in &reports {
        assert!(
            matches!(
                &report.outcome,
                RunOutcome::Revoked { reason: RevocationKind::ErrorBudgetExceeded, details }
                    if details.contains("QUOTA_EXCEEDED")
            ),
            "{id}: {:?}",
            report.outcome
        );
        assert_eq!(
            violations(&host, id),
            ["QUOTA_EXCEEDED", "QUOTA_EXCEEDED"],
            "{id}: the refusal, then the repeat that revoked"
        );
        let refused_calls = host
            .ledger()
            .query(&LedgerQuery {
                agent_id: Some(id.clone()),
                table: Some(Table::Actions),
                limit: Some(100_000),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .filter(|row| row.fields["error_type"].as_str() == Some("QUOTA_EXCEEDED"))
            .count();
        assert_eq!(refused_calls, 2, "{id}: each refused call is an action row");
    }

    // The store holds what the quotas allow and no more.
    let task_id = TaskId::new(task).unwrap();
    let state = host.state();
    for n in 0..2 {
        let keys = state
            .kv_keys(&AgentId::new(&format!("flood-state-{n}")).unwrap())
            .await
            .unwrap();
        assert_eq!(keys.len(), 1000, "`max_keys` per agent");
    }
    let board = state
        .board_entries(&task_id, Section::Progress)
        .await
        .unwrap();
    assert!(board.len() <= 1000, "{} entries", board.len());
    let messages = state.messages(&task_id).await.unwrap();
    let bytes: usize = messages.iter().map(|m| m.body.len() + m.kind.len()).sum();
    assert!(bytes as u64 <= 16 * MIB, "{bytes} bytes of messages");
    let mut names = 0;
    let mut after: Option<String> = None;
    while let Some(last) = {
        let page = host.artifacts(task, after.as_deref(), 256).await.unwrap();
        names += page.len();
        page.last().map(|a| a.name.clone())
    } {
        after = Some(last);
    }
    assert!(names <= 1000, "{names} artifacts");
    for n in 0..2 {
        let notes = warden_tests::actions(&host, &format!("flood-notes-{n}"))
            .iter()
            .filter(|a| *a == "agent.note")
            .count();
        assert_eq!(notes, 1000, "`max_entries_per_run`");
    }

    let verified = host.ledger().verify().unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    assert!(
        grew <= RSS_BOUND,
        "the peak resident set grew by {} MiB, past {} MiB",
        grew / MIB,
        RSS_BOUND / MIB
    );
}
