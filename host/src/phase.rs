//! Lifecycle phases, in the order the host drives them.

use serde::Serialize;

/// A lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Phase {
    /// Registry, revocation, packet and import checks, the lock, then instantiation.
    Bootstrap = 0,
    /// The packet checked against the tier, before the agent runs.
    Preflight = 1,
    /// The agent's `plan`; tiers that stop after PLAN go on to PACKAGE.
    Plan = 2,
    /// The agent's `execute`, after the approval gate when the tier requires approval.
    Execute = 3,
    /// The agent's `verify`, and the deliverables checked.
    Verify = 4,
    /// The artifacts the run wrote, recorded as its manifest.
    Package = 5,
    /// The agent's `report`.
    Report = 6,
    /// Checkpoint, lock release, metrics and promotion.
    Exit = 7,
}

impl Phase {
    /// The uppercase name used in the ledger and checkpoints (`EXECUTE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bootstrap => "BOOTSTRAP",
            Phase::Preflight => "PREFLIGHT",
            Phase::Plan => "PLAN",
            Phase::Execute => "EXECUTE",
            Phase::Verify => "VERIFY",
            Phase::Package => "PACKAGE",
            Phase::Report => "REPORT",
            Phase::Exit => "EXIT",
        }
    }

    /// The phase named `name` as [`Phase::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Phase> {
        (0..=7).map(Phase::from_u8).find(|p| p.as_str() == name)
    }

    pub(crate) fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Bootstrap,
            1 => Phase::Preflight,
            2 => Phase::Plan,
            3 => Phase::Execute,
            4 => Phase::Verify,
            5 => Phase::Package,
            6 => Phase::Report,
            _ => Phase::Exit,
        }
    }
}
