//! Pipeline workers sharing a real Redis: two `warden worker` processes, the one that took a
//! queued run SIGKILLed mid-stage; the other takes the run over once the dead worker's
//! heartbeat stops, and the pipeline ends with every stage run to success once.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use warden_tests::redis_server::RedisServer;
use warden_tests::{agents_dir, warden_bin};

fn command(data: &Path, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(warden_bin());
    command
        .arg("--data-dir")
        .arg(data)
        .arg("--state")
        .arg(url)
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .env_remove("WARDEN_CONFIG")
        .current_dir(data);
    command
}

fn warden(data: &Path, url: &str, args: &[&str]) -> Output {
    let out = command(data, url, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn worker(data: &Path, url: &str, name: &str) -> Child {
    command(
        data,
        url,
        &[
            "--json",
            "worker",
            "--name",
            name,
            "--claim-after",
            "2s",
            "--heartbeat",
            "300ms",
            "--max-runs",
            "1",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

#[test]
fn a_worker_killed_mid_stage_is_taken_over_by_another() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let agents = agents_dir();
    for (id, component) in [("one", "hello"), ("slow", "probe")] {
        let path = agents.join(format!("{component}.wasm"));
        warden(
            data,
            &url,
            &[
                "agents",
                "register",
                id,
                "--tier",
                "T1",
                "--component",
                path.to_str().unwrap(),
            ],
        );
    }
    let file = data.join("p.yaml");
    std::fs::write(
        &file,
        "pipeline:\n  name: shared\n  stages:\n    - a: {agent: one, artifacts: [a.txt]}\n    - wait: {agent: slow, objective: \"probe: sleep 1500\"}\n    - b: {agent: one, artifacts: [b.txt]}\n",
    )
    .unwrap();
    let queued = json(&warden(
        data,
        &url,
        &[
            "--json",
            "pipeline",
            "run",
            "--queue",
            file.to_str().unwrap(),
        ],
    ));
    let run = queued["queued"].as_str().unwrap().to_string();
    let status = |data: &Path| json(&warden(data, &url, &["--json", "pipeline", "status", &run]));
    assert!(
        status(data)["stages"].as_object().unwrap().is_empty(),
        "queued, not started"
    );

    let mut workers = BTreeMap::from([
        ("w1", worker(data, &url, "w1")),
        ("w2", worker(data, &url, "w2")),
    ]);
    // Wait until a worker is inside the slow stage, then kill that worker.
    let mut waited = 0;
    let holder = loop {
        let s = status(data);
        if s["stages"]["wait"]["items"][0]["run_id"].is_string() {
            break s["pid"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(25));
        waited += 1;
        assert!(waited < 1200, "no worker reached the slow stage: {s}");
    };
    let killed = *workers
        .iter()
        .find(|(_, c)| u64::from(c.id()) == holder)
        .unwrap_or_else(|| panic!("the run is held by pid {holder}, no worker of ours"))
        .0;
    let mut dead = workers.remove(killed).unwrap();
    dead.kill().unwrap();
    dead.wait().unwrap();

    // The survivor takes the run over after the claim timeout and ends it.
    let (_, mut survivor) = workers.into_iter().next().unwrap();
    let mut waited = 0;
    let exit = loop {
        if let Some(status) = survivor.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
        assert!(
            waited < 1200,
            "the surviving worker never finished the run: {}",
            status(data)
        );
    };
    assert!(exit.success(), "{exit:?}");
    let s = status(data);
    assert_eq!(s["outcome"], "succeeded", "{s}");
    assert_ne!(
        s["pid"].as_u64().unwrap(),
        holder,
        "another process finished it"
    );
    let runs = json(&warden(
        data,
        &url,
        &[
            "--json",
            "runs",
            "list",
            "--task",
            &run,
            "--status",
            "completed",
        ],
    ));
    let mut per_agent = BTreeMap::new();
    for r in runs["runs"].as_array().unwrap() {
        *per_agent
            .entry(r["agent_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_agent,
        BTreeMap::from([("one".to_string(), 2), ("slow".to_string(), 1)]),
        "each stage ran to success once; the slow stage's run resumed, not restarted"
    );
    let wait = &s["stages"]["wait"]["items"][0];
    assert_eq!(
        wait["attempt"], 1,
        "the interrupted run went on as the same attempt: {wait}"
    );
}
