//! Test and demo agent: makes the HTTP requests its packet lists through `wasi:http` and says
//! how each ended. It imports `wasi:http`, so it loads only at tiers that link `http` (T2 up
//! in the shipped table).
//!
//! The objective is `fetch: <request>; <request>; …`, each request `<METHOD> <url> [body]`.
//! They are sent in EXECUTE (`fetch plan: …` sends them in PLAN, where only reads pass), and
//! each line of the result is `<request> -> <status> <bytes> <body, up to 200 bytes>` or
//! `<request> -> <error>`. EXECUTE writes the lines to the artifact `fetched.txt`.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Fetcher;

fn requests<'a>(objective: &'a str, phase: &str) -> Option<&'a str> {
    let rest = objective.trim().strip_prefix("fetch")?;
    let (named, calls) = rest.split_once(':')?;
    let named = match named.trim() {
        "" => "execute",
        other => other,
    };
    (named == phase).then_some(calls)
}

fn send(line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    let (Some(method), Some(url)) = (words.next(), words.next()) else {
        return format!("{line} -> expected `<METHOD> <url> [body]`");
    };
    let body = words.next().unwrap_or_default().as_bytes().to_vec();
    match http::Request::new(method, url).body(body).send() {
        Ok(response) => {
            let text = response.text();
            let shown: String = text.chars().take(200).collect();
            format!(
                "{line} -> {} {} {shown}",
                response.status,
                response.body.len()
            )
        }
        Err(error) => format!("{line} -> {error}"),
    }
}

fn send_all(calls: &str) -> Vec<String> {
    calls
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(send)
        .collect()
}

impl Agent for Fetcher {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        let steps = requests(&packet.objective, "plan")
            .map(send_all)
            .unwrap_or_default();
        Ok(Plan {
            summary: "fetch".into(),
            steps,
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let lines = requests(&packet.objective, "execute")
            .map(send_all)
            .unwrap_or_default();
        artifacts::put_text("fetched.txt", &lines.join("\n"))?;
        Ok(Outcome {
            success: true,
            summary: format!("{} requests", lines.len()),
            artifacts: vec!["fetched.txt".into()],
        })
    }
}

warden_sdk::export_agent!(Fetcher);
