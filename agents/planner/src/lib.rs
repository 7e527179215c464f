//! The governed LLM agent: the model plans, tools and the model carry the plan out, and
//! every step goes through Warden's capabilities.
//!
//! - PLAN asks the model for a JSON plan (summary, steps, confidence, tool calls), writes it
//!   to `plan.md`, records the decision in the ledger and keeps the plan in `state["plan"]`.
//! - EXECUTE runs the planned tool calls (a refused or failing tool is logged in
//!   `execution-log.md`, not fatal), then has the model write each deliverable not yet
//!   produced. `state["last-step"]` follows its progress.
//! - VERIFY checks that every deliverable exists and is not empty.
//! - REPORT lists the task's artifacts with their digests.

use serde::{Deserialize, Serialize};
use warden_sdk::llm::{CompletionRequest, Message};
use warden_sdk::prelude::*;

const PLAN_ARTIFACT: &str = "plan.md";
const LOG_ARTIFACT: &str = "execution-log.md";

const PLAN_PROMPT: &str = "You are the planning step of an automation agent governed by an \
operator. Reply with one JSON object and nothing else, of the form \
{\"summary\": string, \"steps\": [string], \"confidence\": number from 0 to 1, \
\"tools\": [{\"name\": string, \"args\": [string]}]}. \
List only tools from the available tools, in the order to run them; use [] if none helps.";

const WRITE_PROMPT: &str = "You are the execution step of an automation agent. Write the \
requested file for the objective. Reply with the file content only, without code fences \
or commentary.";

/// One planned tool call.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ToolCall {
    name: String,
    #[serde(default)]
    args: Vec<String>,
}

/// The plan as the model writes it, and as it is kept in `state["plan"]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ModelPlan {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    steps: Vec<String>,
    #[serde(default = "default_confidence")]
    confidence: f32,
    #[serde(default)]
    tools: Vec<ToolCall>,
}

fn default_confidence() -> f32 {
    0.5
}

impl ModelPlan {
    /// Reads the model's reply: the JSON object in it if there is one, otherwise its
    /// non-empty lines as steps with confidence 0.5.
    fn parse(reply: &str, objective: &str) -> Self {
        let json = reply
            .find('{')
            .zip(reply.rfind('}'))
            .filter(|(start, end)| start < end)
            .and_then(|(start, end)| serde_json::from_str::<ModelPlan>(&reply[start..=end]).ok());
        let mut plan = json.unwrap_or_else(|| ModelPlan {
            steps: reply
                .lines()
                .map(|line| line.trim().trim_start_matches(['-', '*', '#', ' ']))
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
            confidence: default_confidence(),
            ..ModelPlan::default()
        });
        if plan.summary.trim().is_empty() {
            plan.summary = objective.to_owned();
        }
        plan.confidence = if plan.confidence.is_finite() {
            plan.confidence.clamp(0.0, 1.0)
        } else {
            default_confidence()
        };
        plan
    }

    fn to_markdown(&self) -> String {
        let mut md = format!(
            "# Plan\n\n{}\n\nConfidence: {:.2}\n\n## Steps\n\n",
            self.summary, self.confidence
        );
        for (i, step) in self.steps.iter().enumerate() {
            md.push_str(&format!("{}. {step}\n", i + 1));
        }
        if !self.tools.is_empty() {
            md.push_str("\n## Tools\n\n");
            for call in &self.tools {
                md.push_str(&format!("- `{} {}`\n", call.name, call.args.join(" ")));
            }
        }
        md
    }
}

#[derive(Default)]
struct Planner {
    /// The plan made in PLAN, for EXECUTE.
    plan: Option<ModelPlan>,
}

