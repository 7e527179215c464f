//! What callers hand to the ledger and what it hands back.
//!
//! Hot-path records are built from an `Arc<Subject>` shared by every entry of
//! a run plus `'static` strings where possible, so creating one is a couple of
//! reference-count bumps and no string copies.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

pub use super::journal_chain::Chain;
use crate::tier::Tier;

/// Text that is usually a literal (`"tool.call"`) and occasionally built.
pub type Text = Cow<'static, str>;

/// The context every entry of one run repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The agent, or a pseudo-agent such as `orchestrator` (column `agent_id`).
    pub agent_id: Arc<str>,
    /// Free-form build identity (column `agent_version`); the host writes the first 12 hex
    /// digits of the component digest, or an empty string when there is none.
    pub agent_version: Arc<str>,
    /// The agent's tier when the entry was made.
    pub tier: Tier,
    /// The task of the run; `None` outside a task (registry events, health rows).
    pub task_id: Option<Arc<str>>,
    /// Digest of the Wasm component that ran.
    pub component_digest: Option<Arc<str>>,
    /// Revision of the policy that decided.
    pub policy_revision: Option<Arc<str>>,
    /// The run the row belongs to (column `run_id`); `None` outside a run.
    pub run_id: Option<Arc<str>>,
}

impl Subject {
    /// A subject with no task, component digest or policy revision.
    pub fn new(
        agent_id: impl Into<Arc<str>>,
        agent_version: impl Into<Arc<str>>,
        tier: Tier,
    ) -> Self {
        Subject {
            agent_id: agent_id.into(),
            agent_version: agent_version.into(),
            tier,
            task_id: None,
            component_digest: None,
            policy_revision: None,
            run_id: None,
        }
    }

