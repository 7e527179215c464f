//! A capability's host functions without a guest (Spin's `factors-test`): an [`AgentCtx`] over
//! the in-memory state store, ledger, secrets and blobs, with no engine, so every capability
//! module tests its gate order, its refusals and what they record, and its budget charges by
//! calling its `Host` methods directly.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;

use super::AgentCtx;
use crate::artifacts::MemoryBlobs;
use crate::context::{CallDurability, RunShared, ServiceParts, Services, Workspaces};
use crate::governance::{Governor, host_subject};
use crate::interface::Interface;
use crate::ledger::{Ledger, LedgerQuery, Table};
use crate::llm::LlmProvider;
use crate::packet::Packet;
use crate::phase::Phase;
use crate::policy::TierTable;
use crate::runtime::limits::{GuestLimits, Meter};
use crate::secrets::{EmbeddedSecrets, SecretBackend};
use crate::state::{ErrorCounts, MemoryState, StateStore};
use crate::tier::Tier;
use crate::tools::ToolRegistry;

/// The built-in tier table with every `from` replaced by `to`, in every tier that has it, so
/// the table stays monotonic (`&[("max_keys = 1000", "max_keys = 2")]`).
pub(crate) fn tiers_with(changes: &[(&str, &str)]) -> TierTable {
    let mut text = crate::policy::BUILTIN_TIERS_TOML.to_string();
    for (from, to) in changes {
        assert!(
            text.contains(from),
            "the built-in tier table has no `{from}`"
        );
        text = text.replace(from, to);
    }
    TierTable::from_toml_str(&text).expect("the changed tier table")
}

/// The services of a test host: in memory, deny-by-default, no engine.
pub(crate) struct TestEnv {
    tiers: TierTable,
    llm: Option<Arc<dyn LlmProvider>>,
    tools: ToolRegistry,
    secrets: Arc<dyn SecretBackend>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            tiers: TierTable::builtin().expect("the built-in tier table"),
            llm: None,
            tools: ToolRegistry::empty(),
            secrets: Arc::new(EmbeddedSecrets::in_memory()),
        }
    }

    pub fn tiers(mut self, tiers: TierTable) -> TestEnv {
        self.tiers = tiers;
        self
    }

    pub fn llm(mut self, llm: Arc<dyn LlmProvider>) -> TestEnv {
        self.llm = Some(llm);
        self
    }

    pub fn tools(mut self, tools: ToolRegistry) -> TestEnv {
        self.tools = tools;
        self
    }

    pub fn secrets(mut self, secrets: Arc<dyn SecretBackend>) -> TestEnv {
        self.secrets = secrets;
        self
    }

    /// Agent `agent-1` at `tier` in EXECUTE of task `task-1`, with `packet` merged into a
    /// minimal packet (`json!({"constraints": {"forbidden": ["tool:rm*"]}})`). A tier that
    /// links secrets is logged in to the secrets backend, as BOOTSTRAP does.
    pub async fn agent(self, tier: Tier, packet: serde_json::Value) -> TestAgent {
        let workspace = tempfile::tempdir().expect("temporary workspace");
        let services = Arc::new(Services::new(ServiceParts {
            tiers: self.tiers,
            ledger: Ledger::in_memory().expect("in-memory ledger"),
            state: Arc::new(MemoryState::new()),
            secrets: self.secrets,
            llm: self.llm,
            tools: self.tools,
            blobs: Arc::new(MemoryBlobs::default()),
            workspaces: Workspaces::Dir(workspace.path().to_path_buf()),
            host_id: "test-host".into(),
            data_dir: None,
            call_durability: CallDurability::EveryCall,
            egress: crate::egress::Connector::new(&[]).expect("tls configuration"),
        }));
        let mut agent = TestAgent::join(services, "agent-1", tier, packet).await;
        agent._workspace = Some(workspace);
        agent
    }
}

/// One agent's context and what its calls left behind.
pub(crate) struct TestAgent {
    pub ctx: AgentCtx,
    pub services: Arc<Services>,
    _workspace: Option<tempfile::TempDir>,
}

impl TestAgent {
    /// Another agent of the same task on the same services (`task-1`).
    pub async fn peer(&self, agent: &str, tier: Tier) -> TestAgent {
        TestAgent::join(self.services.clone(), agent, tier, serde_json::json!({})).await
    }

