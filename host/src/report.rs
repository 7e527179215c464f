//! What a run produced: [`RunReport`] and its parts, for people (`warden run`) and programs
//! (`--json`).

use serde::Serialize;

use crate::artifacts::ArtifactRef;
use crate::packet::RevocationKind;
use crate::phase::Phase;
use crate::state::ErrorCounts;
use crate::tier::Tier;

/// Why a run stopped without revocation: the stable code in the ledger's `run.end` row
/// (`error_type`), in [`RunOutcome::Failed`] and in `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum FailureCode {
    /// The state store failed or could not be reached.
    StateUnavailable,
    /// Another run took the agent's lock.
    LockLost,
    /// The secrets backend refused or failed the login at BOOTSTRAP.
    SecretsLoginFailed,
    /// The component cannot be linked or does not export the agent interface.
    InvalidComponent,
    /// The sandbox (workspace, store) could not be prepared.
    SandboxFailed,
    /// Instantiation failed.
    InstantiationFailed,
    /// A phase function returned an error.
    AgentError,
    /// The agent asked for more memory or table elements than its limit.
    ResourceLimit,
    /// The agent ran past a phase's cpu or wall-clock deadline.
    DeadlineExceeded,
    /// The guest trapped.
    GuestTrap,
    /// The packet asks for something the tier cannot do.
    PreflightFailed,
    /// No approval arrived in time.
    ApprovalTimeout,
    /// Verification failed (the agent's, or deliverables missing at VERIFY).
    VerificationFailed,
    /// A phase returned more text than the tier keeps (`[tiers.Tn] max_text_bytes`).
    QuotaExceeded,
    /// A replayed guest made a call (or returned a phase result) other than the journal
    /// holds at that point.
    ReplayDiverged,
    /// A replay reached the end of the recorded run's journal: the recorded run stopped here.
    ReplayEnded,
    /// The run's journal is full ([`crate::journal::MAX_RECORDS`]).
    JournalFull,
    /// A host invariant did not hold.
    Internal,
}

impl FailureCode {
    /// Every code.
    pub const ALL: [FailureCode; 18] = [
        FailureCode::StateUnavailable,
        FailureCode::LockLost,
        FailureCode::SecretsLoginFailed,
        FailureCode::InvalidComponent,
        FailureCode::SandboxFailed,
        FailureCode::InstantiationFailed,
        FailureCode::AgentError,
        FailureCode::ResourceLimit,
        FailureCode::DeadlineExceeded,
        FailureCode::GuestTrap,
        FailureCode::PreflightFailed,
        FailureCode::ApprovalTimeout,
        FailureCode::VerificationFailed,
        FailureCode::QuotaExceeded,
        FailureCode::ReplayDiverged,
        FailureCode::ReplayEnded,
        FailureCode::JournalFull,
        FailureCode::Internal,
    ];

    /// The code the ledger spells `code`.
    pub fn from_code(code: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The code as the ledger holds it (`DEADLINE_EXCEEDED`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::StateUnavailable => "STATE_UNAVAILABLE",
            FailureCode::LockLost => "LOCK_LOST",
            FailureCode::SecretsLoginFailed => "SECRETS_LOGIN_FAILED",
            FailureCode::InvalidComponent => "INVALID_COMPONENT",
            FailureCode::SandboxFailed => "SANDBOX_FAILED",
            FailureCode::InstantiationFailed => "INSTANTIATION_FAILED",
            FailureCode::AgentError => "AGENT_ERROR",
            FailureCode::ResourceLimit => "RESOURCE_LIMIT",
            FailureCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            FailureCode::GuestTrap => "GUEST_TRAP",
            FailureCode::PreflightFailed => "PREFLIGHT_FAILED",
            FailureCode::ApprovalTimeout => "APPROVAL_TIMEOUT",
            FailureCode::VerificationFailed => "VERIFICATION_FAILED",
            FailureCode::QuotaExceeded => "QUOTA_EXCEEDED",
            FailureCode::ReplayDiverged => "REPLAY_DIVERGED",
            FailureCode::ReplayEnded => "REPLAY_ENDED",
            FailureCode::JournalFull => "JOURNAL_FULL",
            FailureCode::Internal => "INTERNAL",
        }
    }
}

