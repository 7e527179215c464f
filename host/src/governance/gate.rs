//! The side-effecting half of the call gate: [`Governor`] asks [`decide`] and, on a refusal,
//! records it, charges the error budget and revokes when the budget is spent.

use std::sync::Arc;

use parking_lot::Mutex;

use super::budget::charge_error;
use super::decide::{CallRefusal, Request, ViolationKind, decide};
use crate::bindings::WitError;
use crate::context::{CallDurability, RunShared, Services};
use crate::id::{AgentId, TaskId};
use crate::interface::Interface;
use crate::ledger::{ActionRecord, Entry, ViolationRecord};
use crate::packet::Constraints;
use crate::policy::TierPolicy;
use crate::secrets::SecretSession;
use crate::state::Once;

/// The per-run governance state every host function consults.
pub(crate) struct Governor {
    pub services: Arc<Services>,
    pub run: Arc<RunShared>,
    pub secrets: Option<Arc<dyn SecretSession>>,
    /// The rows of the capability call in progress, held until its answer is journaled so
    /// they name the journal head and are written in one transaction with the record.
    call_rows: Mutex<Option<Vec<Entry>>>,
    /// The call in progress, when it is a write a resume could make again: see [`Once`].
    once: Option<Once>,
    /// The call's number for the fault points (`fault-points` tests; 0 otherwise).
    pub fault_call: u64,
}

impl Governor {
    pub fn new(
        services: Arc<Services>,
        run: Arc<RunShared>,
        secrets: Option<Arc<dyn SecretSession>>,
    ) -> Governor {
        Governor {
            services,
            run,
            secrets,
            call_rows: Mutex::new(None),
            once: None,
            fault_call: 0,
        }
    }

    /// The [`Once`] of the write in progress, for the state store: `None` outside a call, for
    /// a read, and for a run nothing can resume (its ledger dies with the process).
    pub fn once(&self) -> Option<&Once> {
        self.once.as_ref()
    }

    /// Name the call in progress for its write (see [`Governor::once`]).
    pub fn set_once(&mut self, once: Option<Once>) {
        self.once = once;
    }

    /// Hold this run's rows until [`Governor::close_call`].
    pub fn open_call(&self, op: &'static str) {
        *self.call_rows.lock() = Some(Vec::new());
        // A revocation inside the call writes the handoff before the call's rows: it names the
        // call from here.
        self.run.set_call(Some(op));
    }

    /// The rows held since [`Governor::open_call`]; rows go to the ledger again.
    pub fn close_call(&self) -> Vec<Entry> {
        self.run.set_call(None);
        self.call_rows.lock().take().unwrap_or_default()
    }

    pub fn policy(&self) -> &TierPolicy {
        self.services.tiers.policy(self.run.tier)
    }

    pub fn agent_id(&self) -> &AgentId {
        &self.run.agent_id
    }

    pub fn task_id(&self) -> &TaskId {
        &self.run.task_id
    }

    /// The first line of every host function: a revoked agent is answered at once (nothing
    /// more is recorded or charged); otherwise the call is decided and a refusal goes through
    /// [`Governor::refuse`].
    pub async fn gate(
        &mut self,
        interface: Interface,
        op: &'static str,
        resource: impl FnOnce() -> String,
    ) -> Result<(), WitError> {
        self.decide_call(interface, op, true, resource).await
    }

    /// The gate of a call that touches no resource in particular (a listing): revocation and
    /// the tier's grant of `interface`, not the packet's `scope` or `forbidden` patterns.
    /// The capability filters what it answers by [`scope_reaches`](super::decide::scope_reaches).
    pub async fn gate_tier(
        &mut self,
        interface: Interface,
        op: &'static str,
    ) -> Result<(), WitError> {
        self.decide_call(interface, op, false, String::new).await
    }

    /// Revocation first (answered at once, nothing more recorded), then the decision, under
    /// the packet's constraints when `scoped`; a refusal goes through [`Governor::refuse`].
    async fn decide_call(
        &mut self,
        interface: Interface,
        op: &'static str,
        scoped: bool,
        resource: impl FnOnce() -> String,
    ) -> Result<(), WitError> {
        if self.run.is_revoked() {
            return Err(WitError::Revoked(self.run.revoked_message()));
        }
        self.run.touch();
        let request = Request {
            tier: self.run.tier,
            interface,
            op,
        };
        let unconstrained;
        let constraints = if scoped {
            &self.run.packet.constraints
        } else {
            unconstrained = Constraints::default();
            &unconstrained
        };
        let decision = decide(&self.services.tiers, constraints, &request, resource);
        match decision {
            Ok(()) => Ok(()),
            Err(refusal) => Err(self.refuse(op, refusal).await),
        }
    }

