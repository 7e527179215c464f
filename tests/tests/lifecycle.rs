//! The host-owned lifecycle: order, checkpoints, the T0 stop, the approval gate and the
//! BOOTSTRAP refusals.

use serde_json::json;
use warden::state::{LockOwner, Ttl};
use warden::{AgentId, Phase, RunOutcome, Tier};
use warden_tests::{actions, agent, host, packet, run};

#[tokio::test]
async fn phases_run_in_order_with_a_checkpoint_at_each_transition() {
    let host = host();
    let p = packet("hello", "t-order", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Bootstrap,
            Phase::Preflight,
            Phase::Plan,
            Phase::Execute,
            Phase::Verify,
            Phase::Package,
            Phase::Report,
            Phase::Exit
        ]
    );
    // One `phase.enter` row per transition, in order, each written after its checkpoint.
    let entered: Vec<String> = actions(&host, "hello")
        .into_iter()
        .filter(|a| a == "phase.enter")
        .collect();
    assert_eq!(entered.len(), 7, "one transition per phase after BOOTSTRAP");
    let checkpoint = host
        .state()
        .checkpoint(&AgentId::new("hello").unwrap())
        .await
        .unwrap()
        .expect("checkpoint");
    assert_eq!(checkpoint.phase, "EXIT");
    assert_eq!(checkpoint.task_id, "t-order");
    // The lock is released at EXIT and the host wrote its plan and report artifacts.
    assert_eq!(
        host.state()
            .lock_owner(&AgentId::new("hello").unwrap())
            .await
            .unwrap(),
        None
    );
    let names: Vec<&str> = report.artifacts.iter().map(|a| a.name.as_str()).collect();
    for expected in ["plan.json", "hello.txt", "report.json"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert!(report.compliant);
    assert!(host.ledger().verify().unwrap().broken.is_none());
}

#[tokio::test]
async fn checkpoints_follow_each_phase() {
    // Each transition's row carries its phase, so the ledger shows one checkpoint per phase.
    let host = host();
    let p = packet("hello", "t-ckpt", "greet", &[], json!({}));
    run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let query = warden::ledger::LedgerQuery {
        agent_id: Some("hello".into()),
        task_id: Some("t-ckpt".into()),
        limit: Some(1000),
        ..Default::default()
    };
    let rows = host.ledger().query(&query).unwrap();
    let phases: Vec<String> = rows
        .iter()
        .filter(|r| r.action_name() == Some("phase.enter"))
        .filter_map(|r| r.phase().map(str::to_string))
        .collect();
    assert_eq!(
        phases,
        [
            "PREFLIGHT",
            "PLAN",
            "EXECUTE",
            "VERIFY",
            "PACKAGE",
            "REPORT",
            "EXIT"
        ]
    );
}

#[tokio::test]
async fn an_observer_stops_after_plan_with_its_plan_artifact() {
    let host = host();
    let p = packet("watcher", "t-observe", "look around", &[], json!({}));
    let report = run(&host, "watcher", "bench-guest", Tier::Observer, &p)
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::PlanOnly, "{report:?}");
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Bootstrap,
            Phase::Preflight,
            Phase::Plan,
            Phase::Package,
            Phase::Exit
        ]
    );
    assert!(!phases.contains(&Phase::Execute));
    assert!(report.artifacts.iter().any(|a| a.name == "plan.json"));
}

#[tokio::test]
async fn an_observer_with_a_deliverable_it_cannot_write_fails_preflight() {
    let host = host();
    let p = packet("watcher", "t-pre", "look", &["hello.txt"], json!({}));
    let report = run(&host, "watcher", "bench-guest", Tier::Observer, &p)
        .await
        .unwrap();
    match report.outcome {
        RunOutcome::Failed { code, message } => {
            assert_eq!(code, "PREFLIGHT_FAILED");
            assert!(message.contains("`hello.txt`"), "{message}");
        }
        other => panic!("expected a preflight failure, got {other:?}"),
    }
}

