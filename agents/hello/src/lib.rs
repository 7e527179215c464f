//! The smallest useful Warden agent: it writes a greeting into each deliverable.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Hello;

impl Agent for Hello {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        Ok(Plan {
            summary: format!("greet: {}", packet.objective),
            steps: vec!["write each deliverable as a text artifact".into()],
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let names = match packet.deliverables.as_slice() {
            [] => vec!["hello.txt".to_owned()],
            deliverables => deliverables.to_vec(),
        };
        let text = format!("Hello from Warden!\nObjective: {}\n", packet.objective);
        for name in &names {
            artifacts::put_text(name, &text)?;
        }
        Ok(Outcome {
            success: true,
            summary: format!("wrote {}", names.join(", ")),
            artifacts: names,
        })
    }

    // `verify` and `report` keep the SDK defaults: every deliverable must exist, and the
    // report summarises the verification.
}

warden_sdk::export_agent!(Hello);
