//! Run identity, the journal and `Host::replay`: a recorded run re-executed offline answers the
//! same calls in the same order; a tampered journal, another component and another call are
//! each named.

use serde_json::json;
use warden::ledger::{LedgerQuery, RunFilter, Table};
use warden::replay::{ReplayError, ReplayOptions};
use warden::{Error, RunId, RunOutcome, Tier};
use warden_tests::{agent, host, packet, run};

#[expect(
    clippy::expect_used,
    reason = "test helper: a report without a run id fails the test"
)]
fn run_id(report: &warden::RunReport) -> RunId {
    RunId::new(&report.run_id).expect("a run id")
}

#[tokio::test]
async fn every_row_of_a_run_names_it_and_the_runs_index_follows_it() {
    let host = host();
    let p = packet("hello", "t-ids", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let id = run_id(&report);
    host.ledger().flush().unwrap();
    let rows = host
        .ledger()
        .query(&LedgerQuery {
            agent_id: Some("hello".into()),
            task_id: Some("t-ids".into()),
            table: Some(Table::Actions),
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    // Every row from BOOTSTRAP to EXIT; the operator's `packet.submit` before it is no run's.
    let rows: Vec<_> = rows.iter().filter(|r| r.kind != "packet.submit").collect();
    assert!(rows.len() > 10, "{rows:?}");
    for row in &rows {
        assert_eq!(
            row.fields.get("run_id").and_then(|v| v.as_str()),
            Some(id.as_str()),
            "{row:?}"
        );
    }
    let found = host.ledger().run(&id).unwrap().expect("runs row");
    assert_eq!(
        (found.status.as_str(), found.phase.as_str()),
        ("completed", "EXIT")
    );
    assert_eq!(found.outcome.as_deref(), Some("COMPLETED"));
    assert!(found.calls > 0, "{found:?}");
    let listed = host
        .ledger()
        .runs(&RunFilter {
            agent: Some("hello".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    // A second run is a second id, listed first.
    let second = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let listed = host.ledger().runs(&RunFilter::default()).unwrap();
    assert_eq!(listed[0].run_id, second.run_id);
    assert_ne!(second.run_id, report.run_id);
    assert!(host.ledger().verify().unwrap().broken.is_none());
}

#[tokio::test]
async fn a_completed_run_replays_identical_without_touching_the_live_host() {
    let host = host();
    let p = packet("hello", "t-replay", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    let rows_before = host.ledger().verify().unwrap().rows;
    let replay = host
        .replay(&run_id(&report), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(replay.verdict, "identical", "{replay:#?}");
    assert_eq!(replay.replay_outcome, "COMPLETED");
    assert_eq!(replay.replayed_records, replay.recorded_records);
    assert!(replay.divergence.is_none());
    let execute = replay
        .phases
        .iter()
        .find(|p| p.phase == "EXECUTE")
        .expect("EXECUTE replayed");
    assert!(
        execute.calls.contains(&"artifacts.put".to_string()),
        "{execute:?}"
    );
    // Nothing of the replay went into the live ledger.
    host.ledger().flush().unwrap();
    assert_eq!(host.ledger().verify().unwrap().rows, rows_before);
}

#[tokio::test]
async fn a_run_with_llm_and_tools_replays_offline() {
    let host = warden_tests::builder_with(r#"["ls"]"#).build().unwrap();
    let p = packet("planner", "t-replay-llm", "plan the work", &[], json!({}));
    let report = run(&host, "planner", "planner", Tier::Operator, &p)
        .await
        .unwrap();
    assert!(report.outcome.is_success(), "{report:?}");
    let replay = host
        .replay(&run_id(&report), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(replay.verdict, "identical", "{replay:#?}");
    let calls: Vec<&String> = replay.phases.iter().flat_map(|p| &p.calls).collect();
    assert!(calls.iter().any(|c| *c == "llm.complete"), "{calls:?}");
    assert!(calls.iter().any(|c| *c == "tools.list"), "{calls:?}");
}

#[tokio::test]
async fn a_revoked_run_replays_each_refused_call_as_it_happened() {
    let host = host();
    let p = packet(
        "rogue",
        "t-replay-rogue",
        "attempt: forbidden-tool",
        &["evidence.md"],
        json!({ "constraints": { "forbidden": ["tool:deploy-prod*"] } }),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Revoked { .. }),
        "{report:?}"
    );
    let replay = host
        .replay(&run_id(&report), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(replay.verdict, "identical", "{replay:#?}");
    assert_eq!(replay.recorded_status, "revoked");
    assert_eq!(replay.replay_outcome, "REPLAY_ENDED");
}

#[tokio::test]
async fn a_failed_run_replays_identical() {
    let host = host();
    // T0 may not write `hello.txt`: PREFLIGHT fails before the guest runs a phase.
    let p = packet("hello", "t-replay-fail", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Observer, &p)
        .await
        .unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Failed { .. }),
        "{report:?}"
    );
    let replay = host
        .replay(&run_id(&report), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(replay.verdict, "identical", "{replay:#?}");
    assert_eq!(replay.replay_outcome, "PREFLIGHT_FAILED");
}

#[tokio::test]
async fn another_component_is_refused_unless_allowed_and_then_diverges_at_its_first_call() {
    let host = host();
    let p = packet(
        "hello",
        "t-replay-other",
        "greet",
        &["hello.txt"],
        json!({}),
    );
    let report = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let id = run_id(&report);
    let other = agent("probe");
    let refused = host
        .replay(
            &id,
            ReplayOptions {
                component: Some(other.clone()),
                allow_other_digest: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            Error::Replay(ReplayError::ComponentMismatch { .. })
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("--allow-other-digest"),
        "{refused}"
    );
    let replay = host
        .replay(
            &id,
            ReplayOptions {
                component: Some(other),
                allow_other_digest: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(replay.verdict, "diverged", "{replay:#?}");
    let divergence = replay.divergence.expect("a divergence");
    assert!(divergence.expected.contains('`'), "{divergence:?}");
    assert_ne!(divergence.expected, divergence.actual);
    assert_eq!(replay.replay_outcome, "REPLAY_DIVERGED");
}

#[tokio::test]
async fn a_tampered_journal_payload_is_refused_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let p = packet("hello", "t-tamper", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let id = run_id(&report);
    host.ledger().flush().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
        let changed = conn
            .execute(
                "UPDATE journal SET payload = CAST('{\"Ok\":\"forged\"}' AS BLOB) \
                 WHERE run_id = ?1 AND seq = (SELECT MIN(seq) FROM journal WHERE run_id = ?1 AND op = 'artifacts.put')",
                [id.as_str()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let error = host
        .replay(&id, ReplayOptions::default())
        .await
        .unwrap_err();
    let Error::Replay(ReplayError::Tampered { op, row, .. }) = &error else {
        panic!("expected JOURNAL_TAMPERED, got {error}");
    };
    assert_eq!(op, "artifacts.put");
    assert!(*row > 0);
    assert!(error.to_string().starts_with("JOURNAL_TAMPERED"), "{error}");
}