    /// Set [`Subject::task_id`].
    pub fn with_task_id(mut self, task_id: impl Into<Arc<str>>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// Set [`Subject::component_digest`].
    pub fn with_component_digest(mut self, digest: impl Into<Arc<str>>) -> Self {
        self.component_digest = Some(digest.into());
        self
    }

    /// Set [`Subject::run_id`].
    pub fn with_run_id(mut self, run_id: impl Into<Arc<str>>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Set [`Subject::policy_revision`].
    pub fn with_policy_revision(mut self, revision: impl Into<Arc<str>>) -> Self {
        self.policy_revision = Some(revision.into());
        self
    }
}

/// Something an agent did or attempted, and what governance decided.
#[derive(Debug, Clone)]
pub struct ActionRecord {
    /// Who acted, in which run.
    pub subject: Arc<Subject>,
    /// The lifecycle phase (`EXECUTE`); `None` outside the lifecycle.
    pub phase: Option<&'static str>,
    /// What was attempted, e.g. `tool.call`.
    pub action: Text,
    /// The governance outcome, e.g. `allow` or `deny`.
    pub decision: Text,
    /// Stored as NULL when NaN, since SQLite cannot keep NaN.
    pub confidence: Option<f64>,
    /// Whether the action succeeded; see [`ActionRecord::failed`].
    pub success: bool,
    /// A short error class, e.g. `denied` or `BACKEND_UNHEALTHY`; `None` when it succeeded.
    pub error_type: Option<Text>,
    /// The error's text; `None` when it succeeded.
    pub error_message: Option<Text>,
    /// Free-form context (JSON by convention).
    pub details: Option<Text>,
    /// The call's position in its run's journal (column `call_seq`); `None` for a row that
    /// is not a capability call's.
    pub call_seq: Option<u64>,
    /// The run's journal head once the call's answer was recorded (column `result_digest`):
    /// it chains the answer, and every answer before it, into the ledger.
    pub result_digest: Option<JournalHead>,
}

impl ActionRecord {
    /// A successful action with no phase, confidence or details.
    pub fn new(subject: Arc<Subject>, action: impl Into<Text>, decision: impl Into<Text>) -> Self {
        ActionRecord {
            subject,
            phase: None,
            action: action.into(),
            decision: decision.into(),
            confidence: None,
            success: true,
            error_type: None,
            error_message: None,
            details: None,
            call_seq: None,
            result_digest: None,
        }
    }

    /// Set the lifecycle phase the action happened in.
    pub fn phase(mut self, phase: &'static str) -> Self {
        self.phase = Some(phase);
        self
    }

    /// Set the confidence the agent reported (a NaN is stored as NULL).
    pub fn confidence(mut self, confidence: f64) -> Self {
        self.confidence = Some(confidence);
        self
    }

    /// Marks the action as failed.
    pub fn failed(mut self, error_type: impl Into<Text>, message: impl Into<Text>) -> Self {
        self.success = false;
        self.error_type = Some(error_type.into());
        self.error_message = Some(message.into());
        self
    }

    /// Set the free-form context (JSON by convention).
    pub fn details(mut self, details: impl Into<Text>) -> Self {
        self.details = Some(details.into());
        self
    }
}

/// A breach of policy or procedure.
#[derive(Debug, Clone)]
pub struct ViolationRecord {
    /// Who committed it, in which run.
    pub subject: Arc<Subject>,
    /// The lifecycle phase (`EXECUTE`); `None` outside the lifecycle.
    pub phase: Option<&'static str>,
    /// Caller-defined, e.g. `TIER_DENIED`, `PATH_ESCAPE`, `DEADLINE_EXCEEDED`.
    pub violation_type: Text,
    /// True when a required procedure was skipped rather than a rule broken.
    pub procedure: bool,
    /// What was touched, e.g. a path or tool name.
    pub resource: Option<Text>,
    /// What happened, in words.
    pub details: Text,
}

impl ViolationRecord {
    /// A rule violation (not a procedure one) with no phase or resource.
    pub fn new(
        subject: Arc<Subject>,
        violation_type: impl Into<Text>,
        details: impl Into<Text>,
    ) -> Self {
        ViolationRecord {
            subject,
            phase: None,
            violation_type: violation_type.into(),
            procedure: false,
            resource: None,
            details: details.into(),
        }
    }

    /// Set the lifecycle phase the violation happened in.
    pub fn phase(mut self, phase: &'static str) -> Self {
        self.phase = Some(phase);
        self
    }

    /// Mark it as a procedure violation.
    pub fn procedure(mut self) -> Self {
        self.procedure = true;
        self
    }

    /// Set what was touched.
    pub fn resource(mut self, resource: impl Into<Text>) -> Self {
        self.resource = Some(resource.into());
        self
    }
}

/// A tier change as an event. Appending one records it only; use
/// [`Ledger::set_tier`](super::Ledger::set_tier) to change the registry too.
#[derive(Debug, Clone)]
pub struct PromotionRecord {
    /// The agent whose tier changed.
    pub agent_id: Arc<str>,
    /// `None` when the agent had no tier yet.
    pub from_tier: Option<Tier>,
    /// The new tier.
    pub to_tier: Tier,
    /// Why the tier changed.
    pub reason: Text,
    /// Who made the change: a user, `policy`, `auto-promotion`…
    pub actor: Text,
}

/// One answer a run's guest saw, as the `journal` table keeps it: what was asked (`op`, the
/// digest of its arguments) and what was answered (`payload`, JSON), in the run's order.
#[derive(Debug, Clone)]
pub struct JournalRecord {
    /// The run.
    pub run_id: Arc<str>,
    /// Position in the run's journal, from 1.
    pub seq: u64,
    /// The phase the guest was in.
    pub phase: &'static str,
    /// The call (`state.get`) or the input observed (`clock.wall`, `random.bytes`).
    pub op: Text,
    /// `sha256:<hex>` of the call's arguments, as the journal encodes them.
    pub args_digest: ArgsDigest,
    /// The answer, JSON.
    pub payload: Vec<u8>,
    /// The journal head after this record: `sha256(previous head ‖ seq ‖ op ‖ args digest ‖
    /// payload)`, chained into the ledger by the call's action row (`result_digest`).
    pub head: JournalHead,
}

/// The digest of a record's arguments: computed, or left for the ledger's writer to compute
/// from their JSON (a live read's: only a replay's comparison or a write's receipt needs it
/// on the guest's thread).
#[derive(Debug, Clone)]
pub enum ArgsDigest {
    /// `sha256:<hex>`.
    Known(String),
    /// The arguments' JSON, digested as they are written.
    Of(Vec<u8>),
}

impl ArgsDigest {
    /// `sha256:<hex>` of the arguments.
    pub fn resolve(&self) -> Cow<'_, str> {
        match self {
            ArgsDigest::Known(digest) => Cow::Borrowed(digest),
            ArgsDigest::Of(json) => Cow::Owned(super::journal_chain::bytes_digest(json)),
        }
    }
}

impl From<String> for ArgsDigest {
    fn from(digest: String) -> Self {
        ArgsDigest::Known(digest)
    }
}

/// A journal head as an entry names it: written out, or left for the ledger's writer to
/// compute as it writes the run's records in order.
///
/// A live run's records name their run's [`Chain`]: the writer extends it by each record it
/// writes and writes the head it reaches, and an action row naming the chain gets the head
/// after the records before it. Hashing the journal is then the writer thread's work, not the
/// guest's: a capability call's own thread does not hash its answer. An entry naming a chain
/// is written once (a clone written again would extend the chain twice).
#[derive(Debug, Clone)]
pub enum JournalHead {
    /// This head (`sha256:<hex>`).
    Known(Text),
    /// The chain's head once the writer reached this entry.
    Chained(Arc<Chain>),
}

impl From<String> for JournalHead {
    fn from(head: String) -> Self {
        JournalHead::Known(head.into())
    }
}

impl From<Arc<Chain>> for JournalHead {
    fn from(chain: Arc<Chain>) -> Self {
        JournalHead::Chained(chain)
    }
}

/// One journal record as the ledger holds it (see [`crate::journal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Position in the run, from 1.
    pub seq: u64,
    /// The phase the guest was in.
    pub phase: String,
    /// The call or observation.
    pub op: String,
    /// `sha256:<hex>` of the arguments.
    pub args_digest: String,
    /// The answer.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The journal head after this record.
    pub head: String,
}

