//! Durable runs with a real `warden` process SIGKILLed: at every capability-call boundary in
//! turn (the exactly-once proof, on the embedded store and on a real `redis-server`), and on
//! Redis at the approval gate, each resumed with every effect once; a resumed run then
//! replays offline with the Redis server gone.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use warden_tests::redis_server::RedisServer;

/// `warden --data-dir <data> [--state <state>] <args>`; without `state`, the embedded store.
fn command(data: &Path, state: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(warden_tests::warden_bin());
    command.arg("--data-dir").arg(data);
    if let Some(state) = state {
        command.arg("--state").arg(state);
    }
    command
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .env_remove("WARDEN_CONFIG")
        .current_dir(data);
    command
}

fn warden(data: &Path, state: Option<&str>, args: &[&str]) -> Output {
    command(data, state, args).output().unwrap()
}

/// `output`, after checking its command succeeded.
fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
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
    succeeded(warden(
        data,
        Some(&url),
        &[
            "agents",
            "register",
            "arch",
            "--tier",
            "T4",
            "--component",
            hello,
        ],
    ));
    let packet = data.join("arch.json");
    std::fs::write(
        &packet,
        serde_json::json!({"agent_id":"arch","task_id":"resume-r","objective":"greet","deliverables":["hello.txt"],"limits":{"approval_timeout_ms":60000}}).to_string(),
    )
    .unwrap();
    let packet = packet.to_str().unwrap();
    let mut child = command(data, Some(&url), &["run", hello, "--packet", packet])
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
        Some(&url),
        &["--json", "runs", "list", "--status", "running"],
    ));
    let run = runs["runs"][0]["run_id"].as_str().unwrap().to_string();
    assert!(
        warden(data, Some(&url), &["approve", "resume-r"])
            .status
            .success()
    );
    let out = warden(data, Some(&url), &["--json", "resume", &run]);
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
    let out = warden(data, Some(&url), &["--json", "ledger", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Redis gone: a replay touches no state store.
    drop(conn);
    drop(redis);
    let out = warden(data, Some(&url), &["--json", "replay", &run]);
    let replay = json(&out);
    assert_eq!(out.status.code(), Some(0), "{replay}");
    assert_eq!(replay["verdict"], "identical", "{replay}");
}

/// Where a test's runtime state lives.
enum Store {
    /// The data directory's SQLite state file.
    File,
    /// A real `redis-server`.
    Redis(RedisServer),
}

impl Store {
    /// The `--state` argument, if any.
    fn arg(&self) -> Option<String> {
        match self {
            Store::File => None,
            Store::Redis(server) => Some(server.url()),
        }
    }

    /// What one run left under its id (agent and task share it), with the id written as
    /// `@`: entries per key.
    fn footprint(&self, data: &Path, id: &str) -> Vec<(String, i64)> {
        let mut all = match self {
            Store::File => {
                let db = rusqlite::Connection::open(data.join("state.db")).unwrap();
                let mut all = Vec::new();
                for table in ["lists", "hashes", "strings"] {
                    let sql = format!(
                        "SELECT replace(key, ?1, '@'), count(*) FROM {table} WHERE key LIKE '%' || ?1 || '%' GROUP BY 1"
                    );
                    let mut statement = db.prepare(&sql).unwrap();
                    let rows = statement
                        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .unwrap();
                    all.extend(rows.map(Result::unwrap));
                }
                all
            }
            Store::Redis(server) => {
                let client = redis::Client::open(server.url().as_str()).unwrap();
                let mut conn = client.get_connection().unwrap();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("*{id}*"))
                    .query(&mut conn)
                    .unwrap();
                keys.into_iter()
                    .map(|key| {
                        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                        let len = match kind.as_str() {
                            "list" => "LLEN",
                            "hash" => "HLEN",
                            "zset" => "ZCARD",
                            "set" => "SCARD",
                            "stream" => "XLEN",
                            _ => "EXISTS",
                        };
                        let n: i64 = redis::cmd(len).arg(&key).query(&mut conn).unwrap();
                        (key.replace(id, "@"), n)
                    })
                    .collect()
            }
        };
        all.sort();
        all
    }

    /// The entries of list `key`, oldest first.
    fn list(&self, data: &Path, key: &str) -> Vec<String> {
        match self {
            Store::File => rusqlite::Connection::open(data.join("state.db"))
                .unwrap()
                .prepare("SELECT value FROM lists WHERE key = ?1 ORDER BY idx")
                .unwrap()
                .query_map([key], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            Store::Redis(server) => {
                let client = redis::Client::open(server.url().as_str()).unwrap();
                let mut conn = client.get_connection().unwrap();
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut conn)
                    .unwrap()
            }
        }
    }

    /// How many versions artifact `name` of task `task` has, and the digest of the last.
    fn artifact(&self, data: &Path, task: &str, name: &str) -> (usize, String) {
        let versions: Vec<String> = self
            .list(data, &format!("task:{task}:artifacts"))
            .into_iter()
            .filter(|v| v.contains(&format!("\"name\":\"{name}\"")))
            .collect();
        let digest = versions
            .last()
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .and_then(|v| v["digest"].as_str().map(str::to_string))
            .unwrap_or_default();
        (versions.len(), digest)
    }
}

