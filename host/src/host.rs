//! [`Host`]: the embeddable runtime. Build one with [`Host::builder`], register agents,
//! submit packets, run them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::artifacts::{BlobStore, DirBlobs, MemoryBlobs};
use crate::context::{CallDurability, ServiceParts, Services, Workspaces};
use crate::error::Error;
use crate::governance;
use crate::id::{AgentId, TaskId};
use crate::ledger::{AgentRecord, Ledger};
use crate::lifecycle;
use crate::llm::LlmProvider;
use crate::packet::{Handoff, Packet};
use crate::policy::TierTable;
use crate::report::RunReport;
use crate::runtime::{self, Runtime};
use crate::sandbox::{BenchInstance, Sandbox};
use crate::secrets::{EmbeddedSecrets, SecretBackend};
use crate::state::{EmbeddedState, StateStore};
use crate::tier::Tier;
use crate::tools::ToolRegistry;

/// Builds a [`Host`]. Deny-by-default: with nothing set, the host keeps everything in memory
/// (state, ledger, secrets, artifacts), has no LLM provider (llm calls answer `unavailable`),
/// no tools, no secrets, and uses the built-in tier table (`policies/tiers.toml`).
///
/// ```no_run
/// # async fn demo() -> Result<(), warden::Error> {
/// let host = warden::Host::builder().data_dir(".warden").build()?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct HostBuilder {
    data_dir: Option<PathBuf>,
    tiers: Option<TierTable>,
    state: Option<Arc<dyn StateStore>>,
    secrets: Option<Arc<dyn SecretBackend>>,
    llm: Option<Arc<dyn LlmProvider>>,
    tools: Option<ToolRegistry>,
    blobs: Option<Arc<dyn BlobStore>>,
    host_id: Option<String>,
    call_durability: CallDurability,
    health_interval: Option<std::time::Duration>,
    http_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl HostBuilder {
    /// Keep the ledger (`ledger.db`), state (`state.db`), secrets (`secrets.json`), artifacts,
    /// agent workspaces and the compiled-component cache under `dir`. Default: in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The tier table. Default: the built-in table.
    pub fn tiers(mut self, tiers: TierTable) -> Self {
        self.tiers = Some(tiers);
        self
    }

    /// The runtime-state backend. Default: embedded SQLite in the data directory, else
    /// [`MemoryState`](crate::state::MemoryState).
    pub fn state(mut self, state: Arc<dyn StateStore>) -> Self {
        self.state = Some(state);
        self
    }

    /// The secrets backend. Default: embedded (in the data directory, else in memory).
    pub fn secrets(mut self, secrets: Arc<dyn SecretBackend>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// The LLM provider agents reach through `warden:agent/llm`. Default: none.
    pub fn llm(mut self, llm: Arc<dyn LlmProvider>) -> Self {
        self.llm = Some(llm);
        self
    }

    /// The tools agents may invoke. Default: none.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Where artifact content lives (any byte store: names, authorship and order are the
    /// state store's). Default: `blobs/` in the data directory, else memory. The host calls
    /// it on tokio's blocking pool, so a slow store never holds up a phase's deadline.
    pub fn blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// When capability-call rows are committed. Default: [`CallDurability::Batched`].
    pub fn call_durability(mut self, durability: CallDurability) -> Self {
        self.call_durability = durability;
        self
    }

    /// This host's name in lock owner tokens and the ledger. Default: `<hostname>-<pid>`.
    pub fn host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }

    /// Check every backend every `interval` in a background task: [`Host::health_status`]
    /// then answers from the latest round without I/O, the checks probe (and so may close)
    /// half-open circuit breakers, and the ledger gets a `backend.health` row each time a
    /// backend turns unhealthy or healthy again (not per check). Default: off. Needs a tokio
    /// runtime at [`HostBuilder::build`]; the task stops when the host is dropped.
    pub fn health_interval(mut self, interval: std::time::Duration) -> Self {
        self.health_interval = Some(interval);
        self
    }

    /// Certificate authorities agents' HTTPS requests trust besides the Mozilla roots
    /// (`webpki-roots`), DER-encoded: an operator's own CA. Default: none.
    pub fn http_roots(
        mut self,
        roots: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        self.http_roots.extend(roots);
        self
    }

    /// Open the backends and start the engine.
    pub fn build(self) -> Result<Host, Error> {
        let egress =
            crate::egress::Connector::new(&self.http_roots).map_err(|e| Error::Config {
                origin: "`http_roots`".into(),
                message: format!("a certificate cannot be trusted: {e}"),
            })?;
        let tiers = match self.tiers {
            Some(tiers) => tiers,
            None => TierTable::builtin()?,
        };
        let storage = match &self.data_dir {
            Some(dir) => Storage::on_disk(dir)?,
            None => Storage::in_memory()?,
        };
        let Storage {
            ledger,
            blobs,
            cache_dir,
            workspaces,
            ..
        } = storage;
        let blobs = self.blobs.unwrap_or(blobs);
        let state = match (self.state, storage.state) {
            (Some(state), _) => state,
            (None, StateDefault::File(path)) => Arc::new(EmbeddedState::open(path)?),
            (None, StateDefault::Memory) => Arc::new(crate::state::MemoryState::new()),
        };
        let secrets = match (self.secrets, storage.secrets) {
            (Some(secrets), _) => secrets,
            (None, StateDefault::File(path)) => Arc::new(EmbeddedSecrets::open(path)?),
            (None, StateDefault::Memory) => Arc::new(EmbeddedSecrets::in_memory()),
        };
        let runtime = Runtime::new(cache_dir)?;
        let sandbox = Sandbox::new(runtime, &tiers)?;
        let host_id = self.host_id.unwrap_or_else(default_host_id);
        let health = match self.health_interval {
            Some(interval) => Some(Arc::new(start_health_monitor(
                interval,
                crate::health::monitor::Backends {
                    state: state.clone(),
                    secrets: secrets.clone(),
                    llm: self.llm.clone(),
                    ledger: ledger.clone(),
                    host_id: host_id.clone(),
                },
            )?)),
            None => None,
        };
        let services = Services::new(ServiceParts {
            tiers,
            ledger,
            state,
            secrets,
            llm: self.llm,
            tools: self.tools.unwrap_or_else(ToolRegistry::empty),
            blobs,
            workspaces,
            host_id,
            data_dir: self.data_dir,
            call_durability: self.call_durability,
            egress,
        });
        Ok(Host {
            services: Arc::new(services),
            sandbox: Arc::new(sandbox),
            health,
        })
    }
}

