//! Capabilities: one module per WIT interface, in the manner of wasmtime-wasi's per-interface
//! modules. Each host function starts with the gate ([`Governor::gate`]), does its work
//! through a backend trait, and records the call in the ledger.
//!
//! The gate order is: revocation, tier grant, packet `forbidden` (a procedure violation),
//! packet `scope`. Capability-specific checks (a secret path above the tier, a blackboard
//! write at T0, …) follow through [`Governor::refuse`]. A refusal is returned to the guest as
//! a WIT error, never as a trap.

mod artifacts;
mod blackboard;
mod consensus;
mod ledger;
mod llm;
mod messaging;
mod secrets;
mod state;
mod tools;

pub(crate) use messaging::now_ms;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{WitError, warden};
use crate::host::{CallDurability, RunShared, Services};
use crate::ledger::{ActionRecord, Entry, ViolationRecord};
use crate::lifecycle::{self, Meter};
use crate::pattern::first_match;
use crate::policy::{Interface, TierPolicy};
use crate::runtime::limits::GuestLimits;
use crate::secrets::SecretSession;

/// The data of one agent's store.
pub(crate) struct AgentCtx {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: GuestLimits,
    pub gov: Governor,
    pub meter: Meter,
}

impl WasiView for AgentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The per-run governance state every host function consults.
pub(crate) struct Governor {
    pub services: Arc<Services>,
    pub run: Arc<RunShared>,
    pub secrets: Option<Arc<dyn SecretSession>>,
    /// Whether the packet has any scope or forbidden pattern; when not, no resource string
    /// is ever built on the hot path.
    has_patterns: bool,
}

/// Kinds of violation, as written to the ledger's `violations.violation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViolationKind {
    /// Above the agent's tier.
    TierDenied,
    /// Outside the packet's `scope`.
    OutOfScope,
    /// Matches the packet's `forbidden`: a procedure violation.
    Forbidden,
    /// An attempt to leave the sandbox (path traversal): a procedure violation.
    PathEscape,
    /// Malformed input from the guest; counts as an error, not a violation row.
    Invalid,
    /// The task's LLM token budget is spent.
    TokenBudget,
}

impl ViolationKind {
    pub fn code(self) -> &'static str {
        match self {
            ViolationKind::TierDenied => "TIER_DENIED",
            ViolationKind::OutOfScope => "OUT_OF_SCOPE",
            ViolationKind::Forbidden => "FORBIDDEN_ACTION",
            ViolationKind::PathEscape => "PATH_ESCAPE",
            ViolationKind::Invalid => "INVALID_ARGUMENT",
            ViolationKind::TokenBudget => "TOKEN_BUDGET_EXHAUSTED",
        }
    }

    pub fn is_procedure(self) -> bool {
        matches!(self, ViolationKind::Forbidden | ViolationKind::PathEscape)
    }

    fn is_violation(self) -> bool {
        !matches!(self, ViolationKind::Invalid)
    }
}

/// A refused call, before it is recorded.
pub(crate) struct Refusal {
    pub kind: ViolationKind,
    pub resource: String,
    pub message: String,
}

impl Governor {
    pub fn new(
        services: Arc<Services>,
        run: Arc<RunShared>,
        secrets: Option<Arc<dyn SecretSession>>,
    ) -> Governor {
        let constraints = &run.packet.constraints;
        let has_patterns = !constraints.scope.is_empty() || !constraints.forbidden.is_empty();
        Governor {
            services,
            run,
            secrets,
            has_patterns,
        }
    }

    pub fn policy(&self) -> &TierPolicy {
        self.services.tiers.policy(self.run.tier)
    }

    pub fn agent_id(&self) -> &str {
        &self.run.agent_id
    }

    pub fn task_id(&self) -> &str {
        &self.run.task_id
    }

