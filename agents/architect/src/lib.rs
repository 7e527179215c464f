//! `architect`, a T4 governance agent: it reads the promotion rules and its task's record,
//! and proposes a tier change for another agent, which waits for a person.
//!
//! The objective is `propose <agent> <T0..T4>: <reason>`. PLAN reads the policy; EXECUTE reads
//! the task's ledger, proposes the change and writes `governance-report.md` with the request
//! id. It changes no tier itself: only `warden agents approve-change <request>` does.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Architect;

/// `propose <agent> <tier>: <reason>`.
fn parse(objective: &str) -> Result<(String, Tier, String), AgentError> {
    let rest = objective
        .strip_prefix("propose ")
        .ok_or_else(|| AgentError::new("the objective is `propose <agent> <T0..T4>: <reason>`"))?;
    let (head, reason) = rest
        .split_once(':')
        .ok_or_else(|| AgentError::new("the objective needs `: <reason>`"))?;
    let mut words = head.split_whitespace();
    let agent = words.next().unwrap_or_default().to_string();
    let tier = match words.next().unwrap_or_default() {
        "T0" => Tier::Observer,
        "T1" => Tier::Operator,
        "T2" => Tier::Builder,
        "T3" => Tier::Executor,
        "T4" => Tier::Architect,
        other => return Err(AgentError::new(format!("`{other}` is not a tier T0..T4"))),
    };
    Ok((agent, tier, reason.trim().to_string()))
}

impl Agent for Architect {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        let (agent, tier, _) = parse(&packet.objective)?;
        let policy = governance::read_policy()?;
        Ok(Plan {
            summary: format!(
                "propose {agent} → {tier:?} under policy of {} bytes",
                policy.len()
            ),
            steps: vec![
                "read the task's ledger".into(),
                "propose the tier change".into(),
                "write governance-report.md".into(),
            ],
            confidence: 0.9,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let (agent, tier, reason) = parse(&packet.objective)?;
        let rows = governance::read_task_ledger(0, 100)?;
        let request = governance::propose_tier_change(&agent, tier, &reason)?;
        let report = format!(
            "# Governance\n\nproposed {agent} → {tier:?} ({reason})\nrequest: {request}\nrows of the task read: {}\n",
            rows.len()
        );
        artifacts::put_text("governance-report.md", &report)?;
        Ok(Outcome {
            success: true,
            summary: format!("proposed {agent} → {tier:?}: request {request}"),
            artifacts: vec!["governance-report.md".into()],
        })
    }
}

warden_sdk::export_agent!(Architect);
