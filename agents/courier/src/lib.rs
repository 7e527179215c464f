//! Test and demo agent: carries secrets to HTTP endpoints. It imports `secrets` and
//! `wasi:http`, so it loads at T3 and up in the shipped table.
//!
//! The objective is `courier: <step>; <step>; …`, run in EXECUTE, each step one of
//! `GET <url> <secret>` (the secret as `authorization: Bearer …`), `put <artifact> <secret>`
//! (the secret as the artifact's content) or `note <secret>`. A secret the tier binds to
//! hosts reaches the agent as a placeholder, which the host turns back into the value only in
//! the headers of requests to those hosts. EXECUTE writes one line per step to `courier.txt`.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Courier;

fn step(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let result = match words.as_slice() {
        ["GET", url, path] => secrets::get(path)
            .map_err(|e| e.to_string())
            .and_then(|token| {
                http::Request::get(url)
                    .header("authorization", format!("Bearer {}", token.expose()))
                    .send()
                    .map(|r| format!("{} {}", r.status, r.text()))
                    .map_err(|e| e.to_string())
            }),
        ["put", name, path] => secrets::get(path)
            .and_then(|token| {
                artifacts::put_text(name, token.expose()).map(|_| "stored".to_string())
            })
            .map_err(|e| e.to_string()),
        ["note", path] => secrets::get(path)
            .and_then(|token| ledger::note(token.expose()).map(|()| "noted".to_string()))
            .map_err(|e| e.to_string()),
        _ => Err(
            "expected `GET <url> <secret>`, `put <artifact> <secret>` or `note <secret>`".into(),
        ),
    };
    match result {
        Ok(done) => format!("{line} -> {done}"),
        Err(error) => format!("{line} -> {error}"),
    }
}

impl Agent for Courier {
    fn plan(&mut self, _packet: &Packet) -> Result<Plan, AgentError> {
        Ok(Plan {
            summary: "carry".into(),
            steps: Vec::new(),
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let steps = packet
            .objective
            .trim()
            .strip_prefix("courier:")
            .unwrap_or_default();
        let lines: Vec<String> = steps
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(step)
            .collect();
        artifacts::put_text("courier.txt", &lines.join("\n"))?;
        Ok(Outcome {
            success: true,
            summary: format!("{} steps", lines.len()),
            artifacts: vec!["courier.txt".into()],
        })
    }
}

warden_sdk::export_agent!(Courier);
