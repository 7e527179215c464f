//! Multi-agent coordination end to end: the blackboard, messaging and consensus capabilities
//! and the orchestrator's spawn conditions, each test run on the embedded store (a data
//! directory: SQLite state shared by processes) and on a real `redis-server`.
//!
//! Agents are `coord-probe` instances whose scripts the test writes to the blackboard
//! (`problem/script:<agent>`); each writes how every call ended to `progress/<agent>`.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::sync::Arc;
use std::time::Duration;

use warden::TaskId;
use warden::llm::ScriptedProvider;
use warden::orchestrator::{SpawnConditions, SpawnReason, TaskMetrics, TaskSpec};
use warden::state::{Quota, RedisState, Section};
use warden::{Host, Tier};
use warden_tests::redis_server::RedisServer;
use warden_tests::{actions, agent, packet, violations};

fn tid(task: &str) -> TaskId {
    TaskId::new(task).unwrap()
}

/// The demo's scripted LLM, which steers ALPHA, BETA and GAMMA.
fn demo_llm() -> Arc<ScriptedProvider> {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../agents/demo/llm-rules.toml");
    Arc::new(ScriptedProvider::from_file(rules).unwrap())
}

/// A host on one backend, with what keeps the backend alive.
struct Backend {
    host: Host,
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
}

impl Backend {
    fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::builder()
            .data_dir(dir.path())
            .llm(demo_llm())
            .build()
            .unwrap();
        Backend {
            host,
            _dir: dir,
            _redis: None,
        }
    }

    async fn redis() -> Backend {
        let server = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let state = RedisState::connect(&server.url()).await.unwrap();
        let host = Host::builder()
            .data_dir(dir.path())
            .state(Arc::new(state))
            .llm(demo_llm())
            .build()
            .unwrap();
        Backend {
            host,
            _dir: dir,
            _redis: Some(server),
        }
    }

    /// Register coordination probes at T1 (the mediator at T2).
    fn probes(&self, agents: &[&str]) {
        let bytes = agent("coord-probe");
        for id in agents {
            let tier = if id.starts_with("mediator") {
                Tier::Builder
            } else {
                Tier::Operator
            };
            self.host
                .register_agent(id, tier, Some(&bytes), "test")
                .unwrap();
        }
    }

    async fn script(&self, task: &str, agent: &str, script: &str) {
        self.host
            .state()
            .board_write(
                &tid(task),
                Section::Problem,
                &format!("script:{agent}"),
                script,
                Quota::UNLIMITED,
                None,
            )
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }

    /// What `agent` wrote about its calls, one line per call.
    async fn results(&self, task: &str, agent: &str) -> Vec<String> {
        let text = self
            .host
            .state()
            .board_read(&tid(task), Section::Progress, agent)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("`{agent}` wrote no results in task `{task}`"));
        text.lines().map(str::to_string).collect()
    }
}

/// Fast checks, no SUCCESS validation unless a test asks for it.
fn quick() -> SpawnConditions {
    SpawnConditions {
        check_interval: Duration::from_millis(25),
        validate_on_success: false,
        ..SpawnConditions::default()
    }
}

