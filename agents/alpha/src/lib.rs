//! `alpha`, the research agent of a multi-agent task (T1): it studies the objective, puts
//! candidate designs to the vote, and waits until each is settled.
//!
//! - PLAN asks the model `ALPHA research: <objective>` for a JSON object
//!   `{"complexity": number, "analysis": string, "proposals": [{"title", "body"}],
//!   "confidence"?: number}`; an answer that is not such an object fails the plan.
//! - EXECUTE publishes the analysis, proposes each design to every other primary agent (a
//!   proposer's own vote does not count) and announces it, then waits (see `wait.rs`), voting
//!   on what requires it
//!   with `ALPHA vote: <title>\n<body>` (`ACCEPT|REJECT|ABSTAIN: reasoning`). It succeeds
//!   when every proposal it made is settled: consensus reached, or resolved by a mediator.
//!   It writes `alpha-research.md`.
//! - VERIFY and REPORT keep the SDK defaults.
//!
//! Blackboard, as the orchestrator's protocol defines it:
//!
//! | reads | writes |
//! |-------|--------|
//! | `problem/objective` (else the packet's), `problem/agents`, `problem/mediator`, `problem/deadline_ms`, `problem/spawn_reason`, `consensus/final`, `progress/mediation` | `problem/analysis`, `problem/complexity`, `solutions/proposal_<i>`, `progress/<own id>` (`proposed N`), `progress/feedback_<proposal id>` |
//!
//! Messages: sends PROPOSAL `{"proposal_id", "title"}` to each other primary agent; records
//! FEEDBACK `{"proposal_id", "vote", "reasoning"}`; treats HANDOFF as a cue to look at the
//! proposals again.

mod wait;

use serde::Deserialize;
use warden_sdk::blackboard::Section;
use warden_sdk::messaging::{Kind, Message};
use warden_sdk::prelude::*;

use wait::{
    Board, Deadline, MAX_VALUE_BYTES, Policy, WaitConfig, WaitEnd, choice_name, clip,
    is_proposal_id, now_ms, problem_ids, read_problem, wait_for_settlement,
};

const ARTIFACT: &str = "alpha-research.md";
/// More proposals than this are dropped: each one costs every primary agent a vote.
const MAX_PROPOSALS: usize = 8;
/// Longest proposal title the host accepts.
const MAX_TITLE_BYTES: usize = 256;
/// Plan confidence when the model gives none.
const DEFAULT_CONFIDENCE: f32 = 0.5;

const RESEARCH_SYSTEM: &str = "You are alpha, the research agent of a team designing a \
solution together. Analyse the objective and propose distinct candidate designs for the team \
to vote on. Reply with one JSON object and nothing else: {\"complexity\": number from 0 to 1, \
\"analysis\": string, \"proposals\": [{\"title\": short string, \"body\": string}], \
\"confidence\": number from 0 to 1}.";

const VOTE_SYSTEM: &str = "You are alpha, the research agent of a team designing a solution \
together. Judge the proposal against the objective. Answer ACCEPT, REJECT or ABSTAIN, then a \
colon and one sentence of reasoning.";

/// The model's research, as PLAN parsed it.
#[derive(Clone, Debug, Deserialize)]
struct Research {
    #[serde(default)]
    complexity: Option<f64>,
    #[serde(default)]
    analysis: String,
    #[serde(default)]
    proposals: Vec<Draft>,
    #[serde(default)]
    confidence: Option<f32>,
}

#[derive(Clone, Debug, Deserialize)]
struct Draft {
    title: String,
    #[serde(default)]
    body: String,
}

impl Research {
    /// The JSON object in the model's `answer`, checked against what the host accepts.
    fn parse(answer: &str) -> Result<Self, AgentError> {
        let json = answer
            .find('{')
            .zip(answer.rfind('}'))
            .and_then(|(start, end)| answer.get(start..=end))
            .ok_or_else(|| {
                AgentError::new(format!(
                    "alpha: the research answer is not a JSON object; it began: {:?}",
                    clip(answer.trim(), 120)
                ))
            })?;
        let mut research: Research = serde_json::from_str(json).map_err(|e| {
            AgentError::new(format!(
                "alpha: the research answer is not the expected JSON \
                 ({{\"complexity\", \"analysis\", \"proposals\": [{{\"title\", \"body\"}}]}}): {e}"
            ))
        })?;
        research.proposals.truncate(MAX_PROPOSALS);
        if research.proposals.is_empty() {
            return Err("alpha: the research answer proposes nothing".into());
        }
        for (i, draft) in research.proposals.iter_mut().enumerate() {
            draft.title = clip(draft.title.trim(), MAX_TITLE_BYTES).to_owned();
            if draft.title.is_empty() {
                return Err(
                    format!("alpha: proposal {} of the research has no title", i + 1).into(),
                );
            }
            if draft.body.len() > MAX_VALUE_BYTES {
                return Err(format!(
                    "alpha: proposal `{}` is {} bytes; proposals are at most {MAX_VALUE_BYTES}",
                    draft.title,
                    draft.body.len()
                )
                .into());
            }
        }
        research.analysis = clip(research.analysis.trim(), MAX_VALUE_BYTES).to_owned();
        research.complexity = research.complexity.filter(|c| c.is_finite());
        Ok(research)
    }
}

#[derive(Default)]
struct Alpha {
    objective: String,
    research: Option<Research>,
}

impl Agent for Alpha {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        self.objective = read_problem("objective")?.unwrap_or_else(|| packet.objective.clone());
        let answer = llm::ask(
            RESEARCH_SYSTEM,
            &format!("ALPHA research: {}", self.objective),
        )?;
        let research = Research::parse(&answer)?;