    /// The first line of every host function.
    pub async fn gate(
        &mut self,
        interface: Interface,
        op: &'static str,
        resource: impl FnOnce() -> String,
    ) -> Result<(), WitError> {
        if self.run.is_revoked() {
            return Err(WitError::Revoked(self.run.revoked_message()));
        }
        self.run.touch();
        if !self.policy().interfaces.contains(interface) {
            let lowest = self.services.tiers.lowest_tier_granting(interface);
            let refusal = Refusal {
                kind: ViolationKind::TierDenied,
                resource: interface.to_string(),
                message: format!(
                    "`{op}` refused: `{interface}` is not granted to tier {}; lowest tier granting it: {}",
                    self.run.tier,
                    lowest.map_or("none".to_string(), |t| t.to_string())
                ),
            };
            return Err(self.refuse(op, refusal).await);
        }
        if !self.has_patterns {
            return Ok(());
        }
        let resource = resource();
        let constraints = &self.run.packet.constraints;
        if let Some(pattern) = first_match(&constraints.forbidden, &resource) {
            let message = format!(
                "`{op}` on `{resource}` refused: the packet forbids `{pattern}`; this is a procedure violation and no tier allows it"
            );
            let refusal = Refusal {
                kind: ViolationKind::Forbidden,
                resource,
                message,
            };
            return Err(self.refuse(op, refusal).await);
        }
        if !constraints.scope.is_empty() && first_match(&constraints.scope, &resource).is_none() {
            let scope: Vec<&str> = constraints.scope.iter().map(|p| p.as_str()).collect();
            let message = format!(
                "`{op}` on `{resource}` refused: outside the packet's scope {scope:?}; a packet whose scope includes `{resource}` would allow it"
            );
            let refusal = Refusal {
                kind: ViolationKind::OutOfScope,
                resource,
                message,
            };
            return Err(self.refuse(op, refusal).await);
        }
        Ok(())
    }

    /// Record a refused call, charge the error budget, revoke if it is spent, and return the
    /// error the guest sees.
    pub async fn refuse(&mut self, op: &'static str, refusal: Refusal) -> WitError {
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
            let violation = Entry::Violation(violation);
            // Violations are rare and matter: durable before the guest sees the answer.
            if let Err(error) = services.ledger_durable(violation).await {
                tracing::error!(%error, "cannot record violation");
            }
        }
        self.record(op, "denied", Some((refusal.kind.code(), &refusal.message)))
            .await;
        let signature = format!("{}:{op}", refusal.kind.code());
        match lifecycle::charge_error(
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
            None if refusal.kind == ViolationKind::TokenBudget => {
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

    /// Append a row of this run under the host's call durability.
    pub async fn append(&self, entry: Entry) {
        match self.services.call_durability {
            CallDurability::Batched => self.services.ledger.append(entry),
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

/// A linker with WASI and exactly the interfaces the tier grants: what is not linked cannot
/// be called, whatever the component was built against.
pub(crate) fn tier_linker(
    engine: &wasmtime::Engine,
    policy: &TierPolicy,
) -> wasmtime::Result<Linker<AgentCtx>> {
    let mut linker = Linker::<AgentCtx>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    type Ctx = HasSelf<AgentCtx>;
    for interface in policy.interfaces.iter() {
        match interface {
            Interface::Types => {
                warden::agent::types::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Ledger => {
                warden::agent::ledger::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::State => {
                warden::agent::state::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Artifacts => {
                warden::agent::artifacts::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Llm => warden::agent::llm::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?,
            Interface::Tools => {
                warden::agent::tools::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Secrets => {
                warden::agent::secrets::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Blackboard => {
                warden::agent::blackboard::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Messaging => {
                warden::agent::messaging::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
            Interface::Consensus => {
                warden::agent::consensus::add_to_linker::<_, Ctx>(&mut linker, |ctx| ctx)?
            }
        }
    }
    Ok(linker)
}

impl warden::agent::types::Host for AgentCtx {}

/// Map a backend failure to what the guest sees: the backend is named, the detail is kept
/// for the ledger.
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> WitError {
    WitError::Unavailable(format!("{what} is unavailable: {error}"))
}
