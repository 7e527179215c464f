//! The `warden` binary end to end: exit codes, `--json`, errors that say what would allow it.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agents_dir() -> PathBuf {
    match std::env::var_os("WARDEN_AGENTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
    }
}

fn wasm(name: &str) -> String {
    let path = agents_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "`{}` is missing: run `cargo xtask build-agents`",
        path.display()
    );
    path.display().to_string()
}

/// `warden --data-dir <data> <args>`, quiet logs, no inherited config.
fn command(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    command
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("WARDEN_CONFIG");
    command
}

fn warden(data: &Path, args: &[&str]) -> Output {
    command(data, args).current_dir(data).output().unwrap()
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

/// `agents register hello --tier T1 --component hello.wasm` in `data`.
fn register_hello(data: &Path) {
    let out = warden(
        data,
        &[
            "agents",
            "register",
            "hello",
            "--tier",
            "T1",
            "--component",
            &wasm("hello"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_packet(dir: &Path, name: &str, body: serde_json::Value) -> String {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, body.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn register_run_revoke_and_verify_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    register_hello(data);

    let packet = write_packet(
        data,
        "hello",
        serde_json::json!({"agent_id":"hello","task_id":"cli-1","objective":"greet","deliverables":["hello.txt"]}),
    );
    let out = warden(
        data,
        &["--json", "run", &wasm("hello"), "--packet", &packet],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(report["outcome"]["status"], "completed");
    assert_eq!(report["tier"], "T1");

    // Human output names the phases and the outcome.
    let out = warden(data, &["run", &wasm("hello"), "--packet", &packet]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BOOTSTRAP") && text.contains("completed"),
        "{text}"
    );

    let out = warden(data, &["--json", "agents", "list"]);
    let list = json(&out);
    assert_eq!(list[0]["agent"]["agent_id"], "hello");
    assert_eq!(list[0]["metrics"]["total_runs"], 2);

    let out = warden(data, &["agents", "revoke", "hello", "--reason", "enough"]);
    assert!(out.status.success());
    let out = warden(
        data,
        &["--json", "run", &wasm("hello"), "--packet", &packet],
    );
    assert_eq!(out.status.code(), Some(3), "refused exit code");
    let refusal = json(&out);
    assert_eq!(refusal["code"], "AGENT_PREVIOUSLY_REVOKED");

    let out = warden(data, &["agents", "show", "hello"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REVOKED") && text.contains("enough"),
        "{text}"
    );

    let out = warden(data, &["--json", "ledger", "verify"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(json(&out)["broken"].is_null());

    let out = warden(data, &["--json", "ledger", "tail", "-n", "5"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 5);

    // Re-registering does not lift a revocation and keeps the binding; reinstating does.
    let out = warden(data, &["agents", "register", "hello", "--tier", "T1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stays revoked"), "{text}");
    let out = warden(
        data,
        &["--json", "run", &wasm("hello"), "--packet", &packet],
    );
    assert_eq!(json(&out)["code"], "AGENT_PREVIOUSLY_REVOKED");
    let out = warden(data, &["agents", "reinstate", "hello"]);
    assert_eq!(out.status.code(), Some(2), "a reinstatement needs --reason");
    let out = warden(
        data,
        &[
            "agents",
            "reinstate",
            "hello",
            "--reason",
            "reviewed",
            "--by",
            "alice",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = warden(
        data,
        &["--json", "run", &wasm("hello"), "--packet", &packet],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A registry row edited behind the ledger's back: verify says so and fails.
    let db = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    db.execute("UPDATE agents SET tier = 4 WHERE agent_id = 'hello'", [])
        .unwrap();
    drop(db);
    let out = warden(data, &["ledger", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(
        text.contains("REGISTRY TAMPERED") && text.contains("hello"),
        "{text}"
    );
    let out = warden(
        data,
        &["--json", "run", &wasm("hello"), "--packet", &packet],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "REGISTRY_TAMPERED");
}

#[test]
fn the_tier_comes_from_the_registration_and_changes_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    assert!(
        warden(
            data,
            &[
                "agents",
                "register",
                "a",
                "--tier",
                "T1",
                "--component",
                &wasm("hello")
            ]
        )
        .status
        .success()
    );
    // `run` has no tier flag at all.
    let packet = write_packet(
        data,
        "a",
        serde_json::json!({"agent_id":"a","task_id":"t","objective":"x"}),
    );
    let out = warden(
        data,
        &["run", &wasm("hello"), "--packet", &packet, "--tier", "T4"],
    );
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown flag");
    assert!(
        warden(data, &["agents", "promote", "a", "--tier", "T2"])
            .status
            .success()
    );
    let out = warden(
        data,
        &["--json", "ledger", "query", "--table", "promotions"],
    );
    let rows = json(&out);
    assert_eq!(
        rows.as_array().unwrap().len(),
        2,
        "registration and promotion: {rows}"
    );
    // A different component under the same id is refused until re-registered.
    let out = warden(
        data,
        &["--json", "run", &wasm("bench_guest"), "--packet", &packet],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "COMPONENT_MISMATCH");
}

#[test]
fn refusals_have_distinct_exit_codes_and_say_what_would_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = warden(
        data,
        &[
            "agents",
            "register",
            "over",
            "--tier",
            "T0",
            "--component",
            &wasm("rogue_overreach"),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IMPORT_ABOVE_TIER") && err.contains("lowest tier granting it: T1 (operator)"),
        "{err}"
    );

    let out = warden(data, &["agents", "register", "x", "--tier", "T7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("T0..T4"));

    let bad = write_packet(data, "bad", serde_json::json!({"agent_id":"x"}));
    let out = warden(data, &["run", &wasm("hello"), "--packet", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A revoked-during-run agent exits 4.
    assert!(
        warden(
            data,
            &[
                "agents",
                "register",
                "rogue",
                "--tier",
                "T3",
                "--component",
                &wasm("rogue")
            ]
        )
        .status
        .success()
    );
    let packet = write_packet(
        data,
        "rogue",
        serde_json::json!({"agent_id":"rogue","task_id":"r","objective":"attempt: forbidden-tool","deliverables":["evidence.md"],"constraints":{"forbidden":["tool:deploy-prod*"]}}),
    );
    let out = warden(data, &["run", &wasm("rogue"), "--packet", &packet]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = warden(data, &["--json", "handoff", "show", "r"]);
    assert_eq!(
        json(&out)["revocation_reason"]["type"],
        "PROCEDURE_VIOLATION"
    );

    // A failed run (deadline) exits 5.
    assert!(
        warden(
            data,
            &[
                "agents",
                "register",
                "spin",
                "--tier",
                "T3",
                "--component",
                &wasm("rogue")
            ]
        )
        .status
        .success()
    );
    let packet = write_packet(
        data,
        "spin",
        serde_json::json!({"agent_id":"spin","task_id":"s","objective":"attempt: spin","deliverables":["evidence.md"],"limits":{"phase_cpu_ms":200}}),
    );
    assert_eq!(
        warden(data, &["run", &wasm("rogue"), "--packet", &packet])
            .status
            .code(),
        Some(5)
    );
}

#[test]
fn compile_reports_digest_imports_and_lowest_tier() {
    let dir = tempfile::tempdir().unwrap();
    let out = warden(dir.path(), &["--json", "compile", &wasm("planner")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert!(summary["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(summary["lowest_tier"], "T1");
    assert!(summary["cached"].as_str().unwrap().ends_with(".cwasm"));

    // A component without the agent world's exports imports nothing, yet no tier can run it.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();
    let out = warden(dir.path(), &["compile", empty.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("no tier can run it") && text.contains("warden:agent/agent@0.1.0"),
        "{text}"
    );
}

#[test]
fn approve_from_another_process_releases_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    assert!(
        warden(
            data,
            &[
                "agents",
                "register",
                "arch",
                "--tier",
                "T4",
                "--component",
                &wasm("hello")
            ]
        )
        .status
        .success()
    );
    let packet = write_packet(
        data,
        "arch",
        serde_json::json!({"agent_id":"arch","task_id":"needs-ok","objective":"x","limits":{"approval_timeout_ms":30000}}),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("--data-dir")
        .arg(data)
        .args(["--json", "run", &wasm("hello"), "--packet", &packet])
        .current_dir(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = warden(data, &["approve", "needs-ok", "--by", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waits up to 30s for approval; release it with `warden approve needs-ok`"),
        "the wait is announced with its command: {stderr}"
    );
}

#[test]
fn a_process_killed_mid_run_keeps_every_committed_call_and_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let config = data.join("warden.toml");
    std::fs::write(&config, "call_durability = \"every-call\"\n").unwrap();
    let with_config = |args: &[&str]| {
        let mut full = vec!["--config", config.to_str().unwrap()];
        full.extend_from_slice(args);
        warden(data, &full)
    };
    assert!(
        with_config(&[
            "agents",
            "register",
            "probe",
            "--tier",
            "T1",
            "--component",
            &wasm("probe")
        ])
        .status
        .success()
    );
    let packet = write_packet(
        data,
        "probe",
        serde_json::json!({"agent_id":"probe","task_id":"crash","objective":"probe: state.set marker 1; ledger.note before-the-crash; spin","limits":{"phase_cpu_ms":60000,"phase_wall_ms":60000}}),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "run",
            &wasm("probe"),
            "--packet",
            &packet,
        ])
        .current_dir(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the call's row is visible to another connection, then kill the process
    // while the agent spins.
    let db = data.join("ledger.db");
    let seen = |action: &str| -> bool {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM agent_actions WHERE action = ?1",
                    [action],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n > 0)
            .unwrap_or(false)
    };
    let mut waited = 0;
    while !seen("state.set") {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
        assert!(waited < 200, "the call was never recorded");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent should still be spinning"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        seen("state.set") && seen("agent.note"),
        "rows of calls that returned survive the kill"
    );
    let out = with_config(&["--json", "ledger", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(json(&out)["broken"].is_null());
}

#[test]
fn orchestrate_prints_metrics_and_task_show_the_tally() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = data.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[llm]\nprovider = \"scripted\"\nrules = \"{}\"\n\n[orchestrator]\ncheck_interval = \"50ms\"\n",
            root.join("agents/demo/llm-rules.toml").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    for (id, tier) in [("alpha", "T1"), ("beta", "T1"), ("gamma", "T2")] {
        let out = warden(
            data,
            &[
                "--config",
                &config,
                "agents",
                "register",
                id,
                "--tier",
                tier,
                "--component",
                &wasm(id),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let objective = "Design a distributed event-driven analytics platform";
    let run = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        warden(data, &full)
    };
    let out = run(&[
        "--json",
        "orchestrate",
        objective,
        "--agents",
        "alpha,beta",
        "--mediator",
        "gamma",
        "--task",
        "cli-multi",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = json(&out);
    assert_eq!(metrics["mediator"]["reason"], "CONFLICT");
    assert_eq!(metrics["consensus_result"], "reached");
    assert_eq!(metrics["agents"].as_array().unwrap().len(), 3);

    let out = run(&["task", "show", "cli-multi"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("p4") && text.contains("2 accept / 0 reject / 0 abstain · consensus reached"),
        "{text}"
    );

    // A task that ended is not resumed; a resume takes the task's own settings, so a flag
    // that would change them is refused, not ignored.
    let out = run(&["--json", "orchestrate", "--resume", "cli-multi"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "TASK_NOT_INTERRUPTED", "{}", json(&out));
    let out = run(&["orchestrate", "--resume", "cli-multi", "--timeout", "5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--timeout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent that is not registered: refused before anything runs (exit 3).
    let out = run(&[
        "orchestrate",
        objective,
        "--agents",
        "alpha,ghost",
        "--task",
        "cli-bad",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
    // The same agent twice: a usage error naming it (exit 1).
    let out = run(&["orchestrate", objective, "--agents", "alpha,alpha"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent `alpha` is named twice"));
}

/// What an agent writes reaches human output with its control characters and line breaks
/// escaped, so it can neither fake a ledger line nor rewrite the operator's screen; `--json`
/// keeps it exact.
#[test]
fn guest_strings_are_escaped_in_human_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let probe = wasm("probe");
    let out = warden(
        data,
        &[
            "agents",
            "register",
            "evil",
            "--tier",
            "T1",
            "--component",
            &probe,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = "fake\u{1b}[2J\n2026-01-01 agent_actions hello run.end completed";
    let packet = write_packet(
        data,
        "evil",
        serde_json::json!({
            "agent_id": "evil",
            "task_id": "t-evil",
            "objective": format!("probe: ledger.note {note}; bb.write progress k v\u{1b}[31m\u{202e}red; state.get secret-x"),
            "constraints": { "forbidden": ["state:secret-*"] },
        }),
    );
    let run = warden(data, &["run", &probe, "--packet", &packet]);
    let handoff = warden(data, &["handoff", "show", "t-evil"]);
    let tail = warden(data, &["ledger", "tail", "-n", "100"]);
    let query = warden(data, &["ledger", "query", "--agent", "evil"]);
    let task = warden(data, &["task", "show", "t-evil"]);
    for (what, out) in [
        ("run", &run),
        ("handoff show", &handoff),
        ("ledger tail", &tail),
        ("ledger query", &query),
        ("task show", &task),
    ] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.is_empty(),
            "{what}: no output; {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains('\u{1b}'),
            "{what} printed a raw escape: {text}"
        );
        assert!(
            !text.contains('\u{202e}'),
            "{what} printed a bidi override: {text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("2026-01-01 agent_actions hello")),
            "{what} printed a forged line: {text}"
        );
    }
    let text = String::from_utf8_lossy(&tail.stdout);
    assert!(text.contains(r"fake\u{1b}[2J\n2026-01-01"), "{text}");
    // `--json` is exact.
    let rows = json(&warden(
        data,
        &[
            "--json",
            "ledger",
            "query",
            "--agent",
            "evil",
            "--kind",
            "agent.note",
        ],
    ));
    assert_eq!(rows[0]["fields"]["decision"], note, "{rows}");
}

/// A state store that is down when a run starts refuses the run with `STATE_UNAVAILABLE`,
/// exit 3, recorded in the ledger, in one sentence.
#[test]
fn a_state_store_down_at_start_is_a_recorded_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let hello = wasm("hello");
    let out = warden(
        data,
        &[
            "agents",
            "register",
            "hello",
            "--tier",
            "T1",
            "--component",
            &hello,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let packet = write_packet(
        data,
        "hello",
        serde_json::json!({"agent_id":"hello","task_id":"t-down","objective":"greet"}),
    );
    let out = warden(data, &["--state", &url, "run", &hello, "--packet", &packet]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("error: STATE_UNAVAILABLE: agent `hello`"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "the cause is said once: {stderr}"
    );
    let json_out = warden(
        data,
        &[
            "--json", "--state", &url, "run", &hello, "--packet", &packet,
        ],
    );
    assert_eq!(json(&json_out)["code"], "STATE_UNAVAILABLE");
    let rows = json(&warden(
        data,
        &["--json", "ledger", "query", "--kind", "packet.submit"],
    ));
    let row = &rows[0]["fields"];
    assert_eq!(row["decision"], "refused", "{rows}");
    assert_eq!(row["error_type"], "STATE_UNAVAILABLE", "{rows}");
}

/// A real `warden` process SIGKILLed while its run waits at the approval gate, after PLAN's
/// effects; `warden resume` feeds PLAN back from the journal (the host's `plan.json` is not
/// written again) and goes live from the gate: every effect once, the chain intact.
#[test]
fn a_run_killed_mid_way_resumes_with_no_effect_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    assert!(
        warden(
            data,
            &[
                "agents",
                "register",
                "arch",
                "--tier",
                "T4",
                "--component",
                &wasm("hello")
            ]
        )
        .status
        .success()
    );
    let packet = write_packet(
        data,
        "arch",
        serde_json::json!({"agent_id":"arch","task_id":"resume-t","objective":"greet","deliverables":["hello.txt"],"limits":{"approval_timeout_ms":60000}}),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            &wasm("hello"),
            "--packet",
            &packet,
        ])
        .current_dir(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = data.join("ledger.db");
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    let mut waited = 0;
    while count("SELECT count(*) FROM agent_actions WHERE action = 'approval.requested'") == 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
        assert!(waited < 400, "the run never reached the approval gate");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = warden(data, &["--json", "runs", "list", "--status", "running"]);
    let runs = json(&out);
    let run = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(runs["runs"][0]["phase"], "PLAN", "{runs}");
    // A new run of the agent says the last one was interrupted and how to resume it.
    let again = warden(data, &["run", &wasm("hello"), "--packet", &packet]);
    let note = String::from_utf8_lossy(&again.stderr);
    assert!(note.contains(&format!("warden resume {run}")), "{note}");

    assert!(warden(data, &["approve", "resume-t"]).status.success());
    let out = warden(data, &["--json", "resume", &run]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(report["outcome"]["status"], "completed", "{report}");

    let shown = json(&warden(data, &["--json", "runs", "show", &run]));
    assert_eq!(shown["run"]["status"], "completed", "{shown}");
    assert_eq!(shown["run"]["attempts"], 2, "{shown}");
    // Each effect once: one `plan.json`, one `hello.txt`, one `report.json` in the task.
    let state = rusqlite::Connection::open(data.join("state.db")).unwrap();
    for name in ["plan.json", "hello.txt", "report.json"] {
        let versions: i64 = state
            .query_row(
                "SELECT count(*) FROM lists WHERE key = 'task:resume-t:artifacts' AND value LIKE ?1",
                [format!("%\"name\":\"{name}\"%")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(versions, 1, "`{name}` written {versions} times");
    }
    let out = warden(data, &["--json", "ledger", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The resumed run replays identical from its journal.
    let out = warden(data, &["--json", "replay", &run]);
    assert_eq!(
        json(&out)["verdict"],
        "identical",
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A completed run is not resumed again.
    let out = warden(data, &["--json", "resume", &run]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "RUN_NOT_INTERRUPTED");
}

/// A data directory whose T2 planner runs tool `append` (a line to `effects.log`, outside the
/// sandbox, then a sleep), killed with SIGKILL while the tool runs: the run id and the log.
fn killed_while_a_tool_runs(data: &Path, idempotent: bool) -> (String, String, PathBuf) {
    let out = data.join("effects");
    std::fs::create_dir(&out).unwrap();
    let log = out.join("effects.log");
    std::fs::write(
        data.join("tools.toml"),
        format!(
            r#"[[tool]]
name = "append"
description = "append a line to a file outside the sandbox"
min_tier = "T1"
full_tier = "T2"
argv = ["/bin/sh", "-c", "echo ran >> {log}; sleep 2"]
write_paths = ["{out}"]
timeout = "20s"
idempotent = {idempotent}
"#,
            log = log.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        data.join("rules.toml"),
        r#"model = "scripted-1"
default = "done"

[[rule]]
pattern = "You are the planning step of an automation agent"
response = '{"summary":"append once","steps":["append"],"confidence":0.9,"tools":[{"name":"append","args":[]}]}'
"#,
    )
    .unwrap();
    let config = data.join("warden.toml");
    std::fs::write(
        &config,
        "tools = \"tools.toml\"\n\n[llm]\nprovider = \"scripted\"\nrules = \"rules.toml\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let out = warden(
        data,
        &[
            "--config",
            &config,
            "agents",
            "register",
            "planner",
            "--tier",
            "T2",
            "--component",
            &wasm("planner"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packet = write_packet(
        data,
        "planner",
        serde_json::json!({"agent_id":"planner","task_id":"tool-t","objective":"append a line","deliverables":["out.md"],
            "constraints":{"scope":["llm:*","artifact:*","state:*","ledger:*","tool:append*"]}}),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            &config,
            "run",
            &wasm("planner"),
            "--packet",
            &packet,
        ])
        .env("WARDEN_LOG", "error")
        .current_dir(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        waited += 1;
        assert!(waited < 1500, "the tool never ran");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let runs = json(&warden(
        data,
        &["--json", "runs", "list", "--status", "running"],
    ));
    let run = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    (run, config, log)
}

#[test]
fn a_run_killed_while_a_tool_runs_resumes_only_on_the_operators_decision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (run, config, log) = killed_while_a_tool_runs(data, false);
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.as_str(),
            "--json",
            "resume",
            run.as_str(),
        ];
        args.extend_from_slice(extra);
        warden(data, &args)
    };
    // Whether the tool took effect is unknown: the operator is asked, naming the call.
    let out = resume(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", json(&out));
    let error = json(&out);
    assert_eq!(error["code"], "RESUME_UNCERTAIN", "{error}");
    let message = error["error"].as_str().unwrap().to_string();
    assert!(message.contains("tool `append`"), "{message}");
    let call: u64 = message
        .split("--assume-done ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call named: {message}"));
    let other = (call + 3).to_string();
    let out = resume(&["--rerun", &other]);
    assert_eq!(json(&out)["code"], "RESUME_DECISION_INVALID");

    let out = resume(&["--assume-done", &call.to_string()]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["outcome"]["status"], "completed", "{report}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "ran\n",
        "the tool ran once"
    );
    let decisions = json(&warden(
        data,
        &["--json", "ledger", "query", "--kind", "resume.decision"],
    ));
    let decided = decisions.as_array().unwrap();
    assert_eq!(decided.len(), 1, "the decision is recorded: {decisions}");
    assert_eq!(
        decided[0]["fields"]["decision"], "assume-done",
        "{decisions}"
    );
    assert!(
        warden(data, &["ledger", "verify"]).status.success(),
        "the ledger verifies"
    );
    // The resumed run replays identical, the operator's answer included.
    let out = warden(data, &["--json", "replay", &run]);
    assert_eq!(json(&out)["verdict"], "identical", "{}", json(&out));
}

#[test]
fn a_run_killed_while_an_idempotent_tool_runs_runs_it_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (run, config, log) = killed_while_a_tool_runs(data, true);
    let out = warden(data, &["--config", &config, "--json", "resume", &run]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["outcome"]["status"], "completed", "{report}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "ran\nran\n",
        "an idempotent tool runs again"
    );
    let out = warden(data, &["--json", "replay", &run]);
    assert_eq!(json(&out)["verdict"], "identical", "{}", json(&out));
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let registered = warden(dir.path(), &["agents", "register", "hello", "--tier", "T1"]);
    assert!(registered.status.success(), "{registered:?}");
    // The reader is gone before the command writes a byte: every write meets EPIPE.
    let mut child = command(dir.path(), &["ledger", "query"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_data_directory_with_no_ledger_is_refused_by_commands_that_read_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("no-such-dir");
    for args in [
        &["ledger", "verify"][..],
        &["agents", "list"],
        &["runs", "list"],
    ] {
        let output = command(&typo, args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no ledger in data directory") && stderr.contains("--data-dir"),
            "{args:?}: {stderr}"
        );
        assert!(!typo.exists(), "{args:?} created `{}`", typo.display());
    }
}

#[test]
fn log_lines_are_plain_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // Info logs of a registration and a verify, stderr to a pipe.
    let output = command(dir.path(), &["agents", "register", "hello", "--tier", "T1"])
        .env("WARDEN_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.is_empty(), "debug logging writes something");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in a pipe: {stderr:?}"
    );
}

#[test]
fn ledger_query_pages_newest_first_and_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    for agent in ["first", "second"] {
        let out = warden(dir.path(), &["agents", "register", agent, "--tier", "T1"]);
        assert!(out.status.success(), "{out:?}");
    }
    let newest = json(&warden(
        dir.path(),
        &["--json", "ledger", "query", "--desc", "--limit", "1"],
    ));
    let oldest = json(&warden(
        dir.path(),
        &["--json", "ledger", "query", "--limit", "1"],
    ));
    let agent_of = |v: &serde_json::Value| v[0]["agent_id"].as_str().unwrap().to_string();
    assert_eq!(agent_of(&newest), "second");
    assert_eq!(agent_of(&oldest), "first");
    let recent = json(&warden(
        dir.path(),
        &["--json", "ledger", "query", "--since", "1h"],
    ));
    assert_eq!(
        recent.as_array().unwrap().len(),
        4,
        "two registrations, two promotions"
    );
    let bad = warden(dir.path(), &["ledger", "query", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("`yesterday` is neither an RFC 3339 time"),
        "{stderr}"
    );
}

#[test]
fn completions_are_scripts_the_shell_reads() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = warden(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("ledger") && script.contains("replay"),
            "{shell}: the subcommands are in it"
        );
    }
    // bash parses its script (syntax check only, nothing runs).
    let out = warden(dir.path(), &["completions", "bash"]);
    let path = dir.path().join("warden.bash");
    std::fs::write(&path, &out.stdout).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        !dir.path().join("ledger.db").exists(),
        "completions touch no data directory"
    );
}

/// `chattr` on `paths`: root ignores permissions, not the immutable attribute.
fn chattr(flag: &str, paths: &[PathBuf]) {
    let status = Command::new("chattr")
        .arg(flag)
        .args(paths)
        .status()
        .unwrap_or_else(|e| panic!("`chattr` does not run ({e}): install Debian's e2fsprogs"));
    assert!(status.success(), "chattr {flag} failed");
}

#[test]
fn the_ledger_commands_read_a_directory_nothing_may_be_written_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = warden(&data, &["agents", "register", "hello", "--tier", "T1"]);
    assert!(out.status.success(), "{out:?}");
    let before: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut frozen: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    frozen.push(data.clone());
    chattr("+i", &frozen);
    let verify = warden(&data, &["--json", "ledger", "verify"]);
    let query = warden(&data, &["--json", "ledger", "query"]);
    chattr("-i", &frozen);
    let report = json(&verify);
    assert!(verify.status.success(), "{verify:?}");
    assert!(report["rows"].as_u64().unwrap() >= 2, "{report}");
    assert!(query.status.success(), "{query:?}");
    assert!(!json(&query).as_array().unwrap().is_empty());
    let after: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing was created");
}

#[test]
fn under_json_every_error_has_a_code_and_usage_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let usage = warden(dir.path(), &["--json", "runs", "show"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let value = json(&usage);
    assert_eq!(value["code"], "USAGE");
    assert!(
        value["error"].as_str().unwrap().contains("<RUN>"),
        "the message names what is missing: {value}"
    );
    let typo = dir.path().join("typo");
    let missing = command(&typo, &["--json", "ledger", "verify"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(json(&missing)["code"], "NO_LEDGER");
    // Help is help, under --json too.
    let help = warden(dir.path(), &["--json", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}

#[test]
fn a_tasks_artifacts_are_listed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    register_hello(data);
    let packet = write_packet(
        data,
        "hello",
        serde_json::json!({"agent_id":"hello","task_id":"art-1","objective":"greet","deliverables":["hello.txt"]}),
    );
    let out = warden(data, &["run", &wasm("hello"), "--packet", &packet]);
    assert!(out.status.success(), "{out:?}");
    let listed = json(&warden(data, &["--json", "artifacts", "list", "art-1"]));
    let names: Vec<&str> = listed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"report.json"), "{listed}");
    // Into a pipe: the exact bytes; to a file: the same.
    let piped = warden(data, &["artifacts", "get", "art-1", "report.json"]);
    assert!(piped.status.success(), "{piped:?}");
    let report: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert!(report.is_object(), "the host's report is JSON");
    let file = data.join("out.json");
    let written = warden(
        data,
        &[
            "artifacts",
            "get",
            "art-1",
            "report.json",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(written.status.success(), "{written:?}");
    assert_eq!(std::fs::read(&file).unwrap(), piped.stdout);
    let missing = warden(data, &["--json", "artifacts", "get", "art-1", "nope.txt"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        json(&missing)["error"]
            .as_str()
            .unwrap()
            .contains("has no artifact `nope.txt`")
    );
}