fn start_health_monitor(
    interval: std::time::Duration,
    backends: crate::health::monitor::Backends,
) -> Result<crate::health::monitor::HealthMonitor, Error> {
    let invalid = |message: &str| Error::Config {
        origin: "`health_interval`".into(),
        message: message.into(),
    };
    if interval < std::time::Duration::from_millis(1) {
        return Err(invalid("it is zero: expected at least 1ms, e.g. `10s`"));
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(invalid(
            "the periodic health checks run on tokio: build the host inside a tokio runtime",
        ));
    }
    Ok(crate::health::monitor::HealthMonitor::spawn(
        interval, backends,
    ))
}

/// Where the embedded defaults keep things: the data directory, or memory.
struct Storage {
    ledger: Ledger,
    blobs: Arc<dyn BlobStore>,
    cache_dir: Option<PathBuf>,
    workspaces: Workspaces,
    state: StateDefault,
    secrets: StateDefault,
}

/// An embedded backend's location, opened only when no backend was given.
enum StateDefault {
    File(PathBuf),
    Memory,
}

impl Storage {
    fn on_disk(dir: &Path) -> Result<Storage, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        Ok(Storage {
            ledger: Ledger::open(&dir.join("ledger.db"))?,
            blobs: Arc::new(DirBlobs::open(&dir.join("blobs"))?),
            cache_dir: Some(dir.join("cache")),
            workspaces: Workspaces::Dir(dir.join("workspaces")),
            state: StateDefault::File(dir.join("state.db")),
            secrets: StateDefault::File(dir.join("secrets.json")),
        })
    }

    fn in_memory() -> Result<Storage, Error> {
        Ok(Storage {
            ledger: Ledger::in_memory()?,
            blobs: Arc::new(MemoryBlobs::default()),
            cache_dir: None,
            workspaces: Workspaces::Temp(
                tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?,
            ),
            state: StateDefault::Memory,
            secrets: StateDefault::Memory,
        })
    }
}

