//! A task of 20,000 artifact references: a listing is a page, and an ordinary run in it costs
//! what it costs in a small task. Before the index every run read the whole history (VERIFY,
//! the SDK's verify, `artifacts.list`) and folded it in O(n²): 10.8 s for one listing, 83 s
//! for a 20 ms run. The checks compare runs in a small task and in the big one on the same
//! host, so they hold on a slow or busy machine: the ratio, not the time. On every state
//! backend: in memory, the embedded SQLite file, Redis.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use warden::state::{Admission, ArtifactRef, Quota, RedisState, StateStore};
use warden::{Host, RunOutcome, TaskId, Tier, TierTable};
use warden_tests::redis_server::RedisServer;
use warden_tests::{agent, packet};

const BIG: usize = 20_000;
/// More than a page, so both tasks answer a full page of 256.
const SMALL: usize = 300;
/// Runs per task; the fastest of each is compared, the least disturbed by the machine.
const ROUNDS: usize = 5;
/// How much slower the fastest run in the big task may be than in the small one.
const MAX_RATIO: f64 = 3.0;

/// The shipped tiers, with room for the big task (an operator who raised
/// `max_artifacts_per_task`: the big task is a legitimate one).
fn tiers() -> TierTable {
    let text = warden::policy::BUILTIN_TIERS_TOML.replace(
        "max_artifacts_per_task = 1000",
        "max_artifacts_per_task = 100000",
    );
    TierTable::from_toml_str(&text).unwrap()
}

/// Fill `task` with `n` references under distinct names, as many agents would. Straight into
/// the store: what is measured is reading a big task, not filling one.
async fn seed(state: &Arc<dyn StateStore>, task: &str, n: usize) {
    let task = TaskId::new(task).unwrap();
    for i in 0..n {
        let artifact = ArtifactRef {
            name: format!("seed/{i:05}.txt"),
            digest: format!("sha256:{i:064x}"),
            size: 10,
            author: "seeder".into(),
            created_at: "2026-12-01T00:00:00.000Z".into(),
        };
        let stored = state
            .push_artifact(&task, &artifact, Quota::UNLIMITED, None)
            .await
            .unwrap();
        assert_eq!(stored, Admission::Stored(()));
    }
}

/// The fastest of `ROUNDS` runs of `component` as `agent` with `objective` in the small task
/// and in the big one, alternating so both see the same machine; every run must complete,
/// and every probe call in its plan must have answered `ok`.
async fn fastest(
    host: &Host,
    agent_id: &str,
    component: &str,
    objective: &str,
    deliverables: &[&str],
) -> (f64, f64) {
    let bytes = agent(component);
    if host.ledger().agent(agent_id).unwrap().is_none() {
        host.register_agent(agent_id, Tier::Operator, Some(&bytes), "test")
            .unwrap();
    }
    let mut best = [f64::MAX; 2];
    for _ in 0..ROUNDS {
        for (slot, task) in ["small", "big"].into_iter().enumerate() {
            host.submit_packet(&packet(agent_id, task, objective, deliverables, json!({})))
                .await
                .unwrap();
            let started = Instant::now();
            let report = host.run(agent_id, &bytes).await.unwrap();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert!(
                matches!(report.outcome, RunOutcome::Completed),
                "{agent_id} in `{task}`: {:?}",
                report.outcome
            );
            assert!(
                report
                    .plan_steps
                    .iter()
                    .all(|step| !step.contains(" -> ") || step.ends_with(" -> ok")),
                "{agent_id} in `{task}`: {:?}",
                report.plan_steps
            );
            best[slot] = best[slot].min(ms);
        }
    }
    (best[0], best[1])
}

/// The ratios on one host; `backend` names it in messages.
async fn big_task_stays_fast(host: &Host, backend: &str) {
    let started = Instant::now();
    seed(host.state(), "big", BIG).await;
    seed(host.state(), "small", SMALL).await;
    eprintln!(
        "{backend}: seeded {} references in {:.0} ms",
        BIG + SMALL,
        started.elapsed().as_secs_f64() * 1e3
    );

    // An ordinary run: hello writes its deliverable, VERIFY looks it up, so does the SDK's
    // verify.
    let deliverables = ["hello.txt"];
    let _warm_up = fastest(host, "warm", "hello", "greet", &deliverables).await;
    let (small, big) = fastest(host, "neighbour", "hello", "greet", &deliverables).await;
    eprintln!("{backend}: hello: {small:.2} ms beside {SMALL} artifacts, {big:.2} ms beside {BIG}");
    assert!(
        big <= small * MAX_RATIO,
        "{backend}: a run beside {BIG} artifacts took {big:.2} ms, {:.1}x the {small:.2} ms beside {SMALL}",
        big / small
    );

    // A guest's listing is one page (256 at most), and a lookup one call.
    let listing = "probe: artifacts.list 1000 256; artifacts.info seed/00299.txt";
    let (small, big) = fastest(host, "lister", "probe", listing, &[]).await;
    eprintln!(
        "{backend}: artifacts.list: {small:.2} ms beside {SMALL} artifacts, {big:.2} ms beside {BIG}"
    );
    assert!(
        big <= small * MAX_RATIO,
        "{backend}: a listing beside {BIG} artifacts took {big:.2} ms, {:.1}x the {small:.2} ms beside {SMALL}",
        big / small
    );

    // The host's own page, in the middle of the task.
    let page = host
        .artifacts("big", Some("seed/09999.txt"), 3)
        .await
        .unwrap();
    let names: Vec<&str> = page.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["seed/10000.txt", "seed/10001.txt", "seed/10002.txt"],
        "{backend}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_task_stays_fast_in_memory() {
    let host = warden_tests::builder_with("[]")
        .tiers(tiers())
        .build()
        .unwrap();
    big_task_stays_fast(&host, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_task_stays_fast_on_the_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .tiers(tiers())
        .data_dir(dir.path())
        .build()
        .unwrap();
    big_task_stays_fast(&host, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_task_stays_fast_on_redis() {
    let server = RedisServer::start();
    let state = RedisState::connect(&server.url()).await.unwrap();
    let host = warden_tests::builder_with("[]")
        .tiers(tiers())
        .state(Arc::new(state))
        .build()
        .unwrap();
    big_task_stays_fast(&host, "redis").await;
}
