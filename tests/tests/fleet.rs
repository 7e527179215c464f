//! Several hosts, one fleet: two real `warden` processes sharing one real Redis.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use warden_tests::agents_dir;
use warden_tests::redis_server::RedisServer;

fn wasm(name: &str) -> String {
    agents_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// One host: its own data directory (ledger, blobs, cache), the fleet's Redis for state.
struct HostProcess {
    data: tempfile::TempDir,
    redis: String,
}

impl HostProcess {
    fn new(redis: &RedisServer) -> HostProcess {
        HostProcess {
            data: tempfile::tempdir().unwrap(),
            redis: redis.url(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(warden_tests::warden_bin());
        command
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--state")
            .arg(&self.redis)
            .args(args)
            .env("WARDEN_LOG", "error")
            .current_dir(self.data.path());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn packet(&self, name: &str, body: serde_json::Value) -> String {
        let path = self.data.path().join(format!("{name}.json"));
        std::fs::write(&path, body.to_string()).unwrap();
        path.display().to_string()
    }
}

#[test]
fn a_locked_agent_cannot_start_on_another_host_and_a_revocation_stops_it_within_a_second() {
    let redis = RedisServer::start();
    let (a, b) = (HostProcess::new(&redis), HostProcess::new(&redis));
    for host in [&a, &b] {
        let out = host.run(&[
            "agents",
            "register",
            "spinner",
            "--tier",
            "T1",
            "--component",
            &wasm("probe"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let body = serde_json::json!({
        "agent_id": "spinner", "task_id": "fleet", "objective": "probe: state.set running 1; spin",
        "limits": { "phase_cpu_ms": 60000, "phase_wall_ms": 60000 }
    });
    let running = a.spawn(&[
        "--json",
        "run",
        &wasm("probe"),
        "--packet",
        &a.packet("spinner", body.clone()),
    ]);

    // Wait until host A holds the lock and the agent is spinning.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let started = Instant::now();
    loop {
        let lock: Option<String> = redis::cmd("GET")
            .arg("agent:spinner:lock")
            .query(&mut conn)
            .unwrap();
        let kv: Option<String> = redis::cmd("HGET")
            .arg("agent:spinner:state")
            .arg("kv:running")
            .query(&mut conn)
            .unwrap();
        if lock.is_some() && kv.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "host A never started the agent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Host B may not start it while A holds the lock.
    let out = b.run(&[
        "--json",
        "run",
        &wasm("probe"),
        "--packet",
        &b.packet("spinner", body),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refusal["code"], "CANNOT_ACQUIRE_LOCK");

    // A revocation from host B stops the run on host A within a second.
    let revoked_at = Instant::now();
    let out = b.run(&["agents", "revoke", "spinner", "--reason", "fleet test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = running.wait_with_output().unwrap();
    let stopped_after = revoked_at.elapsed();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stopped_after < Duration::from_secs(1),
        "stopped {stopped_after:?} after the revocation"
    );

    // A host that was not running it refuses it at its next bootstrap (revocation ledger).
    let c = HostProcess::new(&redis);
    assert!(
        c.run(&[
            "agents",
            "register",
            "spinner",
            "--tier",
            "T1",
            "--component",
            &wasm("probe")
        ])
        .status
        .success()
    );
    let body = serde_json::json!({ "agent_id": "spinner", "task_id": "fleet-2", "objective": "probe: state.get x" });
    let out = c.run(&[
        "--json",
        "run",
        &wasm("probe"),
        "--packet",
        &c.packet("again", body),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refusal["code"], "AGENT_PREVIOUSLY_REVOKED");
}
