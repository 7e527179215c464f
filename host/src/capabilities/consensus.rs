//! `warden:agent/consensus`: proposals and votes among the agents of the run's task.
//!
//! A proposal declares its voters (by default the task's roster, `problem/agents`); a vote
//! from anyone else is refused (`NOT_A_VOTER`). It reaches consensus by the reference's rule
//! and a quorum: every required voter voted, at least the task's quorum of votes were cast
//! (`problem/quorum`, default [`DEFAULT_QUORUM`]), accepts outnumber rejects and no required
//! voter rejected. A proposer's own vote counts only where the task says so
//! (`problem/proposer_votes`). Votes are final (the first one stands) and each is written to
//! the ledger with its choice and reasoning. A proposal is settled outside the vote by
//! `resolve`, which its proposer may call, and so may an agent at [`MEDIATOR_TIER`] or above.
//!
//! The blackboard's `consensus` section is this interface's: `finalize` writes
//! `consensus/final` from the host's own tally, once per task, and `validate` writes the
//! mediator's verdict to `consensus/validation`. An agent's own write there is refused
//! (see `blackboard`).

use crate::clock::now_ms;
use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::consensus::{
    Host, Proposal as WitProposal, ProposalTally, Vote as WitVote, VoteChoice as WitChoice,
};
use crate::governance::Governor;
use crate::id::{AgentId, TaskId};
use crate::interface::Interface;
use crate::state::coordination::DEFAULT_QUORUM;
use crate::state::{
    CastOutcome, NewProposal, Proposal, Resolution, ResolveOutcome, Section, Vote, VoteChoice,
};
use crate::tier::Tier;
use crate::policy::{Linked, SectionSpec};

/// Its section (`[tiers.T1.consensus]`) has no settings: present, the interface is linked.
pub(super) const SECTION: SectionSpec = SectionSpec::of::<Linked>(Interface::Consensus);

/// Most agents a proposal may name as voters (required ones included).
const MAX_REQUIRED: usize = 32;
const MAX_TITLE_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The lowest tier that may settle another agent's proposal.
pub(crate) const MEDIATOR_TIER: Tier = Tier::Builder;

fn vote_choice(choice: WitChoice) -> VoteChoice {
    match choice {
        WitChoice::Accept => VoteChoice::Accept,
        WitChoice::Reject => VoteChoice::Reject,
        WitChoice::Abstain => VoteChoice::Abstain,
    }
}

fn wit_choice(choice: VoteChoice) -> WitChoice {
    match choice {
        VoteChoice::Accept => WitChoice::Accept,
        VoteChoice::Reject => WitChoice::Reject,
        VoteChoice::Abstain => WitChoice::Abstain,
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn tally(proposal: &Proposal) -> ProposalTally {
    let tally = proposal.tally();
    ProposalTally {
        proposal_id: proposal.record.id.clone(),
        accepts: tally.accepts,
        rejects: tally.rejects,
        abstains: tally.abstains,
        missing: tally.missing.into_iter().map(String::from).collect(),
        quorum: tally.quorum,
        reached: tally.reached,
        votes: proposal
            .votes
            .iter()
            .map(|v| WitVote {
                agent: v.agent.to_string(),
                proposal_id: proposal.record.id.clone(),
                choice: wit_choice(v.choice),
                reasoning: v.reasoning.clone(),
                timestamp: rfc3339(v.at_ms),
            })
            .collect(),
    }
}

/// The task's consensus settings, from host-owned `problem` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Votes a proposal needs (`problem/quorum`).
    pub quorum: u32,
    /// Whether a proposer may vote on its own proposal (`problem/proposer_votes`).
    pub proposer_votes: bool,
    /// The task's agents (`problem/agents`), the voters of a proposal that names none.
    pub roster: Vec<AgentId>,
}

impl Rules {
    /// The settings from the entries as stored; absent or unreadable ones take the defaults
    /// (the host wrote them, so an unreadable one is a host bug, not the agent's).
    pub(crate) fn from_entries(
        quorum: Option<&str>,
        proposer_votes: Option<&str>,
        roster: Option<&str>,
    ) -> Rules {
        Rules {
            quorum: quorum
                .and_then(|q| q.parse().ok())
                .unwrap_or(DEFAULT_QUORUM),
            proposer_votes: proposer_votes == Some("true"),
            roster: roster
                .unwrap_or_default()
                .split(',')
                .filter_map(|a| AgentId::new(a.trim()).ok())
                .collect(),
        }
    }
}

/// Who may vote on a proposal, and who must: `voters` and `required` as the proposer gave
/// them (required agents are voters), else the task's roster. The proposer is a voter only
/// where the task counts its own vote; naming it otherwise is refused, so that no proposal
/// can pass on its author's say. Pure: the refusal says what would be accepted.
pub(crate) fn voters_of(
    proposer: &AgentId,
    voters: &[AgentId],
    required: &[AgentId],
    rules: &Rules,
) -> Result<Vec<AgentId>, String> {
    let mut all: Vec<AgentId> = voters.iter().chain(required).cloned().collect();
    if !rules.proposer_votes && all.contains(proposer) {
        return Err(format!(
            "the proposer `{proposer}` is among its own voters, and this task does not count a proposer's own vote (`proposer_votes`); leave it out of `voters` and `required`"
        ));
    }
    if all.is_empty() {
        all = rules
            .roster
            .iter()
            .filter(|a| rules.proposer_votes || *a != proposer)
            .cloned()
            .collect();
    }
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Err(
            "it names no voters and the task has no other agents (`problem/agents`); name its voters"
                .to_string(),
        );
    }
    if all.len() > MAX_REQUIRED {
        return Err(format!(
            "{} voters; a proposal may name at most {MAX_REQUIRED}",
            all.len()
        ));
    }
    Ok(all)
}

