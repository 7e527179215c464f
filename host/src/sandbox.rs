//! The sandbox: the wasmtime engine and compiled-component cache ([`Runtime`]), one linker
//! per tier with exactly the interfaces the tier grants, the `InstancePre` cache, the load-time
//! import gate, and the store of one run (deny-by-default WASI, limits, epoch deadlines).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::ArchitectPre;
use crate::bindings::warden::agent::types as wit;
use crate::capabilities::{AgentCtx, Egress, WorkspaceQuota, raise_open_file_limit, tier_linker};
use crate::context::{RunShared, Services};
use crate::error::{Error, Refusal};
use crate::governance::{Governor, host_subject};
use crate::packet::Packet;
use crate::phase::Phase;
use crate::policy::TierTable;
use crate::runtime::imports::{self, ImportRefusal};
use crate::runtime::limits::{GuestLimits, Interrupt, Meter};
use crate::runtime::output::CappedOutput;
use crate::runtime::{Runtime, digest};
use crate::state::LockOwner;
use crate::tier::Tier;

/// Bytes one `wasi:random` call may ask for: wasmtime-wasi allocates them on the host before
/// the guest sees them (its default allows 64 MiB a call).
const RANDOM_BYTES_PER_CALL: u64 = 1 << 20;

/// The engine, the per-tier linkers and the pre-instantiated components of one host.
pub(crate) struct Sandbox {
    pub runtime: Runtime,
    linkers: Vec<Linker<AgentCtx>>,
    pres: Mutex<HashMap<(String, Tier), ArchitectPre<AgentCtx>>>,
    /// Signature verdicts by component digest, against the tier table's trusted keys.
    pub signatures: crate::signing::Signatures,
}

impl Sandbox {
    /// Start the engine and link each tier's grant. Raises the process's open-file limit to
    /// its hard limit, half of which agents may hold.
    pub fn new(runtime: Runtime, tiers: &TierTable) -> Result<Sandbox, Error> {
        let nofile = raise_open_file_limit();
        tracing::debug!(nofile, "open-file limit");
        let mut linkers = Vec::with_capacity(Tier::ALL.len());
        for tier in Tier::ALL {
            let linker =
                tier_linker(runtime.engine(), tiers.policy(tier)).map_err(|e| Error::Link {
                    tier,
                    message: format!("{e:#}"),
                })?;
            linkers.push(linker);
        }
        Ok(Sandbox {
            runtime,
            linkers,
            pres: Mutex::new(HashMap::new()),
            signatures: crate::signing::Signatures::new(tiers.keyring().clone()),
        })
    }

    /// The load-time gate: refuse a component the tier requires a signature of and that
    /// lacks a trusted one, or whose imports exceed the tier. The trusted key that signed it
    /// (the first of the tier's, or of all when the tier requires none), to record.
    pub fn load_gate(
        &self,
        tiers: &TierTable,
        agent: &str,
        tier: Tier,
        loaded: (&str, &[u8], &Component),
    ) -> Result<Option<crate::signing::TrustedKey>, Refusal> {
        let (digest, bytes, component) = loaded;
        let requirement = &tiers.policy(tier).signature;
        let signer = self
            .signatures
            .check(requirement, digest, bytes)
            .map_err(|refusal| {
                let (why, code) = match refusal {
                    crate::signing::SignatureRefusal::Missing => {
                        ("it is not signed".to_string(), "SIGNATURE_REQUIRED")
                    }
                    crate::signing::SignatureRefusal::Untrusted(why) => (why, "SIGNATURE_INVALID"),
                };
                Refusal::Signature {
                    code,
                    agent: agent.to_string(),
                    digest: digest.to_string(),
                    tier,
                    requirement: requirement.to_string(),
                    why,
                }
            })?;
        let summary = imports::summarize(self.runtime.engine(), component);
        imports::check(&summary, tier, tiers).map_err(|refusal| match refusal {
            ImportRefusal::AboveTier { interface, lowest } => Refusal::ImportAboveTier {
                agent: agent.to_string(),
                interface: interface.to_string(),
                tier,
                lowest,
            },
            ImportRefusal::Unknown { import } => Refusal::UnknownImport {
                agent: agent.to_string(),
                import,
            },
        })?;
        Ok(signer)
    }

