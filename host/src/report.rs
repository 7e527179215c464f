//! What a run produced: [`RunReport`] and its parts, for people (`warden run`) and programs
//! (`--json`).

use serde::Serialize;

use crate::artifacts::ArtifactRef;
use crate::phase::Phase;
use crate::state::ErrorCounts;
use crate::tier::Tier;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every phase ran and verification passed.
    Completed,
    /// The tier stops after PLAN (T0); the plan artifact is the result.
    PlanOnly,
    /// The agent was revoked during the run.
    Revoked { reason: String, details: String },
    /// The run stopped without revocation (deadline, trap, agent error, failed verification…).
    Failed { code: String, message: String },
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
