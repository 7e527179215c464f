//! Benchmark guest: measures the cost of a capability call from inside a component.
//!
//! EXECUTE reads `calls:<N>` from the packet objective and calls `state::get("bench")` N
//! times. It imports `state` and nothing else.

use std::hint::black_box;

use warden_sdk::prelude::*;

#[derive(Default)]
struct Bench;

impl Agent for Bench {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        Ok(Plan {
            summary: packet.objective.clone(),
            steps: vec![],
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let calls: u64 = packet
            .objective
            .trim()
            .strip_prefix("calls:")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("objective must be `calls:<N>`, got `{}`", packet.objective))?;
        for _ in 0..calls {
            black_box(state::get(black_box("bench"))?);
        }
        Ok(Outcome {
            success: true,
            summary: format!("{calls} state::get calls"),
            artifacts: vec![],
        })
    }

    // Overridden so the component does not import `artifacts` (the default uses it).
    fn verify(&mut self, _packet: &Packet, _outcome: &Outcome) -> Result<Verification, AgentError> {
        Ok(Verification {
            passed: true,
            findings: vec![],
        })
    }
}

warden_sdk::export_agent!(Bench);