fn default_host_id() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".to_string());
    format!("{name}-{}", std::process::id())
}

/// An embeddable Warden host.
///
/// ```no_run
/// use warden::{Host, Packet, Tier};
///
/// # async fn demo() -> Result<(), warden::Error> {
/// let host = Host::builder().build()?;
/// let component = std::fs::read("target/wasm32-wasip2/debug/hello.wasm").unwrap_or_default();
/// host.register_agent("hello", Tier::Operator, Some(&component), "embedder")?;
/// let packet = Packet::from_json(r#"{"agent_id":"hello","task_id":"t-1","objective":"greet","deliverables":["hello.txt"]}"#)?;
/// host.submit_packet(&packet).await?;
/// let report = host.run("hello", &component).await?;
/// assert!(report.outcome.is_success());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Host {
    pub(crate) services: Arc<Services>,
    pub(crate) sandbox: Arc<Sandbox>,
    /// The periodic health checks, when configured; they stop when the last clone is dropped.
    health: Option<Arc<crate::health::monitor::HealthMonitor>>,
}

impl Host {
    /// A builder with the embedded, deny-by-default configuration.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The audit ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.services.ledger
    }

    /// The runtime-state backend.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.services.state
    }

    /// The secrets backend (operator access: put/list).
    pub fn secrets(&self) -> &Arc<dyn SecretBackend> {
        &self.services.secrets
    }

    /// The tier table in force.
    pub fn tiers(&self) -> &TierTable {
        &self.services.tiers
    }

    /// The data directory, if any.
    pub fn data_dir(&self) -> Option<&Path> {
        self.services.data_dir.as_deref()
    }

    /// Register an agent (or re-register it) at a tier, bound to a component when given.
    /// The component is compiled and checked against the tier now, so a component that
    /// could never run at that tier is refused before it is recorded.
    pub fn register_agent(
        &self,
        agent: &str,
        tier: Tier,
        component: Option<&[u8]>,
        actor: &str,
    ) -> Result<AgentRecord, Error> {
        let agent = &AgentId::new(agent)?;
        let digest = match component {
            Some(bytes) => {
                let digest = runtime::digest(bytes);
                let loaded = self
                    .sandbox
                    .runtime
                    .component(&digest, bytes, agent)
                    .map_err(Error::from)
                    .and_then(|compiled| {
                        Ok(self.sandbox.load_gate(
                            &self.services.tiers,
                            agent,
                            tier,
                            (&digest, bytes, &compiled),
                        )?)
                    });
                let subject = crate::governance::host_subject(
                    &self.services,
                    agent,
                    tier,
                    None,
                    Some(&digest),
                );
                if let Err(error) = loaded {
                    // A refused load is recorded like a refused run, though nothing is bound.
                    let code = match &error {
                        Error::Refused(refusal) => refusal.code(),
                        _ => "INVALID_COMPONENT",
                    };
                    let entry = crate::governance::action(
                        &subject,
                        None,
                        "agent.register",
                        "refused",
                        Some((code, crate::text::clip(&error.to_string(), 2048))),
                    );
                    self.services.ledger.append(entry);
                    return Err(error);
                }
                if let Ok(Some(signer)) = &loaded {
                    self.services
                        .ledger
                        .append(crate::governance::signature_row(&subject, None, signer));
                }
                // Kept by digest so the agent can later be run by name (`orchestrate`).
                self.services.blobs.put(bytes)?;
                Some(digest)
            }
            None => None,
        };
        self.services
            .ledger
            .register_agent(agent, tier, digest.as_deref(), actor)?;
        self.services
            .ledger
            .agent(agent)?
            .ok_or_else(|| Error::Invalid(format!("agent `{agent}` vanished after registration")))
    }

    /// The component an agent was registered with, from the blob store.
    pub fn registered_component(&self, agent: &str) -> Result<Vec<u8>, Error> {
        let record = self.services.registered(agent)?;
        let Some(digest) = record.component_digest else {
            return Err(Error::Invalid(format!(
                "agent `{agent}` is registered without a component: register it with `--component <file.wasm>`"
            )));
        };
        self.services.blobs.get(&digest)?.ok_or_else(|| {
            Error::Invalid(format!(
                "the component `{digest}` of agent `{agent}` is not in this host's blob store (it was registered by another host or before components were kept): register it again with `--component <file.wasm>`"
            ))
        })
    }

    /// What the signature of `bytes` says against the tier table's trusted keys (cached by
    /// digest, as a load checks it).
    pub fn signature(&self, bytes: &[u8]) -> crate::signing::Verdict {
        let digest = self.sandbox.runtime.digest_of(bytes, None);
        self.sandbox.signatures.verdict(&digest, bytes)
    }

    /// The trusted keys of the tier table (`keys/` beside it).
    pub fn keyring(&self) -> &crate::signing::Keyring {
        self.sandbox.signatures.keyring()
    }

    pub(crate) fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Change an agent's tier (recorded in `promotions`).
    ///
    /// The agent's secrets identity moves with it at once (Vault: its AppRole role gets the
    /// new tier's policies and token TTL), so no new token is issued at the old tier; tokens
    /// already issued keep theirs until they expire or are revoked. If the secrets backend
    /// cannot be reached, the tier change stands (it is logged) and the identity follows at
    /// the agent's next bootstrap, whose login binds it.
    pub async fn set_tier(
        &self,
        agent: &str,
        tier: Tier,
        reason: &str,
        actor: &str,
    ) -> Result<(), Error> {
        self.services.registered(agent)?;
        self.services.ledger.set_tier(agent, tier, reason, actor)?;
        let ttl = self.services.tiers.policy(tier).secrets_ttl;
        if let Err(error) = self.services.secrets.bind_agent(agent, tier, ttl).await {
            tracing::warn!(
                agent,
                %tier,
                %error,
                "tier changed; the secrets identity follows at the agent's next login"
            );
        }
        Ok(())
    }

    /// An agent's history, newest first: its runs, its violations and its tier changes (each
    /// at most `limit`), from the ledger.
    pub fn agent_history(&self, agent: &str, limit: usize) -> Result<AgentHistory, Error> {
        let record = self.services.registered(agent)?;
        let ledger = &self.services.ledger;
        let rows = |table| {
            ledger.query(&crate::ledger::LedgerQuery {
                table: Some(table),
                agent_id: Some(agent.to_string()),
                descending: true,
                limit: Some(limit),
                ..crate::ledger::LedgerQuery::default()
            })
        };
        Ok(AgentHistory {
            agent: record,
            runs: ledger.runs(&crate::ledger::RunFilter {
                agent: Some(agent.to_string()),
                limit: limit.max(1),
                ..crate::ledger::RunFilter::default()
            })?,
            violations: rows(crate::ledger::Table::Violations)?,
            tier_changes: rows(crate::ledger::Table::Promotions)?,
        })
    }

    /// The registered agents.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        Ok(self.services.ledger.agents()?)
    }

    /// Store an instruction packet for its agent (`agent:{id}:packet`).
    pub async fn submit_packet(&self, packet: &Packet) -> Result<(), Error> {
        packet.validate()?;
        if let Err(error) = self.services.state.put_packet(packet).await {
            if !error.is_unavailable() {
                return Err(error.into());
            }
            // The run cannot start without its state store: refused like a bootstrap, and
            // recorded, though nothing of the agent ran.
            let refusal = crate::error::Refusal::StateUnavailable {
                agent: packet.agent_id.to_string(),
                reason: error.to_string(),
            };
            governance::record_host_refusal(
                &self.services,
                &packet.agent_id,
                Some(&packet.task_id),
                "packet.submit",
                &refusal,
            )
            .await;
            return Err(refusal.into());
        }
        governance::record_host_action(
            &self.services,
            &packet.agent_id,
            Some(&packet.task_id),
            "packet.submit",
            &packet.objective,
        )
        .await?;
        Ok(())
    }

    /// Run an agent's whole governed lifecycle with the given component bytes.
    pub async fn run(&self, agent: &str, component: &[u8]) -> Result<RunReport, Error> {
        let agent = AgentId::new(agent)?;
        lifecycle::run(
            self.services.clone(),
            self.sandbox.clone(),
            &agent,
            component,
            lifecycle::RunMode::Live,
        )
        .await
    }

    /// [`Host::run`] under a run id chosen before the run (a pipeline records it first).
    pub(crate) async fn run_as(
        &self,
        agent: &AgentId,
        component: &[u8],
        run_id: crate::id::RunId,
    ) -> Result<RunReport, Error> {
        lifecycle::run(
            self.services.clone(),
            self.sandbox.clone(),
            agent,
            component,
            lifecycle::RunMode::LiveAs(run_id),
        )
        .await
    }

    /// Approve the task's pending run (the approval gate after PLAN).
    pub async fn approve(&self, task: &str, approver: &str) -> Result<(), Error> {
        governance::approve(&self.services, &TaskId::new(task)?, approver).await
    }

    /// Revoke an agent: a run of it in this host stops within one epoch tick; every later
    /// bootstrap, on any host sharing the state backend, refuses it.
    pub async fn revoke(&self, agent: &str, details: &str, actor: &str) -> Result<(), Error> {
        governance::revoke_agent(&self.services, &AgentId::new(agent)?, details, actor).await
    }

    /// Lift an agent's revocation: the only act that does, recorded in the ledger with who
    /// did it and why. Refused when the agent is not revoked.
    pub async fn reinstate(&self, agent: &str, reason: &str, actor: &str) -> Result<(), Error> {
        governance::reinstate_agent(&self.services, &AgentId::new(agent)?, reason, actor).await
    }

    /// The agent's revocation, if it stands: the state store's record, else the ledger's
    /// (a revocation the state store lost still counts).
    pub async fn revocation(
        &self,
        agent: &str,
    ) -> Result<Option<crate::packet::Revocation>, Error> {
        governance::standing(&self.services, &AgentId::new(agent)?).await
    }

    /// The latest handoff object of a task.
    pub async fn handoff(&self, task: &str) -> Result<Option<Handoff>, Error> {
        Ok(self.services.state.handoff(&TaskId::new(task)?).await?)
    }

    /// Agents running in this host right now.
    pub fn running(&self) -> Vec<String> {
        self.services
            .running
            .lock()
            .keys()
            .map(|id| id.to_string())
            .collect()
    }
}