impl From<FailureCode> for &'static str {
    fn from(code: FailureCode) -> &'static str {
        code.as_str()
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for FailureCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every phase ran and verification passed.
    Completed,
    /// The tier stops after PLAN (T0); the plan artifact is the result.
    PlanOnly,
    /// The agent was revoked during the run.
    Revoked {
        /// The trigger; `REVOKED` when the run cannot tell which.
        reason: RevocationKind,
        /// What happened, in words.
        details: String,
    },
    /// The run stopped without revocation (deadline, trap, agent error, failed verification…).
    Failed {
        /// Why it stopped.
        code: FailureCode,
        /// What happened, in words.
        message: String,
    },
}

impl RunOutcome {
    /// Whether the run ended [`RunOutcome::Completed`] or [`RunOutcome::PlanOnly`].
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Completed | RunOutcome::PlanOnly)
    }
}

/// One phase as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    /// The phase entered.
    pub phase: Phase,
    /// Time spent in it, in ms; for BOOTSTRAP, from the start of the run.
    pub elapsed_ms: f64,
}

/// Error-budget counters at the end of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BudgetUse {
    /// Every error recorded (`agent:{id}:errors` field `total`).
    pub total_errors: u32,
    /// Errors that were procedure violations (field `procedure`).
    pub procedure_violations: u32,
    /// The highest count of any single error signature.
    pub max_same_error: u32,
}

impl From<&ErrorCounts> for BudgetUse {
    fn from(c: &ErrorCounts) -> Self {
        BudgetUse {
            total_errors: c.total,
            procedure_violations: c.procedure,
            max_same_error: c.max_same,
        }
    }
}

/// Everything a run produced, for people (`warden run`) and programs (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run: every ledger row of it, its journal and its `runs` row carry this id.
    pub run_id: String,
    /// The agent that ran.
    pub agent_id: String,
    /// The task of its packet.
    pub task_id: String,
    /// The tier it ran at.
    pub tier: Tier,
    /// `sha256:<hex>` of the component that ran.
    pub component_digest: String,
    /// The tier table's `revision`.
    pub policy_revision: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// The phases in the order they were entered.
    pub phases: Vec<PhaseRecord>,
    /// The summary of the agent's plan; `None` if it never returned one.
    pub plan_summary: Option<String>,
    /// The steps of the agent's plan; empty if it never returned one.
    pub plan_steps: Vec<String>,
    /// The findings of the agent's verification; empty if VERIFY did not run.
    pub verification_findings: Vec<String>,
    /// The summary of the agent's report; `None` if REPORT did not run.
    pub report_summary: Option<String>,
    /// The artifacts this run wrote, the latest version of each name.
    pub artifacts: Vec<ArtifactRef>,
    /// The error budget used, as of the end of the run.
    pub budget: BudgetUse,
    /// The run succeeded with no error and no procedure violation; counts toward promotion.
    pub compliant: bool,
    /// The tier the agent was promoted to at the end of the run; `None` if it was not.
    pub promoted_to: Option<Tier>,
    /// The tier the agent was demoted to at the end of the run (`demote_after_violations`);
    /// `None` if it was not.
    pub demoted_to: Option<Tier>,
    /// The guest's standard output, up to the tier table's `output_cap_bytes`.
    pub stdout: String,
    /// The guest's standard error, up to the tier table's `output_cap_bytes`.
    pub stderr: String,
    /// Bytes of stdout and stderr dropped past the cap.
    pub output_dropped_bytes: u64,
    /// Wall-clock duration of the whole run, in ms.
    pub duration_ms: f64,
}