/// The rows of `run`'s capability calls, per call and decision (a phase result's decision is
/// its digest, which names the run's agent, so it is left out): a call replayed from the
/// journal writes none, so a resumed run has exactly the rows of an uninterrupted one.
fn call_rows(data: &Path, run: &str) -> Vec<(String, String, i64)> {
    let db = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    let mut statement = db
        .prepare(
            "SELECT action, CASE action WHEN 'phase.result' THEN '' ELSE decision END, count(*) FROM agent_actions WHERE run_id = ?1 AND call_seq IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .unwrap();
    statement
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A tools file in `data` with tool `append` (not idempotent: it appends a line to
/// `effects/<arg>.log`, outside the sandbox), and a `warden.toml` naming it: the effects
/// directory and the config's path.
fn append_tool(data: &Path) -> (std::path::PathBuf, String) {
    let effects = data.join("effects");
    std::fs::create_dir(&effects).unwrap();
    std::fs::write(
        data.join("tools.toml"),
        format!(
            r#"[[tool]]
name = "append"
description = "append a line to a file outside the sandbox"
min_tier = "T1"
full_tier = "T2"
argv = ["/bin/sh", "-c", "echo ran >> \"$0\"", "{out}/{{0}}.log"]
args = ["^[a-z0-9-]{{1,40}}$"]
max_args = 1
write_paths = ["{out}"]
"#,
            out = effects.display(),
        ),
    )
    .unwrap();
    let config = data.join("warden.toml");
    std::fs::write(&config, "tools = \"tools.toml\"\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    (effects, config)
}

/// The exactly-once proof: an agent makes effects of every kind (state, artifact,
/// blackboard, message, vote, ledger note, and a tool appending a line to a file outside the
/// sandbox); a real `warden` process is SIGKILLed at every capability-call boundary in turn
/// (before each call's body; inside it, after the write or the tool run and before its record;
/// and after its records were handed to the ledger), and `warden resume` then completes it
/// (with `--assume-done` for the one kill that leaves a tool's effect unknown). Each resumed run has each effect exactly once, the
/// artifact byte-identical to an uninterrupted run's, the rows of every call once (none lost,
/// none doubled), and the ledger verifies.
fn every_effect_once_with_the_host_killed_at_every_boundary(store: &Store) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let state = store.arg();
    let (effects, config) = append_tool(data);
    let probe = warden_tests::agents_dir().join("coord_probe.wasm");
    let probe = probe.to_str().unwrap().to_string();
    let cli = |args: &[&str], fault: Option<&str>| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        let mut command = command(data, state.as_deref(), &full);
        if let Some(fault) = fault {
            command.env("WARDEN_FAULT_KILL", fault);
        }
        command.output().unwrap()
    };
    let start = |id: &str, fault: Option<&str>| -> Output {
        succeeded(cli(
            &[
                "agents",
                "register",
                id,
                "--tier",
                "T2",
                "--component",
                &probe,
            ],
            None,
        ));
        let script = format!(
            "probe: state.set a 1; art.put out.md hello world; bb.write solutions k v; msg.broadcast note hi; vote.propose-to p reviewer - merge it; note done; tool append {id}; state.set b 2; bb.read solutions k"
        );
        let packet = data.join(format!("{id}.json"));
        std::fs::write(
            &packet,
            serde_json::json!({"agent_id": id, "task_id": id, "objective": script,
                "constraints": {"scope": ["*"]}})
            .to_string(),
        )
        .unwrap();
        cli(
            &[
                "--json",
                "run",
                &probe,
                "--packet",
                packet.to_str().unwrap(),
            ],
            fault,
        )
    };
    let lines = |id: &str| {
        std::fs::read_to_string(effects.join(format!("{id}.log")))
            .unwrap_or_default()
            .lines()
            .count()
    };

    let base = start("fx-base", None);
    assert_eq!(base.status.code(), Some(0), "{}", json(&base));
    let base_run = json(&base)["run_id"].as_str().unwrap().to_string();
    let base_rows = call_rows(data, &base_run);
    let base_state = store.footprint(data, "fx-base");
    let base_artifact = store.artifact(data, "fx-base", "out.md");
    assert_eq!(lines("fx-base"), 1);
    assert_eq!(base_artifact.0, 1);
    assert!(
        base_state.iter().any(|(key, _)| key.contains("msg:@"))
            && base_state.iter().any(|(key, _)| key.contains("proposals")),
        "the run's messages and votes are in the footprint: {base_state:?}"
    );

    let mut killed = 0;
    let mut uncertain = 0;
    for when in ["before", "inside", "after"] {
        for n in 1.. {
            let id = format!("fx-{when}-{n:03}");
            let out = start(&id, Some(&format!("{when}:{n}")));
            if out.status.code() == Some(0) {
                // Past the run's last call: every boundary was tried.
                break;
            }
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&out.status),
                Some(9),
                "{when}:{n}: the host was not killed (status {:?}); the fault points need `--features fault-points`, which `cargo xtask test` enables",
                out.status
            );
            killed += 1;
            let runs = json(&cli(
                &[
                    "--json", "runs", "list", "--agent", &id, "--status", "running",
                ],
                None,
            ));
            let run = runs["runs"][0]["run_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{when}:{n}: no interrupted run: {runs}"))
                .to_string();
            let mut out = cli(&["--json", "resume", &run], None);
            let mut decided = false;
            if when == "inside" && json(&out)["code"] == "RESUME_UNCERTAIN" {
                // Killed after the tool ran, before its result was recorded: the operator
                // says it took effect (its line is in the file).
                let refusal = json(&out);
                let message = refusal["error"].as_str().unwrap_or_default();
                let seq = message
                    .split("--assume-done ")
                    .nth(1)
                    .map(|rest| {
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()
                            .unwrap_or("")
                    })
                    .filter(|seq| !seq.is_empty())
                    .unwrap_or_else(|| panic!("{when}:{n}: no call to decide: {refusal}"));
                out = cli(&["--json", "resume", &run, "--assume-done", seq], None);
                uncertain += 1;
                decided = true;
            }
            let report = json(&out);
            assert_eq!(out.status.code(), Some(0), "{when}:{n}: {report}");
            assert_eq!(
                report["outcome"]["status"], "completed",
                "{when}:{n}: {report}"
            );
            assert_eq!(lines(&id), 1, "{when}:{n}: the tool ran once");
            // A decided call's answer is the operator's decision, recorded in place of the
            // tool's result row.
            let expected_rows = if decided {
                let mut rows: Vec<_> = base_rows
                    .iter()
                    .filter(|(action, decision, _)| {
                        (action.as_str(), decision.as_str()) != ("tools.invoke", "allowed")
                    })
                    .cloned()
                    .collect();
                rows.push(("resume.decision".to_string(), "assume-done".to_string(), 1));
                rows.sort();
                rows
            } else {
                base_rows.clone()
            };
            assert_eq!(
                call_rows(data, &run),
                expected_rows,
                "{when}:{n}: every call's rows once, none lost"
            );
            assert_eq!(
                store.footprint(data, &id),
                base_state,
                "{when}:{n}: every state effect once"
            );
            assert_eq!(
                store.artifact(data, &id, "out.md"),
                base_artifact,
                "{when}:{n}: the artifact once, byte-identical"
            );
        }
    }
    assert!(
        killed >= 3 * 9,
        "the host was killed at {killed} boundaries, fewer than three per call of the script; the fault points need `--features fault-points`, which `cargo xtask test` enables"
    );
    assert_eq!(
        uncertain, 1,
        "only the kill inside the tool's call leaves a call whose effect is unknown"
    );
    let out = cli(&["--json", "ledger", "verify"], None);
    assert_eq!(out.status.code(), Some(0), "{}", json(&out));
}

