//! Durable runs on Redis: a real `warden` process, with its runtime state on a real
//! `redis-server`, SIGKILLed mid-run resumes with every effect once; the resumed run then
//! replays offline with the Redis server gone.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use warden_tests::redis_server::RedisServer;

fn command(data: &Path, state: &str, args: &[&str]) -> Command {
    let mut command = Command::new(warden_tests::warden_bin());
    command
        .arg("--data-dir")
        .arg(data)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .env_remove("WARDEN_CONFIG")
        .current_dir(data);
    command
}

fn warden(data: &Path, state: &str, args: &[&str]) -> Output {
    command(data, state, args).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn a_run_on_redis_killed_mid_way_resumes_once_and_replays_with_redis_down() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let hello = warden_tests::agents_dir().join("hello.wasm");
    let hello = hello.to_str().unwrap();
    let out = warden(
        data,
        &url,
        &[
            "agents",
            "register",
            "arch",
            "--tier",
            "T4",
            "--component",
            hello,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packet = data.join("arch.json");
    std::fs::write(
        &packet,
        serde_json::json!({"agent_id":"arch","task_id":"resume-r","objective":"greet","deliverables":["hello.txt"],"limits":{"approval_timeout_ms":60000}}).to_string(),
    )
    .unwrap();
    let packet = packet.to_str().unwrap();
    let mut child = command(data, &url, &["run", hello, "--packet", packet])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = data.join("ledger.db");
    let waiting = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM agent_actions WHERE action = 'approval.requested'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
            > 0
    };
    let mut waited = 0;
    while !waiting() {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
        assert!(waited < 400, "the run never reached the approval gate");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let runs = json(&warden(
        data,
        &url,
        &["--json", "runs", "list", "--status", "running"],
    ));
    let run = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    assert!(
        warden(data, &url, &["approve", "resume-r"])
            .status
            .success()
    );
    let out = warden(data, &url, &["--json", "resume", &run]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["outcome"]["status"], "completed", "{report}");

    // Each artifact once in the task's list on Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let listed: Vec<String> = redis::cmd("LRANGE")
        .arg("task:resume-r:artifacts")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    for name in ["plan.json", "hello.txt", "report.json"] {
        let versions = listed
            .iter()
            .filter(|v| v.contains(&format!("\"name\":\"{name}\"")))
            .count();
        assert_eq!(versions, 1, "`{name}` written {versions} times: {listed:?}");
    }
    let out = warden(data, &url, &["--json", "ledger", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Redis gone: a replay touches no state store.
    drop(conn);
    drop(redis);
    let out = warden(data, &url, &["--json", "replay", &run]);
    let replay = json(&out);
    assert_eq!(out.status.code(), Some(0), "{replay}");
    assert_eq!(replay["verdict"], "identical", "{replay}");
}
