//! Errors of the host library. Each says what was refused or failed, why, and what would
//! allow it; user input is in backticks.

use std::path::PathBuf;

use crate::artifacts::BlobError;
use crate::id::IdError;
use crate::ledger::LedgerError;
use crate::llm::LlmError;
use crate::packet::PacketError;
use crate::policy::PolicyError;
use crate::runtime::ComponentError;
use crate::secrets::SecretsError;
use crate::state::StateError;
use crate::tier::Tier;
use crate::tools::ToolsError;

/// A run refused at BOOTSTRAP: nothing of the agent ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "UNKNOWN_AGENT: agent `{agent}` is not registered; register it with `warden agents register {agent} --tier <T0..T4> --component <file>`"
    )]
    UnknownAgent { agent: String },
    #[error(
        "AGENT_PREVIOUSLY_REVOKED: agent `{agent}` was revoked at {revoked_at} ({reason}); a revoked agent is refused at every bootstrap; give the task to a new agent id"
    )]
    PreviouslyRevoked {
        agent: String,
        reason: String,
        revoked_at: String,
    },
    #[error(
        "NO_INSTRUCTION_PACKET: agent `{agent}` has no instruction packet; submit one (`warden run <component> --packet <file>` or `Host::submit_packet`)"
    )]
    NoInstructionPacket { agent: String },
    #[error(
        "CANNOT_ACQUIRE_LOCK: agent `{agent}` is locked by `{holder}`; it may start when that run exits or its lock expires"
    )]
    CannotAcquireLock { agent: String, holder: String },
    #[error(
        "COMPONENT_MISMATCH: agent `{agent}` is registered to component `{registered}`, not `{offered}`; re-register the agent with the new component to bind it (the change is recorded)"
    )]
    ComponentMismatch {
        agent: String,
        registered: String,
        offered: String,
    },
    #[error(
        "IMPORT_ABOVE_TIER: agent `{agent}` imports `warden:agent/{interface}`, which tier {tier} does not grant; lowest tier granting it: {}",
        lowest.map_or("none".to_string(), |t| t.to_string())
    )]
    ImportAboveTier {
        agent: String,
        interface: String,
        tier: Tier,
        lowest: Option<Tier>,
    },
    #[error(
        "UNKNOWN_IMPORT: agent `{agent}` imports `{import}`, which this host does not provide; agents may import only `warden:agent/*@0.1.0` and the WASI 0.2 interfaces of wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random and wasi:sockets (`warden compile` lists a component's imports)"
    )]
    UnknownImport { agent: String, import: String },
    #[error("INVALID_PACKET: the instruction packet of agent `{agent}` cannot be used: {reason}")]
    InvalidPacket { agent: String, reason: String },
    #[error(
        "STATE_UNAVAILABLE: agent `{agent}` cannot bootstrap: {reason}; no phase runs without the agent's lock, so run it again once the state store answers"
    )]
    StateUnavailable { agent: String, reason: String },
}

impl Refusal {
    /// The stable refusal code (`AGENT_PREVIOUSLY_REVOKED`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownAgent { .. } => "UNKNOWN_AGENT",
            Refusal::PreviouslyRevoked { .. } => "AGENT_PREVIOUSLY_REVOKED",
            Refusal::NoInstructionPacket { .. } => "NO_INSTRUCTION_PACKET",
            Refusal::CannotAcquireLock { .. } => "CANNOT_ACQUIRE_LOCK",
            Refusal::ComponentMismatch { .. } => "COMPONENT_MISMATCH",
            Refusal::ImportAboveTier { .. } => "IMPORT_ABOVE_TIER",
            Refusal::UnknownImport { .. } => "UNKNOWN_IMPORT",
            Refusal::InvalidPacket { .. } => "INVALID_PACKET",
            Refusal::StateUnavailable { .. } => "STATE_UNAVAILABLE",
        }
    }
}

/// Any error of the host library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Tools(#[from] ToolsError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("cannot prepare the sandbox of agent `{agent}`: {message}")]
    Sandbox { agent: String, message: String },
    #[error("cannot use `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {origin} is invalid: {message}")]
    Config { origin: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