/// Who may make a proposal the task's decision, or settle it: its proposer, or a mediator.
fn check_settler(
    op: &str,
    proposal: &Proposal,
    agent: &AgentId,
    tier: Tier,
) -> Result<(), CallRefusal> {
    if proposal.record.proposer == *agent || tier >= MEDIATOR_TIER {
        return Ok(());
    }
    Err(CallRefusal {
        kind: ViolationKind::TierDenied,
        resource: format!("consensus:{}", proposal.record.id),
        message: format!(
            "`{op}` of `{}` refused: it was proposed by `{}`, and settling another agent's proposal needs tier {MEDIATOR_TIER} or above (agent is {tier})",
            proposal.record.id, proposal.record.proposer
        ),
    })
}

impl Governor {
    /// The task's consensus settings, read from the host-owned `problem` entries.
    async fn consensus_rules(&self) -> Result<Rules, WitError> {
        let state = &self.services.state;
        let task = self.task_id();
        let fail = |e| unavailable("the blackboard", e);
        let quorum = state
            .board_read(task, Section::Problem, "quorum")
            .await
            .map_err(fail)?;
        let proposer_votes = state
            .board_read(task, Section::Problem, "proposer_votes")
            .await
            .map_err(fail)?;
        let roster = state
            .board_read(task, Section::Problem, "agents")
            .await
            .map_err(fail)?;
        Ok(Rules::from_entries(
            quorum.as_deref(),
            proposer_votes.as_deref(),
            roster.as_deref(),
        ))
    }

    /// The proposal, or the error the guest gets (recorded).
    async fn find_proposal(&self, op: &'static str, id: &str) -> Result<Proposal, WitError> {
        let found = self
            .services
            .state
            .proposal(self.task_id(), id)
            .await
            .map_err(|e| unavailable("consensus", e));
        let result = match found {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => Err(unknown_proposal(self.task_id(), op, id)),
            Err(e) => Err(e),
        };
        self.record_result(op, &result).await;
        result
    }
}

fn unknown_proposal(task: &TaskId, op: &str, id: &str) -> WitError {
    WitError::NotFound(format!(
        "`{op}`: task `{task}` has no proposal `{id}`; proposal ids are `p1`, `p2`, … as `propose` returned them"
    ))
}

impl AgentCtx {
    async fn invalid(&mut self, op: &'static str, resource: String, message: String) -> WitError {
        let refusal = CallRefusal {
            kind: ViolationKind::Invalid,
            resource,
            message,
        };
        self.gov.refuse(op, refusal).await
    }

}

