//! Proposals and votes among the agents of a task. Available from T1.

use crate::Error;
use crate::bindings::warden::agent::consensus as wit;

pub use wit::{ProposalTally, Vote, VoteChoice};

/// Opens a proposal; returns its id. `voters` may vote on it and `required` must (they are
/// voters too); with both empty, the voters are the task's agents. The proposer is not a
/// voter unless the task counts a proposer's own vote. It reaches consensus with at least
/// the task's quorum of votes (2 unless the task sets another).
pub fn propose(
    title: &str,
    body: &str,
    voters: &[&str],
    required: &[&str],
) -> Result<String, Error> {
    let owned = |ids: &[&str]| -> Vec<String> { ids.iter().map(|id| (*id).to_owned()).collect() };
    Ok(wit::propose(title, body, &owned(voters), &owned(required))?)
}

/// Casts this agent's vote on the proposal `proposal_id`. Votes are final: a second vote
/// is refused and the first one stands.
pub fn cast(proposal_id: &str, choice: VoteChoice, reasoning: &str) -> Result<(), Error> {
    Ok(wit::cast(proposal_id, choice, reasoning)?)
}

/// The current tally of the proposal `proposal_id`.
pub fn tally(proposal_id: &str) -> Result<ProposalTally, Error> {
    Ok(wit::tally(proposal_id)?)
}

pub use wit::Proposal;

/// Every proposal of the task, oldest first, with whether each is in conflict (rejected by
/// someone, not settled, no consensus).
pub fn proposals() -> Result<Vec<Proposal>, Error> {
    Ok(wit::proposals()?)
}

/// Settles the proposal `proposal_id` outside the vote (superseded by a merged proposal,
/// withdrawn). Its proposer may; so may an agent at T2 or above.
pub fn resolve(proposal_id: &str, resolution: &str) -> Result<(), Error> {
    Ok(wit::resolve(proposal_id, resolution)?)
}

/// Makes the proposal `proposal_id`, which reached consensus, the task's final decision: the
/// host writes `consensus/final` from its own tally, once per task. Its proposer may; so may
/// an agent at T2 or above.
pub fn finalize(proposal_id: &str) -> Result<ProposalTally, Error> {
    Ok(wit::finalize(proposal_id)?)
}

/// Records the mediator's verdict on the task's result in `consensus/validation`, once
/// (T2 and above).
pub fn validate(valid: bool, note: &str) -> Result<(), Error> {
    Ok(wit::validate(valid, note)?)
}
