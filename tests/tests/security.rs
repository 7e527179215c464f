//! The security corpus: every rogue attempt is contained while a second agent in the same
//! host finishes normally.

use serde_json::json;
use warden::{RunOutcome, Tier};
use warden_tests::{agent, host, packet, violations};

/// (attempt, packet extras, how the run must end, the violation it must leave)
fn corpus() -> Vec<(
    &'static str,
    serde_json::Value,
    &'static str,
    Option<&'static str>,
)> {
    vec![
        ("secret", json!({}), "revoked", Some("TIER_DENIED")),
        ("escape", json!({}), "revoked", Some("PATH_ESCAPE")),
        (
            "forbidden-tool",
            json!({ "constraints": { "forbidden": ["tool:deploy-prod*"] } }),
            "revoked",
            Some("FORBIDDEN_ACTION"),
        ),
        (
            "spin",
            json!({ "limits": { "phase_cpu_ms": 300, "phase_wall_ms": 2000 } }),
            "failed",
            Some("DEADLINE_EXCEEDED"),
        ),
        (
            "hog",
            json!({ "limits": { "memory_bytes": 33554432 } }),
            "failed",
            Some("RESOURCE_LIMIT"),
        ),
        (
            "skip-artifact",
            json!({}),
            "revoked",
            Some("MISSING_REQUIRED_ARTIFACT"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rogue_attempt_is_contained_while_a_neighbour_completes() {
    let host = host();
    host.secrets().put("t4/root-token", "root").await.unwrap();
    let rogue = agent("rogue");
    let hello = agent("hello");
    for (attempt, extra, expected, violation) in corpus() {
        let id = format!("rogue-{attempt}");
        host.register_agent(&id, Tier::Executor, Some(&rogue), "test")
            .unwrap();
        host.submit_packet(&packet(
            &id,
            &id,
            &format!("attempt: {attempt}"),
            &["evidence.md"],
            extra,
        ))
        .await
        .unwrap();
        let neighbour = format!("hello-{attempt}");
        host.register_agent(&neighbour, Tier::Operator, Some(&hello), "test")
            .unwrap();
        host.submit_packet(&packet(
            &neighbour,
            &format!("greet-{attempt}"),
            "greet",
            &["hello.txt"],
            json!({}),
        ))
        .await
        .unwrap();

        let (rogue_report, hello_report) =
            tokio::join!(host.run(&id, &rogue), host.run(&neighbour, &hello));
        let rogue_report = rogue_report.unwrap();
        let hello_report = hello_report.unwrap();

        let ended = match &rogue_report.outcome {
            RunOutcome::Revoked { .. } => "revoked",
            RunOutcome::Failed { .. } => "failed",
            other => panic!("{attempt}: the rogue was not stopped: {other:?}"),
        };
        assert_eq!(ended, expected, "{attempt}: {:?}", rogue_report.outcome);
        if let Some(violation) = violation {
            assert!(
                violations(&host, &id).contains(&violation.to_string()),
                "{attempt}: {:?}",
                violations(&host, &id)
            );
        }
        assert_eq!(
            hello_report.outcome,
            RunOutcome::Completed,
            "neighbour of {attempt}: {hello_report:?}"
        );
        assert!(hello_report.compliant);
        assert!(violations(&host, &neighbour).is_empty());
    }
    // Nothing escaped the sandbox, and the ledger still verifies.
    assert!(!std::path::Path::new("/tmp/warden-escape.txt").exists());
    assert!(host.ledger().verify().unwrap().broken.is_none());
}

#[tokio::test]
async fn a_spinning_agent_does_not_starve_others_on_one_thread() {
    // A single-threaded runtime: the spinner must yield at every epoch tick.
    let host = host();
    let rogue = agent("rogue");
    let hello = agent("hello");
    host.register_agent("spinner", Tier::Executor, Some(&rogue), "test")
        .unwrap();
    host.submit_packet(&packet(
        "spinner",
        "t-spin",
        "attempt: spin",
        &["evidence.md"],
        json!({ "limits": { "phase_cpu_ms": 1500, "phase_wall_ms": 3000 } }),
    ))
    .await
    .unwrap();
    host.register_agent("hello", Tier::Operator, Some(&hello), "test")
        .unwrap();
    host.submit_packet(&packet("hello", "t-next", "greet", &[], json!({})))
        .await
        .unwrap();
    let spinner = host.run("spinner", &rogue);
    let neighbour = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let report = host.run("hello", &hello).await.unwrap();
        (report, started.elapsed())
    };
    let (spin_report, (hello_report, hello_took)) = tokio::join!(spinner, neighbour);
    assert!(matches!(
        spin_report.unwrap().outcome,
        RunOutcome::Failed { .. }
    ));
    assert_eq!(hello_report.outcome, RunOutcome::Completed);
    assert!(
        hello_took < std::time::Duration::from_millis(1200),
        "hello waited {hello_took:?} behind the spinner"
    );
}
