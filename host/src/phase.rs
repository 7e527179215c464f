//! Lifecycle phases, in the order the host drives them.

use serde::Serialize;

/// A lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Phase {
    Bootstrap = 0,
    Preflight = 1,
    Plan = 2,
    Execute = 3,
    Verify = 4,
    Package = 5,
    Report = 6,
    Exit = 7,
}

impl Phase {
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