fn task(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

async fn orchestrate(
    b: &Backend,
    task: &str,
    agents: &[&str],
    mediator: Option<&str>,
    conditions: SpawnConditions,
) -> TaskMetrics {
    let mut spec = TaskSpec::new(task, "coordinate", agents.iter().copied())
        .timeout(Duration::from_secs(30))
        .conditions(conditions);
    spec.mediator = mediator.map(str::to_string);
    b.host.orchestrate(&spec).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Capabilities

async fn blackboard_is_read_only_at_t0(b: Backend) {
    let bytes = agent("probe");
    b.host
        .register_agent("observer", Tier::Observer, Some(&bytes), "test")
        .unwrap();
    let t = task("t0-board");
    b.host
        .state()
        .board_write(
            &tid(&t),
            Section::Problem,
            "objective",
            "read me",
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let p = packet(
        "observer",
        &t,
        "probe: bb.read problem objective; bb.write solutions mine x",
        &[],
        serde_json::json!({}),
    );
    b.host.submit_packet(&p).await.unwrap();
    let report = b.host.run("observer", &bytes).await.unwrap();
    assert_eq!(report.plan_steps[0], "bb.read problem objective -> ok");
    assert!(
        report.plan_steps[1].contains("tier T0 (observer) may read the blackboard but not write it; lowest tier with blackboard write: T1 (operator)"),
        "{:?}",
        report.plan_steps
    );
    let written = b
        .host
        .state()
        .board_read(&tid(&t), Section::Solutions, "mine")
        .await
        .unwrap();
    assert_eq!(written, None, "a refused write must not land");
    assert!(warden_tests::violations(&b.host, "observer").contains(&"TIER_DENIED".to_string()));
}

async fn messages_arrive_in_order_per_sender(b: Backend) {
    b.probes(&["ann", "bob", "cat"]);
    let t = task("order");
    let sends: Vec<String> = (1..=5)
        .map(|i| format!("msg.send cat other a{i}"))
        .collect();
    b.script(&t, "ann", &sends.join(";")).await;
    b.script(
        &t,
        "bob",
        "msg.broadcast feedback b1; msg.broadcast feedback b2; msg.send cat handoff b3",
    )
    .await;
    b.script(&t, "cat", "msg.drain 8 10000; msg.recv 0").await;
    let metrics = orchestrate(&b, &t, &["ann", "bob", "cat"], None, quick()).await;
    assert!(metrics.success, "{metrics:#?}");
    let cat = b.results(&t, "cat").await;
    let got: Vec<&str> = cat[0].split_once(" -> ok ").unwrap().1.split(',').collect();
    assert_eq!(got.len(), 8, "{cat:?}");
    let from = |sender: &str| -> Vec<&str> {
        got.iter()
            .filter(|m| m.starts_with(&format!("{sender}/")))
            .copied()
            .collect()
    };
    assert_eq!(
        from("ann"),
        [
            "ann/other/a1",
            "ann/other/a2",
            "ann/other/a3",
            "ann/other/a4",
            "ann/other/a5"
        ]
    );
    assert_eq!(
        from("bob"),
        ["bob/feedback/b1", "bob/feedback/b2", "bob/handoff/b3"]
    );
    assert_eq!(cat[1], "msg.recv 0 -> ok", "each message is delivered once");
    // ann sent nothing to bob and receives no broadcast of its own.
    let log = b.host.state().messages(&tid(&t)).await.unwrap();
    assert_eq!(log.len(), 8);
    assert_eq!(metrics.messages, 8);
}

async fn tasks_are_isolated(b: Backend) {
    b.probes(&["writer", "reader"]);
    let (one, two) = (task("iso-one"), task("iso-two"));
    b.script(
        &one,
        "writer",
        "bb.write solutions secret s3cr3t; msg.broadcast other hello; vote.propose plan -",
    )
    .await;
    b.script(
        &two,
        "reader",
        "bb.read solutions secret; msg.recv 200; vote.tally p1; bb.entries solutions",
    )
    .await;
    assert!(
        orchestrate(&b, &one, &["writer"], None, quick())
            .await
            .success
    );
    assert!(
        orchestrate(&b, &two, &["reader"], None, quick())
            .await
            .success
    );
    let reader = b.results(&two, "reader").await;
    assert_eq!(reader[0], "bb.read solutions secret -> ok none");
    assert_eq!(reader[1], "msg.recv 200 -> ok");
    assert!(
        reader[2].contains(&format!("task `{two}` has no proposal `p1`")),
        "{reader:?}"
    );
    assert_eq!(reader[3], "bb.entries solutions -> ok");
}

/// Run a vote: `ann` proposes (requiring `required`, with every agent that votes a voter),
/// then each voter casts its choice.
async fn vote(
    b: &Backend,
    name: &str,
    required: &str,
    votes: &[(&str, &str)],
) -> warden::state::Tally {
    let mut agents = vec!["ann"];
    agents.extend(votes.iter().map(|(agent, _)| *agent));
    b.probes(&agents);
    let t = task(name);
    let voters = agents[1..].join(",");
    b.script(
        &t,
        "ann",
        &format!(
            "vote.propose-to design {voters} {required} the design; bb.write progress pid $last"
        ),
    )
    .await;
    for (voter, choice) in votes {
        b.script(
            &t,
            voter,
            &format!("wait.bb progress pid 10000; vote.cast $last {choice} because {voter}"),
        )
        .await;
    }
    let metrics = orchestrate(b, &t, &agents, None, quick()).await;
    assert!(metrics.success, "{metrics:#?}");
    for (voter, _) in votes {
        let lines = b.results(&t, voter).await;
        assert!(lines[1].ends_with("-> ok"), "{voter}: {lines:?}");
    }
    b.host
        .state()
        .proposal(&tid(&t), "p1")
        .await
        .unwrap()
        .unwrap()
        .tally()
}

async fn consensus_passes_and_fails_each_way(b: Backend) {
    let passed = vote(
        &b,
        "pass",
        "bob,cat",
        &[("bob", "accept"), ("cat", "accept")],
    )
    .await;
    assert!(passed.reached && passed.accepts == 2, "{passed:?}");

    let missing = vote(&b, "missing", "bob,cat", &[("bob", "accept")]).await;
    assert!(!missing.reached);
    assert_eq!(missing.missing, vec!["cat".to_string()]);

    // Accepts outnumber rejects, but a required agent rejected.
    let vetoed = vote(
        &b,
        "veto",
        "bob,cat",
        &[("bob", "accept"), ("cat", "reject"), ("dan", "accept")],
    )
    .await;
    assert!(
        !vetoed.reached && vetoed.accepts > vetoed.rejects,
        "{vetoed:?}"
    );
    assert_eq!(vetoed.required_rejects, vec!["cat".to_string()]);

    // Every required agent accepted, but rejects from others are as many.
    let outvoted = vote(
        &b,
        "outvoted",
        "bob",
        &[("bob", "accept"), ("dan", "reject"), ("eve", "reject")],
    )
    .await;
    assert!(
        !outvoted.reached && outvoted.missing.is_empty(),
        "{outvoted:?}"
    );

    let abstained = vote(&b, "abstain", "bob", &[("bob", "abstain")]).await;
    assert!(!abstained.reached, "abstentions are not a majority");

    // No required voters: one accept is below the quorum of two; two reach it.
    let alone = vote(&b, "below-quorum", "-", &[("bob", "accept")]).await;
    assert!(!alone.reached && alone.quorum == 2, "{alone:?}");
    let two = vote(&b, "quorum", "-", &[("bob", "accept"), ("cat", "abstain")]).await;
    assert!(two.reached, "{two:?}");
}

async fn only_a_proposals_voters_may_vote(b: Backend) {
    // mallory is in the task but not among the proposal's voters: she cannot sink it, and
    // ann cannot pass it on her own vote.
    b.probes(&["ann", "bob", "cat", "mallory"]);
    let t = task("voters");
    b.script(
        &t,
        "ann",
        "vote.propose-to plan bob,cat - the plan; bb.write progress pid $last; vote.cast p1 accept mine",
    )
    .await;
    for voter in ["bob", "cat"] {
        b.script(
            &t,
            voter,
            "wait.bb progress pid 10000; vote.cast $last accept fine",
        )
        .await;
    }
    b.script(
        &t,
        "mallory",
        "wait.bb progress pid 10000; vote.cast $last reject sabotage",
    )
    .await;
    let metrics = orchestrate(&b, &t, &["ann", "bob", "cat", "mallory"], None, quick()).await;
    let mallory = b.results(&t, "mallory").await;
    assert!(
        mallory[1].contains("`mallory` is not one of the voters of `p1` (bob, cat)"),
        "{mallory:?}"
    );
    let ann = b.results(&t, "ann").await;
    assert!(ann[2].contains("`proposer_votes`"), "{ann:?}");
    assert_eq!(violations(&b.host, "mallory"), ["NOT_A_VOTER"]);
    let tally = b
        .host
        .state()
        .proposal(&tid(&t), "p1")
        .await
        .unwrap()
        .unwrap()
        .tally();
    assert!(
        tally.reached && tally.accepts == 2 && tally.rejects == 0,
        "{tally:?}"
    );
    assert_eq!(metrics.votes, 2, "refused votes are not votes");

    // A task that counts its proposer's vote, with a quorum of one: a solo proposal passes.
    let t = task("solo");
    b.script(
        &t,
        "ann",
        "vote.propose-to solo ann - it; vote.cast $last accept mine; vote.tally p1",
    )
    .await;
    let spec = TaskSpec::new(&t, "coordinate", ["ann"])
        .timeout(Duration::from_secs(30))
        .conditions(quick())
        .quorum(1)
        .proposer_votes(true);
    assert!(b.host.orchestrate(&spec).await.unwrap().success);
    let ann = b.results(&t, "ann").await;
    assert_eq!(
        ann[2],
        "vote.tally p1 -> ok reached=true accepts=1 rejects=0 abstains=0 missing= quorum=1"
    );
}

async fn a_forged_decision_is_refused_and_revokes(b: Backend) {
    b.probes(&["forger", "ann"]);
    let t = task("forge");
    b.script(
        &t,
        "forger",
        r#"bb.write consensus final {"proposal_id":"p1","reached":true}"#,
    )
    .await;
    b.script(&t, "ann", "sleep 100").await;
    let metrics = orchestrate(&b, &t, &["forger", "ann"], None, quick()).await;
    let forger = metrics
        .agents
        .iter()
        .find(|a| a.agent_id == "forger")
        .unwrap();
    assert_eq!(forger.status, "revoked", "{metrics:#?}");
    assert_eq!(violations(&b.host, "forger"), ["HOST_OWNED_RECORD"]);
    assert_eq!(
        metrics.consensus.final_decision, None,
        "nothing was written"
    );
    assert_eq!(
        b.host
            .state()
            .board_read(&tid(&t), Section::Consensus, "final")
            .await
            .unwrap(),
        None
    );
}

async fn votes_are_final_and_recorded(b: Backend) {
    b.probes(&["ann", "bob"]);
    let t = task("final");
    b.script(
        &t,
        "ann",
        "vote.propose solo bob; bb.write progress pid $last",
    )
    .await;
    b.script(
        &t,
        "bob",
        "wait.bb progress pid 10000; vote.cast $last accept first; vote.cast p1 reject second; vote.tally p1",
    )
    .await;
    assert!(
        orchestrate(&b, &t, &["ann", "bob"], None, quick())
            .await
            .success
    );
    let lines = b.results(&t, "bob").await;
    assert!(
        lines[2].contains("agent `bob` already voted ACCEPT and votes are final"),
        "{lines:?}"
    );
    // One vote of the quorum of two: recorded, not yet consensus.
    assert_eq!(
        lines[3],
        "vote.tally p1 -> ok reached=false accepts=1 rejects=0 abstains=0 missing= quorum=2"
    );
    let rows = b
        .host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("bob".into()),
            kind: Some("consensus.cast".into()),
            ..Default::default()
        })
        .unwrap();
    let vote = rows
        .iter()
        .find(|r| r.text("decision") == Some("allowed") && r.text("error_type").is_none())
        .expect("the accepted vote is in the ledger");
    let details = vote.text("details").unwrap();
    assert!(
        details.contains("\"vote\":\"ACCEPT\"") && details.contains("\"reasoning\":\"first\""),
        "{details}"
    );
}

async fn a_revoked_agent_cannot_message_or_vote(b: Backend) {
    b.probes(&["ann", "rex"]);
    let t = task("revoked");
    b.script(
        &t,
        "ann",
        "vote.propose plan rex; bb.write progress pid $last; sleep 1500",
    )
    .await;
    // rex waits for a message that never comes; it is revoked while it waits, then tries to
    // message and vote.
    b.script(
        &t,
        "rex",
        "wait.bb progress pid 10000; msg.recv 20000; msg.send ann other after; vote.cast p1 accept after",
    )
    .await;
    let host = b.host.clone();
    let revoker = tokio::spawn(async move {
        for _ in 0..400 {
            let waiting = host
                .ledger()
                .action_counts(&task("revoked"))
                .unwrap()
                .contains_key("blackboard.read");
            if waiting && host.running().contains(&"rex".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        host.revoke("rex", "test revocation", "test").await.unwrap();
    });
    let metrics = orchestrate(&b, &t, &["ann", "rex"], None, quick()).await;
    revoker.await.unwrap();
    let rex = metrics.agents.iter().find(|a| a.agent_id == "rex").unwrap();
    assert_eq!(rex.status, "revoked", "{metrics:#?}");
    let log = b.host.state().messages(&tid(&t)).await.unwrap();
    assert!(log.iter().all(|m| m.sender != "rex"), "{log:?}");
    let proposal = b
        .host
        .state()
        .proposal(&tid(&t), "p1")
        .await
        .unwrap()
        .unwrap();
    assert!(proposal.votes.is_empty(), "{proposal:?}");
    // The wait itself ended with the revocation, recorded as such.
    let rows = b
        .host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("rex".into()),
            kind: Some("messaging.receive".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        rows.iter().any(|r| r.text("error_type") == Some("revoked")),
        "{:?}",
        actions(&b.host, "rex")
    );
}

// ---------------------------------------------------------------------------------------------
// Spawn conditions

async fn stuck_fires_past_its_threshold_only(b: Backend) {
    b.probes(&["sleepy", "mediator"]);
    let t = task("stuck");
    b.script(&t, "sleepy", "sleep 1500").await;
    b.script(
        &t,
        "mediator",
        "bb.read problem spawn_reason; bb.read problem voters",
    )
    .await;
    let conditions = SpawnConditions {
        stuck_after: Duration::from_millis(400),
        ..quick()
    };
    let metrics = orchestrate(&b, &t, &["sleepy"], Some("mediator"), conditions).await;
    let spawned = metrics.mediator.as_ref().expect("mediator spawned");
    assert_eq!(spawned.reason, SpawnReason::Stuck);
    assert!(
        spawned.detail.starts_with("`sleepy` inactive for"),
        "{}",
        spawned.detail
    );
    assert!(metrics.success, "{metrics:#?}");
    let mediator = b.results(&t, "mediator").await;
    assert_eq!(mediator[0], "bb.read problem spawn_reason -> ok STUCK");
    // The stuck agent is not counted on as a voter.
    assert_eq!(mediator[1], "bb.read problem voters -> ok");

    let t = task("not-stuck");
    b.script(&t, "sleepy", "sleep 300").await;
    let conditions = SpawnConditions {
        stuck_after: Duration::from_secs(5),
        ..quick()
    };
    let metrics = orchestrate(&b, &t, &["sleepy"], Some("mediator"), conditions).await;
    assert!(metrics.mediator.is_none(), "{metrics:#?}");
}

/// `count` proposals by ann, each rejected by bob.
async fn conflicts(b: &Backend, name: &str, count: usize, threshold: u32) -> TaskMetrics {
    b.probes(&["ann", "bob", "mediator"]);
    let t = task(name);
    let mut ann = Vec::new();
    let mut bob = Vec::new();
    for i in 1..=count {
        ann.push(format!("vote.propose option{i} bob option {i}"));
        bob.push(format!(
            "vote.cast p{i} reject conflicts with my constraints"
        ));
    }
    ann.push("bb.write progress proposed yes; sleep 400".into());
    b.script(&t, "ann", &ann.join(";")).await;
    b.script(
        &t,
        "bob",
        &format!(
            "wait.bb progress proposed 10000; {}; sleep 400",
            bob.join(";")
        ),
    )
    .await;
    b.script(&t, "mediator", "vote.conflicts").await;
    let conditions = SpawnConditions {
        conflict_threshold: threshold,
        ..quick()
    };
    orchestrate(b, &t, &["ann", "bob"], Some("mediator"), conditions).await
}

async fn conflict_fires_at_its_threshold_only(b: Backend) {
    let metrics = conflicts(&b, "conflict", 3, 3).await;
    let spawned = metrics.mediator.as_ref().expect("mediator spawned");
    assert_eq!(spawned.reason, SpawnReason::Conflict);
    assert_eq!(
        spawned.detail,
        "3 unresolved conflicting proposals (threshold 3)"
    );
    assert_eq!(metrics.consensus.in_conflict, 3);
    assert_eq!(metrics.consensus_result, "not reached");

    let metrics = conflicts(&b, "two-conflicts", 2, 3).await;
    assert!(metrics.mediator.is_none(), "{metrics:#?}");
    assert_eq!(metrics.consensus.in_conflict, 2);
}

async fn complexity_fires_above_its_threshold_only(b: Backend) {
    b.probes(&["ann", "mediator"]);
    let t = task("complex");
    // The agent raises the score mid-run.
    b.script(&t, "ann", "bb.write problem complexity 0.95; sleep 300")
        .await;
    b.script(&t, "mediator", "bb.read problem spawn_detail")
        .await;
    let metrics = orchestrate(&b, &t, &["ann"], Some("mediator"), quick()).await;
    let spawned = metrics.mediator.as_ref().expect("mediator spawned");
    assert_eq!(spawned.reason, SpawnReason::Complexity);
    assert_eq!(spawned.detail, "complexity 0.95 above 0.80");

    let t = task("simple");
    b.script(&t, "ann", "bb.write problem complexity 0.8; sleep 300")
        .await;
    let spec = TaskSpec::new(&t, "coordinate", ["ann"])
        .mediator("mediator")
        .complexity(0.5)
        .conditions(quick());
    let metrics = b.host.orchestrate(&spec).await.unwrap();
    assert!(
        metrics.mediator.is_none(),
        "0.8 is not above 0.8: {metrics:#?}"
    );
}

async fn success_fires_when_every_agent_completed(b: Backend) {
    b.probes(&["ann", "bob", "mediator"]);
    let validate = SpawnConditions {
        validate_on_success: true,
        ..quick()
    };
    let t = task("success");
    b.script(&t, "ann", "bb.write solutions answer 42").await;
    b.script(&t, "bob", "sleep 100").await;
    b.script(
        &t,
        "mediator",
        "bb.read solutions answer; vote.validate yes the answer holds",
    )
    .await;
    let metrics = orchestrate(&b, &t, &["ann", "bob"], Some("mediator"), validate.clone()).await;
    let spawned = metrics.mediator.as_ref().expect("mediator spawned");
    assert_eq!(spawned.reason, SpawnReason::Success);
    let validation: serde_json::Value =
        serde_json::from_str(metrics.consensus.validation.as_deref().expect("validation")).unwrap();
    assert_eq!(validation["validated"], true);
    assert_eq!(validation["by"], "mediator");
    assert_eq!(metrics.agents.len(), 3);
    assert!(
        metrics.agents[2].mediator && metrics.success,
        "{metrics:#?}"
    );

    let t = task("no-success");
    b.script(&t, "ann", "fail").await;
    b.script(&t, "bob", "sleep 100").await;
    let metrics = orchestrate(&b, &t, &["ann", "bob"], Some("mediator"), validate).await;
    assert!(metrics.mediator.is_none(), "{metrics:#?}");
    assert!(!metrics.success);
    let ann = metrics.agents.iter().find(|a| a.agent_id == "ann").unwrap();
    assert_eq!(ann.status, "failed");
}

async fn the_mediator_is_spawned_once(b: Backend) {
    // CONFLICT holds on every check and SUCCESS at the end; one spawn, the first reason.
    b.probes(&["ann", "bob", "mediator"]);
    let conditions = SpawnConditions {
        validate_on_success: true,
        conflict_threshold: 1,
        ..quick()
    };
    let t = task("once");
    b.script(
        &t,
        "ann",
        "vote.propose x bob; bb.write progress proposed yes; sleep 300",
    )
    .await;
    b.script(
        &t,
        "bob",
        "wait.bb progress proposed 10000; vote.cast p1 reject no; sleep 300",
    )
    .await;
    b.script(&t, "mediator", "sleep 10").await;
    let metrics = orchestrate(&b, &t, &["ann", "bob"], Some("mediator"), conditions).await;
    assert_eq!(
        metrics.mediator.as_ref().unwrap().reason,
        SpawnReason::Conflict
    );
    assert_eq!(metrics.agents.iter().filter(|a| a.mediator).count(), 1);
    let spawns = b
        .host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            task_id: Some(t.clone()),
            kind: Some("orchestrator.spawn".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(spawns.len(), 1);
    let stored = b
        .host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            task_id: Some(t.clone()),
            kind: Some("task.metrics".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1, "the metrics are stored in the ledger");
    assert!(
        stored[0]
            .text("details")
            .unwrap()
            .contains("\"reason\":\"CONFLICT\"")
    );
}

async fn bad_task_specs_are_refused_before_anything_runs(b: Backend) {
    b.probes(&["ann"]);
    let t = task("bad");
    let refuse = |spec: TaskSpec| {
        let host = b.host.clone();
        async move { host.orchestrate(&spec).await.unwrap_err().to_string() }
    };
    let unknown = refuse(TaskSpec::new(&t, "x", ["ann", "ghost"])).await;
    assert!(unknown.contains("ghost"), "{unknown}");
    let twice = refuse(TaskSpec::new(&t, "x", ["ann"]).mediator("ann")).await;
    assert!(twice.contains("agent `ann` is named twice"), "{twice}");
    let none = refuse(TaskSpec::new(&t, "x", Vec::<String>::new())).await;
    assert!(none.contains("at least one agent"), "{none}");
    let bad = SpawnConditions {
        complexity_threshold: f64::NAN,
        ..quick()
    };
    let nan = refuse(TaskSpec::new(&t, "x", ["ann"]).conditions(bad)).await;
    assert!(
        nan.contains("orchestrator `complexity_threshold` is `NaN`"),
        "{nan}"
    );
    assert!(
        b.host.ledger().action_counts(&t).unwrap().is_empty(),
        "nothing ran"
    );
    assert_eq!(
        b.host
            .state()
            .board_entries(&tid(&t), Section::Problem)
            .await
            .unwrap(),
        vec![],
        "nothing was written"
    );
}

async fn max_parallel_holds_agents_back_until_a_slot_frees(b: Backend) {
    b.probes(&["ann", "bob", "cat"]);
    let t = task("slots");
    for agent in ["ann", "bob", "cat"] {
        // Each notes whether anyone else holds a slot while it runs.
        b.script(
            &t,
            agent,
            &format!("bb.entries progress; bb.write solutions {agent} running; sleep 150; bb.entries solutions"),
        )
        .await;
    }
    let mut spec = TaskSpec::new(&t, "coordinate", ["ann", "bob", "cat"]).conditions(quick());
    spec.max_parallel = Some(1);
    let metrics = b.host.orchestrate(&spec).await.unwrap();
    assert!(metrics.success, "{metrics:#?}");
    // One at a time: each run saw only the agents that ran before it, in some order.
    let mut seen: Vec<usize> = Vec::new();
    for agent in ["ann", "bob", "cat"] {
        let lines = b.results(&t, agent).await;
        let after = lines[3].split_once(" -> ok ").map_or("", |(_, r)| r);
        seen.push(after.split(',').filter(|s| !s.is_empty()).count());
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3], "{seen:?}");
    let zero = TaskSpec::new(&t, "coordinate", ["ann"]).max_parallel(0);
    let refused = b.host.orchestrate(&zero).await.unwrap_err().to_string();
    assert!(refused.contains("max_parallel `0`"), "{refused}");
}

// ---------------------------------------------------------------------------------------------
// The sample agents

async fn alpha_beta_gamma_settle_a_conflict(b: Backend) {
    let bytes = |name| agent(name);
    for (id, tier) in [
        ("alpha", Tier::Operator),
        ("beta", Tier::Operator),
        ("gamma", Tier::Builder),
    ] {
        b.host
            .register_agent(id, tier, Some(&bytes(id)), "test")
            .unwrap();
    }
    let t = task("abg");
    let spec = TaskSpec::new(
        &t,
        "Design a distributed event-driven analytics platform",
        ["alpha", "beta"],
    )
    .mediator("gamma")
    .timeout(Duration::from_secs(60))
    .conditions(SpawnConditions {
        check_interval: Duration::from_millis(50),
        ..SpawnConditions::default()
    });
    let metrics = b.host.orchestrate(&spec).await.unwrap();
    assert!(metrics.success, "{metrics:#?}");
    let spawned = metrics.mediator.as_ref().expect("gamma spawned");
    assert_eq!(
        (spawned.agent.as_str(), spawned.reason),
        ("gamma", SpawnReason::Conflict)
    );
    assert_eq!(metrics.consensus_result, "reached", "{metrics:#?}");
    assert_eq!(metrics.consensus.reached, vec!["p4".to_string()]);
    assert_eq!(
        metrics.consensus.resolved, 3,
        "the three rejected designs were superseded"
    );
    let merged = b
        .host
        .state()
        .proposal(&tid(&t), "p4")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(merged.record.proposer, "gamma");
    // alpha and beta vote; the mediator's own vote would not count.
    assert_eq!(merged.record.voters, ["alpha", "beta"]);
    assert_eq!(merged.tally().accepts, 2);
    // The reference's metrics, counted from the ledger: beta's three rejects, then the two
    // votes on the merge.
    assert_eq!(metrics.proposals, 4);
    assert_eq!(metrics.votes, 5);
    assert!(metrics.messages >= 8, "{metrics:#?}");
    assert!(
        metrics.blackboard_ops >= 20 && metrics.llm_calls >= 6,
        "{metrics:#?}"
    );
    // Written by the host from its own tally, when gamma finalized the merge.
    let final_decision: serde_json::Value =
        serde_json::from_str(&metrics.consensus.final_decision.unwrap()).unwrap();
    assert_eq!(final_decision["proposal_id"], "p4");
    assert_eq!(final_decision["reached"], true);
    assert_eq!(final_decision["finalized_by"], "gamma");
    assert!(b.host.ledger().verify().unwrap().is_intact());
}

// ---------------------------------------------------------------------------------------------
// Every test on both backends

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::embedded()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::redis().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    blackboard_is_read_only_at_t0,
    messages_arrive_in_order_per_sender,
    tasks_are_isolated,
    consensus_passes_and_fails_each_way,
    only_a_proposals_voters_may_vote,
    a_forged_decision_is_refused_and_revokes,
    votes_are_final_and_recorded,
    a_revoked_agent_cannot_message_or_vote,
    stuck_fires_past_its_threshold_only,
    conflict_fires_at_its_threshold_only,
    complexity_fires_above_its_threshold_only,
    success_fires_when_every_agent_completed,
    the_mediator_is_spawned_once,
    bad_task_specs_are_refused_before_anything_runs,
    alpha_beta_gamma_settle_a_conflict,
    max_parallel_holds_agents_back_until_a_slot_frees,
);