#[tokio::test]
async fn bootstrap_refuses_without_a_packet_and_when_locked_or_revoked() {
    let host = host();
    let bytes = agent("hello");
    host.register_agent("hello", Tier::Operator, Some(&bytes), "test")
        .unwrap();

    let err = host.run("hello", &bytes).await.unwrap_err();
    assert!(
        matches!(&err, warden::Error::Refused(r) if r.code() == "NO_INSTRUCTION_PACKET"),
        "{err}"
    );

    host.submit_packet(&packet("hello", "t-lock", "greet", &[], json!({})))
        .await
        .unwrap();
    let (hello, other) = (
        AgentId::new("hello").unwrap(),
        LockOwner::new("another-host:run").unwrap(),
    );
    let held = host
        .state()
        .acquire_lock(
            &hello,
            &other,
            Ttl::new("lock", std::time::Duration::from_secs(30)).unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(held, warden::state::LockAttempt::Acquired));
    let err = host.run("hello", &bytes).await.unwrap_err();
    assert!(
        matches!(&err, warden::Error::Refused(r) if r.code() == "CANNOT_ACQUIRE_LOCK"),
        "{err}"
    );
    assert!(err.to_string().contains("another-host:run"), "{err}");
    host.state().release_lock(&hello, &other).await.unwrap();

    host.revoke("hello", "testing", "test").await.unwrap();
    let err = host.run("hello", &bytes).await.unwrap_err();
    assert!(
        matches!(&err, warden::Error::Refused(r) if r.code() == "AGENT_PREVIOUSLY_REVOKED"),
        "{err}"
    );
    assert!(err.to_string().contains("testing"), "{err}");

    let refusals = actions(&host, "hello")
        .into_iter()
        .filter(|a| a == "bootstrap")
        .count();
    assert_eq!(refusals, 3, "each refusal is recorded");
}

#[tokio::test]
async fn unknown_agents_and_other_components_are_refused() {
    let host = host();
    let hello = agent("hello");
    let err = host.run("nobody", &hello).await.unwrap_err();
    assert!(
        matches!(&err, warden::Error::Refused(r) if r.code() == "UNKNOWN_AGENT"),
        "{err}"
    );

    host.register_agent("hello", Tier::Operator, Some(&hello), "test")
        .unwrap();
    host.submit_packet(&packet("hello", "t-bind", "greet", &[], json!({})))
        .await
        .unwrap();
    let other = agent("bench-guest");
    let err = host.run("hello", &other).await.unwrap_err();
    assert!(
        matches!(&err, warden::Error::Refused(r) if r.code() == "COMPONENT_MISMATCH"),
        "{err}"
    );
    // Re-registering binds the new component, and the change is recorded.
    host.register_agent("hello", Tier::Operator, Some(&other), "test")
        .unwrap();
    let recorded = actions(&host, "hello");
    assert!(recorded.iter().any(|a| a == "agent.rebind"), "{recorded:?}");
    host.submit_packet(&packet("hello", "t-bind", "calls:3", &[], json!({})))
        .await
        .unwrap();
    let report = host.run("hello", &other).await.unwrap();
    assert!(report.outcome.is_success(), "{report:?}");
}

#[tokio::test]
async fn an_architect_waits_for_approval() {
    let host = host();
    let p = packet(
        "arch",
        "t-approve",
        "greet",
        &["hello.txt"],
        json!({ "limits": { "approval_timeout_ms": 20000 } }),
    );
    let bytes = agent("hello");
    host.register_agent("arch", Tier::Architect, Some(&bytes), "test")
        .unwrap();
    host.submit_packet(&p).await.unwrap();
    let runner = {
        let host = host.clone();
        let bytes = bytes.clone();
        tokio::spawn(async move { host.run("arch", &bytes).await })
    };
    // The run is parked at the gate until someone approves.
    let mut waited = 0;
    while !actions(&host, "arch")
        .iter()
        .any(|a| a == "approval.requested")
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 500, "the run never reached the approval gate");
    }
    assert!(!runner.is_finished());
    host.approve("t-approve", "alice").await.unwrap();
    let report = runner.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");
    assert!(
        actions(&host, "arch")
            .iter()
            .any(|a| a == "approval.granted")
    );
}

#[tokio::test]
async fn approval_times_out() {
    let host = host();
    let p = packet(
        "arch",
        "t-noapprove",
        "greet",
        &[],
        json!({ "limits": { "approval_timeout_ms": 300 } }),
    );
    let report = run(&host, "arch", "hello", Tier::Architect, &p)
        .await
        .unwrap();
    assert!(
        matches!(&report.outcome, RunOutcome::Failed { code, .. } if code == "APPROVAL_TIMEOUT"),
        "{report:?}"
    );
    assert_eq!(
        host.state()
            .lock_owner(&AgentId::new("arch").unwrap())
            .await
            .unwrap(),
        None,
        "lock released"
    );
}

#[tokio::test]
async fn compliant_runs_promote_up_to_the_automatic_limit() {
    let host = host();
    for i in 0..5 {
        let p = packet("hello", &format!("t-promo-{i}"), "greet", &[], json!({}));
        let report = run(&host, "hello", "hello", Tier::Operator, &p)
            .await
            .unwrap();
        assert!(report.compliant, "{report:?}");
        if i < 4 {
            assert_eq!(report.promoted_to, None);
        } else {
            assert_eq!(report.promoted_to, Some(Tier::Builder));
        }
    }
    assert_eq!(
        host.ledger().agent("hello").unwrap().unwrap().tier,
        Tier::Builder
    );
}

