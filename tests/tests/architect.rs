//! The T4 `governance` interface end to end: an architect component reads the policy and its
//! task's ledger and proposes a tier change, which changes nothing until a person approves
//! it, once; below T4 the component is refused at load.

use std::time::Duration;

use serde_json::json;
use warden::{RunOutcome, Tier};
use warden_tests::{actions, agent, host, packet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_architects_proposal_waits_for_a_person_and_is_decided_once() {
    let host = host();
    let bytes = agent("architect");
    let refused = host
        .register_agent("arch", Tier::Executor, Some(&bytes), "test")
        .unwrap_err();
    assert!(refused.to_string().contains("governance"), "{refused}");
    host.register_agent("arch", Tier::Architect, Some(&bytes), "test")
        .unwrap();
    host.register_agent("worker", Tier::Operator, Some(&agent("hello")), "test")
        .unwrap();
    let p = packet(
        "arch",
        "t-gov",
        "propose worker T2: forty compliant runs and a clean review",
        &["governance-report.md"],
        json!({ "limits": { "approval_timeout_ms": 20000 } }),
    );
    host.submit_packet(&p).await.unwrap();
    let runner = {
        let host = host.clone();
        let bytes = bytes.clone();
        tokio::spawn(async move { host.run("arch", &bytes).await })
    };
    // T4 runs wait for approval after PLAN.
    for _ in 0..500 {
        if actions(&host, "arch")
            .iter()
            .any(|a| a == "approval.requested")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.approve("t-gov", "alice").await.unwrap();
    let report = runner.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");

    let requests = host.tier_change_requests().unwrap();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (
            r.agent.as_str(),
            r.from.as_str(),
            r.to.as_str(),
            r.status.as_str()
        ),
        ("worker", "T1", "T2", "pending")
    );
    assert_eq!(r.proposer, "arch");
    assert_eq!(
        host.ledger().agent("worker").unwrap().unwrap().tier,
        Tier::Operator,
        "a proposal changes nothing"
    );

    let decided = host
        .decide_tier_change(&r.request, true, "bob", "agreed")
        .await
        .unwrap();
    assert_eq!(decided.status, "approved");
    assert_eq!(
        host.ledger().agent("worker").unwrap().unwrap().tier,
        Tier::Builder
    );
    let again = host
        .decide_tier_change(&r.request, false, "carol", "")
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("was already approved by bob"),
        "{again}"
    );
    let history = host.agent_history("worker", 10).unwrap();
    let reason = history.tier_changes[0].fields["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("proposed by arch in run run-")
            && reason.ends_with("approved by bob: agreed"),
        "{reason}"
    );
    assert_eq!(host.tier_change_requests().unwrap()[0].status, "approved");
    assert!(host.ledger().verify().unwrap().broken.is_none());
}
