//! Test agent: makes the capability calls its packet lists, during PLAN, and reports how each
//! one ended. It imports only T0 interfaces (ledger, state, artifacts), so it loads at every
//! tier and shows what the call gate does at each.
//!
//! The objective is `probe: <call>; <call>; …` with calls `state.get <key>`,
//! `state.set <key> <value>`, `artifacts.put <name>`, `ledger.note <text>`, and `spin` (loop
//! forever, for crash and deadline tests). PLAN returns one
//! step per call: `<call> -> ok` or `<call> -> <error>`.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Probe;

fn call(line: &str) -> Result<(), Error> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("state.get"), Some(key), _) => state::get(key).map(drop),
        (Some("state.set"), Some(key), Some(value)) => state::set(key, value),
        (Some("artifacts.put"), Some(name), _) => artifacts::put_text(name, "probe").map(drop),
        (Some("ledger.note"), Some(_), _) => {
            ledger::note(line.trim_start_matches("ledger.note").trim())
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
        let steps = calls
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| match call(c) {
                Ok(()) => format!("{c} -> ok"),
                Err(error) => format!("{c} -> {error}"),
            })
            .collect();
        Ok(Plan {
            summary: "probe".into(),
            steps,
            confidence: 1.0,
        })
    }

    fn execute(&mut self, _packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        Ok(Outcome {
            success: true,
            summary: "probed during plan".into(),
            artifacts: vec![],
        })
    }

    fn verify(&mut self, _packet: &Packet, _outcome: &Outcome) -> Result<Verification, AgentError> {
        Ok(Verification {
            passed: true,
            findings: vec![],
        })
    }
}

warden_sdk::export_agent!(Probe);
