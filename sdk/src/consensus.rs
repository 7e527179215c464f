//! Proposals and votes among the agents of a task. Available from T1.

use crate::Error;
use crate::bindings::warden::agent::consensus as wit;

pub use wit::{ProposalTally, Vote, VoteChoice};

/// Opens a proposal that needs the votes of the `required` agents; returns its id.
pub fn propose(title: &str, body: &str, required: &[&str]) -> Result<String, Error> {
    let required: Vec<String> = required.iter().map(|agent| (*agent).to_owned()).collect();
    Ok(wit::propose(title, body, &required)?)
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
