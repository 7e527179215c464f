//! `gamma`, the mediator of a multi-agent task (T2): the orchestrator spawns it at most once,
//! with a reason, when the primary agents need help or their result needs checking.
//!
//! - PLAN reads why it was spawned (`problem/spawn_reason`, `problem/spawn_detail`); without
//!   a known reason the plan fails.
//! - EXECUTE, for `CONFLICT`, `STUCK` or `COMPLEXITY`, asks
//!   `GAMMA resolve: <reason>: <titles of the contested or open proposals joined by "; ">`
//!   for a merged proposal (first line the title, the rest the body), resolves each contested
//!   proposal as superseded, proposes the merge to `problem/voters` (its own vote would not
//!   count), hands the vote off to everyone, and waits for the votes until the deadline. It
//!   succeeds when the merge reaches consensus, and then finalizes it: the host writes
//!   `consensus/final`, which tells the primary agents to stop. For `SUCCESS` it asks
//!   `GAMMA validate: <objective>` (with the blackboard after it) for `VALID: …` or
//!   `INVALID: …`, records the verdict (`consensus.validate`, so `consensus/validation`) and
//!   succeeds when valid. Either way it writes `gamma-mediation.md`.
//! - VERIFY and REPORT keep the SDK defaults.
//!
//! Blackboard, as the orchestrator's protocol defines it:
//!
//! | reads | writes |
//! |-------|--------|
//! | `problem/spawn_reason`, `problem/spawn_detail`, `problem/objective` (else the packet's), `problem/voters` (else `problem/agents`), `problem/deadline_ms`, `solutions/*`; for `SUCCESS` every section | `progress/gamma_resolution`, `progress/mediation` (`{"proposal_id", "reached", "accepts", "rejects"}`, which tells the primary agents the mediator is done), `progress/validation`; through the consensus interface, `consensus/final` and `consensus/validation` |
//!
//! Messages: broadcasts HANDOFF `{"vote": <proposal id>}` once the merge is proposed and
//! `{"settled": <proposal id>}` once `consensus/final` is written.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warden_sdk::blackboard::Section;
use warden_sdk::consensus::{Proposal, ProposalTally, VoteChoice};
use warden_sdk::messaging::Kind;
use warden_sdk::prelude::*;

const ARTIFACT: &str = "gamma-mediation.md";
/// The resolution of each proposal the merge replaces.
const SUPERSEDED: &str = "superseded by merged proposal";
/// The longest wait for votes between two tallies.
const POLL: Duration = Duration::from_millis(250);
/// The task's length when `problem/deadline_ms` is missing, from the start of EXECUTE.
const DEFAULT_TASK_MS: u64 = 20_000;
/// Waiting stops this long before the task's deadline, leaving time to write the results.
const MARGIN_MS: u64 = 1_000;
const MAX_TITLE_BYTES: usize = 256;
/// Largest blackboard value, and proposal body, the host accepts.
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// How much of each proposal or blackboard entry the model is shown; the prompt must stay
/// within the task's token budget.
const CONTEXT_ENTRY_BYTES: usize = 2_000;
const CONTEXT_BYTES: usize = 16 * 1024;

const RESOLVE_SYSTEM: &str = "You are gamma, the mediator of a team designing a solution \
together. Merge the listed proposals into one that keeps what each does well and answers the \
objections. Reply with the merged proposal: its title alone on the first line, then its body.";

const VALIDATE_SYSTEM: &str = "You are gamma, the mediator of a team designing a solution \
together. Check whether the agreed solution on the blackboard meets the objective. Answer \
VALID or INVALID, then a colon and one sentence of reasoning.";

/// Why the orchestrator spawned the mediator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Stuck,
    Conflict,
    Complexity,
    Success,
}

impl Reason {
    fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "STUCK" => Some(Self::Stuck),
            "CONFLICT" => Some(Self::Conflict),
            "COMPLEXITY" => Some(Self::Complexity),
            "SUCCESS" => Some(Self::Success),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stuck => "STUCK",
            Self::Conflict => "CONFLICT",
            Self::Complexity => "COMPLEXITY",
            Self::Success => "SUCCESS",
        })
    }
}

