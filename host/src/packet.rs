//! Instruction packets, handoff objects and revocation records: the documents that travel
//! between operators, the host and the next agent.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, IdError, TaskId};
use crate::pattern::Pattern;

/// An agent's error budget. Exceeding any limit revokes the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBudget {
    #[serde(default = "ErrorBudget::default_total")]
    pub max_total_errors: u32,
    #[serde(default = "ErrorBudget::default_same")]
    pub max_same_error_repeats: u32,
    #[serde(default = "ErrorBudget::default_procedure")]
    pub max_procedure_violations: u32,
}

impl ErrorBudget {
    fn default_total() -> u32 {
        8
    }
    fn default_same() -> u32 {
        2
    }
    fn default_procedure() -> u32 {
        1
    }
}

impl Default for ErrorBudget {
    fn default() -> Self {
        ErrorBudget {
            max_total_errors: 8,
            max_same_error_repeats: 2,
            max_procedure_violations: 1,
        }
    }
}

/// What the agent may touch (`scope`) and must never touch (`forbidden`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Resource patterns; when non-empty every capability call must match one.
    #[serde(default)]
    pub scope: Vec<Pattern>,
    /// Resource patterns whose use is a procedure violation.
    #[serde(default)]
    pub forbidden: Vec<Pattern>,
    #[serde(default)]
    pub required_steps: Vec<String>,
}

/// Limits an operator may set per packet. They can only tighten the tier's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketLimits {
    pub phase_wall_ms: Option<u64>,
    pub phase_cpu_ms: Option<u64>,
    pub run_wall_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub approval_timeout_ms: Option<u64>,
}

/// The structured mission every agent receives (the reference's `InstructionPacket`).
/// Deserializing validates it ([`Packet::from_json`] names the field at fault).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPacket")]
pub struct Packet {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    #[serde(default)]
    pub created_for: String,
    pub objective: String,
    /// Artifact names that must exist after EXECUTE (after PLAN for tiers that stop there).
    #[serde(default)]
    pub deliverables: Vec<String>,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub success_criteria: Vec<String>,
    #[serde(default)]
    pub error_budget: ErrorBudget,
    #[serde(default)]
    pub escalation_rules: Vec<String>,
    #[serde(default = "now_rfc3339")]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: PacketLimits,
}

/// A packet as written, before its ids and fields are validated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPacket {
    agent_id: String,
    task_id: String,
    #[serde(default)]
    created_for: String,
    objective: String,
    /// Artifact names that must exist after EXECUTE (after PLAN for tiers that stop there).
    #[serde(default)]
    deliverables: Vec<String>,
    #[serde(default)]
    constraints: Constraints,
    #[serde(default)]
    success_criteria: Vec<String>,
    #[serde(default)]
    error_budget: ErrorBudget,
    #[serde(default)]
    escalation_rules: Vec<String>,
    #[serde(default = "now_rfc3339")]
    created_at: String,
    #[serde(default)]
    limits: PacketLimits,
}

fn is_default_limits(limits: &PacketLimits) -> bool {
    *limits == PacketLimits::default()
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A packet that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet is not valid JSON for an instruction packet: {0}")]
    Syntax(String),
    #[error("packet field `{field}` is invalid: {reason}")]
    Field { field: String, reason: String },
}

impl TryFrom<RawPacket> for Packet {
    type Error = PacketError;

    fn try_from(raw: RawPacket) -> Result<Packet, PacketError> {
        let field = |field: &str| {
            let field = field.to_string();
            move |e: IdError| PacketError::Field {
                field,
                reason: e.reason,
            }
        };
        let packet = Packet {
            agent_id: AgentId::new(&raw.agent_id).map_err(field("agent_id"))?,
            task_id: TaskId::new(&raw.task_id).map_err(field("task_id"))?,
            created_for: raw.created_for,
            objective: raw.objective,
            deliverables: raw.deliverables,
            constraints: raw.constraints,
            success_criteria: raw.success_criteria,
            error_budget: raw.error_budget,
            escalation_rules: raw.escalation_rules,
            created_at: raw.created_at,
            limits: raw.limits,
        };
        packet.validate()?;
        Ok(packet)
    }
}

impl Packet {
    /// Parse and validate a packet from JSON.
    pub fn from_json(text: &str) -> Result<Packet, PacketError> {
        let raw: RawPacket =
            serde_json::from_str(text).map_err(|e| PacketError::Syntax(e.to_string()))?;
        Packet::try_from(raw)
    }

    /// The packet as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Check every field an operator can get wrong.
    pub fn validate(&self) -> Result<(), PacketError> {
        let field = |field: &str, reason: String| PacketError::Field {
            field: field.to_string(),
            reason,
        };
        if self.objective.trim().is_empty() {
            return Err(field("objective", "must not be empty".into()));
        }
        for (i, name) in self.deliverables.iter().enumerate() {
            validate_artifact_name(name).map_err(|r| field(&format!("deliverables[{i}]"), r))?;
        }
        let budget = &self.error_budget;
        for (name, value) in [
            ("error_budget.max_total_errors", budget.max_total_errors),
            (
                "error_budget.max_same_error_repeats",
                budget.max_same_error_repeats,
            ),
            (
                "error_budget.max_procedure_violations",
                budget.max_procedure_violations,
            ),
        ] {
            if value == 0 {
                return Err(field(name, "must be at least 1".into()));
            }
        }
        let limits = &self.limits;
        for (name, value) in [
            ("limits.phase_wall_ms", limits.phase_wall_ms),
            ("limits.phase_cpu_ms", limits.phase_cpu_ms),
            ("limits.run_wall_ms", limits.run_wall_ms),
            ("limits.memory_bytes", limits.memory_bytes),
        ] {
            if value == Some(0) {
                return Err(field(name, "must be greater than 0 when set".into()));
            }
        }
        Ok(())
    }
}

