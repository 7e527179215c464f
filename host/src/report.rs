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
    /// A host invariant did not hold.
    Internal,
}

impl FailureCode {
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
        reason: RevocationKind,
        details: String,
    },
    /// The run stopped without revocation (deadline, trap, agent error, failed verification…).
    Failed { code: FailureCode, message: String },
}

impl RunOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Completed | RunOutcome::PlanOnly)
    }
}

/// One phase as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub elapsed_ms: f64,
}

/// Error-budget counters at the end of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BudgetUse {
    pub total_errors: u32,
    pub procedure_violations: u32,
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
    pub agent_id: String,
    pub task_id: String,
    pub tier: Tier,
    pub component_digest: String,
    pub policy_revision: String,
    pub outcome: RunOutcome,
    pub phases: Vec<PhaseRecord>,
    pub plan_summary: Option<String>,
    pub plan_steps: Vec<String>,
    pub verification_findings: Vec<String>,
    pub report_summary: Option<String>,
    pub artifacts: Vec<ArtifactRef>,
    pub budget: BudgetUse,
    pub compliant: bool,
    pub promoted_to: Option<Tier>,
    pub stdout: String,
    pub stderr: String,
    pub output_dropped_bytes: u64,
    pub duration_ms: f64,
}
