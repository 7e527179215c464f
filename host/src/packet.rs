//! Instruction packets, handoff objects and revocation records: the documents that travel
//! between operators, the host and the next agent.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packet {
    pub agent_id: String,
    pub task_id: String,
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

impl Packet {
    /// Parse and validate a packet from JSON.
    pub fn from_json(text: &str) -> Result<Packet, PacketError> {
        let packet: Packet =
            serde_json::from_str(text).map_err(|e| PacketError::Syntax(e.to_string()))?;
        packet.validate()?;
        Ok(packet)
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
        validate_id(&self.agent_id).map_err(|r| field("agent_id", r))?;
        validate_id(&self.task_id).map_err(|r| field("task_id", r))?;
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

/// Agent and task ids: 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("`{id}` must be 1 to 64 characters long"));
    }
    if id.starts_with('.') {
        return Err(format!("`{id}` must not start with `.`"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{id}` contains `{c}`: only letters, digits, `.`, `_` and `-` are accepted"
        ));
    }
    Ok(())
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

/// Why an agent was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationReason {
    /// `PROCEDURE_VIOLATION`, `ERROR_BUDGET_EXCEEDED`, `MISSING_REQUIRED_ARTIFACT`, `OPERATOR`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub details: String,
}

/// One entry of `revocations:ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub agent_id: String,
    pub task_id: Option<String>,
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
    pub task_id: String,
    pub previous_agent_id: String,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
