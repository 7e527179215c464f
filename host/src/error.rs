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
    /// The agent is not in the ledger's agent registry.
    UnknownAgent {
        /// The agent id asked for.
        agent: String,
    },
    #[error(
        "AGENT_PREVIOUSLY_REVOKED: agent `{agent}` was revoked at {revoked_at} ({reason}); a revoked agent is refused at every bootstrap; give the task to a new agent id"
    )]
    /// The agent has a revocation on record; revocation is permanent.
    PreviouslyRevoked {
        /// The revoked agent.
        agent: String,
        /// `KIND: details` of the recorded revocation, or why it cannot be read.
        reason: String,
        /// When it was revoked, RFC 3339 (`an unknown time` when the record is unreadable).
        revoked_at: String,
    },
    #[error(
        "NO_INSTRUCTION_PACKET: agent `{agent}` has no instruction packet; submit one (`warden run <component> --packet <file>` or `Host::submit_packet`)"
    )]
    /// No packet was submitted for the agent.
    NoInstructionPacket {
        /// The agent without a packet.
        agent: String,
    },
    #[error(
        "CANNOT_ACQUIRE_LOCK: agent `{agent}` is locked by `{holder}`; it may start when that run exits or its lock expires"
    )]
    /// Another run holds the agent's lock.
    CannotAcquireLock {
        /// The locked agent.
        agent: String,
        /// The lock's owner, `{host id}:{run id}`.
        holder: String,
    },
    #[error(
        "COMPONENT_MISMATCH: agent `{agent}` is registered to component `{registered}`, not `{offered}`; re-register the agent with the new component to bind it (the change is recorded)"
    )]
    /// The component offered is not the one the agent is registered to.
    ComponentMismatch {
        /// The agent being run.
        agent: String,
        /// `sha256:<hex>` the agent is registered to.
        registered: String,
        /// `sha256:<hex>` of the component offered.
        offered: String,
    },
    #[error(
        "{code}: agent `{agent}`'s component `{digest}` may not load at tier {tier}: {why}; the tier requires {requirement} (sign it with `warden sign <component> --key <file>`, then register it again)"
    )]
    /// The tier requires a signature by a trusted key, and the component has none
    /// (`SIGNATURE_REQUIRED`) or one that no key the tier trusts verifies (`SIGNATURE_INVALID`).
    Signature {
        /// `SIGNATURE_REQUIRED` or `SIGNATURE_INVALID`.
        code: &'static str,
        /// The agent being run or registered.
        agent: String,
        /// `sha256:<hex>` of the component.
        digest: String,
        /// The tier it was to load at.
        tier: Tier,
        /// What the tier requires, with the key files.
        requirement: String,
        /// What is wrong with the component's signature.
        why: String,
    },
    #[error(
        "IMPORT_ABOVE_TIER: agent `{agent}` imports `{interface}`, which tier {tier} does not grant; lowest tier granting it: {}",
        lowest.map_or("none".to_string(), |t| t.to_string())
    )]
    /// The component imports a governed interface (of `warden:agent`, or `wasi:http`) its
    /// tier does not grant.
    ImportAboveTier {
        /// The agent being run.
        agent: String,
        /// The interface (`warden:agent/secrets`, `wasi:http`).
        interface: String,
        /// The agent's tier.
        tier: Tier,
        /// The lowest tier that grants the interface; `None` if no tier does.
        lowest: Option<Tier>,
    },
    #[error(
        "UNKNOWN_IMPORT: agent `{agent}` imports `{import}`, which this host does not provide; agents may import only `warden:agent/*@0.1.0` and the WASI 0.2 interfaces of wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random and wasi:sockets (`warden compile` lists a component's imports)"
    )]
    /// The component imports an interface this host does not provide at all.
    UnknownImport {
        /// The agent being run.
        agent: String,
        /// The import's full name, as the component spells it.
        import: String,
    },
    #[error(
        "REGISTRY_TAMPERED: the registry row of agent `{agent}` disagrees with the ledger's chain ({mismatch}); the chain is the agent's registration, so nothing runs until an operator re-registers it (`warden agents register`) or restores the registry"
    )]
    /// The registry row (`agents`) disagrees with the ledger's chain.
    RegistryTampered {
        /// The agent.
        agent: String,
        /// What differs.
        mismatch: String,
    },
    #[error(
        "INVALID_COMPONENT: the component `{digest}` offered for agent `{agent}` cannot be loaded: {reason}; agents are WebAssembly components built for `wasm32-wasip2` (`warden compile <file>` checks one)"
    )]
    /// The bytes offered are not a component wasmtime can compile.
    InvalidComponent {
        /// The agent being run.
        agent: String,
        /// `sha256:<hex>` of the bytes offered.
        digest: String,
        /// wasmtime's error, cut to a readable length.
        reason: String,
    },
    #[error("INVALID_PACKET: the instruction packet of agent `{agent}` cannot be used: {reason}")]
    /// The stored packet cannot be read or is addressed to another agent.
    InvalidPacket {
        /// The agent being run.
        agent: String,
        /// What is wrong with the packet.
        reason: String,
    },
    #[error(
        "STATE_UNAVAILABLE: agent `{agent}` cannot bootstrap: {reason}; no phase runs without the agent's lock, so run it again once the state store answers"
    )]
    /// The state store failed while bootstrapping (lock, packet or revocation lookup).
    StateUnavailable {
        /// The agent being run.
        agent: String,
        /// The state store's error.
        reason: String,
    },
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
            Refusal::Signature { code, .. } => code,
            Refusal::UnknownImport { .. } => "UNKNOWN_IMPORT",
            Refusal::InvalidPacket { .. } => "INVALID_PACKET",
            Refusal::InvalidComponent { .. } => "INVALID_COMPONENT",
            Refusal::RegistryTampered { .. } => "REGISTRY_TAMPERED",
            Refusal::StateUnavailable { .. } => "STATE_UNAVAILABLE",
        }
    }
}

