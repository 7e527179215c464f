//! Governance: one home for the decision on every capability call, its ledger record, the
//! error budget, revocation and handoff.
//!
//! A call is decided by a pure function ([`decide`]: the tier table, the packet's
//! constraints, the interface and the resource, in the manner of Cedar's
//! `Authorizer::is_authorized`), and a refusal then flows one way through the side effects:
//!
//! ```text
//! Governor::gate ─ decide ─▶ refuse ─▶ record (violation, action) ─▶ budget::charge ─▶ revocation::revoke
//! ```
//!
//! Nothing here calls back up into the lifecycle, the sandbox or the host facade.

mod budget;
mod decide;
mod gate;
pub(crate) mod promotion;
mod record;
mod revocation;
mod tiering;

pub(crate) use budget::{budget_trigger, charge_error};
pub(crate) use decide::{CallRefusal, ViolationKind, scope_reaches};
pub(crate) use gate::{Governor, unavailable, wit_error_parts};
pub(crate) use record::{
    action, approve, host_subject, record_host_action, record_host_refusal, run_subject,
    signature_row, violation,
};
pub(crate) use revocation::{
    reinstate_agent, reseed_revocation, revoke, revoke_agent, spawn_revocation_watcher, standing,
};
pub(crate) use tiering::{change_tier, promotion_facts};
