//! `specialist`, the reference's agent templates (Terraform, Ansible, code review) as one
//! component driven by the tools file: register it once per specialty (`terraform`,
//! `ansible`, `code-review`) and give each the tools named `<specialty>-*` in the tools file
//! (`agents/specialist/tools.toml`). Below a tool's `full_tier` the host runs it in check mode
//! (`terraform plan`, `ansible-playbook --check`), from it for real: the tier, not the agent,
//! decides what happens.
//!
//! The objective is `<specialty>: <goal>`. PLAN lists the specialty's tools (in the tools
//! file's order); EXECUTE runs each, records its exit code, and writes the outputs to every
//! deliverable (default `<specialty>-report.md`). A tool that exits non-zero fails the run.

use warden_sdk::prelude::*;

#[derive(Default)]
struct Specialist {
    tools: Vec<String>,
}

fn specialty(objective: &str) -> Result<(&str, &str), AgentError> {
    let (kind, goal) = objective
        .split_once(':')
        .ok_or_else(|| AgentError::new("the objective is `<specialty>: <goal>`"))?;
    let kind = kind.trim();
    if !matches!(kind, "terraform" | "ansible" | "code-review") {
        return Err(AgentError::new(format!(
            "`{kind}` is no specialty; expected terraform, ansible or code-review"
        )));
    }
    Ok((kind, goal.trim()))
}

impl Agent for Specialist {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        let (kind, goal) = specialty(&packet.objective)?;
        let prefix = format!("{kind}-");
        self.tools = tools::list()?
            .into_iter()
            .map(|t| t.name)
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if self.tools.is_empty() {
            return Err(AgentError::new(format!(
                "no `{prefix}*` tool is registered for this tier; add them to the tools file"
            )));
        }
        Ok(Plan {
            summary: format!("{kind}: {goal}"),
            steps: self.tools.iter().map(|t| format!("run `{t}`")).collect(),
            confidence: 0.8,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let (kind, goal) = specialty(&packet.objective)?;
        let mut report = format!("# {kind}: {goal}\n");
        let mut failed = None;
        for tool in &self.tools {
            let out = tools::invoke(tool, &[])?;
            report.push_str(&format!(
                "\n## {tool} (exit {})\n\n{}\n",
                out.exit_code,
                out.stdout.trim_end()
            ));
            if !out.success() && failed.is_none() {
                failed = Some(tool.clone());
            }
        }
        ledger::decision(kind, failed.as_deref().unwrap_or("all tools passed"), 0.8)?;
        let names = match packet.deliverables.as_slice() {
            [] => vec![format!("{kind}-report.md")],
            deliverables => deliverables.to_vec(),
        };
        for name in &names {
            artifacts::put_text(name, &report)?;
        }
        Ok(Outcome {
            success: failed.is_none(),
            summary: match &failed {
                Some(tool) => format!("`{tool}` failed"),
                None => format!("ran {}", self.tools.join(", ")),
            },
            artifacts: names,
        })
    }
}

warden_sdk::export_agent!(Specialist);