impl Agent for Planner {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        // A refused listing only leaves the model without tools to choose from.
        let available = tools::list()
            .map(|tools| {
                tools
                    .iter()
                    .map(|tool| format!("- {}: {}", tool.name, tool.description))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let request = format!(
            "Objective: {}\nDeliverables: {}\nSuccess criteria: {}\nAvailable tools:\n{}",
            packet.objective,
            packet.deliverables.join(", "),
            packet.success_criteria.join("; "),
            if available.is_empty() {
                "(none)"
            } else {
                &available
            },
        );
        let plan = ModelPlan::parse(&llm::ask(PLAN_PROMPT, &request)?, &packet.objective);

        artifacts::put_text(PLAN_ARTIFACT, &plan.to_markdown())?;
        ledger::decision("plan", &plan.summary, plan.confidence)?;
        let json = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
        state::set("plan", &json)?;

        let result = Plan {
            summary: plan.summary.clone(),
            steps: plan.steps.clone(),
            confidence: plan.confidence,
        };
        self.plan = Some(plan);
        Ok(result)
    }

    fn execute(&mut self, packet: &Packet, plan: &Plan) -> Result<Outcome, AgentError> {
        // The instance normally still holds the plan; `state` keeps it for anyone else.
        let tool_calls = match self.plan.take() {
            Some(plan) => plan.tools,
            None => state::get("plan")?
                .and_then(|json| serde_json::from_str::<ModelPlan>(&json).ok())
                .map(|plan| plan.tools)
                .unwrap_or_default(),
        };
        let mut log = String::from("# Execution log\n\n");

        for call in &tool_calls {
            let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
            let command = format!("{} {}", call.name, args.join(" "));
            match tools::invoke(&call.name, &args) {
                Ok(output) => {
                    let mode = if output.check_mode {
                        " (check mode)"
                    } else {
                        ""
                    };
                    log.push_str(&format!(
                        "## `{command}`: exit {}{mode}\n\n```\n{}{}```\n\n",
                        output.exit_code, output.stdout, output.stderr
                    ));
                }
                Err(e) => log.push_str(&format!("## `{command}`: not run\n\n{e}\n\n")),
            }
            state::set("last-step", &format!("tool {}", call.name))?;
        }
        artifacts::put_text(LOG_ARTIFACT, &log)?;
        let mut produced = vec![LOG_ARTIFACT.to_owned()];

        for name in &packet.deliverables {
            if artifacts::info(name)?.is_some() {
                continue;
            }
            let request = CompletionRequest::new(vec![
                Message::system(WRITE_PROMPT),
                Message::user(format!(
                    "Objective: {}\nPlan:\n- {}\nTool results:\n{log}\nWrite the file `{name}`.",
                    packet.objective,
                    plan.steps.join("\n- "),
                )),
            ]);
            let content = llm::complete(&request)?.text;
            artifacts::put_text(name, &content)?;
            produced.push(name.clone());
            state::set("last-step", &format!("deliverable {name}"))?;
        }

        Ok(Outcome {
            success: true,
            summary: format!(
                "ran {} tool call(s), wrote {}",
                tool_calls.len(),
                produced.join(", ")
            ),
            artifacts: produced,
        })
    }

    fn verify(&mut self, packet: &Packet, outcome: &Outcome) -> Result<Verification, AgentError> {
        let mut findings = Vec::new();
        if !outcome.success {
            findings.push(format!("execute reported failure: {}", outcome.summary));
        }
        for name in &packet.deliverables {
            match artifacts::info(name)? {
                None => findings.push(format!("deliverable `{name}` is missing")),
                Some(_) if artifacts::get(name)?.iter().all(u8::is_ascii_whitespace) => {
                    findings.push(format!("deliverable `{name}` is empty"));
                }
                Some(_) => {}
            }
        }
        Ok(Verification {
            passed: findings.is_empty(),
            findings,
        })
    }

    fn report(
        &mut self,
        packet: &Packet,
        verification: &Verification,
    ) -> Result<Report, AgentError> {
        // What this run produced, looked up by name: the task may hold many more.
        let mut artifacts = Vec::new();
        for name in
            std::iter::once(LOG_ARTIFACT).chain(packet.deliverables.iter().map(String::as_str))
        {
            if let Some(info) = artifacts::info(name)? {
                artifacts.push(info);
            }
        }
        let verdict = if verification.passed {
            "verified"
        } else {
            "NOT verified"
        };
        let mut details = verification.findings.clone();
        details.extend(
            artifacts
                .iter()
                .map(|a| format!("{} {} ({} bytes)", a.name, a.digest, a.size)),
        );
        Ok(Report {
            summary: format!(
                "{}: {verdict}; {} artifact(s)",
                packet.objective,
                artifacts.len()
            ),
            details,
        })
    }
}

warden_sdk::export_agent!(Planner);