/// What [`Host::agent_history`] reads of an agent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentHistory {
    /// Its registration.
    pub agent: AgentRecord,
    /// Its runs, newest first.
    pub runs: Vec<crate::ledger::RunRow>,
    /// Its `violations` rows, newest first.
    pub violations: Vec<crate::ledger::LedgerRow>,
    /// Its `promotions` rows (registration, promotions, demotions), newest first; each
    /// names who or which rule changed the tier.
    pub tier_changes: Vec<crate::ledger::LedgerRow>,
}

/// What `warden compile` tells about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentSummary {
    /// `sha256:<hex>` of the component's bytes.
    pub digest: String,
    /// `warden:agent` interfaces it imports.
    pub imports: Vec<String>,
    /// WASI interfaces it imports.
    pub wasi: Vec<String>,
    /// Imports that are neither (refused at load).
    pub unknown: Vec<String>,
    /// The lowest tier that can run it: its grant covers every import and the component links
    /// and exports the agent world there. `None` when no tier can; `unrunnable` says why.
    pub lowest_tier: Option<Tier>,
    /// Why no tier can run it, when `lowest_tier` is `None`.
    pub unrunnable: Option<String>,
    /// The compiled artifact in the cache, if cached on disk.
    pub cached: Option<PathBuf>,
}

