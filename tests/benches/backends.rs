//! `cargo xtask bench` (second part): what the state backend costs a governed run.
//!
//! The same governed `hello` lifecycle (in-memory ledger, so only the state store differs) on
//! each runtime-state backend — in memory, the embedded SQLite file, a real `redis-server` on
//! loopback — beside a raw-client baseline measured in the same run against the same server
//! with the same client library (`redis` crate, multiplexed connection): sequential `PING`
//! and `SET` round trips.
//!
//! Per Redis run it also counts
//! - commands: the `INFO commandstats` delta (every call, including those a Lua script or a
//!   `MULTI` block makes on the server), divided by the runs;
//! - round trips: requests the host sent, from `MONITOR` in a separate, untimed pass (a
//!   script call or a `MULTI … EXEC` block is one request).
//!
//! Medians of several rounds: the machine is small and noisy.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use warden::state::{EmbeddedState, MemoryState, RedisState, StateStore};
use warden::{Host, Tier};
use warden_tests::redis_server::RedisServer;
use warden_tests::{agent, packet};

const ROUNDS: usize = 15;
const RUNS_PER_ROUND: usize = 10;
const PINGS_PER_ROUND: usize = 2_000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async_main());
}

/// Median time of one governed `hello` run, over `ROUNDS` rounds of `RUNS_PER_ROUND` runs.
async fn time_runs(host: &Host, hello: &[u8], label: &str) -> Duration {
    host.register_agent("hello", Tier::Operator, Some(hello), "bench")
        .unwrap();
    let mut next = 0usize;
    let mut run = || {
        next += 1;
        packet(
            "hello",
            &format!("{label}-{next}"),
            "greet",
            &["hello.txt"],
            json!({}),
        )
    };
    for _ in 0..10 {
        host.submit_packet(&run()).await.unwrap();
        host.run("hello", hello).await.unwrap();
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut total = Duration::ZERO;
        for _ in 0..RUNS_PER_ROUND {
            // Each run is a new task, as in production; the packet is submitted outside the
            // timed part, as a client would submit it.
            host.submit_packet(&run()).await.unwrap();
            let start = Instant::now();
            let report = host.run("hello", hello).await.unwrap();
            total += start.elapsed();
            assert!(report.outcome.is_success(), "{:?}", report.outcome);
        }
        host.ledger().flush().unwrap();
        samples.push(total / RUNS_PER_ROUND as u32);
    }
    median(samples)
}

/// Median sequential round trip of `command` on one multiplexed connection.
async fn round_trip(
    conn: &mut redis::aio::MultiplexedConnection,
    command: &redis::Cmd,
) -> Duration {
    for _ in 0..200 {
        command.exec_async(conn).await.unwrap();
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PINGS_PER_ROUND {
            command.exec_async(conn).await.unwrap();
        }
        samples.push(start.elapsed() / PINGS_PER_ROUND as u32);
    }
    median(samples)
}

