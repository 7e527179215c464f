use warden_sdk::prelude::*;

#[derive(Default)]
struct Greeter;

impl Agent for Greeter {
    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let text = format!("Hello from Warden! Objective: {}\n", packet.objective);
        artifacts::put_text("greeting.txt", &text)?;
        Ok(Outcome::wrote(["greeting.txt"]))
    }
}

warden_sdk::export_agent!(Greeter);