/// The merged proposal and how its vote ended, for the artifact.
struct Merge<'a> {
    id: &'a str,
    title: &'a str,
    body: &'a str,
    tally: &'a ProposalTally,
    /// The `consensus/final` value.
    result: &'a str,
}

#[derive(Default)]
struct Gamma {
    objective: String,
    reason: Option<Reason>,
    detail: String,
}

impl Agent for Gamma {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        self.objective = read_problem("objective")?.unwrap_or_else(|| packet.objective.clone());
        let reason = read_problem("spawn_reason")?.ok_or(
            "gamma: `problem/spawn_reason` is not set; the mediator runs only when the \
             orchestrator spawns it with a reason",
        )?;
        let reason = Reason::parse(&reason).ok_or_else(|| {
            AgentError::new(format!(
                "gamma: unknown spawn reason `{reason}`; expected STUCK, CONFLICT, COMPLEXITY or SUCCESS"
            ))
        })?;
        self.detail = read_problem("spawn_detail")?.unwrap_or_default();
        self.reason = Some(reason);
        let steps: Vec<String> = match reason {
            Reason::Success => vec![
                "read the blackboard".into(),
                "ask whether the agreed solution meets the objective".into(),
                "publish the validation as consensus/final".into(),
            ],
            _ => vec![
                "ask for one proposal merging the contested and open ones".into(),
                "resolve the contested proposals as superseded".into(),
                "propose the merge to the running agents, vote ACCEPT, hand off the vote".into(),
                "wait for the votes and publish the result as consensus/final".into(),
            ],
        };
        Ok(Plan {
            summary: format!("mediate {reason}: {}", self.detail),
            steps,
            // The procedure is fixed; how it ends depends on the others' votes.
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let reason = self
            .reason
            .ok_or("gamma: EXECUTE without the spawn reason of PLAN")?;
        let default_deadline = now_ms().saturating_add(DEFAULT_TASK_MS);
        let deadline = read_problem("deadline_ms")?
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(default_deadline)
            .saturating_sub(MARGIN_MS);
        let (success, summary, markdown) = match reason {
            Reason::Success => self.validate()?,
            _ => self.mediate(reason, &packet.agent_id, deadline)?,
        };
        ledger::note(&summary)?;
        artifacts::put_text(ARTIFACT, &markdown)?;
        Ok(Outcome {
            success,
            summary,
            artifacts: vec![ARTIFACT.to_owned()],
        })
    }
}

impl Gamma {
    /// Merges the contested and open proposals into one and puts it to the vote; returns
    /// whether it reached consensus, a summary and the artifact.
    fn mediate(
        &self,
        reason: Reason,
        me: &str,
        deadline_ms: u64,
    ) -> Result<(bool, String, String), AgentError> {
        let proposals = consensus::proposals()?;
        let mut targets: Vec<(&Proposal, &str)> = Vec::new();
        for proposal in proposals.iter().filter(|p| p.resolution.is_none()) {
            if proposal.in_conflict {
                targets.push((proposal, "in conflict"));
            } else if !consensus::tally(&proposal.id)?.reached {
                targets.push((proposal, "open"));
            }
        }
        let titles = if targets.is_empty() {
            "(no open proposals)".to_owned()
        } else {
            targets
                .iter()
                .map(|(p, _)| p.title.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };

        let mut prompt = format!(
            "GAMMA resolve: {reason}: {titles}\n\nObjective: {}\nWhy the mediator was called: {}\n\nProposals:\n",
            self.objective, self.detail
        );
        for (proposal, label) in &targets {
            prompt.push_str(&format!(
                "- {} `{}` by {} ({label}): {}\n",
                proposal.id,
                proposal.title,
                proposal.proposer,
                clip(&proposal.body, CONTEXT_ENTRY_BYTES)
            ));
        }
        prompt.push_str("\nSolutions on the blackboard:\n");
        for (key, value) in blackboard::entries(Section::Solutions)? {
            prompt.push_str(&format!("- {key}: {}\n", clip(&value, CONTEXT_ENTRY_BYTES)));
        }
        let answer = llm::ask(RESOLVE_SYSTEM, clip(&prompt, CONTEXT_BYTES))?;
        let (title, body) = split_merged(&answer)?;
        blackboard::write(
            Section::Progress,
            "gamma_resolution",
            clip(answer.trim(), MAX_VALUE_BYTES),
        )?;

        let superseded: Vec<&str> = targets
            .iter()
            .filter(|(p, _)| p.in_conflict)
            .map(|(p, _)| p.id.as_str())
            .collect();
        for id in &superseded {
            consensus::resolve(id, SUPERSEDED)?;
        }
        // The agents still in the task vote; the mediator's own vote would not count.
        let voters = read_problem("voters")?
            .filter(|v| !v.trim().is_empty())
            .map_or_else(|| problem_ids("agents"), |v| Ok(split_ids(&v)))?;
        let required: Vec<&str> = voters
            .iter()
            .map(String::as_str)
            .filter(|id| *id != me)
            .collect();
        let id = consensus::propose(title, body, &[], &required)?;
        ledger::note(&format!(
            "{reason}: superseded [{}] by {id} `{title}`, required {}",
            superseded.join(", "),
            required.join(", ")
        ))?;
        messaging::broadcast(
            Kind::Handoff,
            &serde_json::json!({ "vote": id }).to_string(),
        )?;

        let tally = loop {
            let tally = consensus::tally(&id)?;
            let remaining = deadline_ms.saturating_sub(now_ms());
            if tally.reached || tally.missing.is_empty() || remaining == 0 {
                break tally;
            }
            // Only the wait matters: the votes are read from the tally.
            messaging::receive(POLL.min(Duration::from_millis(remaining)))?;
        };
        let result = serde_json::json!({
            "proposal_id": id,
            "reached": tally.reached,
            "accepts": tally.accepts,
            "rejects": tally.rejects,
        })
        .to_string();
        if tally.reached {
            // The host writes `consensus/final` from its own tally.
            consensus::finalize(&id)?;
        }
        blackboard::write(Section::Progress, "mediation", &result)?;
        messaging::broadcast(
            Kind::Handoff,
            &serde_json::json!({ "settled": id }).to_string(),
        )?;

        let summary = format!(
            "{reason}: merged proposal {id} `{title}` {} ({} accept, {} reject, {} abstain)",
            if tally.reached {
                "reached consensus"
            } else {
                "did not reach consensus"
            },
            tally.accepts,
            tally.rejects,
            tally.abstains
        );
        let merge = Merge {
            id: &id,
            title,
            body,
            tally: &tally,
            result: &result,
        };
        let markdown = self.mediation_markdown(reason, &targets, &merge);
        Ok((tally.reached, summary, markdown))
    }

    /// Checks the agreed solution against the objective; returns whether it is valid, a
    /// summary and the artifact.
    fn validate(&self) -> Result<(bool, String, String), AgentError> {
        let mut board = String::new();
        for (name, section) in [
            ("problem", Section::Problem),
            ("solutions", Section::Solutions),
            ("progress", Section::Progress),
            ("consensus", Section::Consensus),
        ] {
            for (key, value) in blackboard::entries(section)? {
                board.push_str(&format!(
                    "- {name}/{key}: {}\n",
                    clip(&value, CONTEXT_ENTRY_BYTES)
                ));
            }
        }
        let prompt = format!("GAMMA validate: {}\n\nBlackboard:\n{board}", self.objective);
        let answer = llm::ask(VALIDATE_SYSTEM, clip(&prompt, CONTEXT_BYTES))?;
        let answer = answer.trim();
        let (valid, note) = parse_validation(answer);
        blackboard::write(
            Section::Progress,
            "validation",
            clip(answer, MAX_VALUE_BYTES),
        )?;
        let result = serde_json::json!({ "validated": valid, "note": note }).to_string();
        consensus::validate(valid, &note)?;

        let verdict = if valid { "VALID" } else { "INVALID" };
        let summary = format!("SUCCESS validation: {verdict}: {note}");
        let markdown = format!(
            "# Mediation: {}\n\nSpawned for: SUCCESS ({})\n\n## Validation\n\n{verdict}: {note}\n\n\
             ## consensus/validation\n\n```json\n{result}\n```\n",
            self.objective, self.detail
        );
        Ok((valid, summary, markdown))
    }

    fn mediation_markdown(
        &self,
        reason: Reason,
        targets: &[(&Proposal, &str)],
        merge: &Merge<'_>,
    ) -> String {
        let Merge {
            id,
            title,
            body,
            tally,
            result,
        } = merge;
        let mut md = format!(
            "# Mediation: {}\n\nSpawned for: {reason} ({})\n\n## Proposals mediated\n\n",
            self.objective, self.detail
        );
        if targets.is_empty() {
            md.push_str("None was contested or open.\n");
        }
        for (proposal, label) in targets {
            let outcome = if proposal.in_conflict {
                SUPERSEDED
            } else {
                "left open"
            };
            md.push_str(&format!(
                "- {} `{}` by {} ({label}): {outcome}\n",
                proposal.id, proposal.title, proposal.proposer
            ));
        }
        md.push_str(&format!(
            "\n## Merged proposal {id}: {title}\n\n{body}\n\n## Votes\n\n"
        ));
        for vote in &tally.votes {
            let choice = match vote.choice {
                VoteChoice::Accept => "ACCEPT",
                VoteChoice::Reject => "REJECT",
                VoteChoice::Abstain => "ABSTAIN",
            };
            md.push_str(&format!("- {}: {choice}: {}\n", vote.agent, vote.reasoning));
        }
        if !tally.missing.is_empty() {
            md.push_str(&format!("- not voted: {}\n", tally.missing.join(", ")));
        }
        md.push_str(&format!("\n## consensus/final\n\n```json\n{result}\n```\n"));
        md
    }
}

/// The merged proposal in the model's answer: the first non-empty line is the title (any
/// Markdown heading or bold marks dropped), the rest the body.
fn split_merged(answer: &str) -> Result<(&str, &str), AgentError> {
    let answer = answer.trim();
    let (first, rest) = answer.split_once('\n').unwrap_or((answer, ""));
    let title = first
        .trim()
        .trim_start_matches(['#', '*', ' '])
        .trim_end_matches(['*', ' ']);
    let title = title.strip_prefix("Title:").map_or(title, str::trim);
    if title.is_empty() {
        return Err("gamma: the merged proposal has no title (its first line is empty)".into());
    }
    Ok((
        clip(title, MAX_TITLE_BYTES),
        clip(rest.trim(), MAX_VALUE_BYTES),
    ))
}

/// `VALID[: note]` or `INVALID[: note]`; anything else is invalid, with the answer as the note.
fn parse_validation(answer: &str) -> (bool, String) {
    for (word, valid) in [("VALID", true), ("INVALID", false)] {
        if let Some(rest) = answer
            .get(..word.len())
            .filter(|head| head.eq_ignore_ascii_case(word))
            .and_then(|_| answer.get(word.len()..))
            .filter(|rest| !rest.starts_with(|c: char| c.is_alphanumeric()))
        {
            let rest = rest.trim_start();
            let note = rest.strip_prefix(':').unwrap_or(rest).trim();
            return (valid, clip(note, MAX_VALUE_BYTES).to_owned());
        }
    }
    (false, format!("no clear verdict: {}", clip(answer, 200)))
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn read_problem(key: &str) -> Result<Option<String>, AgentError> {
    Ok(blackboard::read(Section::Problem, key)?)
}

fn split_ids(value: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in value.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

fn problem_ids(key: &str) -> Result<Vec<String>, AgentError> {
    Ok(split_ids(&read_problem(key)?.unwrap_or_default()))
}

/// `text` cut to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

warden_sdk::export_agent!(Gamma);