/// Any error of the host library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run was refused at BOOTSTRAP.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An agent or task id is malformed.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An instruction packet is malformed.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The tier table is malformed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A component cannot be read or compiled, or the engine cannot be set up.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The secrets backend failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The LLM provider failed or is misconfigured.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// A tool registry cannot be loaded, or a tool call failed.
    #[error(transparent)]
    Tools(#[from] ToolsError),
    /// The artifact blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A run cannot be replayed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// A run cannot be resumed.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// A pipeline request cannot be served.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A tier's interfaces cannot be linked (at host start).
    #[error("cannot link the interfaces of tier {tier}: {message}")]
    Link {
        /// The tier whose linker failed.
        tier: Tier,
        /// What failed.
        message: String,
    },
    /// A file or directory cannot be read or written.
    #[error("cannot use `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file or setting is invalid.
    #[error("configuration {origin} is invalid: {message}")]
    Config {
        /// Where the setting came from, in backticks (`` `warden.toml` ``, `` `[vault]` ``).
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// A request that cannot be served as asked (an argument, an operation on a revoked agent).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A stable code for the error's class, for `--json` and for programs: a refusal's,
    /// replay's or resume's own code, else one per kind of failure (`STATE_UNAVAILABLE`,
    /// `INVALID_PACKET`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Refused(refusal) => refusal.code(),
            Error::Replay(error) => error.code(),
            Error::Resume(error) => error.code(),
            Error::Pipeline(error) => error.code(),
            Error::Id(_) => "INVALID_ID",
            Error::Packet(_) => "INVALID_PACKET",
            Error::Policy(_) => "INVALID_POLICY",
            Error::Component(_) => "INVALID_COMPONENT",
            Error::Ledger(LedgerError::ReadOnly { .. }) => "LEDGER_READ_ONLY",
            Error::Ledger(LedgerError::NotALedger { .. }) => "NOT_A_LEDGER",
            Error::Ledger(_) => "LEDGER_UNAVAILABLE",
            Error::State(_) => "STATE_UNAVAILABLE",
            Error::Secrets(_) => "SECRETS_UNAVAILABLE",
            Error::Llm(_) => "LLM_UNAVAILABLE",
            Error::Tools(_) => "INVALID_TOOLS",
            Error::Blob(_) => "BLOB_UNAVAILABLE",
            Error::Link { .. } => "LINK_FAILED",
            Error::Io { .. } => "IO_ERROR",
            Error::Config { .. } => "INVALID_CONFIG",
            Error::Invalid(_) => "INVALID_REQUEST",
        }
    }

    /// The BOOTSTRAP refusal this error is, if it is one: its [`Refusal::code`] is stable.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Why a run cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// No run has this id.
    #[error(
        "UNKNOWN_RUN: no run `{run}` in this ledger; `warden runs list` shows the runs it holds"
    )]
    UnknownRun {
        /// The id asked for.
        run: String,
    },
    /// A journal record does not lead to the head a chained row names: it was edited.
    #[error(
        "JOURNAL_TAMPERED: record {seq} (`{op}`) of run `{run}`'s journal disagrees with ledger row {row}: the row vouches for head {expected}, the journal leads to {actual}; the journal was edited after it was written, so it is not replayed"
    )]
    Tampered {
        /// The run.
        run: String,
        /// The first record the row vouches for that no longer hashes to it.
        seq: u64,
        /// That record's `op`.
        op: String,
        /// The chained row (its `seq` in the ledger).
        row: u64,
        /// The head the row names.
        expected: String,
        /// The head the journal leads to.
        actual: String,
    },
    /// The component that ran is not in the blob store and none was given.
    #[error(
        "COMPONENT_NOT_KEPT: component `{digest}` of run `{run}` is not in this data directory's blob store; pass the component file (`--component <file>`)"
    )]
    ComponentNotKept {
        /// The run.
        run: String,
        /// The component it ran.
        digest: String,
    },
    /// The component given is not the one that ran.
    #[error(
        "COMPONENT_MISMATCH: run `{run}` ran component `{recorded}`, not `{offered}`; pass `--allow-other-digest` to replay another build against the recorded run"
    )]
    ComponentMismatch {
        /// The run.
        run: String,
        /// What ran.
        recorded: String,
        /// What was given.
        offered: String,
    },
    /// The run's `runs` row does not hold a packet that parses.
    #[error("run `{run}`'s recorded packet cannot be read: {reason}")]
    Packet {
        /// The run.
        run: String,
        /// Why.
        reason: String,
    },
}

