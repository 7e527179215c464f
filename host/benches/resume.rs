//! Resume latency: from the start of `warden resume` to the resumed run's first live
//! capability call, after a real SIGKILL of the `warden` process that ran it (a fault point,
//! `--features fault-points`), against the same measure for a fresh `warden run` in the same
//! data directory: start to its first capability call. Both are read from the rows' own
//! timestamps (millisecond resolution), so the figure is the host's, not the bench's polling.
//!
//! `cargo xtask bench` runs it; alone:
//! `cargo bench -p warden --features fault-points --bench resume` (the agents built first,
//! `cargo xtask build-agents`).

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark: a failure is a panic with the value in the message, the table is its output"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
const ROUNDS: usize = 11;
/// The probe's calls: the script's read, then four effects; killed before the fifth call.
const SCRIPT: &str = "probe: state.set a 1; state.set b 2; bb.write solutions k v; state.set c 3; state.set d 4; note done";
const KILL: &str = "before:5";

fn agents_dir() -> PathBuf {
    std::env::var_os("WARDEN_AGENTS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

fn warden(data: &Path, args: &[&str], fault: Option<&str>) -> Output {
    let mut command = Command::new(WARDEN);
    command
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .env_remove("WARDEN_CONFIG")
        .current_dir(data);
    if let Some(fault) = fault {
        command.env("WARDEN_FAULT_KILL", fault);
    }
    command.output().unwrap()
}

/// The timestamp of run `run`'s first row of a call past `after`, as a time.
fn first_call_after(data: &Path, run: &str, after: i64) -> SystemTime {
    let stamp: String = rusqlite::Connection::open(data.join("ledger.db"))
        .unwrap()
        .query_row(
            "SELECT timestamp FROM agent_actions WHERE run_id = ?1 AND call_seq > ?2 ORDER BY id LIMIT 1",
            rusqlite::params![run, after],
            |r| r.get(0),
        )
        .unwrap();
    humantime::parse_rfc3339_weak(&stamp).unwrap()
}

fn last_call(data: &Path, run: &str) -> i64 {
    rusqlite::Connection::open(data.join("ledger.db"))
        .unwrap()
        .query_row(
            "SELECT coalesce(max(call_seq), 0) FROM agent_actions WHERE run_id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let probe = agents_dir().join("coord_probe.wasm");
    assert!(
        probe.is_file(),
        "no `{}`: build the agents first (`cargo xtask build-agents`)",
        probe.display()
    );
    let probe = probe.to_str().unwrap();
    let out = warden(
        data,
        &[
            "agents",
            "register",
            "probe",
            "--tier",
            "T2",
            "--component",
            probe,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packet = |task: &str| {
        let path = data.join(format!("{task}.json"));
        std::fs::write(
            &path,
            serde_json::json!({"agent_id": "probe", "task_id": task, "objective": SCRIPT})
                .to_string(),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };

    let (mut fresh, mut resumed, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    // One round first, unmeasured: the component's compiled form is cached by then.
    for round in 0..=ROUNDS {
        let task = format!("fresh-{round}");
        let started = SystemTime::now();
        let out = warden(
            data,
            &["--json", "run", probe, "--packet", &packet(&task)],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{}", json(&out));
        let run = json(&out)["run_id"].as_str().unwrap().to_string();
        let first = first_call_after(data, &run, 0);

        let task = format!("killed-{round}");
        let out = warden(
            data,
            &["--json", "run", probe, "--packet", &packet(&task)],
            Some(KILL),
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "the run was not killed: the bench needs `--features fault-points`"
        );
        let runs = json(&warden(
            data,
            &[
                "--json", "runs", "list", "--task", &task, "--status", "running",
            ],
            None,
        ));
        let killed = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
        let journaled = last_call(data, &killed);
        let resume_started = SystemTime::now();
        let out = warden(data, &["--json", "resume", &killed], None);
        let resume_ended = SystemTime::now();
        assert_eq!(out.status.code(), Some(0), "{}", json(&out));
        let live = first_call_after(data, &killed, journaled);
        if round > 0 {
            fresh.push(first.duration_since(started).unwrap_or_default());
            resumed.push(live.duration_since(resume_started).unwrap_or_default());
            whole.push(
                resume_ended
                    .duration_since(resume_started)
                    .unwrap_or_default(),
            );
        }
    }
    let (fresh, resumed, whole) = (median(fresh), median(resumed), median(whole));
    println!(
        "resume latency, embedded store, {ROUNDS} rounds, medians (release `warden`, real SIGKILL at `{KILL}`)"
    );
    println!(
        "  `warden resume` start to first live call   {:>8.1} ms   (target < 50 ms)",
        resumed.as_secs_f64() * 1e3
    );
    println!(
        "  `warden run` start to first call (baseline) {:>8.1} ms   ratio {:.2}x",
        fresh.as_secs_f64() * 1e3,
        resumed.as_secs_f64() / fresh.as_secs_f64().max(1e-9)
    );
    println!(
        "  whole `warden resume` command              {:>8.1} ms",
        whole.as_secs_f64() * 1e3
    );
}
