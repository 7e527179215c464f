//! The governance interface. Available at T4 only.
//!
//! An architect reads the policy and its own task's record, and proposes tier changes for
//! other agents. A proposal changes nothing by itself: a person approves or rejects it
//! (`warden agents approve-change <request>`).

use crate::bindings::warden::agent::governance as wit;
use crate::{Error, Tier};

pub use wit::LedgerEntry;

/// The promotion rules and each tier's name, approval mode and interfaces, as JSON.
pub fn read_policy() -> Result<String, Error> {
    Ok(wit::read_policy()?)
}

/// Rows of this run's task written after ledger row `after_seq`, oldest first, at most
/// `limit` (1 to 100).
pub fn read_task_ledger(after_seq: u64, limit: u32) -> Result<Vec<LedgerEntry>, Error> {
    Ok(wit::read_task_ledger(after_seq, limit)?)
}

/// Proposes that registered agent `agent` (not this one) move to tier `to`, for `reason`;
/// returns the request's id (`tc-…`), which a person decides.
pub fn propose_tier_change(agent: &str, to: Tier, reason: &str) -> Result<String, Error> {
    Ok(wit::propose_tier_change(agent, to, reason)?)
}