impl ReplayError {
    /// The stable code (`JOURNAL_TAMPERED`).
    pub fn code(&self) -> &'static str {
        match self {
            ReplayError::UnknownRun { .. } => "UNKNOWN_RUN",
            ReplayError::Tampered { .. } => "JOURNAL_TAMPERED",
            ReplayError::ComponentNotKept { .. } => "COMPONENT_NOT_KEPT",
            ReplayError::ComponentMismatch { .. } => "COMPONENT_MISMATCH",
            ReplayError::Packet { .. } => "INVALID_PACKET",
        }
    }
}

/// One problem of a pipeline file, at its line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct SpecError {
    /// The file (or `<inline>`).
    pub origin: String,
    /// 1-based line; 0 when the problem is the whole file.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong and what would be accepted.
    pub message: String,
}

/// Every problem found in a pipeline file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "pipeline is invalid"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more problems)", rest.len()),
        }
    }
}

impl std::error::Error for SpecErrors {}

/// Why a pipeline request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file has problems; each is at its line and column.
    #[error("PIPELINE_INVALID: {0}")]
    Invalid(SpecErrors),
    /// A run's parameters are refused.
    #[error("INVALID_PARAM: {0}")]
    Param(String),
    /// No pipeline run has this id.
    #[error("UNKNOWN_PIPELINE_RUN: no pipeline run `{run}`; `warden pipeline list` shows the runs")]
    UnknownRun {
        /// The id asked for.
        run: String,
    },
    /// The run ended; a resume has nothing to do.
    #[error(
        "PIPELINE_ENDED: pipeline run `{run}` ended `{outcome}`; run a stage and what depends on it again with `warden pipeline retry {run} --from <stage>`"
    )]
    Ended {
        /// The run.
        run: String,
        /// How it ended.
        outcome: String,
    },
    /// The run has not ended; a retry would race it.
    #[error(
        "PIPELINE_NOT_ENDED: pipeline run `{run}` has not ended; a retry needs an ended run (an interrupted one goes on with `warden pipeline resume {run}`)"
    )]
    NotEnded {
        /// The run.
        run: String,
    },
    /// A live process may still run it.
    #[error(
        "PIPELINE_STILL_ACTIVE: pipeline run `{run}` is run by {holder}, which is still alive; resume it once that process is gone"
    )]
    StillActive {
        /// The run.
        run: String,
        /// The process, in words.
        holder: String,
    },
    /// The pipeline has no such stage.
    #[error("UNKNOWN_STAGE: pipeline run `{run}` has no stage `{stage}`; its stages: {stages:?}")]
    UnknownStage {
        /// The run.
        run: String,
        /// The stage asked for.
        stage: String,
        /// Its stages.
        stages: Vec<String>,
    },
    /// The stage is no human gate, or it is not waiting.
    #[error(
        "GATE_NOT_WAITING: stage `{stage}` of pipeline run `{run}` is {status}; only a human gate that waits can be decided"
    )]
    GateNotWaiting {
        /// The run.
        run: String,
        /// The stage.
        stage: String,
        /// Where it is, in words.
        status: String,
    },
    /// The gate was decided before.
    #[error(
        "GATE_ALREADY_DECIDED: gate `{stage}` of pipeline run `{run}` was already {decision} by {by}; a gate is decided once"
    )]
    AlreadyDecided {
        /// The run.
        run: String,
        /// The gate.
        stage: String,
        /// `approved` or `rejected`.
        decision: String,
        /// Who decided.
        by: String,
    },
    /// The decider is not among the gate's approvers.
    #[error("NOT_AN_APPROVER: `{who}` may not decide gate `{stage}`; its approvers: {approvers:?}")]
    NotAnApprover {
        /// The gate.
        stage: String,
        /// Who tried.
        who: String,
        /// Who may.
        approvers: Vec<String>,
    },
    /// A hot-swapped component is not the one the run began with.
    #[error(
        "OVERRIDE_CHANGED: stage `{stage}`'s override `{path}` is now {now}, the run began with {recorded}; a resume runs what the run began with"
    )]
    OverrideChanged {
        /// The stage.
        stage: String,
        /// The file.
        path: String,
        /// The digest recorded.
        recorded: String,
        /// The digest found (or why none).
        now: String,
    },
}