/// A task's LLM budget lives in the state store: a second host on the same data directory
/// (another `warden` process) sees what the first spent, and a run that would go past it is
/// refused before its request is sent.
#[tokio::test]
async fn violations_demote_one_tier_once_with_the_rule_and_its_evidence() {
    // The shipped rules: 3 violations within 24h drop an agent one tier.
    let host = host();
    let scoped = json!({"constraints": {"scope": ["state:ok"]}, "error_budget": {"max_same_error_repeats": 5}});
    let p = packet(
        "probe-d",
        "t-demote-1",
        "probe: state.get a; state.get b; state.get c",
        &[],
        scoped.clone(),
    );
    let report = run(&host, "probe-d", "probe", Tier::Builder, &p)
        .await
        .unwrap();
    assert!(!report.compliant);
    assert_eq!(report.demoted_to, Some(Tier::Operator), "{report:?}");
    assert_eq!(report.promoted_to, None);
    let history = host.agent_history("probe-d", 10).unwrap();
    assert_eq!(history.agent.tier, Tier::Operator);
    let change = &history.tier_changes[0];
    let reason = change.fields["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rule `demote_after_violations`: 3 violations within 1day (runs run-"),
        "{reason}"
    );
    assert!(actions(&host, "probe-d").contains(&"agent.tier_change".to_string()));
    // Counted from the change: one more violation does not demote again.
    let p = packet("probe-d", "t-demote-2", "probe: state.get d", &[], scoped);
    let report = run(&host, "probe-d", "probe", Tier::Builder, &p)
        .await
        .unwrap();
    assert_eq!(report.demoted_to, None);
    assert_eq!(
        host.ledger().agent("probe-d").unwrap().unwrap().tier,
        Tier::Operator
    );
}

#[tokio::test]
async fn a_cooldown_holds_the_next_promotion() {
    let toml = warden::policy::BUILTIN_TIERS_TOML
        .replace("consecutive_compliant = 5", "consecutive_compliant = 1");
    assert!(
        toml.contains("cooldown = \"1h\""),
        "the shipped table has a cool-down"
    );
    let tiers = warden::TierTable::from_toml_str(&toml).unwrap();
    let host = warden_tests::builder_with("[]")
        .tiers(tiers)
        .build()
        .unwrap();
    let first = packet("hello", "t-cool-1", "greet", &[], json!({}));
    let report = run(&host, "hello", "hello", Tier::Observer, &first)
        .await
        .unwrap();
    assert_eq!(
        report.promoted_to,
        Some(Tier::Operator),
        "the registration is no tier change"
    );
    let second = packet("hello", "t-cool-2", "greet", &[], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &second)
        .await
        .unwrap();
    assert!(report.compliant);
    assert_eq!(report.promoted_to, None, "within the cool-down");
    assert_eq!(
        host.ledger().agent("hello").unwrap().unwrap().tier,
        Tier::Operator
    );
    let eligible = host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("hello".into()),
            kind: Some("promotion.eligible".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        eligible[0]
            .summary
            .contains("`cooldown` since the last tier change"),
        "{}",
        eligible[0].summary
    );
}

#[tokio::test]
async fn the_llm_budget_holds_across_runs_and_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let first = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let task = warden::TaskId::new("t-budget").unwrap();
    let p = packet("planner-a", "t-budget", "plan the work", &[], json!({}));
    run(&first, "planner-a", "planner", Tier::Operator, &p)
        .await
        .unwrap();
    let spent = first.state().tokens_spent(&task).await.unwrap();
    assert!(spent > 0, "the first run spent nothing");
    drop(first);

    // The second host's tier table leaves the task one token.
    let text = warden::policy::BUILTIN_TIERS_TOML.replacen(
        "token_budget = 40000",
        &format!("token_budget = {}", spent + 1),
        1,
    );
    let second = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .tiers(warden::TierTable::from_toml_str(&text).unwrap())
        .build()
        .unwrap();
    assert_eq!(second.state().tokens_spent(&task).await.unwrap(), spent);
    let p = packet("planner-b", "t-budget", "plan the work", &[], json!({}));
    let _ = run(&second, "planner-b", "planner", Tier::Operator, &p).await;
    assert!(
        warden_tests::violations(&second, "planner-b")
            .contains(&"TOKEN_BUDGET_EXHAUSTED".to_string()),
        "{:?}",
        warden_tests::violations(&second, "planner-b")
    );
    assert_eq!(
        second.state().tokens_spent(&task).await.unwrap(),
        spent,
        "nothing more was spent"
    );
}