impl Host for AgentCtx {
    async fn propose(
        &mut self,
        title: String,
        body: String,
        voters: Vec<String>,
        required: Vec<String>,
    ) -> Result<String, WitError> {
        super::journal_call!(self, "consensus.propose", Json, super::journaled::args(&(&title, &body, &voters, &required)), {
            const OP: &str = "consensus.propose";
            self.gov
                .gate(Interface::Consensus, OP, || "consensus:propose".to_string())
                .await?;
            let problem = if title.is_empty() || title.len() > MAX_TITLE_BYTES {
                Some(format!(
                    "`{OP}` refused: title of {} bytes; titles are 1 to {MAX_TITLE_BYTES} bytes",
                    title.len()
                ))
            } else if body.len() > MAX_TEXT_BYTES {
                Some(format!(
                    "`{OP}` refused: body of {} bytes; proposals are at most {MAX_TEXT_BYTES} bytes",
                    body.len()
                ))
            } else if voters.len() + required.len() > 2 * MAX_REQUIRED {
                Some(format!(
                    "`{OP}` refused: {} voters and {} required agents; a proposal may name at most {MAX_REQUIRED} voters",
                    voters.len(),
                    required.len()
                ))
            } else {
                voters
                    .iter()
                    .chain(&required)
                    .find_map(|agent| AgentId::new(agent).err())
                    .map(|e| format!("`{OP}` refused: voter {e}"))
            };
            if let Some(message) = problem {
                return Err(self.invalid(OP, "consensus:propose".into(), message).await);
            }
            let ids = |names: &[String]| -> Vec<AgentId> {
                let mut ids: Vec<AgentId> = names.iter().filter_map(|a| AgentId::new(a).ok()).collect();
                ids.sort();
                ids.dedup();
                ids
            };
            let (voters, required) = (ids(&voters), ids(&required));
            let rules = match self.gov.consensus_rules().await {
                Ok(rules) => rules,
                Err(error) => {
                    let result: Result<String, _> = Err(error);
                    self.gov.record_result(OP, &result).await;
                    return result;
                }
            };
            let voters = match voters_of(self.gov.agent_id(), &voters, &required, &rules) {
                Ok(voters) => voters,
                Err(reason) => {
                    let message = format!("`{OP}` refused: {reason}");
                    return Err(self.invalid(OP, "consensus:propose".into(), message).await);
                }
            };
            let gov = &self.gov;
            let proposal = NewProposal {
                proposer: gov.agent_id(),
                title: &title,
                body: &body,
                required: &required,
                voters: &voters,
                quorum: rules.quorum,
                created_at_ms: now_ms(),
            };
            let result = gov
                .services
                .state
                .propose(gov.task_id(), &proposal, gov.once())
                .await
                .map_err(|e| unavailable("consensus", e));
            match &result {
                Ok(id) => {
                    let details = serde_json::json!({
                        "proposal": id,
                        "title": title,
                        "voters": voters,
                        "required": required,
                        "quorum": rules.quorum,
                    });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result
        })
    }

    async fn cast(
        &mut self,
        proposal_id: String,
        choice: WitChoice,
        reasoning: String,
    ) -> Result<(), WitError> {
        super::journal_call!(self, "consensus.cast", Json, super::journaled::args(&(&proposal_id, &choice, &reasoning)), {
            const OP: &str = "consensus.cast";
            self.gov
                .gate(Interface::Consensus, OP, || {
                    format!("consensus:{proposal_id}")
                })
                .await?;
            if reasoning.len() > MAX_TEXT_BYTES {
                let message = format!(
                    "`{OP}` refused: reasoning of {} bytes; at most {MAX_TEXT_BYTES} bytes",
                    reasoning.len()
                );
                return Err(self
                    .invalid(OP, format!("consensus:{proposal_id}"), message)
                    .await);
            }
            let proposal = self.gov.find_proposal(OP, &proposal_id).await?;
            if let Err(reason) = proposal.may_vote(self.gov.agent_id()) {
                let hint = if proposal.record.proposer == *self.gov.agent_id() {
                    "; a proposer votes on its own proposal only where the task counts it (`proposer_votes`)"
                } else {
                    ""
                };
                let refusal = CallRefusal {
                    kind: ViolationKind::NotAVoter,
                    resource: format!("consensus:{proposal_id}"),
                    message: format!("`{OP}` on `{proposal_id}` refused: {reason}{hint}"),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let gov = &self.gov;
            let vote = Vote {
                agent: gov.agent_id().clone(),
                choice: vote_choice(choice),
                reasoning,
                at_ms: now_ms(),
            };
            let outcome = gov
                .services
                .state
                .cast_vote(gov.task_id(), &proposal_id, &vote, gov.once())
                .await
                .map_err(|e| unavailable("consensus", e));
            let result = match outcome {
                Ok(CastOutcome::Recorded) => Ok(()),
                Ok(CastOutcome::AlreadyVoted(first)) => Err(WitError::Denied(format!(
                    "`{OP}` on `{proposal_id}` refused: agent `{}` already voted {} and votes are final",
                    gov.agent_id(),
                    first.choice.as_str()
                ))),
                Ok(CastOutcome::UnknownProposal) => Err(unknown_proposal(self.gov.task_id(), OP, &proposal_id)),
                Err(e) => Err(e),
            };
            let gov = &self.gov;
            match &result {
                Ok(()) => {
                    let details = serde_json::json!({
                        "proposal": proposal_id,
                        "vote": vote.choice.as_str(),
                        "reasoning": vote.reasoning,
                    });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result
        })
    }

    async fn tally(&mut self, proposal_id: String) -> Result<ProposalTally, WitError> {
        super::journal_call!(self, "consensus.tally", Json, super::journaled::args(&(&proposal_id,)), {
            const OP: &str = "consensus.tally";
            self.gov
                .gate(Interface::Consensus, OP, || {
                    format!("consensus:{proposal_id}")
                })
                .await?;
            let gov = &self.gov;
            let found = gov
                .services
                .state
                .proposal(gov.task_id(), &proposal_id)
                .await
                .map_err(|e| unavailable("consensus", e));
            let result = match found {
                Ok(Some(proposal)) => Ok(tally(&proposal)),
                Ok(None) => Err(unknown_proposal(self.gov.task_id(), OP, &proposal_id)),
                Err(e) => Err(e),
            };
            self.gov.record_result(OP, &result).await;
            result
        })
    }

    async fn proposals(&mut self) -> Result<Vec<WitProposal>, WitError> {
        super::journal_call!(self, "consensus.proposals", Json, super::journaled::args(&()), {
            const OP: &str = "consensus.proposals";
            self.gov
                .gate(Interface::Consensus, OP, || "consensus:*".to_string())
                .await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .proposals(gov.task_id())
                .await
                .map_err(|e| unavailable("consensus", e))
                .map(|all| {
                    all.into_iter()
                        .map(|p| WitProposal {
                            in_conflict: p.in_conflict(),
                            id: p.record.id,
                            proposer: p.record.proposer.into(),
                            title: p.record.title,
                            body: p.record.body,
                            required: p.record.required.into_iter().map(String::from).collect(),
                            voters: p.record.voters.into_iter().map(String::from).collect(),
                            quorum: p.record.quorum,
                            resolution: p.record.resolution.map(|r| r.note),
                        })
                        .collect()
                });
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn resolve(&mut self, proposal_id: String, resolution: String) -> Result<(), WitError> {
        super::journal_call!(self, "consensus.resolve", Json, super::journaled::args(&(&proposal_id, &resolution)), {
            const OP: &str = "consensus.resolve";
            self.gov
                .gate(Interface::Consensus, OP, || {
                    format!("consensus:{proposal_id}")
                })
                .await?;
            if resolution.is_empty() || resolution.len() > MAX_TEXT_BYTES {
                let message = format!(
                    "`{OP}` refused: resolution of {} bytes; resolutions are 1 to {MAX_TEXT_BYTES} bytes",
                    resolution.len()
                );
                return Err(self
                    .invalid(OP, format!("consensus:{proposal_id}"), message)
                    .await);
            }
            let proposal = self.gov.find_proposal(OP, &proposal_id).await?;
            let decision = check_settler(OP, &proposal, self.gov.agent_id(), self.gov.run.tier);
            self.gov.check(OP, decision).await?;
            let gov = &self.gov;
            let settled = Resolution {
                by: gov.agent_id().clone(),
                note: resolution,
                at_ms: now_ms(),
            };
            let outcome = gov
                .services
                .state
                .resolve_proposal(gov.task_id(), &proposal_id, &settled, gov.once())
                .await
                .map_err(|e| unavailable("consensus", e));
            let result = match outcome {
                Ok(ResolveOutcome::Resolved) => Ok(()),
                Ok(ResolveOutcome::AlreadyResolved(first)) => Err(WitError::Denied(format!(
                    "`{OP}` of `{proposal_id}` refused: `{}` already settled it ({})",
                    first.by, first.note
                ))),
                Ok(ResolveOutcome::UnknownProposal) => Err(unknown_proposal(self.gov.task_id(), OP, &proposal_id)),
                Err(e) => Err(e),
            };
            let gov = &self.gov;
            match &result {
                Ok(()) => {
                    let details =
                        serde_json::json!({ "proposal": proposal_id, "resolution": settled.note });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result
        })
    }

    async fn finalize(&mut self, proposal_id: String) -> Result<ProposalTally, WitError> {
        super::journal_call!(self, "consensus.finalize", Json, super::journaled::args(&(&proposal_id,)), {
            const OP: &str = "consensus.finalize";
            self.gov
                .gate(Interface::Consensus, OP, || {
                    format!("consensus:{proposal_id}")
                })
                .await?;
            let proposal = self.gov.find_proposal(OP, &proposal_id).await?;
            let decision = check_settler(OP, &proposal, self.gov.agent_id(), self.gov.run.tier);
            self.gov.check(OP, decision).await?;
            let counted = proposal.tally();
            let gov = &self.gov;
            let result = if proposal.record.resolution.is_some() {
                Err(WitError::Denied(format!(
                    "`{OP}` of `{proposal_id}` refused: it was settled outside the vote and cannot be the task's decision"
                )))
            } else if !counted.reached {
                let missing: Vec<&str> = counted.missing.iter().map(AgentId::as_str).collect();
                Err(WitError::Denied(format!(
                    "`{OP}` of `{proposal_id}` refused: it has not reached consensus ({} accept, {} reject, {} abstain of a quorum of {}; missing: {})",
                    counted.accepts,
                    counted.rejects,
                    counted.abstains,
                    counted.quorum,
                    if missing.is_empty() { "none".to_string() } else { missing.join(", ") }
                )))
            } else {
                let record = serde_json::json!({
                    "proposal_id": proposal_id,
                    "title": proposal.record.title,
                    "proposer": proposal.record.proposer,
                    "reached": true,
                    "accepts": counted.accepts,
                    "rejects": counted.rejects,
                    "abstains": counted.abstains,
                    "quorum": counted.quorum,
                    "voters": proposal.record.voters,
                    "finalized_by": gov.agent_id(),
                    "at": rfc3339(now_ms()),
                })
                .to_string();
                match gov
                    .services
                    .state
                    .board_insert(gov.task_id(), Section::Consensus, "final", &record, gov.once())
                    .await
                {
                    Ok(true) => Ok(tally(&proposal)),
                    Ok(false) => Err(WitError::Denied(format!(
                        "`{OP}` of `{proposal_id}` refused: task `{}` already has a final decision (`consensus/final`); it is set once",
                        gov.task_id()
                    ))),
                    Err(e) => Err(unavailable("the blackboard", e)),
                }
            };
            match &result {
                Ok(_) => {
                    let details = serde_json::json!({
                        "proposal": proposal_id,
                        "accepts": counted.accepts,
                        "rejects": counted.rejects,
                        "quorum": counted.quorum,
                    });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result
        })
    }

    async fn validate(&mut self, valid: bool, note: String) -> Result<(), WitError> {
        super::journal_call!(self, "consensus.validate", Json, super::journaled::args(&(&valid, &note)), {
            const OP: &str = "consensus.validate";
            self.gov
                .gate(Interface::Consensus, OP, || "consensus:validation".to_string())
                .await?;
            let tier = self.gov.run.tier;
            if tier < MEDIATOR_TIER {
                let refusal = CallRefusal::tier_denied(
                    "consensus:validation",
                    format!(
                        "`{OP}` refused: validating the task's result is the mediator's, tier {MEDIATOR_TIER} or above (agent is {tier})"
                    ),
                );
                return Err(self.gov.refuse(OP, refusal).await);
            }
            if note.len() > MAX_TEXT_BYTES {
                let message = format!(
                    "`{OP}` refused: note of {} bytes; at most {MAX_TEXT_BYTES} bytes",
                    note.len()
                );
                return Err(self.invalid(OP, "consensus:validation".into(), message).await);
            }
            let gov = &self.gov;
            let record = serde_json::json!({
                "validated": valid,
                "note": note,
                "by": gov.agent_id(),
                "at": rfc3339(now_ms()),
            })
            .to_string();
            let result = match gov
                .services
                .state
                .board_insert(gov.task_id(), Section::Consensus, "validation", &record, gov.once())
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(WitError::Denied(format!(
                    "`{OP}` refused: task `{}` was already validated (`consensus/validation`); it is set once",
                    gov.task_id()
                ))),
                Err(e) => Err(unavailable("the blackboard", e)),
            };
            match &result {
                Ok(()) => {
                    let details = serde_json::json!({ "validated": valid, "note": note });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::{TestAgent, TestEnv};
    use crate::id::TaskId;
    use crate::state::{Admission, Quota};

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_string()).collect()
    }

    /// Write the task's host-owned settings, as the orchestrator does.
    async fn settings(agent: &TestAgent, entries: &[(&str, &str)]) {
        let task = TaskId::new("task-1").unwrap();
        for (key, value) in entries {
            let stored = agent
                .state()
                .board_write(&task, Section::Problem, key, value, Quota::UNLIMITED, None)
                .await
                .unwrap();
            assert!(matches!(stored, Admission::Stored(())));
        }
    }

    #[tokio::test]
    async fn votes_are_final_and_need_a_quorum() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let mut carol = alpha.peer("carol", Tier::Operator).await;
        let id = alpha
            .ctx
            .propose("use a queue".into(), "details".into(), vec![], ids(&["beta", "carol"]))
            .await
            .unwrap();
        assert_eq!(id, "p1");
        beta.ctx
            .cast(id.clone(), WitChoice::Accept, "fine".into())
            .await
            .unwrap();
        let err = beta
            .ctx
            .cast(id.clone(), WitChoice::Reject, "changed my mind".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("already voted ACCEPT and votes are final")), "{err:?}");
        let tally = alpha.ctx.tally(id.clone()).await.unwrap();
        assert_eq!((tally.accepts, tally.quorum, tally.reached), (1, 2, false));
        carol
            .ctx
            .cast(id.clone(), WitChoice::Accept, "yes".into())
            .await
            .unwrap();
        assert!(alpha.ctx.tally(id).await.unwrap().reached);
        let err = alpha.ctx.tally("p9".into()).await.unwrap_err();
        assert!(matches!(err, WitError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn only_a_proposals_voters_vote_and_not_its_proposer() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let mut mallory = alpha.peer("mallory", Tier::Operator).await;
        let id = alpha
            .ctx
            .propose("t".into(), "b".into(), ids(&["beta", "carol"]), vec![])
            .await
            .unwrap();
        // Someone the proposal does not involve cannot sink it.
        let err = mallory
            .ctx
            .cast(id.clone(), WitChoice::Reject, "no".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("not one of the voters of `p1` (beta, carol)")), "{err:?}");
        assert_eq!(mallory.violations(), ["NOT_A_VOTER"]);
        // Nor can the proposer pass it on its own say.
        let err = alpha
            .ctx
            .cast(id.clone(), WitChoice::Accept, "mine".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("`proposer_votes`")), "{err:?}");
        let err = alpha
            .ctx
            .propose("t".into(), "b".into(), vec![], ids(&["agent-1", "beta"]))
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("among its own voters")), "{err:?}");
        beta.ctx
            .cast(id.clone(), WitChoice::Accept, "ok".into())
            .await
            .unwrap();
        let tally = alpha.ctx.tally(id).await.unwrap();
        assert_eq!((tally.accepts, tally.reached), (1, false), "one vote of a quorum of two");
    }

    #[tokio::test]
    async fn the_task_sets_the_quorum_the_roster_and_whether_a_proposer_votes() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        settings(
            &alpha,
            &[("quorum", "1"), ("proposer_votes", "true"), ("agents", "agent-1,beta")],
        )
        .await;
        // No voters named: the task's agents, the proposer among them here.
        let id = alpha
            .ctx
            .propose("t".into(), "b".into(), vec![], vec![])
            .await
            .unwrap();
        let proposals = alpha.ctx.proposals().await.unwrap();
        assert_eq!(proposals[0].voters, ["agent-1", "beta"]);
        assert_eq!(proposals[0].quorum, 1);
        alpha
            .ctx
            .cast(id.clone(), WitChoice::Accept, "counts here".into())
            .await
            .unwrap();
        assert!(alpha.ctx.tally(id).await.unwrap().reached);
        // Without a roster and without voters there is no one to vote.
        let mut lone = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let err = lone
            .ctx
            .propose("t".into(), "b".into(), vec![], vec![])
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("names no voters")), "{err:?}");
    }

    #[tokio::test]
    async fn the_final_decision_is_the_hosts_tally_and_set_once() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let mut carol = alpha.peer("carol", Tier::Operator).await;
        let id = alpha
            .ctx
            .propose("t".into(), "b".into(), vec![], ids(&["beta", "carol"]))
            .await
            .unwrap();
        beta.ctx
            .cast(id.clone(), WitChoice::Accept, "ok".into())
            .await
            .unwrap();
        let err = alpha.ctx.finalize(id.clone()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("has not reached consensus") && m.contains("missing: carol")), "{err:?}");
        // Only its proposer or a mediator may finalize it.
        carol
            .ctx
            .cast(id.clone(), WitChoice::Accept, "ok".into())
            .await
            .unwrap();
        let err = beta.ctx.finalize(id.clone()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("needs tier T2 (builder) or above")), "{err:?}");
        let tally = alpha.ctx.finalize(id.clone()).await.unwrap();
        assert!(tally.reached);
        let task = TaskId::new("task-1").unwrap();
        let stored = alpha
            .state()
            .board_read(&task, Section::Consensus, "final")
            .await
            .unwrap()
            .expect("consensus/final");
        let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(stored["proposal_id"], "p1");
        assert_eq!(stored["accepts"], 2);
        assert_eq!(stored["finalized_by"], "agent-1");
        let err = alpha.ctx.finalize(id).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("already has a final decision")), "{err:?}");
    }

    #[tokio::test]
    async fn only_a_mediator_validates_and_once() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut gamma = alpha.peer("gamma", MEDIATOR_TIER).await;
        let err = alpha.ctx.validate(true, "looks fine".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("tier T2 (builder) or above")), "{err:?}");
        gamma.ctx.validate(true, "checked".into()).await.unwrap();
        let err = gamma.ctx.validate(false, "again".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("already validated")), "{err:?}");
    }

