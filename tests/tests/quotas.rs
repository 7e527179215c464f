//! A guest that floods what the host keeps (ledger notes, artifacts, state, blackboard,
//! messages, returned text) stops at its tier's quota, as shipped: the refusals are in the
//! ledger as `QUOTA_EXCEEDED`, the second one revokes it (`max_same_error_repeats`), the store
//! holds exactly the quota, and the host's memory grows by what the quota lets it keep, not
//! by what the guest tried.
//!
//! One test, run sequentially, so the peak resident set it reads (`VmHWM`) is its own: a
//! flood's growth is how far it raised the process's peak.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use serde_json::json;
use warden::ledger::LedgerQuery;
use warden::packet::RevocationKind;
use warden::state::Section;
use warden::{AgentId, FailureCode, Host, RunOutcome, TaskId, Tier};
use warden_tests::{
    agent, host, packet, peak_resident_set_bytes as rss, violation_details, violations,
};

const MIB: u64 = 1 << 20;

/// Run the rogue's `attempt` as agent `id` (T3, so every interface is linked) in its own task.
async fn flood(host: &Host, id: &str, attempt: &str) -> warden::RunReport {
    let rogue = agent("rogue");
    host.register_agent(id, Tier::Executor, Some(&rogue), "test")
        .unwrap();
    host.submit_packet(&packet(
        id,
        id,
        &format!("attempt: {attempt}"),
        &["evidence.md"],
        json!({}),
    ))
    .await
    .unwrap();
    host.run(id, &rogue).await.unwrap()
}

/// The bytes of text of every ledger row of the agent.
fn ledger_text(host: &Host, id: &str) -> usize {
    host.ledger().flush().unwrap();
    host.ledger()
        .query(&LedgerQuery {
            agent_id: Some(id.into()),
            limit: Some(100_000),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|row| serde_json::to_string(&row.fields).unwrap().len())
        .sum()
}

fn assert_stopped_at_the_quota(report: &warden::RunReport, host: &Host, id: &str, key: &str) {
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
        violations(host, id),
        ["QUOTA_EXCEEDED", "QUOTA_EXCEEDED"],
        "{id}: the refusal, then the repeat that revoked"
    );
    let details = violation_details(host, id);
    assert!(
        details.iter().all(|d| d.contains(key)),
        "{id}: the refusal names `{key}`: {details:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flood_stops_at_its_quota_with_memory_bounded() {
    let host = host();
    // Warm up: the engine, the component cache and the first instance.
    let _ = flood(&host, "warm-up", "behave").await;
    let mut growth = Vec::new();

    // Ledger notes: 1,000 per run (`[tiers.T3.ledger] max_entries_per_run`).
    let before = rss();
    let report = flood(&host, "flood-notes", "flood-notes").await;
    growth.push(("notes", rss().saturating_sub(before), 32 * MIB));
    assert_stopped_at_the_quota(&report, &host, "flood-notes", "max_entries_per_run");
    let notes = warden_tests::actions(&host, "flood-notes")
        .iter()
        .filter(|a| *a == "agent.note")
        .count();
    assert_eq!(notes, 1000);

    // State: 1,000 keys of 16 KiB (`max_keys`), 16 MB kept.
    let before = rss();
    let report = flood(&host, "flood-state", "flood-state").await;
    growth.push(("state", rss().saturating_sub(before), 16 * MIB + 48 * MIB));
    assert_stopped_at_the_quota(&report, &host, "flood-state", "max_keys");
    let keys = host
        .state()
        .kv_keys(&AgentId::new("flood-state").unwrap())
        .await
        .unwrap();
    assert_eq!(keys.len(), 1000);

    // Blackboard: 1,000 entries of 16 KiB per task (`max_entries`).
    let before = rss();
    let report = flood(&host, "flood-board", "flood-board").await;
    growth.push(("board", rss().saturating_sub(before), 16 * MIB + 48 * MIB));
    assert_stopped_at_the_quota(&report, &host, "flood-board", "max_entries");
    let task = TaskId::new("flood-board").unwrap();
    let entries = host
        .state()
        .board_entries(&task, Section::Progress)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1000);

    // Messages: 16 MiB of kind + body per task (`max_bytes`): 1,023 of 16 KiB + `FLOOD`.
    let before = rss();
    let report = flood(&host, "flood-messages", "flood-messages").await;
    growth.push((
        "messages",
        rss().saturating_sub(before),
        16 * MIB + 48 * MIB,
    ));
    assert_stopped_at_the_quota(
        &report,
        &host,
        "flood-messages",
        "[tiers.T3.messaging] max_bytes",
    );
    let task = TaskId::new("flood-messages").unwrap();
    assert_eq!(host.state().messages(&task).await.unwrap().len(), 1023);

    // Artifacts: 1,000 names per task (`max_artifacts_per_task`), the host's `plan.json`
    // among them: 999 of 64 KiB, 64 MB kept.
    let before = rss();
    let report = flood(&host, "flood-artifacts", "flood-artifacts").await;
    growth.push((
        "artifacts",
        rss().saturating_sub(before),
        64 * MIB + 64 * MIB,
    ));
    assert_stopped_at_the_quota(&report, &host, "flood-artifacts", "max_artifacts_per_task");
    let mut names = 0;
    let mut after: Option<String> = None;
    loop {
        let page = host
            .artifacts("flood-artifacts", after.as_deref(), 256)
            .await
            .unwrap();
        names += page.len();
        match page.last() {
            Some(last) => after = Some(last.name.clone()),
            None => break,
        }
    }
    assert_eq!(names, 1000);

    // A plan of 8 MiB: refused whole, the run fails, nothing of it is kept.
    let before = rss();
    let report = flood(&host, "huge-plan", "huge-plan").await;
    growth.push(("huge plan", rss().saturating_sub(before), 32 * MIB));
    assert!(
        matches!(&report.outcome, RunOutcome::Failed { code: FailureCode::QuotaExceeded, message }
            if message.contains("holds 83886") && message.contains("bytes of text, over the quota of 65536") && message.len() < 1024),
        "{:?}",
        report.outcome
    );
    assert_eq!(violations(&host, "huge-plan"), ["QUOTA_EXCEEDED"]);
    assert!(report.plan_summary.is_none(), "the plan was not kept");
    assert!(
        host.artifact_ref("huge-plan", "plan.json")
            .await
            .unwrap()
            .is_none()
    );
    assert!(ledger_text(&host, "huge-plan") < 64 * 1024);

    // An error message of 8 MiB: the run fails as the agent said, its message clipped.
    let before = rss();
    let report = flood(&host, "huge-error", "huge-error").await;
    growth.push(("huge error", rss().saturating_sub(before), 32 * MIB));
    match &report.outcome {
        RunOutcome::Failed {
            code: FailureCode::AgentError,
            message,
        } => {
            assert!(message.len() < 65536 + 256, "{}", message.len());
            assert!(
                message.ends_with("(8323072 bytes cut)"),
                "{}",
                &message[message.len() - 40..]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(ledger_text(&host, "huge-error") < 256 * 1024);

    for (flood, grew, bound) in &growth {
        eprintln!(
            "{flood}: peak resident set grew by {} MiB (bound {} MiB)",
            grew / MIB,
            bound / MIB
        );
    }
    for (flood, grew, bound) in growth {
        assert!(
            grew <= bound,
            "{flood}: the peak resident set grew by {grew} bytes, past {bound}"
        );
    }
}