/// A provider that never answers: only the phase deadline can end the call.
struct Hanging;

#[async_trait::async_trait]
impl warden::llm::LlmProvider for Hanging {
    fn name(&self) -> &str {
        "hanging"
    }

    fn default_model(&self) -> &str {
        "hanging-1"
    }

    async fn complete(
        &self,
        _request: &warden::llm::LlmRequest,
    ) -> Result<warden::llm::LlmResponse, warden::llm::LlmError> {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        Err(warden::llm::LlmError::Unavailable("woke up".into()))
    }
}

fn deadline_code(outcome: &RunOutcome) -> warden::FailureCode {
    match outcome {
        RunOutcome::Failed { code, .. } => *code,
        other => panic!("expected a failed run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_call_is_cut_at_the_phase_deadline() {
    // An LLM call that would never return, in PLAN.
    let host = warden::Host::builder()
        .llm(std::sync::Arc::new(Hanging))
        .build()
        .unwrap();
    let p = packet(
        "slow-llm",
        "t-cut-llm",
        "write the report",
        &["report.md"],
        json!({ "limits": { "phase_wall_ms": 500 } }),
    );
    let started = std::time::Instant::now();
    let report = run(&host, "slow-llm", "planner", Tier::Operator, &p)
        .await
        .unwrap();
    assert_eq!(
        deadline_code(&report.outcome),
        warden::FailureCode::DeadlineExceeded
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
    // A tool that runs past the deadline (its own timeout is a minute), in EXECUTE.
    let tools = r#"
[[tool]]
name = "sleepy"
description = "sleeps"
min_tier = "T1"
full_tier = "T1"
argv = ["/bin/sleep", "30"]
timeout = "60s"
"#;
    let llm = warden::llm::ScriptedProvider::from_toml_str(&warden_tests::planner_rules(
        r#"[{"name":"sleepy","args":[]}]"#,
    ))
    .unwrap();
    let host = warden::Host::builder()
        .tools(warden::tools::ToolRegistry::from_toml_str(tools).unwrap())
        .llm(std::sync::Arc::new(llm))
        .build()
        .unwrap();
    let p = packet(
        "slow-tool",
        "t-cut-tool",
        "write the report",
        &["report.md"],
        json!({ "limits": { "phase_wall_ms": 800 } }),
    );
    let started = std::time::Instant::now();
    let report = run(&host, "slow-tool", "planner", Tier::Operator, &p)
        .await
        .unwrap();
    assert_eq!(
        deadline_code(&report.outcome),
        warden::FailureCode::DeadlineExceeded,
        "{report:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "cut after {:?}",
        started.elapsed()
    );
    let phase = report
        .phases
        .iter()
        .find(|p| p.phase == Phase::Execute)
        .unwrap();
    assert!(phase.elapsed_ms < 3000.0, "{phase:?}");
}

/// A blob store that takes seconds per greeting (a slow disk, a remote object store); every
/// other blob (the component, the host's `plan.json`) is stored at once.
struct SlowBlobs(warden::artifacts::MemoryBlobs);

impl warden::artifacts::BlobStore for SlowBlobs {
    fn put(&self, bytes: &[u8]) -> Result<String, warden::artifacts::BlobError> {
        if bytes.starts_with(b"Hello from Warden!") {
            std::thread::sleep(std::time::Duration::from_secs(4));
        }
        self.0.put(bytes)
    }

    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, warden::artifacts::BlobError> {
        self.0.get(digest)
    }
}

/// A guest's artifact write is cut at the phase deadline, however slow the blob store: the
/// store runs on the blocking pool, off the worker that keeps the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_write_is_cut_at_the_phase_deadline() {
    let host = warden::Host::builder()
        .blobs(std::sync::Arc::new(SlowBlobs(Default::default())))
        .build()
        .unwrap();
    let p = packet(
        "slow-disk",
        "t-cut-blob",
        "greet",
        &["hello.txt"],
        json!({ "limits": { "phase_wall_ms": 500 } }),
    );
    let started = std::time::Instant::now();
    let report = run(&host, "slow-disk", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    assert_eq!(
        deadline_code(&report.outcome),
        warden::FailureCode::DeadlineExceeded,
        "{report:?}"
    );
    let phase = report
        .phases
        .iter()
        .find(|p| p.phase == Phase::Execute)
        .unwrap();
    assert!(
        phase.elapsed_ms < 2500.0,
        "EXECUTE was cut after {} ms, not at its 500 ms deadline",
        phase.elapsed_ms
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}
