//! Every automatic revocation trigger of the reference, operator revocation of a running
//! agent, and what a revocation leaves behind.

use std::time::{Duration, Instant};

use serde_json::json;
use warden::packet::RevocationKind;
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

/// A hello run at T1 in `dir` (registering on first use); the run's outcome or refusal.
async fn hello_in(host: &warden::Host, task: &str) -> Result<RunOutcome, warden::Error> {
    let p = packet("hello", task, "greet", &["hello.txt"], json!({}));
    run(host, "hello", "hello", Tier::Executor, &p)
        .await
        .map(|report| report.outcome)
}

fn refusal_code(result: Result<RunOutcome, warden::Error>) -> String {
    match result {
        Ok(outcome) => panic!("expected a refusal, got {outcome:?}"),
        Err(error) => error
            .refusal()
            .map(|r| r.code().to_string())
            .unwrap_or_else(|| panic!("expected a refusal, got {error}")),
    }
}

#[tokio::test]
async fn a_hand_edited_registry_row_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    assert_eq!(
        hello_in(&host, "t-reg-1").await.unwrap(),
        RunOutcome::Completed
    );
    host.ledger().flush().unwrap();
    assert!(host.ledger().verify().unwrap().is_intact());
    // Someone with write access to ledger.db lifts the agent to T4 in the registry alone.
    let db = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    db.execute("UPDATE agents SET tier = 4 WHERE agent_id = 'hello'", [])
        .unwrap();
    drop(db);
    let p = packet("hello", "t-reg-2", "greet", &["hello.txt"], json!({}));
    host.submit_packet(&p).await.unwrap();
    let err = host.run("hello", &agent("hello")).await.unwrap_err();
    assert_eq!(
        err.refusal().map(|r| r.code()),
        Some("REGISTRY_TAMPERED"),
        "{err}"
    );
    assert!(err.to_string().contains("tier T4"), "{err}");
    assert!(err.to_string().contains("chain records tier T3"), "{err}");
    // The refusal is recorded, and verify reports the registry even though the chain holds.
    host.ledger().flush().unwrap();
    let report = host.ledger().verify().unwrap();
    assert!(report.broken.is_none());
    assert!(!report.is_intact());
    assert_eq!(report.registry.len(), 1);
    assert_eq!(report.registry[0].agent_id, "hello");
    let rows = host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("hello".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    let refused = rows
        .iter()
        .rev()
        .find(|r| r.kind == "bootstrap")
        .expect("a bootstrap row");
    assert!(refused.summary.contains("REGISTRY_TAMPERED"), "{refused:?}");
    // A re-registration by the operator is the repair: the chain records it, runs resume.
    host.register_agent("hello", Tier::Executor, None, "alice")
        .unwrap();
    assert!(host.ledger().verify().unwrap().is_intact());
    assert_eq!(
        hello_in(&host, "t-reg-3").await.unwrap(),
        RunOutcome::Completed
    );
}

#[tokio::test]
async fn a_revocation_the_state_store_lost_still_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let bytes = agent("hello");
    host.register_agent("hello", Tier::Executor, Some(&bytes), "test")
        .unwrap();
    host.revoke("hello", "suspected exfiltration", "alice")
        .await
        .unwrap();
    // The revocation vanishes from state.db (a wiped file, a hand edit).
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let deleted = db
        .execute("DELETE FROM hashes WHERE key LIKE 'revocations:%'", [])
        .unwrap()
        + db.execute("DELETE FROM lists WHERE key LIKE 'revocations:%'", [])
            .unwrap();
    assert!(
        deleted > 0,
        "the revocation key was not where the test expects"
    );
    drop(db);
    let hello = AgentId::new("hello").unwrap();
    assert!(host.state().revocation(&hello).await.unwrap().is_none());
    assert_eq!(
        refusal_code(hello_in(&host, "t-lost-1").await),
        "AGENT_PREVIOUSLY_REVOKED"
    );
    // Put back from the ledger, with the original reason.
    let restored = host
        .state()
        .revocation(&hello)
        .await
        .unwrap()
        .expect("re-seeded");
    assert_eq!(restored.reason.kind, RevocationKind::Operator);
    assert!(restored.reason.details.contains("suspected exfiltration"));
    // Only a recorded reinstatement lifts it.
    host.reinstate("hello", "investigated: false alarm", "alice")
        .await
        .unwrap();
    assert!(host.revocation("hello").await.unwrap().is_none());
    assert!(actions(&host, "hello").contains(&"agent.reinstate".to_string()));
    assert_eq!(
        hello_in(&host, "t-lost-2").await.unwrap(),
        RunOutcome::Completed
    );
    // Reinstating what is not revoked, or without a reason, is refused.
    assert!(host.reinstate("hello", "again", "alice").await.is_err());
    host.revoke("hello", "second time", "alice").await.unwrap();
    let err = host.reinstate("hello", " ", "alice").await.unwrap_err();
    assert!(err.to_string().contains("--reason"), "{err}");
}

#[tokio::test]
async fn a_revocation_survives_a_redis_restart_without_persistence() {
    let server = warden_tests::redis_server::RedisServer::start();
    let mut server = server;
    let dir = tempfile::tempdir().unwrap();
    let state = warden::state::RedisState::connect(&server.url())
        .await
        .unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .state(std::sync::Arc::new(state))
        .build()
        .unwrap();
    let p = packet(
        "rogue",
        "t-restart",
        "attempt: forbidden-tool",
        &["evidence.md"],
        json!({ "constraints": { "forbidden": ["tool:deploy-prod*"] } }),
    );
    let report = run(&host, "rogue", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert_eq!(revoked_for(&report.outcome), "PROCEDURE_VIOLATION");
    // Redis restarts empty: every key, the revocation with them, is gone.
    server.restart();
    let rogue = AgentId::new("rogue").unwrap();
    let mut waited = Duration::ZERO;
    while host.state().revocation(&rogue).await.is_err() && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert!(host.state().revocation(&rogue).await.unwrap().is_none());
    host.submit_packet(&p).await.unwrap();
    let err = host.run("rogue", &agent("rogue")).await.unwrap_err();
    assert_eq!(
        err.refusal().map(|r| r.code()),
        Some("AGENT_PREVIOUSLY_REVOKED"),
        "{err}"
    );
    let restored = host
        .state()
        .revocation(&rogue)
        .await
        .unwrap()
        .expect("re-seeded");
    assert_eq!(restored.reason.kind, RevocationKind::ProcedureViolation);
}