#[test]
fn every_effect_once_with_the_host_killed_at_every_boundary_on_the_embedded_store() {
    every_effect_once_with_the_host_killed_at_every_boundary(&Store::File);
}

#[test]
fn every_effect_once_with_the_host_killed_at_every_boundary_on_redis() {
    every_effect_once_with_the_host_killed_at_every_boundary(&Store::Redis(RedisServer::start()));
}

/// What an ALPHA/BETA/GAMMA task settled, from its metrics: the mediator's reason, the
/// consensus, the proposal it reached, who finalized it, and the proposals and votes.
fn settled(metrics: &serde_json::Value) -> serde_json::Value {
    let decision: serde_json::Value = metrics["consensus"]["final_decision"]
        .as_str()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default();
    serde_json::json!({
        "success": metrics["success"],
        "mediator": metrics["mediator"]["agent"],
        "reason": metrics["mediator"]["reason"],
        "result": metrics["consensus_result"],
        "reached": metrics["consensus"]["reached"],
        "resolved": metrics["consensus"]["resolved"],
        "final": [decision["proposal_id"], decision["reached"], decision["finalized_by"]],
        "proposals": metrics["proposals"],
        "votes": metrics["votes"],
    })
}

/// An orchestrated ALPHA/BETA/GAMMA task (the demo's: three designs, three rejections, the
/// conflict spawns GAMMA, its merge is voted through), its `warden` process SIGKILLed at
/// points spread over the task, resumes with `warden orchestrate --resume` to the consensus
/// of an uninterrupted run, every run and the ledger intact.
fn an_orchestrated_task_killed_mid_way_resumes_to_the_same_consensus(store: &Store) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../agents/demo/warden.toml");
    let state = store.arg();
    // A fresh data directory per task, so no agent is promoted between them.
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        for (id, tier) in [("alpha", "T1"), ("beta", "T1"), ("gamma", "T2")] {
            let component = warden_tests::agents_dir().join(format!("{id}.wasm"));
            succeeded(warden(
                dir.path(),
                state.as_deref(),
                &[
                    "--config",
                    config,
                    "agents",
                    "register",
                    id,
                    "--tier",
                    tier,
                    "--component",
                    component.to_str().unwrap(),
                ],
            ));
        }
        dir
    };
    let orchestrate = |data: &Path, task: &str, fault: Option<String>| {
        let mut command = command(
            data,
            state.as_deref(),
            &[
                "--config",
                config,
                "--json",
                "orchestrate",
                "Design a distributed event-driven analytics platform",
                "--agents",
                "alpha,beta",
                "--mediator",
                "gamma",
                "--task",
                task,
                "--timeout",
                "60",
            ],
        );
        if let Some(fault) = fault {
            command.env("WARDEN_FAULT_KILL", fault);
        }
        command.output().unwrap()
    };
    let calls = |data: &Path, task: &str| -> i64 {
        rusqlite::Connection::open(data.join("ledger.db"))
            .unwrap()
            .query_row(
                "SELECT count(*) FROM agent_actions WHERE task_id = ?1 AND call_seq IS NOT NULL",
                [task],
                |r| r.get(0),
            )
            .unwrap()
    };

    let base_dir = fresh();
    let out = orchestrate(base_dir.path(), "abg-base", None);
    let base = json(&out);
    assert_eq!(out.status.code(), Some(0), "{base}");
    let expected = settled(&base);
    assert_eq!(expected["result"], "reached", "{base}");
    assert_eq!(expected["reason"], "CONFLICT", "{base}");
    let total = calls(base_dir.path(), "abg-base");
    assert!(total > 20, "the task made {total} calls");

    // Within the first half: how many calls the agents' wait loops make varies from run to run.
    // Killed before a call's body, or inside it (its write committed, its record not), in turn.
    for k in 1..=8 {
        let at = total * k / 16;
        let fault = format!("{}:{at}", if k % 2 == 0 { "inside" } else { "before" });
        let dir = fresh();
        let data = dir.path();
        let task = format!("abg-{k}");
        let out = orchestrate(data, &task, Some(fault.clone()));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{fault}: the host was not killed (status {:?}); the fault points need `--features fault-points`, which `cargo xtask test` enables",
            out.status
        );
        if k == 1 {
            // Not started again over its own leftovers.
            let again = orchestrate(data, &task, None);
            assert_eq!(json(&again)["code"], "TASK_INTERRUPTED", "{}", json(&again));
        }
        let out = warden(
            data,
            state.as_deref(),
            &[
                "--config",
                config,
                "--json",
                "orchestrate",
                "--resume",
                &task,
            ],
        );
        let metrics = json(&out);
        assert_eq!(out.status.code(), Some(0), "{fault}: {metrics}");
        assert_eq!(settled(&metrics), expected, "{fault}: {metrics}");
        let runs = json(&warden(
            data,
            state.as_deref(),
            &[
                "--json", "runs", "list", "--task", &task, "--status", "running",
            ],
        ));
        assert_eq!(runs["runs"], serde_json::json!([]), "{fault}: {runs}");
        let out = warden(data, state.as_deref(), &["--json", "ledger", "verify"]);
        assert_eq!(out.status.code(), Some(0), "{fault}: {}", json(&out));
        // The task ended: a second resume is refused, naming why.
        let again = warden(
            data,
            state.as_deref(),
            &["--json", "orchestrate", "--resume", &task],
        );
        assert_eq!(
            json(&again)["code"],
            "TASK_NOT_INTERRUPTED",
            "{}",
            json(&again)
        );
    }
}

