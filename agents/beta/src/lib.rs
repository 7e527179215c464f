//! `beta`, the synthesis agent of a multi-agent task (T1): it evaluates the other primary
//! agents' proposals as they are announced, votes on each, and synthesises them.
//!
//! - PLAN states the procedure; it makes no calls but reading the objective.
//! - EXECUTE evaluates each proposal it must vote on with `BETA evaluate: <title>\n<body>`
//!   (the answer starts with `ACCEPT` or `REJECT`, then `: reasoning`), votes that, and sends
//!   the proposer FEEDBACK. Once every other primary agent has reported progress and each of
//!   their proposals has beta's vote, it asks `BETA synthesize: <titles joined by "; ">` and
//!   publishes the synthesis. Then it waits (see `wait.rs`), voting on new proposals that
//!   require it with `BETA vote: <title>\n<body>` (`ACCEPT|REJECT|ABSTAIN: reasoning`). It
//!   succeeds when it voted on every proposal that required it (or that proposal was
//!   resolved first) and wrote the synthesis. It writes `beta-synthesis.md`.
//! - VERIFY and REPORT keep the SDK defaults.
//!
//! Blackboard, as the orchestrator's protocol defines it:
//!
//! | reads | writes |
//! |-------|--------|
//! | `problem/objective` (else the packet's), `problem/agents`, `problem/deadline_ms`, `problem/spawn_reason`, `progress/*` (to see the others report), `consensus/final` | `progress/<own id>` (`evaluating`, then `synthesized N`), `progress/eval_<proposal id>`, `solutions/synthesis` |
//!
//! Messages: a PROPOSAL message is the cue to evaluate; sends FEEDBACK
//! `{"proposal_id", "vote", "reasoning"}` to the proposer; any message during the wait is a
//! cue to look at the proposals again.

// One file for both primary agents (each agent is its own component; a crate for one module
// would be more ceremony than sharing).
#[path = "../../alpha/src/wait.rs"]
mod wait;

use warden_sdk::blackboard::Section;
use warden_sdk::consensus::{Proposal, VoteChoice};
use warden_sdk::messaging::Kind;
use warden_sdk::prelude::*;

use wait::{
    Board, Deadline, MAX_VALUE_BYTES, Policy, WaitConfig, WaitEnd, choice_name, clip, now_ms,
    parse_verdict, problem_ids, read_problem, wait_for_settlement,
};

const ARTIFACT: &str = "beta-synthesis.md";

const EVALUATE_SYSTEM: &str = "You are beta, the synthesis agent of a team designing a \
solution together. Evaluate the proposal against the objective: its feasibility, cost and \
risks. Answer ACCEPT or REJECT, then a colon and one sentence of reasoning.";

const VOTE_SYSTEM: &str = "You are beta, the synthesis agent of a team designing a solution \
together. Judge the proposal against the objective. Answer ACCEPT, REJECT or ABSTAIN, then a \
colon and one sentence of reasoning.";

const SYNTHESIZE_SYSTEM: &str = "You are beta, the synthesis agent of a team designing a \
solution together. Combine the evaluated proposals into one short synthesis: what to keep, \
what to avoid, and what the team still has to agree on.";

/// One proposal beta evaluated before synthesising.
#[derive(Clone, Debug)]
struct Evaluation {
    proposal_id: String,
    title: String,
    choice: VoteChoice,
    reasoning: String,
}

#[derive(Default)]
struct Beta {
    objective: String,
}