impl Host {
    /// Compile a component into the cache and summarize its imports, and the lowest tier that
    /// can run it: the one whose load gate passes and whose linker instantiates it, exactly
    /// as BOOTSTRAP will.
    pub fn inspect_component(&self, bytes: &[u8], origin: &str) -> Result<ComponentSummary, Error> {
        let digest = runtime::digest(bytes);
        let component = self.sandbox.runtime.component(&digest, bytes, origin)?;
        let summary = runtime::imports::summarize(self.sandbox.runtime.engine(), &component);
        let mut lowest_tier = None;
        let mut unrunnable = None;
        for tier in Tier::ALL {
            let linked = self
                .sandbox
                .load_gate(
                    &self.services.tiers,
                    origin,
                    tier,
                    (&digest, bytes, &component),
                )
                .map_err(|refusal| refusal.to_string())
                .and_then(|_signer| {
                    self.sandbox
                        .instance_pre(&digest, tier, &component)
                        .map(drop)
                });
            match linked {
                Ok(()) => {
                    lowest_tier = Some(tier);
                    unrunnable = None;
                    break;
                }
                // The highest tier's reason is the one that no tier gets past.
                Err(reason) => unrunnable = Some(reason),
            }
        }
        Ok(ComponentSummary {
            imports: summary
                .warden
                .iter()
                .map(|i| i.name().to_string())
                .collect(),
            wasi: summary.wasi,
            unknown: summary.unknown,
            lowest_tier,
            unrunnable,
            cached: self.sandbox.runtime.cached_file(&digest),
            digest,
        })
    }
}

