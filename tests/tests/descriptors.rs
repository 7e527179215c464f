//! Open descriptors are capped per run (`descriptors`), so an agent holding as many as it can
//! does not exhaust the process's `RLIMIT_NOFILE`, which every agent of the host shares: a
//! neighbour in the same host boots (its workspace is opened) and completes meanwhile.
//!
//! One test in this binary: it counts the process's open descriptors.

use std::time::{Duration, Instant};

use serde_json::json;
use warden::{RunOutcome, Tier};
use warden_tests::{agent, host, packet, violations};

/// Descriptors the process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_holder_is_capped_while_a_neighbour_completes() {
    let host = host();
    let limit = host.tiers().policy(Tier::Executor).descriptors as usize;
    let rogue = agent("rogue");
    let hello = agent("hello");
    for (id, tier, bytes) in [
        ("holder", Tier::Executor, &rogue),
        ("hello", Tier::Operator, &hello),
    ] {
        host.register_agent(id, tier, Some(bytes), "test").unwrap();
        // Compiled now, so that the holder's run starts at once.
        host.inspect_component(bytes, id).unwrap();
    }
    host.submit_packet(&packet(
        "holder",
        "t-hold",
        "attempt: hold-descriptors",
        &["evidence.md"],
        json!({}),
    ))
    .await
    .unwrap();
    host.submit_packet(&packet(
        "hello",
        "t-greet",
        "greet",
        &["hello.txt"],
        json!({}),
    ))
    .await
    .unwrap();

    let before = open_descriptors();
    let holder = host.run("holder", &rogue);
    let neighbour = async {
        // The holder opens until refused, then holds them for 2 s.
        let started = Instant::now();
        let mut held = 0;
        while started.elapsed() < Duration::from_secs(10) {
            held = open_descriptors().saturating_sub(before);
            if held >= limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let holding = open_descriptors().saturating_sub(before);
        let report = host.run("hello", &hello).await.unwrap();
        (held, holding, report)
    };
    let (holder, (held, holding, hello_report)) = tokio::join!(holder, neighbour);
    let holder = holder.unwrap();

    assert!(held >= limit, "the holder never held {limit} descriptors");
    // The run's own (its workspace, the ledger's) besides the holder's: a few.
    assert!(
        holding <= limit + 8,
        "{holding} more descriptors open while the holder held its {limit}"
    );
    assert_eq!(
        hello_report.outcome,
        RunOutcome::Completed,
        "{hello_report:?}"
    );
    assert!(violations(&host, "hello").is_empty());

    let evidence = holder
        .artifacts
        .iter()
        .find(|a| a.name == "evidence.md")
        .and_then(|a| host.artifact(&a.digest).unwrap())
        .map(|bytes| String::from_utf8(bytes).unwrap())
        .unwrap_or_default();
    assert!(
        evidence.contains(&format!("opened {limit} descriptors, then: OutOfMemory")),
        "{evidence}"
    );
    // Closing one gives it back.
    assert!(
        evidence.contains("after closing one, one more opened"),
        "{evidence}"
    );
    assert_eq!(violations(&host, "holder"), ["RESOURCE_LIMIT"]);
    assert_eq!(holder.budget.total_errors, 1, "{:?}", holder.budget);
    // And the store gave every descriptor back when the run ended.
    assert!(
        open_descriptors() <= before + 4,
        "{} descriptors still open after the runs",
        open_descriptors() - before
    );
}