    async fn join(
        services: Arc<Services>,
        agent: &str,
        tier: Tier,
        packet: serde_json::Value,
    ) -> TestAgent {
        let mut json = serde_json::json!({
            "agent_id": agent,
            "task_id": "task-1",
            "objective": "test a capability",
        });
        if let (Some(map), Some(extra)) = (json.as_object_mut(), packet.as_object()) {
            for (key, value) in extra {
                map.insert(key.clone(), value.clone());
            }
        }
        let packet = Packet::from_json(&json.to_string()).expect("test packet");
        let subject = host_subject(
            &services,
            &packet.agent_id,
            tier,
            Some(&packet.task_id),
            Some("sha256:0000"),
        );
        let agent_workspace: PathBuf = services.workspaces.for_agent(&packet.agent_id);
        std::fs::create_dir_all(&agent_workspace).expect("agent workspace");
        let run = Arc::new(RunShared::new(
            subject,
            tier,
            packet,
            crate::state::LockOwner::new("test-owner").expect("owner"),
            agent_workspace,
            {
                let run_id = crate::id::RunId::generate();
                let journal = Arc::new(crate::journal::Journal::recording(run_id.as_str()));
                (run_id, journal)
            },
        ));
        run.set_phase(Phase::Execute);
        let policy = services.tiers.policy(tier);
        let session = if policy.interfaces.contains(Interface::Secrets) {
            let session = services
                .secrets
                .login(agent, tier, policy.secrets_ttl)
                .await
                .expect("secrets login");
            Some(session)
        } else {
            None
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ctx = AgentCtx {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: GuestLimits::new(policy.memory_bytes, policy.table_elements, policy.instances),
            egress: super::Egress::new(&services, &run, deadline),
            gov: Governor::new(services.clone(), run, session),
            meter: Meter::new(deadline),
            quota: super::WorkspaceQuota::with_usage(policy, 0, 0),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
        };
        TestAgent {
            ctx,
            services,
            _workspace: None,
        }
    }

    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.services.state
    }

    /// `(action, decision, error_type)` of every row this agent's calls wrote, oldest first.
    pub fn actions(&self) -> Vec<(String, String, Option<String>)> {
        self.rows(Table::Actions)
            .into_iter()
            .map(|row| {
                let field = |name: &str| {
                    row.fields
                        .get(name)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                };
                (
                    row.kind.clone(),
                    field("decision").unwrap_or_default(),
                    field("error_type"),
                )
            })
            .collect()
    }

    /// The `details` JSON of this agent's `op` rows that have one, oldest first.
    pub fn details(&self, op: &str) -> Vec<serde_json::Value> {
        self.rows(Table::Actions)
            .into_iter()
            .filter(|row| row.kind == op)
            .filter_map(|row| {
                let details = row.fields.get("details")?.as_str()?;
                serde_json::from_str(details).ok()
            })
            .collect()
    }

    /// The violation types recorded for this agent, oldest first.
    pub fn violations(&self) -> Vec<String> {
        self.rows(Table::Violations)
            .into_iter()
            .map(|row| row.kind)
            .collect()
    }

    fn rows(&self, table: Table) -> Vec<crate::ledger::LedgerRow> {
        // Reads' rows wait in the journal for the next effect; a test reads them now.
        let held = self.ctx.gov.run.journal.take_pending();
        if !held.is_empty() {
            self.services
                .ledger
                .try_append_all(held)
                .map_err(|_| "the ledger's queue is full")
                .expect("held rows");
        }
        self.services.ledger.flush().expect("ledger flush");
        self.services
            .ledger
            .query(&LedgerQuery {
                table: Some(table),
                agent_id: Some(self.ctx.gov.agent_id().to_string()),
                limit: Some(10_000),
                ..Default::default()
            })
            .expect("ledger query")
    }

    /// The agent's error-budget counters.
    pub async fn errors(&self) -> ErrorCounts {
        self.services
            .state
            .error_counts(self.ctx.gov.agent_id())
            .await
            .expect("error counts")
    }

    pub fn is_revoked(&self) -> bool {
        self.ctx.gov.run.is_revoked()
    }
}