        let titles: Vec<&str> = research
            .proposals
            .iter()
            .map(|d| d.title.as_str())
            .collect();
        let summary = format!(
            "research `{}`: propose {} design(s): {}",
            self.objective,
            titles.len(),
            titles.join("; ")
        );
        let mut steps = vec!["publish the analysis and complexity on the blackboard".to_owned()];
        steps.extend(
            titles
                .iter()
                .map(|title| format!("propose `{title}` to the primary agents and vote ACCEPT")),
        );
        steps.push("vote on proposals that need alpha until every design is settled".into());
        let confidence = research
            .confidence
            .filter(|c| c.is_finite())
            .map_or(DEFAULT_CONFIDENCE, |c| c.clamp(0.0, 1.0));
        ledger::decision("research", &summary, confidence)?;
        self.research = Some(research);
        Ok(Plan {
            summary,
            steps,
            confidence,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let research = self
            .research
            .take()
            .ok_or("alpha: EXECUTE without the research of PLAN")?;
        let deadline = Deadline::from_board(now_ms())?;
        let me = packet.agent_id.as_str();
        // Every other primary agent must vote; a proposer's own vote does not count.
        let others = problem_ids("agents")?;
        let required: Vec<&str> = others
            .iter()
            .map(String::as_str)
            .filter(|id| *id != me)
            .collect();
        let mediator_configured = read_problem("mediator")?.is_some();

        blackboard::write(Section::Problem, "analysis", &research.analysis)?;
        if let Some(complexity) = research.complexity {
            blackboard::write(Section::Problem, "complexity", &complexity.to_string())?;
        }
        let mut mine = Vec::new();
        for (i, draft) in research.proposals.iter().enumerate() {
            let key = format!("proposal_{}", i + 1);
            blackboard::write(Section::Solutions, &key, &draft.body)?;
            let id = consensus::propose(&draft.title, &draft.body, &[], &required)?;
            let notice = serde_json::json!({ "proposal_id": id, "title": draft.title }).to_string();
            for other in required.iter().filter(|agent| **agent != me) {
                messaging::send(other, Kind::Proposal, &notice)?;
            }
            mine.push(id);
        }
        blackboard::write(Section::Progress, me, &format!("proposed {}", mine.len()))?;
        ledger::note(&format!(
            "proposed {} to {}",
            mine.join(", "),
            required.join(", ")
        ))?;

        let mut board = Board::new(me);
        let config = WaitConfig {
            prefix: "ALPHA",
            system: &format!("{VOTE_SYSTEM}\nObjective: {}", self.objective),
            policy: Policy::Proposer {
                mediator_configured,
            },
        };
        let end = wait_for_settlement(&mut board, &config, deadline, record_feedback)?;

        let statuses: Vec<(String, String, wait::Status)> = board
            .proposals()
            .iter()
            .filter(|p| mine.contains(&p.id))
            .map(|p| (p.id.clone(), p.title.clone(), board.status(p)))
            .collect();
        let settled = statuses.iter().filter(|(.., s)| s.is_settled()).count();
        let success = settled == mine.len() && statuses.len() == mine.len();
        let summary = format!(
            "{settled} of {} proposal(s) settled; wait ended: {end}",
            mine.len()
        );
        ledger::note(&summary)?;

        artifacts::put_text(
            ARTIFACT,
            &research_markdown(&self.objective, &research, &statuses, &board, &end),
        )?;
        Ok(Outcome {
            success,
            summary,
            artifacts: vec![ARTIFACT.to_owned()],
        })
    }
}

/// The FEEDBACK body a voter sends back.
#[derive(Deserialize)]
struct Feedback {
    proposal_id: String,
    #[serde(default)]
    vote: String,
    #[serde(default)]
    reasoning: String,
}

/// Records a voter's feedback as `progress/feedback_<proposal id>`; ignores other messages,
/// and feedback it cannot read.
fn record_feedback(message: &Message) -> Result<(), AgentError> {
    if !matches!(message.kind, Kind::Feedback) {
        return Ok(());
    }
    let Ok(feedback) = serde_json::from_str::<Feedback>(&message.body) else {
        return Ok(());
    };
    if !is_proposal_id(&feedback.proposal_id) {
        return Ok(());
    }
    let value = format!(
        "{}: {}: {}",
        message.sender, feedback.vote, feedback.reasoning
    );
    blackboard::write(
        Section::Progress,
        &format!("feedback_{}", feedback.proposal_id),
        clip(&value, MAX_VALUE_BYTES),
    )?;
    Ok(())
}

fn research_markdown(
    objective: &str,
    research: &Research,
    statuses: &[(String, String, wait::Status)],
    board: &Board,
    end: &WaitEnd,
) -> String {
    let complexity = research
        .complexity
        .map_or_else(|| "not given".to_owned(), |c| c.to_string());
    let mut md = format!(
        "# Research: {objective}\n\nComplexity: {complexity}\n\n## Analysis\n\n{}\n\n## Proposals\n",
        research.analysis
    );
    for (i, draft) in research.proposals.iter().enumerate() {
        md.push_str(&format!(
            "\n### {}. {}\n\n{}\n",
            i + 1,
            draft.title,
            draft.body
        ));
    }
    md.push_str("\n## Final status\n\n");
    for (id, title, status) in statuses {
        md.push_str(&format!("- {id} `{title}`: {status}\n"));
    }
    if !board.votes.is_empty() {
        md.push_str("\n## Votes on others' proposals\n\n");
        for vote in &board.votes {
            md.push_str(&format!(
                "- {} `{}`: {}: {}\n",
                vote.proposal_id,
                vote.title,
                choice_name(vote.choice),
                vote.reasoning
            ));
        }
    }
    md.push_str(&format!("\nWait ended: {end}\n"));
    md
}

warden_sdk::export_agent!(Alpha);
