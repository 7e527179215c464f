//! `cargo xtask bench` (pipelines): what running agents as a pipeline costs beside running
//! the same agents directly, measured in the same run on the same machine (medians; the
//! machine is small and noisy). The embedded store and a file ledger, as `warden` runs.
//!
//! 1. 10 sequential stages of `hello` vs the same 10 runs made directly: overhead per stage;
//! 2. a 100-stage DAG, 10 layers of a 10-wide fan-out over 10 agents, vs 100 direct runs;
//! 3. resume of a pipeline whose host was SIGKILLed mid-stage: from `resume_pipeline` to its
//!    first live step (the interrupted run's resume, or the next stage's start); the run's
//!    own resume to its first live call is the `resume` bench of the host crate.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use warden::pipeline::{Event, RunOptions};
use warden::{Host, Tier};
use warden_tests::{agent, packet};

const ROUNDS: usize = 11;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn host(dir: &std::path::Path) -> Host {
    Host::builder().data_dir(dir).build().unwrap()
}

async fn direct(host: &Host, agents: &[String], runs: usize, bytes: &[u8], tag: &str) -> Duration {
    let started = Instant::now();
    for n in 0..runs {
        let id = &agents[n % agents.len()];
        // One task for all of them, as a pipeline's stages share one: the same runs.
        let p = packet(
            id,
            &format!("direct-{tag}"),
            "greet",
            &["hello.txt"],
            json!({}),
        );
        host.submit_packet(&p).await.unwrap();
        let report = host.run(id, bytes).await.unwrap();
        assert!(report.outcome.is_success(), "{report:?}");
    }
    started.elapsed()
}

/// `direct`, each run in a task of its own on the runtime, as a pipeline's runner starts them.
async fn spawned(host: &Host, agent: &str, runs: usize, bytes: &[u8], tag: &str) -> Duration {
    let bytes: std::sync::Arc<[u8]> = bytes.into();
    let started = Instant::now();
    for _ in 0..runs {
        let (host, agent, bytes) = (host.clone(), agent.to_string(), bytes.clone());
        let p = packet(
            &agent,
            &format!("spawned-{tag}"),
            "greet",
            &["hello.txt"],
            json!({}),
        );
        tokio::spawn(async move {
            host.submit_packet(&p).await.unwrap();
            let report = host.run(&agent, &bytes).await.unwrap();
            assert!(report.outcome.is_success(), "{report:?}");
        })
        .await
        .unwrap();
    }
    started.elapsed()
}

async fn piped(host: &Host, yaml: &str) -> Duration {
    let pipeline = host.load_pipeline(yaml, "bench.yaml").unwrap();
    let started = Instant::now();
    let view = host
        .run_pipeline(&pipeline, RunOptions::default())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"));
    took
}

fn sequential(stages: usize) -> String {
    let mut yaml = String::from("pipeline:\n  name: seq\n  stages:\n");
    for n in 0..stages {
        yaml.push_str(&format!(
            "    - s{n}: {{agent: hello-0, artifacts: [hello.txt]}}\n"
        ));
    }
    yaml
}

