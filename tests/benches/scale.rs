//! `cargo xtask bench`: 1,000 `hello` agents in one orchestrated task, each through its whole
//! governed lifecycle, against the same agents run one after another on the same host.
//! Target: all complete in under 2 s on the embedded store (a data directory), peak memory
//! under 512 MB. Medians of [`ROUNDS`] rounds; each round is a fresh task.
//!
//! Peak memory is the process's high-water mark (`VmHWM`), read after the parallel rounds and
//! before anything runs sequentially, so it includes the engine and the ledger.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::time::{Duration, Instant};

use warden::orchestrator::{SpawnConditions, TaskSpec};
use warden::{Host, Tier};
use warden_tests::agent;

const AGENTS: usize = 1000;
const ROUNDS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A `/proc/self/status` field in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `TaskSpec::max_parallel` of the bounded parallel runs.
const SLOTS: usize = 64;

struct Figures {
    parallel: Duration,
    bounded: Duration,
    sequential: Duration,
    peak_mib: f64,
}

async fn measure(label: &str, host: &Host) -> Figures {
    let hello = agent("hello");
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("{label}-{i:04}")).collect();
    for id in &ids {
        host.register_agent(id, Tier::Operator, Some(&hello), "bench")
            .unwrap();
    }
    let conditions = SpawnConditions {
        validate_on_success: false,
        ..SpawnConditions::default()
    };
    let mut parallel = Vec::new();
    let mut bounded = Vec::new();
    for round in 0..ROUNDS {
        for (limit, samples) in [(None, &mut parallel), (Some(SLOTS), &mut bounded)] {
            let task = format!("{label}-scale-{round}-{}", limit.unwrap_or(0));
            let mut spec = TaskSpec::new(task, "greet", ids.clone())
                .timeout(Duration::from_secs(300))
                .conditions(conditions.clone());
            spec.max_parallel = limit;
            let started = Instant::now();
            let metrics = host.orchestrate(&spec).await.unwrap();
            samples.push(started.elapsed());
            let failed: Vec<_> = metrics.agents.iter().filter(|a| !a.succeeded()).collect();
            assert!(
                failed.is_empty(),
                "{} agents failed: {:?}",
                failed.len(),
                failed.first()
            );
        }
    }
    let peak_mib = status_mib("VmHWM:");
    let mut sequential = Vec::new();
    for round in 0..ROUNDS {
        let task = format!("{label}-seq-{round}");
        let started = Instant::now();
        for id in &ids {
            let packet = warden_tests::packet(id, &task, "greet", &[], serde_json::json!({}));
            host.submit_packet(&packet).await.unwrap();
            let report = host.run(id, &hello).await.unwrap();
            assert!(report.outcome.is_success(), "{:?}", report.outcome);
        }
        sequential.push(started.elapsed());
    }
    Figures {
        parallel: median(parallel),
        bounded: median(bounded),
        sequential: median(sequential),
        peak_mib,
    }
}

fn print(label: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {label:<20} all at once {:>6.0} ms · {SLOTS} at a time {:>6.0} ms · one after another {:>6.0} ms ({:.2}x the best parallel) · peak RSS {:>4.0} MiB",
        ms(f.parallel),
        ms(f.bounded),
        ms(f.sequential),
        f.sequential.as_secs_f64() / f.parallel.min(f.bounded).as_secs_f64(),
        f.peak_mib,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "scale: {AGENTS} `hello` agents in one orchestrated task, medians of {ROUNDS} rounds ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("  before: RSS {:.0} MiB", status_mib("VmRSS:"));
        // The embedded store first, so the high-water mark is its own.
        let dir = tempfile::tempdir().unwrap();
        let embedded = Host::builder().data_dir(dir.path()).build().unwrap();
        let figures = measure("emb", &embedded).await;
        print("embedded (data dir)", &figures);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "  target: < 2000 ms {} · < 512 MiB {}",
            verdict(figures.parallel.min(figures.bounded) < Duration::from_secs(2)),
            verdict(figures.peak_mib < 512.0)
        );
        drop(embedded);
        let memory = Host::builder().build().unwrap();
        let figures = measure("mem", &memory).await;
        print("in-memory host", &figures);
    });
}
