//! The error budget: the reference's automatic revocation triggers over an agent's error
//! counts (pure), and the charge of one error that revokes when the budget is spent.

use std::sync::Arc;

use super::revocation::revoke;
use crate::context::{RunShared, Services};
use crate::packet::{Packet, RevocationKind, RevocationReason};
use crate::state::ErrorCounts;

/// The reference's automatic revocation triggers, first match wins.
pub(crate) fn budget_trigger(
    counts: &ErrorCounts,
    packet: &Packet,
) -> Option<(RevocationKind, String)> {
    let budget = &packet.error_budget;
    if counts.procedure >= budget.max_procedure_violations {
        return Some((
            RevocationKind::ProcedureViolation,
            format!(
                "{} procedure violation(s) reached `max_procedure_violations` of {}",
                counts.procedure, budget.max_procedure_violations
            ),
        ));
    }
    if counts.max_same >= budget.max_same_error_repeats {
        return Some((
            RevocationKind::ErrorBudgetExceeded,
            format!(
                "error `{}` repeated {} times; `max_same_error_repeats` is {}",
                counts.worst_signature.as_deref().unwrap_or("?"),
                counts.max_same,
                budget.max_same_error_repeats
            ),
        ));
    }
    if counts.total >= budget.max_total_errors {
        return Some((
            RevocationKind::ErrorBudgetExceeded,
            format!(
                "{} errors; `max_total_errors` is {}",
                counts.total, budget.max_total_errors
            ),
        ));
    }
    None
}

/// Count an error against the run's budget; revoke if it is spent. Returns the revocation
/// message when the agent was revoked.
pub(crate) async fn charge_error(
    services: &Services,
    run: &Arc<RunShared>,
    signature: &str,
    procedure: bool,
    cause: &str,
) -> Option<String> {
    let counts = match services
        .state
        .record_error(&run.agent_id, signature, procedure)
        .await
    {
        Ok(counts) => counts,
        Err(error) => {
            tracing::error!(%error, "cannot record error");
            return None;
        }
    };
    let (kind, budget) = budget_trigger(&counts, &run.packet)?;
    let details = format!("{budget}; last: {cause}");
    revoke(services, run, RevocationReason { kind, details }, "host").await;
    Some(run.revoked_message())
}
