//! Every automatic revocation trigger of the reference, operator revocation of a running
//! agent, and what a revocation leaves behind.

use std::time::{Duration, Instant};

use serde_json::json;
use warden::{AgentId, RunOutcome, Tier};
use warden_tests::{actions, agent, host, packet, run, violations};

fn revoked_for(outcome: &RunOutcome) -> &str {
    match outcome {
        RunOutcome::Revoked { reason, .. } => reason.as_str(),
        other => panic!("expected a revocation, got {other:?}"),
    }
}

#[tokio::test]
async fn a_forbidden_action_is_a_procedure_violation_and_revokes() {
    let host = host();
    let p = packet(
        "rogue",
        "t-forbid",
        "attempt: forbidden-tool",
        &["evidence.md"],
        json!({ "constraints": { "forbidden": ["tool:deploy-prod*"] } }),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "PROCEDURE_VIOLATION");
    assert_eq!(report.budget.procedure_violations, 1);
    assert_eq!(violations(&host, "rogue"), ["FORBIDDEN_ACTION"]);
    // Revocation: recorded, handoff written, lock released, refused at the next bootstrap.
    assert!(actions(&host, "rogue").contains(&"agent.revoke".to_string()));
    assert!(
        host.state()
            .revocation(&AgentId::new("rogue").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        host.state()
            .lock_owner(&AgentId::new("rogue").unwrap())
            .await
            .unwrap(),
        None
    );
    let handoff = host.handoff("t-forbid").await.unwrap().expect("handoff");
    assert!(handoff.revoked);
    assert_eq!(handoff.previous_agent_id, "rogue");
    assert_eq!(handoff.revocation_reason.kind, "PROCEDURE_VIOLATION");
    assert_eq!(handoff.last_known_state.phase, "EXECUTE");
    assert!(
        handoff
            .what_was_tried
            .iter()
            .any(|t| t.contains("tools.invoke")),
        "{:?}",
        handoff.what_was_tried
    );
    assert!(
        handoff
            .constraints_reminder
            .iter()
            .any(|c| c.contains("tool:deploy-prod*"))
    );
    assert!(!handoff.required_next_actions.is_empty());
    let err = host.run("rogue", &agent("rogue")).await.unwrap_err();
    assert!(
        err.to_string().contains("AGENT_PREVIOUSLY_REVOKED"),
        "{err}"
    );
}

#[tokio::test]
async fn the_same_error_repeated_revokes() {
    let host = host();
    let p = packet(
        "rogue",
        "t-same",
        "attempt: secret",
        &["evidence.md"],
        json!({}),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "ERROR_BUDGET_EXCEEDED");
    assert_eq!(report.budget.max_same_error, 2);
    if let RunOutcome::Revoked { details, .. } = &report.outcome {
        assert!(details.contains("repeated 2 times"), "{details}");
    }
}

#[tokio::test]
async fn total_errors_revoke() {
    let host = host();
    // Three different errors, a budget of three.
    let p = packet(
        "rogue",
        "t-total",
        "attempt: escape",
        &["evidence.md"],
        json!({ "error_budget": { "max_total_errors": 1, "max_same_error_repeats": 5, "max_procedure_violations": 5 } }),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "ERROR_BUDGET_EXCEEDED");
    if let RunOutcome::Revoked { details, .. } = &report.outcome {
        assert!(details.contains("`max_total_errors` is 1"), "{details}");
    }
}

#[tokio::test]
async fn a_missing_required_artifact_after_execute_revokes() {
    let host = host();
    let p = packet(
        "rogue",
        "t-skip",
        "attempt: skip-artifact",
        &["evidence.md"],
        json!({}),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "MISSING_REQUIRED_ARTIFACT");
    assert_eq!(violations(&host, "rogue"), ["MISSING_REQUIRED_ARTIFACT"]);
    let handoff = host.handoff("t-skip").await.unwrap().unwrap();
    assert!(
        handoff.blocking_issue.contains("`evidence.md`"),
        "{}",
        handoff.blocking_issue
    );
}

#[tokio::test]
async fn an_escape_attempt_is_a_procedure_violation() {
    let host = host();
    let p = packet(
        "rogue",
        "t-escape",
        "attempt: escape",
        &["evidence.md"],
        json!({}),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "PROCEDURE_VIOLATION");
    assert!(violations(&host, "rogue").contains(&"PATH_ESCAPE".to_string()));
    assert!(!std::path::Path::new("/tmp/warden-escape.txt").exists());
}

#[tokio::test]
async fn operator_revocation_interrupts_a_running_agent_at_once() {
    let host = host();
    // A spinning agent with a long deadline: only revocation can stop it early.
    let p = packet(
        "spinner",
        "t-oprevoke",
        "attempt: spin",
        &["evidence.md"],
        json!({}),
    );
    let bytes = agent("rogue");
    host.register_agent("spinner", Tier::Executor, Some(&bytes), "test")
        .unwrap();
    host.submit_packet(&p).await.unwrap();
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run("spinner", &bytes).await })
    };
    while !host.running().contains(&"spinner".to_string()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked_at = Instant::now();
    host.revoke("spinner", "operator pulled the plug", "alice")
        .await
        .unwrap();
    let report = runner.await.unwrap().unwrap();
    let stopped_after = revoked_at.elapsed();
    assert_eq!(revoked_for(&report.outcome), "OPERATOR");
    assert!(
        stopped_after < Duration::from_secs(1),
        "stopped {stopped_after:?} after revocation"
    );
    assert!(host.handoff("t-oprevoke").await.unwrap().is_some());
}

#[tokio::test]
async fn revocation_recorded_by_another_process_stops_the_run() {
    // Two hosts sharing one state file stand in for two processes on one machine.
    let dir = tempfile::tempdir().unwrap();
    let a = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let b = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let bytes = agent("rogue");
    a.register_agent("spinner", Tier::Executor, Some(&bytes), "test")
        .unwrap();
    a.submit_packet(&packet(
        "spinner",
        "t-remote",
        "attempt: spin",
        &["evidence.md"],
        json!({}),
    ))
    .await
    .unwrap();
    let runner = {
        let a = a.clone();
        tokio::spawn(async move { a.run("spinner", &bytes).await })
    };
    while !a.running().contains(&"spinner".to_string()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked_at = Instant::now();
    b.revoke("spinner", "revoked from the other host", "bob")
        .await
        .unwrap();
    let report = runner.await.unwrap().unwrap();
    assert_eq!(revoked_for(&report.outcome), "OPERATOR");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked_at.elapsed()
    );
    assert!(a.ledger().verify().unwrap().broken.is_none());
}