/// Total command calls since the server started, from `INFO commandstats`, without `INFO`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if name == "info" {
                return None;
            }
            stats
                .split(',')
                .find_map(|s| s.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Counts the requests clients send, from a `MONITOR` connection: a Lua script's own calls
/// (`[db lua]`) are not requests, and a `MULTI … EXEC` block is one.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Monitor {
    fn start(port: u16) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim_end(), "+OK");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut requests = 0u64;
                let mut in_multi: HashMap<String, bool> = HashMap::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) if stop.load(Ordering::Acquire) => break,
                        Err(_) => continue,
                    }
                    // `+<time> [<db> <client>] "<COMMAND>" …`
                    let Some((client, rest)) = line
                        .split_once(" [")
                        .and_then(|(_, r)| r.split_once("] "))
                        .and_then(|(source, rest)| Some((source.split_once(' ')?.1, rest)))
                    else {
                        continue;
                    };
                    if client == "lua" {
                        continue;
                    }
                    let command = rest
                        .split('"')
                        .nth(1)
                        .unwrap_or_default()
                        .to_ascii_uppercase();
                    let multi = in_multi.entry(client.to_string()).or_default();
                    match command.as_str() {
                        "MULTI" => *multi = true,
                        "EXEC" | "DISCARD" => {
                            *multi = false;
                            requests += 1;
                        }
                        _ if *multi => {}
                        _ => requests += 1,
                    }
                }
                requests
            }
        });
        Monitor { stop, thread }
    }

    fn finish(self) -> u64 {
        // Let the last lines arrive.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

async fn async_main() {
    let hello = agent("hello");
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    println!(
        "state backends — a governed `hello` run (in-memory ledger), medians of {ROUNDS} rounds × {RUNS_PER_ROUND} runs\n"
    );

    // The baseline first and last, so a drift of the machine shows.
    let ping = redis::cmd("PING");
    let mut set = redis::cmd("SET");
    set.arg("bench:key").arg("value");
    let ping_before = round_trip(&mut raw, &ping).await;
    let set_rtt = round_trip(&mut raw, &set).await;

    let memory = Host::builder()
        .state(Arc::new(MemoryState::new()))
        .build()
        .unwrap();
    let embedded = Host::builder()
        .state(Arc::new(
            EmbeddedState::open(dir.path().join("state.db")).unwrap(),
        ))
        .build()
        .unwrap();
    let redis_state: Arc<dyn StateStore> =
        Arc::new(RedisState::connect(&server.url()).await.unwrap());
    let on_redis = Host::builder().state(redis_state).build().unwrap();

    let t_memory = time_runs(&memory, &hello, "memory").await;
    let t_embedded = time_runs(&embedded, &hello, "embedded").await;
    let calls_before = command_calls(&mut raw).await;
    let t_redis = time_runs(&on_redis, &hello, "redis").await;
    let calls_after = command_calls(&mut raw).await;
    let timed_runs = (ROUNDS * RUNS_PER_ROUND) as u64;
    let commands = (calls_after - calls_before) as f64 / timed_runs as f64;

    // Round trips, untimed: MONITOR slows the server down.
    const COUNTED: u64 = 20;
    let monitor = Monitor::start(server.port());
    for i in 0..COUNTED {
        let task = packet(
            "hello",
            &format!("counted-{i}"),
            "greet",
            &["hello.txt"],
            json!({}),
        );
        on_redis.submit_packet(&task).await.unwrap();
    }
    let submits = monitor.finish();
    let monitor = Monitor::start(server.port());
    for _ in 0..COUNTED {
        on_redis.run("hello", &hello).await.unwrap();
    }
    let requests = monitor.finish();
    // Each run picked up the packet submitted last; only the runs are counted.
    let round_trips = requests as f64 / COUNTED as f64;
    let ping_after = round_trip(&mut raw, &ping).await;
    let ping_rtt = ping_before.min(ping_after);

    println!(
        "{:<34} {:>12} {:>12} {:>14} {:>14}",
        "state backend", "per run", "vs memory", "round trips", "commands"
    );
    for (label, t) in [
        ("in-memory (MemoryState)", t_memory),
        ("embedded (SQLite file)", t_embedded),
    ] {
        println!(
            "{label:<34} {:>12.2?} {:>11.2}x {:>14} {:>14}",
            t,
            t.as_secs_f64() / t_memory.as_secs_f64(),
            "-",
            "-"
        );
    }
    println!(
        "{:<34} {:>12.2?} {:>11.2}x {:>14.1} {:>14.1}",
        "redis (loopback redis-server)",
        t_redis,
        t_redis.as_secs_f64() / t_memory.as_secs_f64(),
        round_trips,
        commands
    );
    println!(
        "\nraw redis client on the same server: PING {:.1?} (before {:.1?}, after {:.1?}), SET {:.1?} per round trip",
        ping_rtt, ping_before, ping_after, set_rtt
    );
    println!(
        "redis run / PING round trip: {:.1}x; redis run minus in-memory run: {:.2?} = {:.1} PING round trips for {:.1} requests",
        t_redis.as_secs_f64() / ping_rtt.as_secs_f64(),
        t_redis.saturating_sub(t_memory),
        t_redis.saturating_sub(t_memory).as_secs_f64() / ping_rtt.as_secs_f64(),
        round_trips
    );
    println!(
        "(`submit_packet` is one more round trip per run, outside the timed part: {:.1} measured)",
        submits as f64 / COUNTED as f64
    );
}