fn fan_out(layers: usize, width: usize) -> String {
    let mut yaml = String::from("pipeline:\n  name: dag\n  stages:\n");
    for l in 0..layers {
        for w in 0..width {
            let requires: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                (0..width).map(|v| format!("l{}w{v}", l - 1)).collect()
            };
            yaml.push_str(&format!(
                "    - l{l}w{w}: {{agent: hello-{w}, artifacts: [\"h{l}-{w}.txt\"], requires: [{}]}}\n",
                requires.join(", ")
            ));
        }
    }
    yaml
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let bytes = agent("hello");
    let agents: Vec<String> = (0..10).map(|n| format!("hello-{n}")).collect();
    for id in &agents {
        host.register_agent(id, Tier::Operator, Some(&bytes), "bench")
            .unwrap();
    }
    // Warm the compiled-component cache and the ledger.
    direct(&host, &agents[..1], 2, &bytes, "warm").await;

    println!("## pipelines (embedded store, file ledger; medians of {ROUNDS} rounds)\n");
    println!("| measure | pipeline | direct | ratio | per stage |");
    println!("|---|---|---|---|---|");
    let (mut p10, mut d10, mut s10) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        d10.push(direct(&host, &agents[..1], 10, &bytes, &format!("seq{round}")).await);
        s10.push(spawned(&host, &agents[0], 10, &bytes, &format!("seq{round}")).await);
        p10.push(piped(&host, &sequential(10)).await);
    }
    let (p, d, s) = (median(p10), median(d10), median(s10));
    let per_stage = p.saturating_sub(d) / 10;
    println!(
        "| 10 sequential stages of hello | {:.1} ms | {:.1} ms | {:.2}x | +{:.2} ms (target < 1 ms) |",
        p.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3,
        p.as_secs_f64() / d.as_secs_f64(),
        per_stage.as_secs_f64() * 1e3
    );
    println!(
        "| the same 10 runs, each spawned on the runtime | | {:.1} ms | {:.2}x of direct | +{:.2} ms |",
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / d.as_secs_f64(),
        s.saturating_sub(d).as_secs_f64() * 1e3 / 10.0
    );

    let (mut pd, mut dd) = (Vec::new(), Vec::new());
    for round in 0..3 {
        dd.push(direct(&host, &agents, 100, &bytes, &format!("dag{round}")).await);
        pd.push(piped(&host, &fan_out(10, 10)).await);
    }
    let (p, d) = (median(pd), median(dd));
    println!(
        "| 100-stage DAG, 10 layers x 10-wide fan-out | {:.1} ms | {:.1} ms (100 runs in a row) | {:.2}x | {:.2} ms |",
        p.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3,
        p.as_secs_f64() / d.as_secs_f64(),
        p.as_secs_f64() * 1e3 / 100.0
    );

    // A pipeline whose host is SIGKILLed once its first stage ended (its second takes a
    // second), resumed here.
    host.register_agent("slow", Tier::Operator, Some(&agent("probe")), "bench")
        .unwrap();
    let bin = warden_tests::warden_bin();
    let file = dir.path().join("killed.yaml");
    std::fs::write(
        &file,
        "pipeline:\n  name: killed\n  stages:\n    - s0: {agent: hello-0, artifacts: [hello.txt]}\n    - s1: {agent: slow, objective: \"probe: sleep 1000\"}\n    - s2: {agent: hello-0, artifacts: [hello.txt]}\n",
    )
    .unwrap();
    let mut resumes = Vec::new();
    for _ in 0..ROUNDS {
        let before: Vec<String> = host
            .pipeline_runs(100)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        let mut child = std::process::Command::new(&bin)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["pipeline", "run"])
            .arg(&file)
            .env("WARDEN_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let run = loop {
            let newest = host.pipeline_runs(1).unwrap();
            if let Some(r) = newest.into_iter().find(|r| !before.contains(&r.run_id)) {
                break r.run_id;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Killed while its slow stage's run is past BOOTSTRAP (its `runs` row written).
        loop {
            let view = host.pipeline_run(&run).unwrap();
            let slow = view
                .stages
                .get("s1")
                .and_then(|s| s.items.first())
                .and_then(|i| i.run_id.clone());
            if let Some(id) = slow
                && host
                    .ledger()
                    .run(&warden::RunId::new(&id).unwrap())
                    .unwrap()
                    .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let first_live: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let seen = first_live.clone();
        let observer: warden::pipeline::Observer = Arc::new(move |_run: &str, event: &Event| {
            if matches!(
                event,
                Event::ItemStart { .. } | Event::StageStart { .. } | Event::ItemResume { .. }
            ) {
                seen.lock().get_or_insert_with(Instant::now);
            }
        });
        let started = Instant::now();
        let view = host.resume_pipeline(&run, Some(observer)).await.unwrap();
        assert_eq!(view.outcome.as_deref(), Some("succeeded"), "{view:#?}");
        let at = first_live.lock().unwrap_or_else(Instant::now);
        resumes.push(at.duration_since(started));
    }
    println!(
        "| resume after SIGKILL, to the first live step | {:.2} ms | | | (target < 100 ms) |",
        median(resumes).as_secs_f64() * 1e3
    );
}