impl Host {
    /// An artifact's content by digest (verified against the digest).
    pub fn artifact(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.services.blobs.get(digest)?)
    }

    /// One page of a task's artifacts, the latest version of each name, sorted by name: up to
    /// `limit` whose names come after `after` (from the first with `None`). A page costs its
    /// size, not the task's.
    pub async fn artifacts(
        &self,
        task: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::artifacts::ArtifactRef>, Error> {
        let task = TaskId::new(task)?;
        Ok(self
            .services
            .state
            .artifact_page(&task, after, limit)
            .await?)
    }

    /// The latest version of a task's artifact `name`, if it has one.
    pub async fn artifact_ref(
        &self,
        task: &str,
        name: &str,
    ) -> Result<Option<crate::artifacts::ArtifactRef>, Error> {
        Ok(self
            .services
            .state
            .artifact(&TaskId::new(task)?, name)
            .await?)
    }
}

impl Host {
    /// Benchmark access to governed instantiation; not part of the stable API.
    #[doc(hidden)]
    pub fn bench_instance(
        &self,
        agent: &str,
        tier: Tier,
        bytes: &[u8],
        packet: Packet,
    ) -> Result<BenchInstance, Error> {
        self.bench(agent, tier, bytes, packet, true)
    }

    /// [`Host::bench_instance`] whose calls are not journaled: the baseline of what the
    /// journal costs; not part of the stable API.
    #[doc(hidden)]
    pub fn bench_instance_unjournaled(
        &self,
        agent: &str,
        tier: Tier,
        bytes: &[u8],
        packet: Packet,
    ) -> Result<BenchInstance, Error> {
        self.bench(agent, tier, bytes, packet, false)
    }

    fn bench(
        &self,
        agent: &str,
        tier: Tier,
        bytes: &[u8],
        packet: Packet,
        journaled: bool,
    ) -> Result<BenchInstance, Error> {
        BenchInstance::new(
            self.services.clone(),
            self.sandbox.clone(),
            agent,
            tier,
            bytes,
            packet,
            journaled,
        )
    }
}

impl Host {
    /// Check every configured backend now.
    pub async fn health(&self) -> crate::health::HealthReport {
        crate::health::report_of(
            &self.services.state,
            &self.services.secrets,
            self.services.llm.as_ref(),
        )
        .await
    }

    /// The latest round of the periodic health checks, without I/O: `None` when
    /// [`HostBuilder::health_interval`] is off or the first round has not finished.
    pub fn health_status(&self) -> Option<crate::health::HealthReport> {
        self.health.as_ref().and_then(|h| h.latest())
    }
}

/// A tier change an architect proposed (`governance.propose-tier-change`), and what a person
/// made of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TierChangeRequest {
    /// The request's id (`tc-…`).
    pub request: String,
    /// The agent whose tier would change.
    pub agent: String,
    /// Its tier when proposed.
    pub from: String,
    /// The tier proposed.
    pub to: String,
    /// Why, as the proposer wrote it.
    pub reason: String,
    /// The architect that proposed it, and the run it did so in.
    pub proposer: String,
    /// See `proposer`.
    pub run: String,
    /// The proposer's task.
    pub task: String,
    /// When it was proposed.
    pub proposed_at: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided it.
    pub decided_by: Option<String>,
}

