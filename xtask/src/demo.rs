//! `cargo xtask demo`: a governed task on the embedded defaults, through the real CLI.
//!
//! The planner completes its lifecycle with the scripted LLM and real tools; six rogue
//! agents each try one forbidden thing while `hello` runs beside them; an observer built
//! against an interface above its tier is refused at load; ALPHA and BETA work a task in
//! parallel until their conflict spawns the mediator GAMMA, whose merged proposal reaches
//! consensus, and the task's metrics are printed; the ledger verifies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::{agents_dir, build_agents, build_host, root};

struct Warden {
    binary: PathBuf,
    data_dir: PathBuf,
    config: PathBuf,
}

impl Warden {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("WARDEN_LOG", "error");
        command
    }

    fn output(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("cannot run warden {args:?}"))
    }

    fn spawn(&self, args: &[&str]) -> Result<Child> {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run warden {args:?}"))
    }

    fn json(&self, args: &[&str]) -> Result<(i32, serde_json::Value)> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.output(&full)?;
        parse(output)
    }
}

fn parse(output: Output) -> Result<(i32, serde_json::Value)> {
    let code = output.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(text.trim())
        .unwrap_or(serde_json::Value::String(text.trim().to_string()));
    Ok((code, value))
}

fn wasm(name: &str) -> String {
    agents_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

fn packet(name: &str) -> String {
    root()
        .join("agents/demo/packets")
        .join(format!("{name}.json"))
        .display()
        .to_string()
}

pub fn demo(_args: &[String]) -> Result<()> {
    build_agents()?;
    // The CLI and, beside it, the sandbox helper its tools run through.
    build_host()?;
    let data_dir = crate::target_dir().join("demo");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("cannot clear `{}`", data_dir.display()))?;
    }
    let warden = Warden {
        binary: crate::target_dir().join("debug/warden"),
        data_dir: data_dir.clone(),
        config: root().join("agents/demo/warden.toml"),
    };
    std::fs::create_dir_all(data_dir.join("workspaces/planner"))
        .context("cannot create the demo data directory")?;
    std::fs::write(
        data_dir.join("workspaces/planner/notes.txt"),
        "ingest events, process streams, store aggregates, serve dashboards\n",
    )
    .context("cannot seed the planner's workspace")?;

    println!("\n== Warden demo: data directory {}\n", data_dir.display());
    let mut problems = Vec::new();

    // Registration binds each agent to its component digest and tier.
    for (id, tier, component) in [
        ("planner", "T2", "planner"),
        ("hello", "T1", "hello"),
        ("rogue-secret", "T3", "rogue"),
        ("rogue-escape", "T3", "rogue"),
        ("rogue-forbidden-tool", "T3", "rogue"),
        ("rogue-spin", "T3", "rogue"),
        ("rogue-hog", "T3", "rogue"),
        ("rogue-skip-artifact", "T3", "rogue"),
    ] {
        let (code, value) = warden.json(&[
            "agents",
            "register",
            id,
            "--tier",
            tier,
            "--component",
            &wasm(component),
            "--by",
            "demo",
        ])?;
        if code != 0 {
            bail!("registering `{id}` failed: {value}");
        }
    }
    println!("registered 8 agents (planner T2, hello T1, six rogues T3)");

    // The load gate: an observer whose component imports `tools` (T1+) is refused.
    let (code, value) = warden.json(&[
        "agents",
        "register",
        "overreach",
        "--tier",
        "T0",
        "--component",
        &wasm("rogue_overreach"),
        "--by",
        "demo",
    ])?;
    println!(
        "register overreach (T0, imports tools) -> exit {code}: {}",
        message(&value)
    );
    if code != 3 {
        problems.push(format!(
            "overreach registration should be refused (exit 3), got {code}"
        ));
    }

    // The governed LLM agent completes its lifecycle.
    let (code, value) = warden.json(&["run", &wasm("planner"), "--packet", &packet("planner")])?;
    println!(
        "\nplanner -> exit {code}: {} · phases {} · artifacts {}",
        value["outcome"]["status"].as_str().unwrap_or("?"),
        value["phases"].as_array().map(|p| p.len()).unwrap_or(0),
        value["artifacts"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|x| x["name"].as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    if code != 0 {
        problems.push(format!(
            "planner should complete (exit 0), got {code}: {value}"
        ));
    }

    // Its run replays offline from its journal: every answer it saw, none asked again.
    let run = value["run_id"].as_str().unwrap_or_default().to_string();
    let (code, replay) = warden.json(&["replay", &run])?;
    println!(
        "replay of {run} -> exit {code}: {} · {}/{} journal records in {:.1} ms",
        replay["verdict"].as_str().unwrap_or("?"),
        replay["replayed_records"],
        replay["recorded_records"],
        replay["duration_ms"].as_f64().unwrap_or(0.0)
    );
    if code != 0 || replay["verdict"] != "identical" {
        problems.push(format!(
            "the planner's run should replay identical (exit 0), got {code}: {replay}"
        ));
    }

    // Six rogue attempts in parallel with two runs of hello.
    let attempts = [
        "secret",
        "escape",
        "forbidden-tool",
        "spin",
        "hog",
        "skip-artifact",
    ];
    let mut children = Vec::new();
    for attempt in attempts {
        let name = format!("rogue-{attempt}");
        children.push((
            name.clone(),
            warden.spawn(&["--json", "run", &wasm("rogue"), "--packet", &packet(&name)])?,
        ));
    }
    let hello = warden.spawn(&[
        "--json",
        "run",
        &wasm("hello"),
        "--packet",
        &packet("hello"),
    ])?;
    println!("\n{:<22} {:>4}  {:<10} why", "agent", "exit", "outcome");
    for (name, child) in children {
        let (code, value) = parse(child.wait_with_output()?)?;
        let outcome = &value["outcome"];
        let status = outcome["status"].as_str().unwrap_or("refused");
        let why = outcome["details"]
            .as_str()
            .or(outcome["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| message(&value));
        println!("{name:<22} {code:>4}  {status:<10} {}", truncate(&why, 110));
        if code == 0 {
            problems.push(format!("{name} was not stopped"));
        }
    }
    let (code, value) = parse(hello.wait_with_output()?)?;
    println!(
        "{:<22} {code:>4}  {:<10} ran beside the rogues",
        "hello",
        value["outcome"]["status"].as_str().unwrap_or("?")
    );
    if code != 0 {
        problems.push(format!(
            "hello should complete beside the rogues, got {code}: {value}"
        ));
    }
    let escaped = [
        Path::new("/tmp/warden-escape.txt").to_path_buf(),
        data_dir.join("workspaces/escape.txt"),
    ];
    for path in escaped {
        if path.exists() {
            problems.push(format!("the escape attempt wrote `{}`", path.display()));
        }
    }

    // A revoked agent is refused at every later bootstrap.
    let (code, value) = warden.json(&[
        "run",
        &wasm("rogue"),
        "--packet",
        &packet("rogue-forbidden-tool"),
    ])?;
    println!(
        "\nrogue-forbidden-tool again -> exit {code}: {}",
        truncate(&message(&value), 120)
    );
    if code != 3 {
        problems.push(format!(
            "a revoked agent should be refused at bootstrap (exit 3), got {code}"
        ));
    }

    let (_, handoff) = warden.json(&["handoff", "show", "rogue-forbidden-tool"])?;
    println!(
        "handoff for task rogue-forbidden-tool: revoked={} reason={} next: {}",
        handoff["revoked"],
        handoff["revocation_reason"]["type"].as_str().unwrap_or("?"),
        handoff["required_next_actions"][1].as_str().unwrap_or("?")
    );

    multi_agent(&warden, &mut problems)?;

    let (code, value) = warden.json(&["ledger", "verify"])?;
    println!(
        "\nledger verify -> exit {code}: {} rows, head {}",
        value["rows"],
        value["head"]
            .as_str()
            .map(|h| &h[..h.len().min(16)])
            .unwrap_or("?")
    );
    if code != 0 {
        problems.push(format!("ledger verify failed: {value}"));
    }
    let (_, violations) =
        warden.json(&["ledger", "query", "--table", "violations", "--limit", "100"])?;
    println!(
        "violations recorded: {}",
        violations.as_array().map(|v| v.len()).unwrap_or(0)
    );

    println!(
        "\nexplore: target/debug/warden --data-dir {} agents list",
        data_dir.display()
    );
    if problems.is_empty() {
        println!("demo: every check held");
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("demo: {problem}");
        }
        bail!("{} demo check(s) failed", problems.len())
    }
}

/// ALPHA proposes three designs, BETA rejects them, the conflict spawns GAMMA, which merges
/// them and calls the vote that settles the task.
fn multi_agent(warden: &Warden, problems: &mut Vec<String>) -> Result<()> {
    for (id, tier) in [("alpha", "T1"), ("beta", "T1"), ("gamma", "T2")] {
        let (code, value) = warden.json(&[
            "agents",
            "register",
            id,
            "--tier",
            tier,
            "--component",
            &wasm(id),
            "--by",
            "demo",
        ])?;
        if code != 0 {
            bail!("registering `{id}` failed: {value}");
        }
    }
    let objective = "Design a distributed event-driven analytics platform";
    println!(
        "
== multi-agent task: alpha (T1) and beta (T1) in parallel, gamma (T2) on a condition"
    );
    let output = warden.output(&[
        "orchestrate",
        objective,
        "--agents",
        "alpha,beta",
        "--mediator",
        "gamma",
        "--task",
        "demo-multi",
        "--timeout",
        "60",
    ])?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    let code = output.status.code().unwrap_or(-1);
    if code != 0 {
        problems.push(format!(
            "the multi-agent task should succeed (exit 0), got {code}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let (_, rows) = warden.json(&[
        "ledger",
        "query",
        "--task",
        "demo-multi",
        "--kind",
        "task.metrics",
    ])?;
    let details = rows[0]["fields"]["details"].as_str().unwrap_or("{}");
    let metrics: serde_json::Value = serde_json::from_str(details).unwrap_or_default();
    let reason = metrics["mediator"]["reason"].as_str().unwrap_or("none");
    let result = metrics["consensus_result"].as_str().unwrap_or("?");
    println!("stored in the ledger as task.metrics: mediator {reason}, consensus {result}");
    if reason != "CONFLICT" || result != "reached" {
        problems.push(format!(
            "gamma should be spawned on CONFLICT and consensus reached, got {reason} / {result}"
        ));
    }
    Ok(())
}

fn message(value: &serde_json::Value) -> String {
    value["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}
