//! `warden:agent/consensus`: proposals and votes among the agents of the run's task.
//!
//! Votes are final (the first one stands) and each is written to the ledger with its choice
//! and reasoning. A proposal is settled outside the vote by `resolve`, which its proposer may
//! call, and so may an agent at [`MEDIATOR_TIER`] or above.

use crate::clock::now_ms;
use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::consensus::{
    Host, Proposal as WitProposal, ProposalTally, Vote as WitVote, VoteChoice as WitChoice,
};
use crate::id::AgentId;
use crate::interface::Interface;
use crate::state::{
    CastOutcome, NewProposal, Proposal, Resolution, ResolveOutcome, Vote, VoteChoice,
};
use crate::tier::Tier;
use crate::policy::{Linked, SectionSpec};

/// Its section (`[tiers.T1.consensus]`) has no settings: present, the interface is linked.
pub(super) const SECTION: SectionSpec = SectionSpec::of::<Linked>(Interface::Consensus);

/// Most agents a proposal may require.
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

impl AgentCtx {
    async fn invalid(&mut self, op: &'static str, resource: String, message: String) -> WitError {
        let refusal = CallRefusal {
            kind: ViolationKind::Invalid,
            resource,
            message,
        };
        self.gov.refuse(op, refusal).await
    }

    fn unknown_proposal(&self, op: &str, id: &str) -> WitError {
        WitError::NotFound(format!(
            "`{op}`: task `{}` has no proposal `{id}`; proposal ids are `p1`, `p2`, … as `propose` returned them",
            self.gov.task_id()
        ))
    }
}

impl Host for AgentCtx {
    async fn propose(
        &mut self,
        title: String,
        body: String,
        required: Vec<String>,
    ) -> Result<String, WitError> {
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
        } else if required.len() > MAX_REQUIRED {
            Some(format!(
                "`{OP}` refused: {} required agents; a proposal may require at most {MAX_REQUIRED}",
                required.len()
            ))
        } else {
            required
                .iter()
                .find_map(|agent| AgentId::new(agent).err())
                .map(|e| format!("`{OP}` refused: required {e}"))
        };
        if let Some(message) = problem {
            return Err(self.invalid(OP, "consensus:propose".into(), message).await);
        }
        let mut required: Vec<AgentId> =
            required.iter().filter_map(|a| AgentId::new(a).ok()).collect();
        required.sort();
        required.dedup();
        let gov = &self.gov;
        let proposal = NewProposal {
            proposer: gov.agent_id(),
            title: &title,
            body: &body,
            required: &required,
            created_at_ms: now_ms(),
        };
        let result = gov
            .services
            .state
            .propose(gov.task_id(), &proposal)
            .await
            .map_err(|e| unavailable("consensus", e));
        match &result {
            Ok(id) => {
                let details =
                    serde_json::json!({ "proposal": id, "title": title, "required": required });
                gov.record_details(OP, details.to_string()).await;
            }
            Err(_) => gov.record_result(OP, &result).await,
        }
        result
    }

    async fn cast(
        &mut self,
        proposal_id: String,
        choice: WitChoice,
        reasoning: String,
    ) -> Result<(), WitError> {
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
            .cast_vote(gov.task_id(), &proposal_id, &vote)
            .await
            .map_err(|e| unavailable("consensus", e));
        let result = match outcome {
            Ok(CastOutcome::Recorded) => Ok(()),
            Ok(CastOutcome::AlreadyVoted(first)) => Err(WitError::Denied(format!(
                "`{OP}` on `{proposal_id}` refused: agent `{}` already voted {} and votes are final",
                gov.agent_id(),
                first.choice.as_str()
            ))),
            Ok(CastOutcome::UnknownProposal) => Err(self.unknown_proposal(OP, &proposal_id)),
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
    }

    async fn tally(&mut self, proposal_id: String) -> Result<ProposalTally, WitError> {
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
            Ok(None) => Err(self.unknown_proposal(OP, &proposal_id)),
            Err(e) => Err(e),
        };
        self.gov.record_result(OP, &result).await;
        result
    }

    async fn proposals(&mut self) -> Result<Vec<WitProposal>, WitError> {
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
                        resolution: p.record.resolution.map(|r| r.note),
                    })
                    .collect()
            });
        gov.record_result(OP, &result).await;
        result
    }

    async fn resolve(&mut self, proposal_id: String, resolution: String) -> Result<(), WitError> {
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
        let found = self
            .gov
            .services
            .state
            .proposal(self.gov.task_id(), &proposal_id)
            .await
            .map_err(|e| unavailable("consensus", e));
        let proposal = match found {
            Ok(Some(p)) => p,
            Ok(None) => {
                let error = self.unknown_proposal(OP, &proposal_id);
                let result: Result<(), _> = Err(error);
                self.gov.record_result(OP, &result).await;
                return result;
            }
            Err(e) => {
                let result: Result<(), _> = Err(e);
                self.gov.record_result(OP, &result).await;
                return result;
            }
        };
        if proposal.record.proposer != *self.gov.agent_id() && self.gov.run.tier < MEDIATOR_TIER {
            let refusal = CallRefusal {
                kind: ViolationKind::TierDenied,
                resource: format!("consensus:{proposal_id}"),
                message: format!(
                    "`{OP}` of `{proposal_id}` refused: it was proposed by `{}`, and settling another agent's proposal needs tier {MEDIATOR_TIER} or above (agent is {})",
                    proposal.record.proposer, self.gov.run.tier
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let gov = &self.gov;
        let settled = Resolution {
            by: gov.agent_id().clone(),
            note: resolution,
            at_ms: now_ms(),
        };
        let outcome = gov
            .services
            .state
            .resolve_proposal(gov.task_id(), &proposal_id, &settled)
            .await
            .map_err(|e| unavailable("consensus", e));
        let result = match outcome {
            Ok(ResolveOutcome::Resolved) => Ok(()),
            Ok(ResolveOutcome::AlreadyResolved(first)) => Err(WitError::Denied(format!(
                "`{OP}` of `{proposal_id}` refused: `{}` already settled it ({})",
                first.by, first.note
            ))),
            Ok(ResolveOutcome::UnknownProposal) => Err(self.unknown_proposal(OP, &proposal_id)),
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
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;

    #[tokio::test]
    async fn votes_are_final_and_tallied() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let id = alpha
            .ctx
            .propose("use a queue".into(), "details".into(), vec!["beta".into()])
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
        assert_eq!((tally.accepts, tally.rejects, tally.reached), (1, 0, true));
        let err = alpha.ctx.tally("p9".into()).await.unwrap_err();
        assert!(matches!(err, WitError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn only_the_proposer_or_a_mediator_settles_a_proposal() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let mut gamma = alpha.peer("gamma", MEDIATOR_TIER).await;
        let id = alpha.ctx.propose("t".into(), "b".into(), vec![]).await.unwrap();
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
            .propose(String::new(), "b".into(), vec![])
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("titles are 1 to 256 bytes")), "{err:?}");
        let many = (0..=MAX_REQUIRED).map(|i| format!("a{i}")).collect();
        let err = agent.ctx.propose("t".into(), "b".into(), many).await.unwrap_err();
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("may require at most 32")), "{err:?}");
    }
}