impl Host {
    /// Every tier change architects proposed, newest first.
    pub fn tier_change_requests(&self) -> Result<Vec<TierChangeRequest>, Error> {
        let ledger = &self.services.ledger;
        let rows = |kind: &str| {
            ledger.query(&crate::ledger::LedgerQuery {
                table: Some(crate::ledger::Table::Actions),
                kind: Some(kind.to_string()),
                descending: true,
                limit: Some(10_000),
                ..crate::ledger::LedgerQuery::default()
            })
        };
        let details = |row: &crate::ledger::LedgerRow| {
            row.fields
                .get("details")
                .and_then(serde_json::Value::as_str)
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .unwrap_or_default()
        };
        let decided: std::collections::HashMap<String, (String, String)> = rows(DECIDE)?
            .iter()
            .map(details)
            .filter_map(|d| {
                Some((
                    d["request"].as_str()?.to_string(),
                    (
                        d["status"].as_str()?.to_string(),
                        d["by"].as_str()?.to_string(),
                    ),
                ))
            })
            .collect();
        Ok(rows(crate::capabilities::PROPOSE)?
            .iter()
            .filter_map(|row| {
                let d = details(row);
                let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                let request = d["request"].as_str()?.to_string();
                let decision = decided.get(&request);
                Some(TierChangeRequest {
                    agent: text("agent"),
                    from: text("from"),
                    to: text("to"),
                    reason: text("reason"),
                    proposer: text("proposer"),
                    run: text("run"),
                    task: row.task_id.clone().unwrap_or_default(),
                    proposed_at: row.timestamp.clone(),
                    status: decision.map_or_else(|| "pending".to_string(), |(s, _)| s.clone()),
                    decided_by: decision.map(|(_, by)| by.clone()),
                    request,
                })
            })
            .collect())
    }

    /// Approve (or reject) a proposed tier change: only a person does, once (the decision
    /// is one atomic step in the state store, so two deciders cannot both win). An approval
    /// changes the tier as [`Host::set_tier`] does, naming the proposal in the
    /// `promotions` row.
    pub async fn decide_tier_change(
        &self,
        request: &str,
        approve: bool,
        by: &str,
        comment: &str,
    ) -> Result<TierChangeRequest, Error> {
        let found = self
            .tier_change_requests()?
            .into_iter()
            .find(|r| r.request == request)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no tier change request `{request}`; `warden agents changes` lists them"
                ))
            })?;
        // The decision is kept under the proposer's task, as a gate's under its run.
        let task = found.task.clone();
        let decision = crate::packet::GateDecision {
            run: TaskId::new(&task)?,
            stage: request.to_string(),
            round: 0,
            approved: approve,
            decided_by: by.to_string(),
            comment: comment.to_string(),
            decided_at: crate::packet::now_rfc3339(),
            timed_out: false,
        };
        if let Some(first) = self.services.state.decide_gate(&decision).await? {
            return Err(Error::Invalid(format!(
                "tier change request `{request}` was already {} by {}; a request is decided once",
                if first.approved {
                    "approved"
                } else {
                    "rejected"
                },
                first.decided_by
            )));
        }
        let to: Tier = found.to.parse().map_err(|_| {
            Error::Invalid(format!("request `{request}` names tier `{}`", found.to))
        })?;
        if approve {
            let reason = format!(
                "proposed by {} in run {} ({}); approved by {by}{}",
                found.proposer,
                found.run,
                found.reason,
                if comment.is_empty() {
                    String::new()
                } else {
                    format!(": {comment}")
                }
            );
            self.set_tier(&found.agent, to, &reason, by).await?;
        }
        let status = if approve { "approved" } else { "rejected" };
        let subject =
            crate::governance::host_subject(&self.services, &found.agent, to, Some(&task), None);
        let row = crate::ledger::ActionRecord::new(
            subject,
            DECIDE,
            format!("tier change {request} {status} by {by}"),
        )
        .details(
            serde_json::json!({ "request": request, "status": status, "by": by, "comment": comment })
                .to_string(),
        );
        self.services
            .ledger_durable(crate::ledger::Entry::Action(row))
            .await?;
        Ok(TierChangeRequest {
            status: status.to_string(),
            decided_by: Some(by.to_string()),
            ..found
        })
    }
}

/// The action row of a person's decision on a proposed tier change.
const DECIDE: &str = "governance.decide";