#[test]
fn an_orchestrated_task_killed_mid_way_resumes_to_the_same_consensus_on_the_embedded_store() {
    an_orchestrated_task_killed_mid_way_resumes_to_the_same_consensus(&Store::File);
}

#[test]
fn an_orchestrated_task_killed_mid_way_resumes_to_the_same_consensus_on_redis() {
    an_orchestrated_task_killed_mid_way_resumes_to_the_same_consensus(&Store::Redis(
        RedisServer::start(),
    ));
}

/// A task's agent killed inside a tool call that is not idempotent: `orchestrate --resume`
/// refuses with `RESUME_UNCERTAIN` naming the task's own command, refuses a decision for a
/// run it does not resume, and with the operator's `--assume-done RUN:CALL` goes on with the
/// task: the tool ran once and the decision is recorded.
#[test]
fn a_task_killed_inside_a_tool_call_resumes_with_the_operators_decision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (effects, config) = append_tool(data);
    let probe = warden_tests::agents_dir().join("coord_probe.wasm");
    let cli = |args: &[&str], fault: Option<String>| {
        let mut full = vec!["--config", config.as_str(), "--json"];
        full.extend_from_slice(args);
        let mut command = command(data, None, &full);
        if let Some(fault) = fault {
            command.env("WARDEN_FAULT_KILL", fault);
        }
        command.output().unwrap()
    };
    let lines = |task: &str| {
        std::fs::read_to_string(effects.join(format!("{task}.log")))
            .unwrap_or_default()
            .lines()
            .count()
    };
    succeeded(cli(
        &[
            "agents",
            "register",
            "solo",
            "--tier",
            "T2",
            "--component",
            probe.to_str().unwrap(),
        ],
        None,
    ));

    // The tool's call is among the run's first few; each try is a task of its own.
    let mut found = None;
    for n in 1..=12 {
        let task = format!("tool-task-{n}");
        let objective = format!("probe: note start; tool append {task}; note done");
        let out = cli(
            &[
                "orchestrate",
                &objective,
                "--agents",
                "solo",
                "--task",
                &task,
                "--timeout",
                "60",
            ],
            Some(format!("inside:{n}")),
        );
        if out.status.code() == Some(0) {
            break;
        }
        let out = cli(&["orchestrate", "--resume", &task], None);
        if json(&out)["code"] == "RESUME_UNCERTAIN" {
            found = Some((task, json(&out)));
            break;
        }
        assert_eq!(out.status.code(), Some(0), "inside:{n}: {}", json(&out));
    }
    let (task, refusal) = found.expect("no kill landed inside the tool's call");
    assert_eq!(lines(&task), 1, "the tool ran before the kill");
    let message = refusal["error"].as_str().unwrap();
    let decision = message
        .split(&format!("orchestrate --resume {task} --assume-done "))
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("the refusal names no task command: {message}"))
        .to_string();
    let (run, call) = decision.rsplit_once(':').unwrap();
    assert!(
        run.starts_with("run-") && call.parse::<u64>().is_ok(),
        "{decision}"
    );

    // A decision for a run the task does not resume is refused, and nothing runs.
    let other = format!("run-{}", "0".repeat(32));
    let out = cli(
        &[
            "orchestrate",
            "--resume",
            &task,
            "--assume-done",
            &format!("{other}:{call}"),
        ],
        None,
    );
    assert_eq!(
        json(&out)["code"],
        "RESUME_DECISION_INVALID",
        "{}",
        json(&out)
    );
    assert!(
        json(&out)["error"].as_str().unwrap().contains(run),
        "the refusal lists the task's interrupted run: {}",
        json(&out)
    );
    // A value that is not RUN:CALL is a usage error naming the shape.
    let out = cli(
        &["orchestrate", "--resume", &task, "--assume-done", call],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    // Under --json a usage error is JSON too.
    assert_eq!(json(&out)["code"], "USAGE", "{}", json(&out));
    assert!(
        json(&out)["error"].as_str().unwrap().contains("RUN:CALL"),
        "{}",
        json(&out)
    );

    let out = cli(
        &["orchestrate", "--resume", &task, "--assume-done", &decision],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", json(&out));
    assert_eq!(lines(&task), 1, "the tool did not run again");
    let decided: i64 = rusqlite::Connection::open(data.join("ledger.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM agent_actions WHERE run_id = ?1 AND action = 'resume.decision' AND decision = 'assume-done'",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(decided, 1, "the operator's decision is recorded once");
}