impl Agent for Beta {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        self.objective = read_problem("objective")?.unwrap_or_else(|| packet.objective.clone());
        Ok(Plan {
            summary: format!(
                "evaluate and synthesise the team's proposals for `{}`",
                self.objective
            ),
            steps: vec![
                "evaluate each announced proposal, vote, and send the proposer feedback".into(),
                "once the proposers are done, synthesise the proposals".into(),
                "vote on further proposals until every one is settled".into(),
            ],
            // The procedure is fixed; how it ends depends on the others' proposals.
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let deadline = Deadline::from_board(now_ms())?;
        let me = packet.agent_id.as_str();
        let others: Vec<String> = problem_ids("agents")?
            .into_iter()
            .filter(|id| id != me)
            .collect();
        blackboard::write(Section::Progress, me, "evaluating")?;

        let mut board = Board::new(me);
        let system = format!("{EVALUATE_SYSTEM}\nObjective: {}", self.objective);
        let mut evaluations = Vec::new();
        let ready = evaluate_until_ready(&mut board, &others, deadline, &system, &mut evaluations)?;

        let synthesis = if ready && !evaluations.is_empty() {
            let text = self.synthesize(&evaluations)?;
            blackboard::write(
                Section::Solutions,
                "synthesis",
                clip(&text, MAX_VALUE_BYTES),
            )?;
            blackboard::write(
                Section::Progress,
                me,
                &format!("synthesized {}", evaluations.len()),
            )?;
            ledger::note(&format!(
                "evaluated {}; synthesis published",
                evaluations
                    .iter()
                    .map(|e| format!("{} {}", e.proposal_id, choice_name(e.choice)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
            Some(text)
        } else {
            None
        };

        let config = WaitConfig {
            prefix: "BETA",
            system: &format!("{VOTE_SYSTEM}\nObjective: {}", self.objective),
            policy: Policy::Voter,
        };
        let end = wait_for_settlement(&mut board, &config, deadline, |_| Ok(()))?;

        let unvoted: Vec<&Proposal> = board
            .relevant()
            .filter(|p| p.required.iter().any(|a| a == me))
            .filter(|p| p.resolution.is_none() && !board.has_voted(&p.id))
            .collect();
        let synthesised = synthesis.is_some() || (ready && evaluations.is_empty());
        let success = unvoted.is_empty() && synthesised;
        let summary = format!(
            "voted on {} proposal(s), {} still owed; synthesis {}; wait ended: {end}",
            board.votes.len(),
            unvoted.len(),
            if synthesis.is_some() {
                "written"
            } else {
                "not written"
            }
        );
        ledger::note(&summary)?;

        let markdown = synthesis_markdown(
            &self.objective,
            &evaluations,
            synthesis.as_deref(),
            &board,
            &end,
        );
        artifacts::put_text(ARTIFACT, &markdown)?;
        Ok(Outcome {
            success,
            summary,
            artifacts: vec![ARTIFACT.to_owned()],
        })
    }
}

impl Beta {
    fn synthesize(&self, evaluations: &[Evaluation]) -> Result<String, AgentError> {
        let titles: Vec<&str> = evaluations.iter().map(|e| e.title.as_str()).collect();
        let mut prompt = format!("BETA synthesize: {}\n", titles.join("; "));
        for evaluation in evaluations {
            prompt.push_str(&format!(
                "\n- {}: {}: {}",
                evaluation.title,
                choice_name(evaluation.choice),
                evaluation.reasoning
            ));
        }
        let system = format!("{SYNTHESIZE_SYSTEM}\nObjective: {}", self.objective);
        Ok(llm::ask(&system, &prompt)?.trim().to_owned())
    }
}

/// Evaluates proposals as they are announced until every other primary agent has reported
/// progress (so has proposed all it will) and each of their proposals has beta's vote.
/// Returns whether that happened before the deadline.
fn evaluate_until_ready(
    board: &mut Board,
    others: &[String],
    deadline: Deadline,
    system: &str,
    evaluations: &mut Vec<Evaluation>,
) -> Result<bool, AgentError> {
    let mut ready = false;
    let mut announced = false;
    loop {
        if !ready {
            let progress = blackboard::entries(Section::Progress)?;
            ready = others
                .iter()
                .all(|id| progress.iter().any(|(key, _)| key == id));
        }
        if announced || ready {
            board.refresh()?;
            let owed: Vec<Proposal> = board
                .relevant()
                .filter(|p| p.proposer != board.me() && board.needs_my_vote(p))
                .cloned()
                .collect();
            for proposal in &owed {
                evaluations.push(evaluate(board, proposal, system)?);
            }
            if ready {
                return Ok(true);
            }
        }
        if deadline.passed() {
            return Ok(false);
        }
        let messages = messaging::receive(deadline.slice())?;
        announced = messages.iter().any(|m| matches!(m.kind, Kind::Proposal));
    }
}

/// Asks the model about `proposal`, votes its verdict, tells the proposer and records it.
fn evaluate(
    board: &mut Board,
    proposal: &Proposal,
    system: &str,
) -> Result<Evaluation, AgentError> {
    let prompt = format!("BETA evaluate: {}\n{}", proposal.title, proposal.body);
    let answer = llm::ask(system, &prompt)?;
    let (choice, reasoning) = parse_verdict(&answer);
    board.cast(proposal, choice, &reasoning)?;
    let feedback = serde_json::json!({
        "proposal_id": proposal.id,
        "vote": choice_name(choice),
        "reasoning": reasoning,
    });
    messaging::send(&proposal.proposer, Kind::Feedback, &feedback.to_string())?;
    blackboard::write(
        Section::Progress,
        &format!("eval_{}", proposal.id),
        clip(answer.trim(), MAX_VALUE_BYTES),
    )?;
    Ok(Evaluation {
        proposal_id: proposal.id.clone(),
        title: proposal.title.clone(),
        choice,
        reasoning,
    })
}

fn synthesis_markdown(
    objective: &str,
    evaluations: &[Evaluation],
    synthesis: Option<&str>,
    board: &Board,
    end: &WaitEnd,
) -> String {
    let mut md = format!("# Synthesis: {objective}\n\n## Evaluations\n\n");
    if evaluations.is_empty() {
        md.push_str("No proposal was evaluated.\n");
    }
    for e in evaluations {
        md.push_str(&format!(
            "- {} `{}`: {}: {}\n",
            e.proposal_id,
            e.title,
            choice_name(e.choice),
            e.reasoning
        ));
    }
    md.push_str("\n## Synthesis\n\n");
    md.push_str(match synthesis {
        Some(text) => text,
        None if evaluations.is_empty() => "No proposal was evaluated: nothing to synthesise.",
        None => "Not written: the other primary agents had not finished proposing by the deadline.",
    });
    md.push_str("\n\n## Final status\n\n");
    for proposal in board.relevant() {
        md.push_str(&format!(
            "- {} `{}` by {}: {}\n",
            proposal.id,
            proposal.title,
            proposal.proposer,
            board.status(proposal)
        ));
    }
    let later: Vec<_> = board
        .votes
        .iter()
        .filter(|v| !evaluations.iter().any(|e| e.proposal_id == v.proposal_id))
        .collect();
    if !later.is_empty() {
        md.push_str("\n## Later votes\n\n");
        for vote in later {
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

warden_sdk::export_agent!(Beta);
