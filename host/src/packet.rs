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
    /// Errors of any kind at which the agent is revoked (default 8).
    #[serde(default = "ErrorBudget::default_total")]
    pub max_total_errors: u32,
    /// Occurrences of one same error at which the agent is revoked (default 2).
    #[serde(default = "ErrorBudget::default_same")]
    pub max_same_error_repeats: u32,
    /// Procedure violations at which the agent is revoked (default 1: the first one).
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
    /// Steps the agent must take, passed to it and repeated in the handoff. A tier that stops
    /// after PLAN refuses a packet that requires `execute` or a later step.
    #[serde(default)]
    pub required_steps: Vec<String>,
}

/// Limits an operator may set per packet. They can only tighten the tier's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketLimits {
    /// Wall-clock limit of one phase, in ms; `None` keeps the tier's.
    pub phase_wall_ms: Option<u64>,
    /// CPU limit of one phase, in ms; `None` keeps the tier's.
    pub phase_cpu_ms: Option<u64>,
    /// Wall-clock limit of the whole run, in ms; `None` keeps the tier's.
    pub run_wall_ms: Option<u64>,
    /// Linear memory the guest may grow to, in bytes; `None` keeps the tier's.
    pub memory_bytes: Option<u64>,
    /// How long the approval gate waits for `warden approve`, in ms; `None` keeps the
    /// tier table's default. Unlike the others it replaces the default rather than capping it.
    pub approval_timeout_ms: Option<u64>,
}

/// The structured mission every agent receives (the reference's `InstructionPacket`).
/// Deserializing validates it ([`Packet::from_json`] names the field at fault).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPacket")]
pub struct Packet {
    /// The agent the packet is addressed to.
    pub agent_id: AgentId,
    /// The task the run belongs to.
    pub task_id: TaskId,
    /// Free text: on whose behalf the packet was written (the orchestrator writes
    /// `orchestrator`).
    #[serde(default)]
    pub created_for: String,
    /// What the agent is to achieve; must not be blank.
    pub objective: String,
    /// Artifact names that must exist after EXECUTE (after PLAN for tiers that stop there).
    #[serde(default)]
    pub deliverables: Vec<String>,
    /// Scope, forbidden resources and required steps.
    #[serde(default)]
    pub constraints: Constraints,
    /// How the work will be judged; passed to the agent as written.
    #[serde(default)]
    pub success_criteria: Vec<String>,
    /// The limits whose crossing revokes the agent.
    #[serde(default)]
    pub error_budget: ErrorBudget,
    /// When and to whom the agent should escalate; passed to the agent as written.
    #[serde(default)]
    pub escalation_rules: Vec<String>,
    /// When the packet was written, RFC 3339; defaults to the time it was parsed.
    #[serde(default = "now_rfc3339")]
    pub created_at: String,
    /// The operator's limits for this run; left out of the JSON when none is set.
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
    /// The text is not JSON of a packet's shape (the parser's message); unknown fields land here.
    #[error("packet is not valid JSON for an instruction packet: {0}")]
    Syntax(String),
    /// A field parsed but failed validation.
    #[error("packet field `{field}` is invalid: {reason}")]
    Field {
        /// The field's path, e.g. `deliverables[0]` or `error_budget.max_total_errors`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
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
    /// The kind stored as `code` (`ERROR_BUDGET_EXCEEDED`).
    pub fn from_code(code: &str) -> Option<RevocationKind> {
        [
            RevocationKind::ProcedureViolation,
            RevocationKind::ErrorBudgetExceeded,
            RevocationKind::MissingRequiredArtifact,
            RevocationKind::Operator,
            RevocationKind::Revoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == code)
    }

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
    /// The trigger, serialized as `type`.
    #[serde(rename = "type")]
    pub kind: RevocationKind,
    /// What happened, in words (the budget count, the operator's reason).
    pub details: String,
}

/// One entry of `revocations:ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked agent.
    pub agent_id: AgentId,
    /// The task it was running; `None` when an operator revoked it between runs.
    pub task_id: Option<TaskId>,
    /// Why it was revoked.
    pub reason: RevocationReason,
    /// Who revoked it: `host` for an automatic revocation, else the operator's name.
    pub revoked_by: String,
    /// When, RFC 3339.
    pub revoked_at: String,
}

/// Where the agent was when it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownState {
    /// The phase it was in (`EXECUTE`).
    pub phase: String,
    /// The summary of its last recorded action, or `enter` if it had none.
    pub step: String,
}

/// What a revoked agent leaves for the next one (the reference's `HandoffObject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The task being handed on.
    pub task_id: TaskId,
    /// The agent that was revoked.
    pub previous_agent_id: AgentId,
    /// Whether the previous agent was revoked (the host writes handoffs only on revocation).
    pub revoked: bool,
    /// Why it was revoked.
    pub revocation_reason: RevocationReason,
    /// Where it stopped.
    pub last_known_state: LastKnownState,
    /// Summaries of its last recorded actions (at most 20), oldest first.
    pub what_was_tried: Vec<String>,
    /// What stopped it: the revocation's details.
    pub blocking_issue: String,
    /// What the operator and the next agent should do.
    pub required_next_actions: Vec<String>,
    /// The packet's scope, forbidden patterns and required steps, and the tier, in words.
    pub constraints_reminder: Vec<String>,
    /// Names of the task's artifacts: the first 100 by name (one page of the index).
    pub artifacts: Vec<String>,
    /// When the handoff was written, RFC 3339.
    pub created_at: String,
}

/// The approval of a task's run at the approval gate (`task:{id}:approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approved task.
    pub task_id: TaskId,
    /// Who approved it (`warden approve --by`).
    pub approved_by: String,
    /// When, RFC 3339.
    pub approved_at: String,
}

/// The decision of a pipeline's human gate (`pipeline:{run}:gate:{stage}:{round}`): made
/// once, by a person (`warden pipeline approve|reject`) or by the gate's `on_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    /// The pipeline run (the task its stages run in).
    pub run: TaskId,
    /// The gate's stage name.
    pub stage: String,
    /// The retry round (0 until `pipeline retry` runs the gate again).
    pub round: u32,
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided (`host` when nobody did in time).
    pub decided_by: String,
    /// Their comment.
    pub comment: String,
    /// When, RFC 3339.
    pub decided_at: String,
    /// Nobody decided before the gate's timeout; its `on_timeout` did.
    pub timed_out: bool,
}

/// The last lifecycle checkpoint of an agent (`agent:{id}:state` field `checkpoint`),
/// written at every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The phase entered (`EXECUTE`).
    pub phase: String,
    /// Where in the phase (`enter`).
    pub step: String,
    /// The task being run.
    pub task_id: TaskId,
    /// `sha256:<hex>` of the component being run.
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