/// Artifact names: `/`-separated segments of `[A-Za-z0-9._-]`, no `.`/`..` segments, ≤ 200 bytes.
pub fn validate_artifact_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!(
            "artifact name `{name}` must be 1 to 200 bytes long"
        ));
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "artifact name `{name}` has an empty, `.` or `..` segment: names are `/`-separated segments of letters, digits, `.`, `_` and `-`"
            ));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "artifact name `{name}` contains `{c}`: only letters, digits, `.`, `_`, `-` and `/` are accepted"
            ));
        }
    }
    Ok(())
}

/// The reference's revocation triggers, and the operator's, as the ledger and the state
/// store name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RevocationKind {
    /// `procedure_violations >= max_procedure_violations` (a forbidden action, an escape).
    ProcedureViolation,
    /// `same_error >= max_same_error_repeats` or `total_errors >= max_total_errors`.
    ErrorBudgetExceeded,
    /// A deliverable missing after EXECUTE (after PLAN for a tier that stops there).
    MissingRequiredArtifact,
    /// An operator revoked the agent (`warden agents revoke`).
    Operator,
    /// Revoked, the reason not known to this run.
    Revoked,
}

impl RevocationKind {
    /// The name as stored (`ERROR_BUDGET_EXCEEDED`).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::ProcedureViolation => "PROCEDURE_VIOLATION",
            RevocationKind::ErrorBudgetExceeded => "ERROR_BUDGET_EXCEEDED",
            RevocationKind::MissingRequiredArtifact => "MISSING_REQUIRED_ARTIFACT",
            RevocationKind::Operator => "OPERATOR",
            RevocationKind::Revoked => "REVOKED",
        }
    }
}

impl std::fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for RevocationKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RevocationKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why an agent was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationReason {
    #[serde(rename = "type")]
    pub kind: RevocationKind,
    pub details: String,
}

/// One entry of `revocations:ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub agent_id: AgentId,
    pub task_id: Option<TaskId>,
    pub reason: RevocationReason,
    pub revoked_by: String,
    pub revoked_at: String,
}

/// Where the agent was when it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownState {
    pub phase: String,
    pub step: String,
}

/// What a revoked agent leaves for the next one (the reference's `HandoffObject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub task_id: TaskId,
    pub previous_agent_id: AgentId,
    pub revoked: bool,
    pub revocation_reason: RevocationReason,
    pub last_known_state: LastKnownState,
    pub what_was_tried: Vec<String>,
    pub blocking_issue: String,
    pub required_next_actions: Vec<String>,
    pub constraints_reminder: Vec<String>,
    pub artifacts: Vec<String>,
    pub created_at: String,
}

/// The approval of a task's run at the approval gate (`task:{id}:approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub task_id: TaskId,
    pub approved_by: String,
    pub approved_at: String,
}

/// The last lifecycle checkpoint of an agent (`agent:{id}:state` field `checkpoint`),
/// written at every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The phase entered (`EXECUTE`).
    pub phase: String,
    /// Where in the phase (`enter`).
    pub step: String,
    pub task_id: TaskId,
    pub component_digest: String,
    /// When, RFC 3339.
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_packet_gets_reference_defaults() {
        let p = Packet::from_json(r#"{"agent_id":"a","task_id":"t","objective":"x"}"#).unwrap();
        assert_eq!(p.error_budget, ErrorBudget::default());
        assert_eq!(p.error_budget.max_total_errors, 8);
        assert!(p.constraints.scope.is_empty());
    }

    #[test]
    fn malformed_packets_name_the_field() {
        let err = Packet::from_json(r#"{"agent_id":"a b","task_id":"t","objective":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`agent_id`") && err.contains("contains ` `"),
            "{err}"
        );
        let err = Packet::from_json(
            r#"{"agent_id":"a","task_id":"t","objective":"x","deliverables":["../x"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("deliverables[0]"), "{err}");
        let err =
            Packet::from_json(r#"{"agent_id":"a","task_id":"t","objective":"x","surprise":1}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `surprise`"), "{err}");
        let err = Packet::from_json(r#"{"agent_id":"a","task_id":"t","objective":"x","error_budget":{"max_total_errors":0}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("error_budget.max_total_errors"), "{err}");
        assert!(Packet::from_json("{").is_err());
    }

    #[test]
    fn artifact_names_reject_traversal() {
        assert!(validate_artifact_name("plan.md").is_ok());
        assert!(validate_artifact_name("out/report.json").is_ok());
        assert!(validate_artifact_name("../../escape.txt").is_err());
        assert!(validate_artifact_name("/abs").is_err());
        assert!(validate_artifact_name("a//b").is_err());
    }
}
