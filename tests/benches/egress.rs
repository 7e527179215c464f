//! `cargo xtask bench` (egress): what governance adds to an agent's HTTP request, beside a
//! bare `reqwest` call to the same loopback server measured in the same run (medians; the
//! machine is small and noisy). Both open a connection per request (the host does not pool
//! connections across requests; the baseline client is told not to either).
//!
//! Governed: one `fetcher` run making 50 GETs, minus the same run making none, per request:
//! the decision, the name/address checks, the guest's `wasi:http` calls, the bounded read and
//! the durable `http.request` row (an in-memory ledger, as `Host::builder()` without a data
//! directory, and a file ledger, as `warden` runs).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::time::{Duration, Instant};

use serde_json::json;
use warden::{Host, Tier, TierTable};
use warden_tests::{agent, http_server, packet};

const ROUNDS: usize = 9;
const REQUESTS: usize = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn tiers(port: u16) -> TierTable {
    let text = warden::policy::BUILTIN_TIERS_TOML.replace(
        "allow = []",
        &format!("allow = [\"http://127.0.0.1:{port}\"]"),
    );
    TierTable::from_toml_str(&text).unwrap()
}

async fn run(host: &Host, id: &str, objective: &str, bytes: &[u8]) -> Duration {
    host.submit_packet(&packet(id, id, objective, &["fetched.txt"], json!({})))
        .await
        .unwrap();
    let started = Instant::now();
    let report = host.run(id, bytes).await.unwrap();
    let elapsed = started.elapsed();
    assert!(report.outcome.is_success(), "{report:?}");
    elapsed
}

async fn governed(host: &Host, port: u16, tag: &str) -> Duration {
    let bytes = agent("fetcher");
    let id = format!("bench-fetch-{tag}");
    host.register_agent(&id, Tier::Builder, Some(&bytes), "bench")
        .unwrap();
    let gets = (0..REQUESTS)
        .map(|_| format!("GET http://127.0.0.1:{port}/hello"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..ROUNDS {
        without.push(run(host, &id, "fetch: ", &bytes).await);
        with.push(run(host, &id, &format!("fetch: {gets}"), &bytes).await);
    }
    median(with).saturating_sub(median(without)) / REQUESTS as u32
}

async fn bare(port: u16) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/hello");
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..REQUESTS {
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len(), 26);
        }
        rounds.push(started.elapsed() / REQUESTS as u32);
    }
    median(rounds)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = http_server::start().await;
        let port = server.port;
        println!(
            "## egress (a GET to a loopback server; medians of {ROUNDS} rounds of {REQUESTS})\n"
        );
        let baseline = bare(port).await;
        let memory = Host::builder().tiers(tiers(port)).build().unwrap();
        let in_memory = governed(&memory, port, "memory").await;
        let dir = tempfile::tempdir().unwrap();
        let file = Host::builder()
            .tiers(tiers(port))
            .data_dir(dir.path())
            .build()
            .unwrap();
        let on_disk = governed(&file, port, "file").await;
        println!("| measure | per request | baseline (bare reqwest) | ratio | overhead |");
        println!("|---|---|---|---|---|");
        for (name, governed) in [
            ("governed, in-memory ledger", in_memory),
            ("governed, file ledger", on_disk),
        ] {
            println!(
                "| {name} | {:.0} µs | {:.0} µs | {:.2}x | {:+.0} µs |",
                governed.as_secs_f64() * 1e6,
                baseline.as_secs_f64() * 1e6,
                governed.as_secs_f64() / baseline.as_secs_f64(),
                (governed.as_secs_f64() - baseline.as_secs_f64()) * 1e6
            );
        }
        println!("\nserver answered {} requests", server.hits());
    });
}
