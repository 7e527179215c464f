//! The shared run context: what every run of a host shares ([`Services`]: the tier table and
//! the backends) and what the lifecycle driver, the capabilities and revokers share about one
//! run ([`RunShared`]).
//!
//! This module sits below governance, the capabilities and the lifecycle, and knows nothing of
//! wasmtime: the engine, linkers and compiled components are the sandbox's
//! ([`crate::sandbox::Sandbox`]). So a capability can be exercised over these services alone,
//! without a guest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::artifacts::{ArtifactRef, BlobStore, latest_per_name};
use crate::error::{Error, Refusal};
use crate::id::{AgentId, RunId, TaskId};
use crate::journal::Journal;
use crate::ledger::{AgentRecord, Entry, Ledger, LedgerError, Subject};
use crate::llm::LlmProvider;
use crate::packet::{Packet, RevocationReason};
use crate::phase::Phase;
use crate::policy::TierTable;
use crate::secrets::{SecretBackend, SecretSession};
use crate::state::{LockOwner, OverQuota, Quota, StateStore, Usage};
use crate::tier::Tier;
use crate::tools::ToolRegistry;

/// When the ledger row of an agent's capability call is committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallDurability {
    /// Rows are group-committed off the agent's hot path (a call costs an enqueue). Refusals,
    /// violations and revocations are committed before the guest sees them, and every row of
    /// a run is committed before [`Host::run`](crate::Host::run) returns; a process killed
    /// mid-run can lose the rows of allowed calls still in the last batch.
    #[default]
    Batched,
    /// Every call returns to the guest only once its row is committed, so a process killed
    /// at any moment loses no row of a call that returned. Costs one commit per call.
    EveryCall,
}

/// Where agent workspaces live.
pub(crate) enum Workspaces {
    Dir(PathBuf),
    Temp(tempfile::TempDir),
}

impl Workspaces {
    pub fn for_agent(&self, agent: &AgentId) -> PathBuf {
        match self {
            Workspaces::Dir(root) => root.join(agent.as_str()),
            Workspaces::Temp(dir) => dir.path().join(agent.as_str()),
        }
    }
}

/// Everything runs share; capabilities reach backends through it.
pub(crate) struct Services {
    pub tiers: TierTable,
    pub ledger: Ledger,
    pub state: Arc<dyn StateStore>,
    pub secrets: Arc<dyn SecretBackend>,
    pub llm: Option<Arc<dyn LlmProvider>>,
    pub tools: ToolRegistry,
    pub blobs: Arc<dyn BlobStore>,
    pub workspaces: Workspaces,
    pub running: Mutex<HashMap<AgentId, Arc<RunShared>>>,
    pub host_id: String,
    pub data_dir: Option<PathBuf>,
    pub call_durability: CallDurability,
    /// Rung on every message sent in this process, so a waiting `receive` wakes at once.
    pub coordination_bell: tokio::sync::Notify,
    /// Where agents' HTTP requests are sent from (`capabilities/http.rs` decides).
    pub egress: crate::egress::Connector,
}

/// The backends and settings [`Services`] are made of.
pub(crate) struct ServiceParts {
    pub tiers: TierTable,
    pub ledger: Ledger,
    pub state: Arc<dyn StateStore>,
    pub secrets: Arc<dyn SecretBackend>,
    pub llm: Option<Arc<dyn LlmProvider>>,
    pub tools: ToolRegistry,
    pub blobs: Arc<dyn BlobStore>,
    pub workspaces: Workspaces,
    pub host_id: String,
    pub data_dir: Option<PathBuf>,
    pub call_durability: CallDurability,
    pub egress: crate::egress::Connector,
}

impl Services {
    pub fn new(parts: ServiceParts) -> Services {
        Services {
            tiers: parts.tiers,
            ledger: parts.ledger,
            state: parts.state,
            secrets: parts.secrets,
            llm: parts.llm,
            tools: parts.tools,
            blobs: parts.blobs,
            workspaces: parts.workspaces,
            running: Mutex::new(HashMap::new()),
            host_id: parts.host_id,
            data_dir: parts.data_dir,
            call_durability: parts.call_durability,
            coordination_bell: tokio::sync::Notify::new(),
            egress: parts.egress,
        }
    }

    /// Append and wait until the row is committed, without blocking the async runtime.
    pub async fn ledger_durable(&self, entry: Entry) -> Result<u64, LedgerError> {
        self.ledger.append_durable_async(entry).await
    }

    /// Wait until every row appended so far is committed.
    pub async fn ledger_flush(&self) -> Result<(), LedgerError> {
        self.ledger.flush_async().await
    }

    /// The agent's registry row, or the refusal an unregistered agent gets.
    pub fn registered(&self, agent: &str) -> Result<AgentRecord, Error> {
        self.ledger.agent(agent)?.ok_or_else(|| {
            Refusal::UnknownAgent {
                agent: agent.to_string(),
            }
            .into()
        })
    }
}

/// This machine's host name (`/etc/hostname`), as a run's `runs` row names it: a resume on
/// the same machine can tell whether the run's process is gone.
pub(crate) fn machine_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "host".to_string())
    })
}