impl PipelineError {
    /// The stable code (`GATE_ALREADY_DECIDED`).
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Invalid(_) => "PIPELINE_INVALID",
            PipelineError::Param(_) => "INVALID_PARAM",
            PipelineError::UnknownRun { .. } => "UNKNOWN_PIPELINE_RUN",
            PipelineError::Ended { .. } => "PIPELINE_ENDED",
            PipelineError::NotEnded { .. } => "PIPELINE_NOT_ENDED",
            PipelineError::StillActive { .. } => "PIPELINE_STILL_ACTIVE",
            PipelineError::UnknownStage { .. } => "UNKNOWN_STAGE",
            PipelineError::GateNotWaiting { .. } => "GATE_NOT_WAITING",
            PipelineError::AlreadyDecided { .. } => "GATE_ALREADY_DECIDED",
            PipelineError::NotAnApprover { .. } => "NOT_AN_APPROVER",
            PipelineError::OverrideChanged { .. } => "OVERRIDE_CHANGED",
        }
    }
}

/// Why an interrupted run cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The run ended; there is nothing to resume.
    #[error(
        "RUN_NOT_INTERRUPTED: run `{run}` ended `{status}` ({outcome}); only a run that stopped without ending can be resumed; `warden runs list --status running` shows those"
    )]
    NotInterrupted {
        /// The run.
        run: String,
        /// How it ended.
        status: String,
        /// Its outcome code.
        outcome: String,
    },
    /// The run's process may still be running it.
    #[error(
        "RUN_STILL_ACTIVE: run `{run}` is still held by {holder}; it is resumed only once its process is gone (on this machine) or its lock has expired (on another)"
    )]
    StillActive {
        /// The run.
        run: String,
        /// Who holds it, and why that counts as alive.
        holder: String,
    },
    /// The run was killed while a tool ran: whether the tool took effect is unknown.
    #[error(
        "RESUME_UNCERTAIN: run `{run}` was interrupted while tool `{tool}` ran (call {seq}, arguments {args}); whether it took effect is unknown and the tool is not declared `idempotent = true`; decide with `warden resume {run} --assume-done {seq}` (it took effect: the guest gets an empty output) or `warden resume {run} --rerun {seq}` (run it again)"
    )]
    Uncertain {
        /// The run.
        run: String,
        /// The intent's position in the journal.
        seq: u64,
        /// The tool, escaped for a terminal.
        tool: String,
        /// Its arguments, escaped for a terminal and clipped.
        args: String,
    },
    /// A decision names a call the run was not interrupted in.
    #[error(
        "RESUME_DECISION_INVALID: run `{run}` {actual}; `--assume-done` and `--rerun` name the call a run was interrupted in, which `warden resume {run}` reports"
    )]
    DecisionInvalid {
        /// The run.
        run: String,
        /// What the run was actually interrupted in.
        actual: String,
    },
    /// A run of a task was killed while a tool ran: the task's resume needs a decision.
    #[error(
        "RESUME_UNCERTAIN: run `{run}` of task `{task}` was interrupted while tool `{tool}` ran (call {seq}, arguments {args}); whether it took effect is unknown and the tool is not declared `idempotent = true`; decide with `warden orchestrate --resume {task} --assume-done {run}:{seq}` (it took effect: the guest gets an empty output) or `--rerun {run}:{seq}` (run it again)"
    )]
    TaskUncertain {
        /// The task.
        task: String,
        /// The run.
        run: String,
        /// The intent's position in the journal.
        seq: u64,
        /// The tool, escaped for a terminal.
        tool: String,
        /// Its arguments, escaped for a terminal and clipped.
        args: String,
    },
    /// A task's resume was given a decision for a run it does not resume.
    #[error(
        "RESUME_DECISION_INVALID: a decision names run `{run}`, which is not an interrupted run of task `{task}`; its interrupted runs: {interrupted}"
    )]
    DecisionNotInTask {
        /// The task.
        task: String,
        /// The run the decision named.
        run: String,
        /// The task's interrupted runs, or `none`.
        interrupted: String,
    },
    /// No task of this id was ever orchestrated here.
    #[error(
        "UNKNOWN_TASK: no task `{task}` was orchestrated with this ledger (it has no `orchestrator.start` row); `warden ledger query --agent orchestrator --kind orchestrator.start` lists the tasks it holds"
    )]
    UnknownTask {
        /// The task asked for.
        task: String,
    },
    /// The task ended; there is nothing to resume.
    #[error(
        "TASK_NOT_INTERRUPTED: task `{task}` ended ({outcome}, recorded in its `task.metrics` row); only a task that stopped without ending can be resumed"
    )]
    TaskNotInterrupted {
        /// The task.
        task: String,
        /// `success` or `failure`.
        outcome: String,
    },
    /// A new start of a task that was started and did not end.
    #[error(
        "TASK_INTERRUPTED: task `{task}` was started (ledger row {row}) and did not end; its blackboard, messages and proposals are still there, so it is not started again: go on with it with `warden orchestrate --resume {task}`, or start a new task under another `--task` id"
    )]
    TaskInterrupted {
        /// The task.
        task: String,
        /// Its `orchestrator.start` row.
        row: u64,
    },
    /// The process orchestrating the task may still be running it.
    #[error(
        "TASK_STILL_ACTIVE: task `{task}` is still orchestrated by {holder}; it is resumed only once that process is gone"
    )]
    TaskStillActive {
        /// The task.
        task: String,
        /// Who orchestrates it.
        holder: String,
    },
}

impl ResumeError {
    /// The stable code (`RUN_STILL_ACTIVE`).
    pub fn code(&self) -> &'static str {
        match self {
            ResumeError::NotInterrupted { .. } => "RUN_NOT_INTERRUPTED",
            ResumeError::StillActive { .. } => "RUN_STILL_ACTIVE",
            ResumeError::Uncertain { .. } | ResumeError::TaskUncertain { .. } => "RESUME_UNCERTAIN",
            ResumeError::DecisionInvalid { .. } | ResumeError::DecisionNotInTask { .. } => {
                "RESUME_DECISION_INVALID"
            }
            ResumeError::UnknownTask { .. } => "UNKNOWN_TASK",
            ResumeError::TaskNotInterrupted { .. } => "TASK_NOT_INTERRUPTED",
            ResumeError::TaskStillActive { .. } => "TASK_STILL_ACTIVE",
            ResumeError::TaskInterrupted { .. } => "TASK_INTERRUPTED",
        }
    }
}
