//! Test agent: makes the capability calls its packet lists, during PLAN, and reports how each
//! one ended. It imports only T0 interfaces (ledger, state, artifacts, blackboard), so it
//! loads at every tier and shows what the call gate does at each.
//!
//! The objective is `probe: <call>; <call>; …` with calls `state.get <key>`,
//! `state.set <key> <value>`, `artifacts.put <name>`, `artifacts.info <name>` (fails unless
//! it exists), `artifacts.list <limit> <expected>` (one page; fails unless it holds
//! `expected` artifacts), `ledger.note <text>`,
//! `bb.read <section> <key>`, `bb.write <section> <key> <value>`, the sandbox probes
//! `fs.write <path>`, `net.connect <addr>` and `env` (fails if any environment variable or
//! argument is visible), `spin` (loop forever, for crash and deadline tests) and `sleep <ms>`
//! (block on the WASI clock, for tests that change the world while a phase runs). PLAN
//! returns one step per call: `<call> -> ok` or `<call> -> <error>`.
//!
//! `probe execute: <call>; …` makes the calls in EXECUTE instead, after the approval gate;
//! `probe execute: …; | verify: …` in EXECUTE and then in VERIFY. The lines of the calls made
//! after PLAN are VERIFY's findings.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Probe {
    /// What the calls made in EXECUTE answered.
    executed: Vec<String>,
}

/// The calls the objective gives `phase` (`execute`, `verify`), if any.
fn calls_for<'a>(objective: &'a str, phase: &str) -> Option<&'a str> {
    let rest = objective.trim().strip_prefix("probe ")?;
    rest.split('|').find_map(|part| {
        let (name, calls) = part.split_once(':')?;
        (name.trim() == phase).then_some(calls)
    })
}

/// Make each call of `calls` (`;`-separated) and say how it ended.
fn run_calls(calls: &str) -> Vec<String> {
    calls
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| match call(c) {
            Ok(()) => format!("{c} -> ok"),
            Err(error) => format!("{c} -> {error}"),
        })
        .collect()
}

fn board_section(name: &str) -> Result<blackboard::Section, String> {
    use blackboard::Section;
    match name {
        "problem" => Ok(Section::Problem),
        "solutions" => Ok(Section::Solutions),
        "progress" => Ok(Section::Progress),
        "consensus" => Ok(Section::Consensus),
        other => Err(format!("no section `{other}`")),
    }
}

fn call(line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let host = |result: Result<(), Error>| result.map_err(|e| e.to_string());
    let io = |result: std::io::Result<()>| result.map_err(|e| format!("io error: {e}"));
    match (words.next(), words.next(), words.next()) {
        (Some("state.get"), Some(key), _) => host(state::get(key).map(drop)),
        (Some("state.set"), Some(key), Some(value)) => host(state::set(key, value)),
        (Some("artifacts.put"), Some(name), _) => {
            host(artifacts::put_text(name, "probe").map(drop))
        }
        (Some("artifacts.info"), Some(name), _) => match artifacts::info(name) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("no artifact `{name}`")),
            Err(e) => Err(e.to_string()),
        },
        (Some("artifacts.list"), Some(limit), Some(expected)) => {
            let limit: u32 = limit
                .parse()
                .map_err(|_| format!("`{limit}` is not a page size"))?;
            let page = artifacts::page(None, limit).map_err(|e| e.to_string())?;
            if page.len().to_string() == expected {
                Ok(())
            } else {
                Err(format!("the page holds {} artifacts", page.len()))
            }
        }
        (Some("ledger.note"), Some(_), _) => {
            host(ledger::note(line.trim_start_matches("ledger.note").trim()))
        }
        (Some("bb.read"), Some(section), Some(key)) => {
            host(blackboard::read(board_section(section)?, key).map(drop))
        }
        (Some("bb.write"), Some(section), Some(key)) => {
            let value = words.next().unwrap_or_default();
            host(blackboard::write(board_section(section)?, key, value))
        }
        (Some("fs.write"), Some(path), _) => io(std::fs::write(path, "probe")),
        (Some("net.connect"), Some(addr), _) => io(std::net::TcpStream::connect(addr).map(drop)),
        (Some("env"), _, _) => {
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            let args: Vec<String> = std::env::args().collect();
            if vars.is_empty() && args.is_empty() {
                Ok(())
            } else {
                Err(format!("visible: env {vars:?}, args {args:?}"))
            }
        }
        (Some("sleep"), Some(ms), _) => {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("`{ms}` is not milliseconds"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        (Some("spin"), _, _) => {
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        _ => Ok(()),
    }
}

impl Agent for Probe {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        let calls = packet
            .objective
            .trim()
            .strip_prefix("probe:")
            .unwrap_or_default();
        let steps = run_calls(calls);
        Ok(Plan {
            summary: "probe".into(),
            steps,
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        if let Some(calls) = calls_for(&packet.objective, "execute") {
            self.executed = run_calls(calls);
        }
        Ok(Outcome {
            success: true,
            summary: "probed".into(),
            artifacts: vec![],
        })
    }

    fn verify(&mut self, packet: &Packet, _outcome: &Outcome) -> Result<Verification, AgentError> {
        let mut findings = std::mem::take(&mut self.executed);
        if let Some(calls) = calls_for(&packet.objective, "verify") {
            findings.extend(run_calls(calls));
        }
        Ok(Verification {
            passed: true,
            findings,
        })
    }
}

warden_sdk::export_agent!(Probe);