/// What the lifecycle driver, the capabilities and revokers share about one run.
pub(crate) struct RunShared {
    pub subject: Arc<Subject>,
    /// The run's id (also in `subject`).
    pub run_id: RunId,
    /// Every answer the guest saw, recorded or replayed.
    pub journal: Arc<Journal>,
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub tier: Tier,
    pub packet: Packet,
    pub lock_owner: LockOwner,
    pub workspace: PathBuf,
    pub secrets: Mutex<Option<Arc<dyn SecretSession>>>,
    revoked: AtomicBool,
    revocation: Mutex<Option<RevocationReason>>,
    phase: AtomicU8,
    started: Instant,
    /// Artifacts this run wrote (the agent's and the host's), oldest first.
    written: Mutex<Vec<ArtifactRef>>,
    /// Milliseconds after `started` of the last capability call or phase change.
    last_activity_ms: AtomicU64,
    /// What the run made the host keep, against the tier's per-run quotas.
    usage: Mutex<RunUsage>,
    /// The capability call in progress, whose rows are not in the ledger yet.
    call: Mutex<Option<&'static str>>,
}

/// The per-run counters of the quotas: ledger notes and artifact content.
#[derive(Debug, Default)]
struct RunUsage {
    /// The agent's own ledger entries (notes and decisions) and the bytes of their text.
    notes: Usage,
    /// Bytes of artifact content the agent put.
    artifact_bytes: u64,
    /// Tier changes the agent proposed (`governance.propose-tier-change`).
    proposals: u64,
}

impl RunShared {
    pub fn new(
        subject: Arc<Subject>,
        tier: Tier,
        packet: Packet,
        lock_owner: LockOwner,
        workspace: PathBuf,
        (run_id, journal): (RunId, Arc<Journal>),
    ) -> RunShared {
        RunShared {
            run_id,
            journal,
            agent_id: packet.agent_id.clone(),
            task_id: packet.task_id.clone(),
            subject,
            tier,
            packet,
            lock_owner,
            workspace,
            secrets: Mutex::new(None),
            revoked: AtomicBool::new(false),
            revocation: Mutex::new(None),
            phase: AtomicU8::new(Phase::Bootstrap as u8),
            started: Instant::now(),
            written: Mutex::new(Vec::new()),
            last_activity_ms: AtomicU64::new(0),
            usage: Mutex::new(RunUsage::default()),
            call: Mutex::new(None),
        }
    }

    /// Note the capability call in progress (`None` when it returned).
    pub fn set_call(&self, op: Option<&'static str>) {
        *self.call.lock() = op;
    }

    /// The capability call in progress.
    pub fn call(&self) -> Option<&'static str> {
        *self.call.lock()
    }

    /// Count one tier-change proposal against the run's `max_proposals_per_run`, unless that
    /// would cross it; answers the count before it when refused.
    pub fn charge_proposal(&self, max: u64) -> Result<(), u64> {
        let mut usage = self.usage.lock();
        if usage.proposals >= max {
            return Err(usage.proposals);
        }
        usage.proposals += 1;
        Ok(())
    }

    /// Count one ledger entry of the agent's of `bytes` against the run's `quota`, unless it
    /// would cross it (then nothing is counted).
    pub fn charge_note(&self, bytes: u64, quota: Quota) -> Result<(), OverQuota> {
        let mut usage = self.usage.lock();
        let after = usage.notes.after_write(true, bytes, 0);
        quota.admit(usage.notes, after)?;
        usage.notes = after;
        Ok(())
    }

    /// Count `bytes` of artifact content the agent puts against the run's `max_bytes`,
    /// unless that would cross it (then nothing is counted). Counted once the host takes the
    /// content, whether or not the task's quota then admits the reference: the content was
    /// stored either way.
    pub fn charge_artifact_bytes(&self, bytes: u64, max_bytes: u64) -> Result<(), OverQuota> {
        let mut usage = self.usage.lock();
        let before = Usage {
            entries: 0,
            bytes: usage.artifact_bytes,
        };
        let after = before.after_write(false, bytes, 0);
        let quota = Quota {
            max_entries: u64::MAX,
            max_bytes,
        };
        quota.admit(before, after)?;
        usage.artifact_bytes = after.bytes;
        Ok(())
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Mark revoked; true for the caller that did it first.
    pub fn mark_revoked(&self, reason: RevocationReason) -> bool {
        let first = !self.revoked.swap(true, Ordering::AcqRel);
        if first {
            *self.revocation.lock() = Some(reason);
        }
        first
    }

    pub fn revocation(&self) -> Option<RevocationReason> {
        self.revocation.lock().clone()
    }

    pub fn revoked_message(&self) -> String {
        match self.revocation() {
            Some(reason) => format!(
                "agent `{}` is revoked ({}: {}); no further calls are allowed",
                self.agent_id, reason.kind, reason.details
            ),
            None => format!(
                "agent `{}` is revoked; no further calls are allowed",
                self.agent_id
            ),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.journal.set_phase(phase.as_str());
        self.touch();
    }

    /// Note an artifact this run wrote.
    pub fn wrote(&self, artifact: ArtifactRef) {
        self.written.lock().push(artifact);
    }

    /// The artifacts this run wrote, latest per name: what it packages and reports. Listing
    /// the task instead would cost every run of a task with many agents the whole history.
    pub fn written(&self) -> Vec<ArtifactRef> {
        latest_per_name(self.written.lock().iter().cloned())
    }

    /// Note that the agent did something (a capability call, a phase change).
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the agent last did something.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}
