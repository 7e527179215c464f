//! Shared support for Warden's end-to-end suites: where the built agents are, hosts with
//! test configuration, packets.
//!
//! Agents are built by `cargo xtask test` (or `cargo xtask build-agents`) for
//! `wasm32-wasip2`; the suites read them from `WARDEN_AGENTS_DIR`, defaulting to
//! `target/wasm32-wasip2/release`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failure is a failed test, with the value in the message"
)]

use std::path::PathBuf;
use std::sync::Arc;

use warden::llm::ScriptedProvider;
use warden::tools::ToolRegistry;
use warden::{Host, HostBuilder, Packet, Tier};
pub mod bao_server;
pub mod http_server;
pub mod redis_server;
pub mod server;

/// The directory holding the built agents.
pub fn agents_dir() -> PathBuf {
    match std::env::var_os("WARDEN_AGENTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
    }
}

/// A built agent's bytes. Panics with the command that builds it when it is missing.
pub fn agent(name: &str) -> Vec<u8> {
    let path = agents_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "agent component `{}` is missing ({e}); build the agents with `cargo xtask build-agents` (or run the suite with `cargo xtask test`)",
            path.display()
        )
    })
}

/// The `warden` binary the suites run as a real process: `$WARDEN_BIN` (set by
/// `cargo xtask test`), else the debug build. Panics with the command that builds it.
pub fn warden_bin() -> PathBuf {
    let path = match std::env::var_os("WARDEN_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/warden"),
    };
    assert!(
        path.exists(),
        "`{}` is missing: build it with `cargo build -p warden`",
        path.display()
    );
    path
}

/// The demo's tools, usable from any working directory.
pub const TOOLS_TOML: &str = r#"
[[tool]]
name = "ls"
description = "list a directory"
min_tier = "T1"
full_tier = "T1"
argv = ["/bin/ls", "-1", "{0}"]
args = ["^[A-Za-z0-9._/-]{1,128}$"]
max_args = 1
timeout = "5s"

[[tool]]
name = "wc"
description = "count words"
min_tier = "T1"
full_tier = "T2"
argv = ["/usr/bin/wc", "-w", "{0}"]
check_argv = ["/bin/echo", "check mode: would run wc -w {0}"]
args = ["^[A-Za-z0-9._-]{1,128}$"]
max_args = 1
timeout = "5s"

[[tool]]
name = "deploy-prod"
description = "deploy to production"
min_tier = "T3"
full_tier = "T4"
argv = ["/bin/echo", "deploying", "{args}"]
args = ["^--[a-z-]{1,32}$"]
max_args = 4
timeout = "5s"
"#;

/// Scripted LLM rules for the planner: `tools` is the JSON list of tools its plan asks for.
pub fn planner_rules(tools: &str) -> String {
    format!(
        r#"
model = "scripted-1"
default = "generic text for an unmatched prompt"

[[rule]]
pattern = "JSON"
response = '''{{"summary":"inventory then write the deliverables","steps":["inventory","write"],"confidence":0.8,"tools":{tools}}}'''
"#
    )
}

/// A builder with the test tools and the planner's scripted LLM.
pub fn builder_with(tools_json: &str) -> HostBuilder {
    let llm = ScriptedProvider::from_toml_str(&planner_rules(tools_json)).expect("planner rules");
    Host::builder()
        .tools(ToolRegistry::from_toml_str(TOOLS_TOML).expect("tools"))
        .llm(Arc::new(llm))
}

/// An in-memory host with the test tools and a planner that asks for no tools.
pub fn host() -> Host {
    builder_with("[]").build().expect("host")
}

/// A packet with the given fields; `extra` is merged as JSON.
pub fn packet(
    agent: &str,
    task: &str,
    objective: &str,
    deliverables: &[&str],
    extra: serde_json::Value,
) -> Packet {
    let mut value = serde_json::json!({
        "agent_id": agent,
        "task_id": task,
        "objective": objective,
        "deliverables": deliverables,
    });
    if let (Some(map), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    Packet::from_json(&value.to_string()).expect("test packet")
}

/// Register `agent` at `tier` bound to component `component`, submit the packet, run.
pub async fn run(
    host: &Host,
    agent_id: &str,
    component: &str,
    tier: Tier,
    packet: &Packet,
) -> Result<warden::RunReport, warden::Error> {
    let bytes = agent(component);
    if host.ledger().agent(agent_id).unwrap().is_none() {
        host.register_agent(agent_id, tier, Some(&bytes), "test")?;
    }
    host.submit_packet(packet).await?;
    host.run(agent_id, &bytes).await
}

/// An agent's rows in one table, oldest first.
pub fn rows(
    host: &Host,
    agent: &str,
    table: warden::ledger::Table,
) -> Vec<warden::ledger::LedgerRow> {
    let query = warden::ledger::LedgerQuery {
        agent_id: Some(agent.to_string()),
        table: Some(table),
        limit: Some(10_000),
        ..Default::default()
    };
    host.ledger().flush().unwrap();
    host.ledger().query(&query).unwrap()
}

/// The kinds (action names or violation types) of an agent's rows in one table, oldest first.
pub fn kinds(host: &Host, agent: &str, table: warden::ledger::Table) -> Vec<String> {
    rows(host, agent, table)
        .into_iter()
        .map(|row| row.kind)
        .collect()
}

/// Action names recorded for an agent, oldest first.
pub fn actions(host: &Host, agent: &str) -> Vec<String> {
    kinds(host, agent, warden::ledger::Table::Actions)
}

/// Violation types recorded for an agent, oldest first.
pub fn violations(host: &Host, agent: &str) -> Vec<String> {
    kinds(host, agent, warden::ledger::Table::Violations)
}

/// The messages (`details`) of an agent's `violations` rows, oldest first.
pub fn violation_details(host: &Host, agent: &str) -> Vec<String> {
    rows(host, agent, warden::ledger::Table::Violations)
        .into_iter()
        .map(|row| {
            row.fields["details"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The process's peak resident set in bytes so far, from `/proc/self/status` (`VmHWM`): what
/// the flood tests bound. A peak, so memory a run held and freed before it returned counts.
pub fn peak_resident_set_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a VmHWM line in /proc/self/status");
    kib * 1024
}