/// The `runs` row of a run, written as it starts, at each phase, and when it ends.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run.
    pub run_id: Arc<str>,
    /// The agent it runs.
    pub agent_id: Arc<str>,
    /// Its task.
    pub task_id: Arc<str>,
    /// The agent's tier.
    pub tier: Tier,
    /// The component that runs.
    pub component_digest: Arc<str>,
    /// `running`, `completed`, `failed`, `revoked`.
    pub status: &'static str,
    /// The last phase entered.
    pub phase: &'static str,
    /// How many times the run was started (1, then one more per resume).
    pub attempts: u32,
    /// The machine that runs it (its host name).
    pub host: Arc<str>,
    /// Its process id, so another process on the same host can tell that it is gone.
    pub pid: u32,
    /// The token its agent's lock holds while it runs.
    pub lock_owner: Arc<str>,
    /// The run's outcome code once it ended (`COMPLETED`, a failure code, `REVOKED`).
    pub outcome: Option<Text>,
    /// Journal records written so far.
    pub calls: u64,
    /// The packet it runs, JSON: what a replay runs it with.
    pub packet: Arc<str>,
    /// The ledger's committed head when the run began: every row of its phases comes after
    /// it, so reading them back scans from here, not the agent's whole history. Kept from
    /// the first attempt.
    pub from_row: u64,
}

/// One fire-and-forget ledger entry.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A row of `agent_actions`.
    Action(ActionRecord),
    /// A row of `violations`.
    Violation(ViolationRecord),
    /// A row of `promotions`.
    Promotion(PromotionRecord),
    /// A `journal` record (not chained itself: the call's action row chains its head).
    Journal(JournalRecord),
    /// The `runs` row of a run (a working copy, written in the same batch as its rows).
    Run(RunRecord),
}

impl From<ActionRecord> for Entry {
    fn from(r: ActionRecord) -> Self {
        Entry::Action(r)
    }
}

impl From<ViolationRecord> for Entry {
    fn from(r: ViolationRecord) -> Self {
        Entry::Violation(r)
    }
}

impl From<PromotionRecord> for Entry {
    fn from(r: PromotionRecord) -> Self {
        Entry::Promotion(r)
    }
}

/// A row of the `agents` registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRecord {
    /// The registered agent.
    pub agent_id: String,
    /// Its current tier.
    pub tier: Tier,
    /// `sha256:<hex>` of the component it is bound to; `None` when it was registered without
    /// one and has not run yet.
    pub component_digest: Option<String>,
    /// When it was first registered, RFC 3339.
    pub registered_at: String,
    /// When the row was last written (registration, tier or component change), RFC 3339.
    pub updated_at: String,
}

/// The result of [`Ledger::register_agent`](super::Ledger::register_agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The registry row as it is now.
    pub agent: AgentRecord,
    /// The row before this call; `None` if the agent is new.
    pub previous: Option<AgentRecord>,
}

impl Registration {
    /// Whether the agent was not registered before.
    pub fn created(&self) -> bool {
        self.previous.is_none()
    }

    /// Whether an existing agent's tier changed.
    pub fn tier_changed(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| p.tier != self.agent.tier)
    }

    /// Whether an existing agent was bound to a different component digest.
    pub fn rebound(&self) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| p.component_digest != self.agent.component_digest)
    }
}

/// An agent's run counters as of one `agent_metrics` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// The row's position in the `agent_metrics` chain.
    pub seq: u64,
    /// The agent.
    pub agent_id: String,
    /// Its tier at that run.
    pub current_tier: Tier,
    /// Runs recorded, this one included.
    pub total_runs: u64,
    /// Runs that were compliant.
    pub compliant_runs: u64,
    /// Compliant runs since the last non-compliant one.
    pub consecutive_compliant: u64,
    /// When the row was written, RFC 3339.
    pub last_active_at: String,
}