    /// The pre-instantiated component for a tier, cached per (digest, tier).
    pub fn instance_pre(
        &self,
        digest: &str,
        tier: Tier,
        component: &Component,
    ) -> Result<ArchitectPre<AgentCtx>, String> {
        let key = (digest.to_string(), tier);
        if let Some(pre) = self.pres.lock().get(&key) {
            return Ok(pre.clone());
        }
        let linker = &self.linkers[tier as usize];
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| format!("component cannot be linked at tier {tier}: {e:#}"))?;
        let pre = ArchitectPre::new(instance_pre).map_err(|e| {
            format!("component does not export `warden:agent/agent@0.1.0` (plan, execute, verify, report): {e:#}")
        })?;
        self.pres.lock().insert(key, pre.clone());
        Ok(pre)
    }

    /// A store for one run of an agent: deny-by-default WASI with the agent's workspace, its
    /// limits (memory, tables, instances, host resources, workspace bytes and files, open
    /// descriptors), its governor, and the epoch callback that enforces deadlines and
    /// revocation.
    pub fn new_store(
        &self,
        services: &Arc<Services>,
        run: &Arc<RunShared>,
        session: Option<Arc<dyn crate::secrets::SecretSession>>,
        stdout: &CappedOutput,
        stderr: &CappedOutput,
        deadline: Instant,
    ) -> Result<Store<AgentCtx>, String> {
        let policy = services.tiers.policy(run.tier);
        let memory = run
            .packet
            .limits
            .memory_bytes
            .map_or(policy.memory_bytes, |m| m.min(policy.memory_bytes));
        std::fs::create_dir_all(&run.workspace)
            .map_err(|e| format!("cannot create workspace `{}`: {e}", run.workspace.display()))?;
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(RANDOM_BYTES_PER_CALL);
        // Every clock read and random byte the guest sees goes through the run's journal, so
        // a replay sees the same.
        let journal = run.journal.clone();
        let ledger = services.ledger.clone();
        wasi.wall_clock(crate::journal::sources::WallClock {
            journal: journal.clone(),
            ledger: ledger.clone(),
        })
        .monotonic_clock(crate::journal::sources::MonotonicClock {
            journal: journal.clone(),
            ledger: ledger.clone(),
            origin: Instant::now(),
        })
        .secure_random(crate::journal::sources::Random {
            journal: journal.clone(),
            ledger: ledger.clone(),
        })
        .insecure_random(crate::journal::sources::Random { journal, ledger })
        .insecure_random_seed(insecure_seed(run.run_id.as_str()));
        let perms = if policy.workspace_write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&run.workspace, "/workspace", perms)
            .map_err(|e| format!("cannot open workspace `{}`: {e}", run.workspace.display()))?;
        let mut table = ResourceTable::new();
        table.set_max_capacity(policy.wasi_resources as usize);
        let ctx = AgentCtx {
            wasi: wasi.build(),
            table,
            limits: GuestLimits::new(memory, policy.table_elements, policy.instances),
            gov: Governor::new(services.clone(), run.clone(), session),
            meter: Meter::new(deadline),
            quota: WorkspaceQuota::new(&run.workspace, policy),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            egress: Egress::new(services, run, deadline),
        };
        let mut store = Store::new(self.runtime.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            let meter = &mut data.meter;
            if data.gov.run.is_revoked() {
                meter.interrupt = Some(Interrupt::Revoked);
                return Ok(UpdateDeadline::Interrupt);
            }
            if data.gov.run.journal.is_halted() {
                meter.interrupt = Some(Interrupt::Halted);
                return Ok(UpdateDeadline::Interrupt);
            }
            meter.cpu_ticks += 1;
            if meter.cpu_ticks > meter.cpu_limit_ticks {
                meter.interrupt = Some(Interrupt::CpuDeadline);
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= meter.deadline {
                meter.interrupt = Some(Interrupt::WallDeadline);
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yield so a guest spinning in a loop never starves other agents on the runtime.
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }
}

/// `wasi:random/insecure-seed` of a run: derived from its id, so a replay sees the same seed
/// (it is documented as not secret).
fn insecure_seed(run_id: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(run_id.as_bytes());
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(seed)
}

/// The packet as the guest sees it.
pub(crate) fn wit_packet(packet: &Packet) -> wit::Packet {
    let budget = &packet.error_budget;
    wit::Packet {
        agent_id: packet.agent_id.to_string(),
        task_id: packet.task_id.to_string(),
        created_for: packet.created_for.clone(),
        objective: packet.objective.clone(),
        deliverables: packet.deliverables.clone(),
        constraints: wit::Constraints {
            scope: packet
                .constraints
                .scope
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            forbidden: packet
                .constraints
                .forbidden
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            required_steps: packet.constraints.required_steps.clone(),
        },
        success_criteria: packet.success_criteria.clone(),
        error_budget: wit::ErrorBudget {
            max_total_errors: budget.max_total_errors,
            max_same_error_repeats: budget.max_same_error_repeats,
            max_procedure_violations: budget.max_procedure_violations,
        },
        escalation_rules: packet.escalation_rules.clone(),
        created_at: packet.created_at.clone(),
    }
}

/// Benchmark access to the governed instantiate-and-call path, without the rest of the
/// lifecycle. Not part of the stable API.
#[doc(hidden)]
pub struct BenchInstance {
    services: Arc<Services>,
    sandbox: Arc<Sandbox>,
    run: Arc<RunShared>,
    pre: ArchitectPre<AgentCtx>,
    packet: wit::Packet,
}

impl BenchInstance {
    pub(crate) fn new(
        services: Arc<Services>,
        sandbox: Arc<Sandbox>,
        agent: &str,
        tier: Tier,
        bytes: &[u8],
        packet: Packet,
        journaled: bool,
    ) -> Result<BenchInstance, Error> {
        let digest = digest(bytes);
        let component = sandbox.runtime.component(&digest, bytes, agent)?;
        let pre = sandbox
            .instance_pre(&digest, tier, &component)
            .map_err(Error::Invalid)?;
        let subject = host_subject(&services, agent, tier, Some(&packet.task_id), Some(&digest));
        let workspace = services.workspaces.for_agent(&packet.agent_id);
        let wit = wit_packet(&packet);
        let run = Arc::new(RunShared::new(
            subject,
            tier,
            packet,
            LockOwner::new("bench")?,
            workspace,
            {
                let run_id = crate::id::RunId::generate();
                let journal = if journaled {
                    crate::journal::Journal::recording(run_id.as_str())
                } else {
                    crate::journal::Journal::off(run_id.as_str())
                };
                (run_id, Arc::new(journal))
            },
        ));
        run.set_phase(Phase::Execute);
        Ok(BenchInstance {
            services,
            sandbox,
            run,
            pre,
            packet: wit,
        })
    }

    /// Build a governed store, instantiate, call `plan`; with `execute`, call `execute` too.
    pub async fn instantiate_and_call(&self, execute: bool) -> Result<(), Error> {
        let cap = self.services.tiers.defaults.output_cap_bytes;
        let (stdout, stderr) = (CappedOutput::new(cap), CappedOutput::new(cap));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut store = self
            .sandbox
            .new_store(&self.services, &self.run, None, &stdout, &stderr, deadline)
            .map_err(Error::Invalid)?;
        let guest = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Invalid(format!("{e:#}")))?;
        let agent = guest.warden_agent_agent();
        let plan = agent
            .call_plan(&mut store, &self.packet)
            .await
            .map_err(|e| Error::Invalid(format!("{e:#}")))?
            .map_err(Error::Invalid)?;
        if execute {
            agent
                .call_execute(&mut store, &self.packet, &plan)
                .await
                .map_err(|e| Error::Invalid(format!("{e:#}")))?
                .map_err(Error::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use wasmtime_wasi::clocks::WasiClocksView;
    use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host as _;

    use super::*;
    use crate::capabilities::testing::TestEnv;
    use crate::runtime::limits::resource_table_full;

    /// A guest's host resources (here pollables of `subscribe-duration`, which has no error
    /// to answer with) stop at the tier's `wasi_resources`: the call traps, and the trap is
    /// told apart from others.
    #[tokio::test]
    async fn a_store_holds_at_most_its_tiers_wasi_resources() {
        let agent = TestEnv::new()
            .agent(Tier::Operator, serde_json::json!({}))
            .await;
        let cap = agent.services.tiers.policy(Tier::Operator).wasi_resources as usize;
        let sandbox = Sandbox::new(Runtime::new(None).unwrap(), &agent.services.tiers).unwrap();
        let output = CappedOutput::new(16);
        let mut store = sandbox
            .new_store(
                &agent.services,
                &agent.ctx.gov.run,
                None,
                &output,
                &output,
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        let mut held = Vec::new();
        let trap = loop {
            match store.data_mut().clocks().subscribe_duration(1_000_000_000) {
                Ok(pollable) => held.push(pollable),
                Err(trap) => break trap,
            }
            assert!(held.len() <= cap, "{} resources held", held.len());
        };
        // A clock's pollable is two entries: its deadline and the pollable over it.
        assert_eq!(held.len() * 2, cap);
        assert!(resource_table_full(&trap), "{trap:#}");
        assert!(!resource_table_full(&wasmtime::format_err!("another trap")));
    }
}