    #[tokio::test]
    async fn only_the_proposer_or_a_mediator_settles_a_proposal() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let mut gamma = alpha.peer("gamma", MEDIATOR_TIER).await;
        let id = alpha
            .ctx
            .propose("t".into(), "b".into(), ids(&["beta"]), vec![])
            .await
            .unwrap();
        let err = beta.ctx.resolve(id.clone(), "mine now".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("needs tier T2 (builder) or above")), "{err:?}");
        assert_eq!(beta.violations(), ["TIER_DENIED"]);
        gamma.ctx.resolve(id.clone(), "merged".into()).await.unwrap();
        let err = alpha.ctx.resolve(id, "again".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("`gamma` already settled it")), "{err:?}");
    }

    #[tokio::test]
    async fn proposals_are_bounded() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let err = agent
            .ctx
            .propose(String::new(), "b".into(), vec![], vec![])
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("titles are 1 to 256 bytes")), "{err:?}");
        let many: Vec<String> = (0..=MAX_REQUIRED).map(|i| format!("a{i}")).collect();
        let err = agent
            .ctx
            .propose("t".into(), "b".into(), many, vec![])
            .await
            .unwrap_err();
        // The second invalid call of the same kind also spends the error budget.
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("may name at most 32")), "{err:?}");
    }

    #[test]
    fn voters_come_from_the_proposal_else_the_roster() {
        let id = |a: &str| AgentId::new(a).unwrap();
        let rules = Rules::from_entries(None, None, Some("alpha, beta,carol"));
        assert_eq!(rules.quorum, DEFAULT_QUORUM);
        assert!(!rules.proposer_votes);
        let roster = voters_of(&id("alpha"), &[], &[], &rules).unwrap();
        assert_eq!(roster, [id("beta"), id("carol")], "the proposer is left out");
        let named = voters_of(&id("alpha"), &[id("carol")], &[id("beta")], &rules).unwrap();
        assert_eq!(named, [id("beta"), id("carol")], "required agents are voters");
        let counted = Rules::from_entries(Some("3"), Some("true"), None);
        assert_eq!(
            voters_of(&id("alpha"), &[id("alpha")], &[], &counted).unwrap(),
            [id("alpha")]
        );
    }
}