    /// A capability's own check: `Ok` passes, a refusal goes through [`Governor::refuse`].
    pub async fn check(
        &mut self,
        op: &'static str,
        decision: Result<(), CallRefusal>,
    ) -> Result<(), WitError> {
        match decision {
            Ok(()) => Ok(()),
            Err(refusal) => Err(self.refuse(op, refusal).await),
        }
    }

    /// Record a refused call, charge the error budget, revoke if it is spent, and return the
    /// error the guest sees.
    pub async fn refuse(&mut self, op: &'static str, refusal: CallRefusal) -> WitError {
        let run = self.run.clone();
        let services = self.services.clone();
        let phase = run.phase().as_str();
        if refusal.kind.is_violation() {
            let mut violation = ViolationRecord::new(
                run.subject.clone(),
                refusal.kind.code(),
                refusal.message.clone(),
            )
            .phase(phase)
            .resource(refusal.resource.clone());
            if refusal.kind.is_procedure() {
                violation = violation.procedure();
            }
            // Violations are rare and matter: durable before the guest sees the answer.
            if let Err(error) = services.ledger_durable(Entry::Violation(violation)).await {
                tracing::error!(%error, "cannot record violation");
            }
        }
        self.record(op, "denied", Some((refusal.kind.code(), &refusal.message)))
            .await;

        let signature = format!("{}:{op}", refusal.kind.code());
        match charge_error(
            &services,
            &run,
            &signature,
            refusal.kind.is_procedure(),
            &refusal.message,
        )
        .await
        {
            Some(revoked) => WitError::Revoked(format!("{}; {revoked}", refusal.message)),
            None if refusal.kind == ViolationKind::Invalid => WitError::Invalid(refusal.message),
            None if matches!(
                refusal.kind,
                ViolationKind::TokenBudget | ViolationKind::QuotaExceeded
            ) =>
            {
                WitError::BudgetExhausted(refusal.message)
            }
            None => WitError::Denied(refusal.message),
        }
    }

    /// Record a call in the ledger. With [`CallDurability::Batched`] (the default) this is
    /// an enqueue, never a wait; with [`CallDurability::EveryCall`] the call returns to the
    /// guest only once its row is committed.
    pub async fn record(
        &self,
        op: &'static str,
        decision: &'static str,
        error: Option<(&'static str, &str)>,
    ) {
        let mut record = ActionRecord::new(self.run.subject.clone(), op, decision)
            .phase(self.run.phase().as_str());
        if let Some((kind, message)) = error {
            record = record.failed(kind, message.to_string());
        }
        self.append(Entry::Action(record)).await;
    }

    /// Record an allowed call with what it did (a vote and its reasoning, a message id), as
    /// JSON in the row's `details`.
    pub async fn record_details(&self, op: &'static str, details: String) {
        let record = ActionRecord::new(self.run.subject.clone(), op, "allowed")
            .phase(self.run.phase().as_str())
            .details(details);
        self.append(Entry::Action(record)).await;
    }

    /// Append a row of this run under the host's call durability. Batched, it waits only
    /// when the ledger's queue is full (a flood of calls): the guest is held back rather than
    /// the host's memory growing.
    pub async fn append(&self, entry: Entry) {
        let entry = {
            let mut held = self.call_rows.lock();
            match held.as_mut() {
                Some(rows) => {
                    rows.push(entry);
                    return;
                }
                None => entry,
            }
        };
        self.write(entry).await;
    }

    /// Append a row under the host's call durability.
    async fn write(&self, entry: Entry) {
        match self.services.call_durability {
            CallDurability::Batched => self.services.ledger.append_async(entry).await,
            CallDurability::EveryCall => {
                if let Err(error) = self.services.ledger_durable(entry).await {
                    tracing::error!(%error, "cannot record call");
                }
            }
        }
    }

    /// Record the outcome of an allowed call.
    pub async fn record_result<T>(&self, op: &'static str, result: &Result<T, WitError>) {
        match result {
            Ok(_) => self.record(op, "allowed", None).await,
            Err(error) => {
                let (kind, message) = wit_error_parts(error);
                self.record(op, "allowed", Some((kind, message))).await;
            }
        }
    }
}

/// The variant name and message of a WIT error.
pub(crate) fn wit_error_parts(error: &WitError) -> (&'static str, &str) {
    match error {
        WitError::Denied(m) => ("denied", m),
        WitError::Revoked(m) => ("revoked", m),
        WitError::BudgetExhausted(m) => ("budget-exhausted", m),
        WitError::NotFound(m) => ("not-found", m),
        WitError::Invalid(m) => ("invalid", m),
        WitError::Unavailable(m) => ("unavailable", m),
    }
}

/// Map a backend failure to what the guest sees: the backend is named, the detail is kept
/// for the ledger.
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> WitError {
    WitError::Unavailable(format!("{what} is unavailable: {error}"))
}
