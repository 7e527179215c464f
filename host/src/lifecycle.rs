//! The host-owned lifecycle:
//!
//! ```text
//! BOOTSTRAP → PREFLIGHT → PLAN → approval gate → EXECUTE → VERIFY → PACKAGE → REPORT → EXIT
//! ```
//!
//! The agent exports one function per agent-driven phase and the host calls them in order,
//! so no phase can be skipped or reordered. Each transition heartbeats, refreshes the lock,
//! writes a checkpoint and reads the error budget in one state-store round trip. A tier that
//! stops after PLAN (T0) goes PLAN → PACKAGE → EXIT with its plan artifact.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::artifacts::{ArtifactRef, latest_per_name};
use crate::bindings::warden::agent::types as wit;
use crate::bindings::{Architect, ArchitectPre};
use crate::capabilities::{AgentCtx, Governor};
use crate::error::{Error, Refusal};
use crate::host::{RunShared, Services};
use crate::ledger::{ActionRecord, Entry, Subject, ViolationRecord};
use crate::packet::{Handoff, LastKnownState, Packet, Revocation, RevocationReason, now_rfc3339};
use crate::pattern::first_match;
use crate::policy::{Approval, TierPolicy};
use crate::runtime::imports::{self, ImportRefusal};
use crate::runtime::limits::{GuestLimits, LimitHit};
use crate::runtime::output::CappedOutput;
use crate::runtime::{EPOCH_TICK, digest};
use crate::state::{ErrorCounts, LockAttempt, StateError, Transition};
use crate::tier::Tier;

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

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every phase ran and verification passed.
    Completed,
    /// The tier stops after PLAN (T0); the plan artifact is the result.
    PlanOnly,
    /// The agent was revoked during the run.
    Revoked { reason: String, details: String },
    /// The run stopped without revocation (deadline, trap, agent error, failed verification…).
    Failed { code: String, message: String },
}

impl RunOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Completed | RunOutcome::PlanOnly)
    }
}

/// One phase as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub elapsed_ms: f64,
}

/// Error-budget counters at the end of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BudgetUse {
    pub total_errors: u32,
    pub procedure_violations: u32,
    pub max_same_error: u32,
}

impl From<&ErrorCounts> for BudgetUse {
    fn from(c: &ErrorCounts) -> Self {
        BudgetUse {
            total_errors: c.total,
            procedure_violations: c.procedure,
            max_same_error: c.max_same,
        }
    }
}

/// Everything a run produced, for people (`warden run`) and programs (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub agent_id: String,
    pub task_id: String,
    pub tier: Tier,
    pub component_digest: String,
    pub policy_revision: String,
    pub outcome: RunOutcome,
    pub phases: Vec<PhaseRecord>,
    pub plan_summary: Option<String>,
    pub plan_steps: Vec<String>,
    pub verification_findings: Vec<String>,
    pub report_summary: Option<String>,
    pub artifacts: Vec<ArtifactRef>,
    pub budget: BudgetUse,
    pub compliant: bool,
    pub promoted_to: Option<Tier>,
    pub stdout: String,
    pub stderr: String,
    pub output_dropped_bytes: u64,
    pub duration_ms: f64,
}

/// Why the guest stopped running inside a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Revoked,
    CpuDeadline,
    WallDeadline,
}

/// Per-phase deadlines, checked on every epoch tick while the guest executes.
pub(crate) struct Meter {
    pub cpu_ticks: u64,
    pub cpu_limit_ticks: u64,
    pub deadline: Instant,
    pub interrupt: Option<Interrupt>,
}

/// Why a run stopped early.
enum Stop {
    Revoked,
    Failed { code: &'static str, message: String },
}

// ---------------------------------------------------------------------------------------------
// BOOTSTRAP

/// The load-time gate: refuse a component whose imports exceed the tier.
pub(crate) fn load_gate(
    services: &Services,
    agent: &str,
    tier: Tier,
    component: &wasmtime::component::Component,
) -> Result<(), Refusal> {
    let summary = imports::summarize(services.runtime.engine(), component);
    imports::check(&summary, tier, &services.tiers).map_err(|refusal| match refusal {
        ImportRefusal::AboveTier { interface, lowest } => Refusal::ImportAboveTier {
            agent: agent.to_string(),
            interface: interface.name().to_string(),
            tier,
            lowest,
        },
        ImportRefusal::Unknown { import } => Refusal::UnknownImport {
            agent: agent.to_string(),
            import,
        },
    })
}

fn host_subject(
    services: &Services,
    agent: &str,
    tier: Tier,
    task: Option<&str>,
    digest: Option<&str>,
) -> Arc<Subject> {
    Arc::new(Subject {
        agent_id: Arc::from(agent),
        agent_version: Arc::from(digest.map_or("", short_digest)),
        tier,
        task_id: task.map(Arc::from),
        component_digest: digest.map(Arc::from),
        policy_revision: Some(Arc::from(services.tiers.revision.as_str())),
    })
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn action(
    subject: &Arc<Subject>,
    phase: Option<Phase>,
    name: impl Into<Cow<'static, str>>,
    decision: impl Into<Cow<'static, str>>,
    error: Option<(&str, String)>,
) -> Entry {
    let mut record = ActionRecord::new(subject.clone(), name, decision);
    if let Some(phase) = phase {
        record = record.phase(phase.as_str());
    }
    if let Some((kind, message)) = error {
        record = record.failed(kind.to_string(), message);
    }
    Entry::Action(record)
}

fn violation(
    subject: &Arc<Subject>,
    phase: Phase,
    kind: &'static str,
    resource: String,
    details: String,
) -> Entry {
    Entry::Violation(
        ViolationRecord::new(subject.clone(), kind, details)
            .phase(phase.as_str())
            .resource(resource),
    )
}

/// Record an operator or host action that belongs to no run, durably.
pub(crate) async fn record_host_action(
    services: &Services,
    agent: &str,
    task: Option<&str>,
    name: &'static str,
    decision: &str,
) -> Result<(), Error> {
    let tier = services
        .ledger
        .agent(agent)?
        .map_or(Tier::Observer, |a| a.tier);
    let subject = host_subject(services, agent, tier, task, None);
    services
        .ledger_durable(action(&subject, None, name, decision.to_string(), None))
        .await?;
    Ok(())
}

async fn refuse_bootstrap(services: &Services, subject: &Arc<Subject>, refusal: Refusal) -> Error {
    let entry = action(
        subject,
        Some(Phase::Bootstrap),
        "bootstrap",
        "refused",
        Some((refusal.code(), refusal.to_string())),
    );
    if let Err(error) = services.ledger_durable(entry).await {
        tracing::error!(%error, "cannot record bootstrap refusal");
    }
    Error::Refused(refusal)
}

/// A state-store answer at BOOTSTRAP. A store that cannot be reached refuses the run
/// (recorded): no phase may run without the agent's lock. Other errors pass through.
async fn bootstrap_state<T>(
    services: &Services,
    subject: &Arc<Subject>,
    agent: &str,
    result: Result<T, StateError>,
) -> Result<T, Error> {
    match result {
        Ok(value) => Ok(value),
        Err(error) if error.is_unavailable() => {
            let refusal = Refusal::StateUnavailable {
                agent: agent.to_string(),
                reason: error.to_string(),
            };
            Err(refuse_bootstrap(services, subject, refusal).await)
        }
        Err(error) => Err(error.into()),
    }
}

/// Run an agent's whole lifecycle.
pub(crate) async fn run(
    services: Arc<Services>,
    agent: &str,
    bytes: &[u8],
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let record = services
        .ledger
        .agent(agent)?
        .ok_or_else(|| Refusal::UnknownAgent {
            agent: agent.to_string(),
        })?;
    let tier = record.tier;
    let component_digest = services
        .runtime
        .digest_of(bytes, record.component_digest.as_deref());
    let mut subject = host_subject(&services, agent, tier, None, Some(&component_digest));

    match &record.component_digest {
        Some(registered) if *registered != component_digest => {
            let refusal = Refusal::ComponentMismatch {
                agent: agent.to_string(),
                registered: registered.clone(),
                offered: component_digest.clone(),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
        Some(_) => {}
        None => {
            // First run of an agent registered without a component binds it (recorded).
            services
                .ledger
                .register_agent(agent, tier, Some(&component_digest), "host")?;
        }
    }

    let revoked = services.state.revocation(agent).await;
    if let Some(json) = bootstrap_state(&services, &subject, agent, revoked).await? {
        let revocation: Option<Revocation> = serde_json::from_str(&json).ok();
        let refusal = Refusal::PreviouslyRevoked {
            agent: agent.to_string(),
            reason: revocation.as_ref().map_or_else(
                || "reason unreadable".to_string(),
                |r| format!("{}: {}", r.reason.kind, r.reason.details),
            ),
            revoked_at: revocation.map_or_else(|| "an unknown time".to_string(), |r| r.revoked_at),
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }

    let packet_json = services.state.packet(agent).await;
    let Some(packet_json) = bootstrap_state(&services, &subject, agent, packet_json).await? else {
        let refusal = Refusal::NoInstructionPacket {
            agent: agent.to_string(),
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    };
    let packet = match Packet::from_json(&packet_json) {
        Ok(packet) if packet.agent_id == agent => packet,
        Ok(packet) => {
            let refusal = Refusal::InvalidPacket {
                agent: agent.to_string(),
                reason: format!("it is addressed to agent `{}`", packet.agent_id),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
        Err(error) => {
            let refusal = Refusal::InvalidPacket {
                agent: agent.to_string(),
                reason: error.to_string(),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
    };
    subject = host_subject(
        &services,
        agent,
        tier,
        Some(&packet.task_id),
        Some(&component_digest),
    );

    let component = services
        .runtime
        .component(&component_digest, bytes, agent)?;
    if let Err(refusal) = load_gate(&services, agent, tier, &component) {
        let entry = violation(
            &subject,
            Phase::Bootstrap,
            "IMPORT_ABOVE_TIER",
            component_digest.clone(),
            refusal.to_string(),
        );
        services.ledger.append(entry);
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }

    let policy = services.tiers.policy(tier);
    let owner = format!("{}:{}", services.host_id, uuid::Uuid::new_v4().simple());
    let lock_ttl = services.tiers.defaults.lock_ttl;
    let attempt = services.state.acquire_lock(agent, &owner, lock_ttl).await;
    if let LockAttempt::Held { owner: holder } =
        bootstrap_state(&services, &subject, agent, attempt).await?
    {
        let refusal = Refusal::CannotAcquireLock {
            agent: agent.to_string(),
            holder,
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }

    // From here the lock is ours: every path ends in EXIT, which releases it.
    let workspace = services.workspaces.for_agent(agent);
    let run = Arc::new(RunShared::new(
        subject.clone(),
        tier,
        packet,
        owner,
        workspace,
    ));
    services
        .running
        .lock()
        .insert(agent.to_string(), run.clone());
    let mut driver = Driver::new(services.clone(), run, started, component_digest.clone());
    let booted = driver.boot(&component, policy).await;
    let outcome = match booted {
        Ok(()) => driver.drive().await,
        Err(stop) => Err(stop),
    };
    Ok(driver.exit(outcome).await)
}

/// One agent-driven phase: arm the deadlines, call the guest under the wall-clock timeout,
/// and settle the result (`?` on a stop).
macro_rules! guest_call {
    ($driver:ident, $phase:expr, $method:ident($($arg:expr),*)) => {{
        let wall = $driver.arm();
        let Some(booted) = &mut $driver.booted else {
            return Err(not_booted());
        };
        let call = booted.guest.warden_agent_agent().$method(&mut booted.store, $($arg),*);
        let result = tokio::time::timeout(wall, call).await;
        $driver.settle($phase, result).await?
    }};
}

struct Booted {
    store: Store<AgentCtx>,
    guest: Architect,
    stdout: CappedOutput,
    stderr: CappedOutput,
}

struct Driver {
    services: Arc<Services>,
    run: Arc<RunShared>,
    started: Instant,
    phase_started: Instant,
    component_digest: String,
    booted: Option<Booted>,
    phases: Vec<PhaseRecord>,
    counts: ErrorCounts,
    plan: Option<wit::Plan>,
    verification: Option<wit::Verification>,
    report: Option<wit::Report>,
    verification_failed: Option<String>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Driver {
    fn new(
        services: Arc<Services>,
        run: Arc<RunShared>,
        started: Instant,
        component_digest: String,
    ) -> Driver {
        Driver {
            services,
            run,
            started,
            phase_started: started,
            component_digest,
            booted: None,
            phases: Vec::with_capacity(8),
            counts: ErrorCounts::default(),
            plan: None,
            verification: None,
            report: None,
            verification_failed: None,
            watcher: None,
        }
    }

    fn policy(&self) -> &TierPolicy {
        self.services.tiers.policy(self.run.tier)
    }

    fn log(&self, phase: Phase, name: &'static str, decision: impl Into<Cow<'static, str>>) {
        self.services
            .ledger
            .append(action(&self.run.subject, Some(phase), name, decision, None));
    }

    /// The rest of BOOTSTRAP once the lock is held: secrets login, sandbox, instantiate.
    async fn boot(
        &mut self,
        component: &wasmtime::component::Component,
        policy: &TierPolicy,
    ) -> Result<(), Stop> {
        let agent = self.run.agent_id.to_string();
        let fail = |code: &'static str, message: String| Stop::Failed { code, message };
        self.services
            .state
            .reset_errors(&agent)
            .await
            .map_err(|e| fail("STATE_UNAVAILABLE", e.to_string()))?;
        self.services
            .state
            .set_active_agent(&self.run.task_id, &agent)
            .await
            .map_err(|e| fail("STATE_UNAVAILABLE", e.to_string()))?;

        let session = if policy
            .interfaces
            .contains(crate::policy::Interface::Secrets)
        {
            // Login binds the backend identity to the current tier (Vault: the AppRole's
            // policies and TTL), so a tier change takes effect at the next bootstrap.
            let session = self
                .services
                .secrets
                .login(&agent, self.run.tier, policy.secrets_ttl)
                .await
                .map_err(|e| {
                    fail(
                        "SECRETS_LOGIN_FAILED",
                        format!("secrets login for `{agent}` failed: {e}"),
                    )
                })?;
            *self.run.secrets.lock() = Some(session.clone());
            Some(session)
        } else {
            None
        };

        let pre = instance_pre(
            &self.services,
            &self.component_digest,
            self.run.tier,
            component,
        )
        .map_err(|e| fail("INVALID_COMPONENT", e))?;
        let cap = self.services.tiers.defaults.output_cap_bytes;
        let stdout = CappedOutput::new(cap);
        let stderr = CappedOutput::new(cap);
        let deadline = self.started + self.run_wall();
        let mut store = new_store(
            &self.services,
            &self.run,
            session,
            &stdout,
            &stderr,
            deadline,
        )
        .map_err(|message| fail("SANDBOX_FAILED", message))?;
        let guest = match pre.instantiate_async(&mut store).await {
            Ok(guest) => guest,
            Err(error) => {
                return Err(fail(
                    "INSTANTIATION_FAILED",
                    format!("cannot instantiate `{agent}`: {error:#}"),
                ));
            }
        };
        self.booted = Some(Booted {
            store,
            guest,
            stdout,
            stderr,
        });
        self.watcher = Some(spawn_revocation_watcher(
            self.services.clone(),
            self.run.clone(),
        ));
        self.log(Phase::Bootstrap, "bootstrap", "complete");
        self.phases.push(PhaseRecord {
            phase: Phase::Bootstrap,
            elapsed_ms: self.started.elapsed().as_secs_f64() * 1e3,
        });
        Ok(())
    }

    fn run_wall(&self) -> Duration {
        let policy = self.policy();
        self.run
            .packet
            .limits
            .run_wall_ms
            .map_or(policy.run_wall, |ms| {
                Duration::from_millis(ms).min(policy.run_wall)
            })
    }

    /// Deadlines for one guest call: the tighter of the phase limit and what is left of the run.
    fn arm(&mut self) -> Duration {
        let policy = self.policy();
        let limits = self.run.packet.limits;
        let phase_wall = limits.phase_wall_ms.map_or(policy.phase_wall, |ms| {
            Duration::from_millis(ms).min(policy.phase_wall)
        });
        let phase_cpu = limits.phase_cpu_ms.map_or(policy.phase_cpu, |ms| {
            Duration::from_millis(ms).min(policy.phase_cpu)
        });
        let remaining = self.run_wall().saturating_sub(self.started.elapsed());
        let wall = phase_wall.min(remaining);
        if let Some(booted) = &mut self.booted {
            let meter = &mut booted.store.data_mut().meter;
            meter.cpu_ticks = 0;
            meter.cpu_limit_ticks = (phase_cpu.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
            meter.deadline = Instant::now() + wall;
            meter.interrupt = None;
        }
        wall
    }

    /// The transition into `phase`: heartbeat, lock refresh, checkpoint, budget read.
    async fn transition(&mut self, phase: Phase) -> Result<(), Stop> {
        let now = Instant::now();
        if let Some(last) = self.phases.last_mut()
            && last.phase != Phase::Bootstrap
        {
            last.elapsed_ms = (now - self.phase_started).as_secs_f64() * 1e3;
        }
        self.phase_started = now;
        if self.run.is_revoked() {
            return Err(Stop::Revoked);
        }
        self.run.set_phase(phase);
        let checkpoint = serde_json::json!({
            "phase": phase.as_str(),
            "step": "enter",
            "task_id": &*self.run.task_id,
            "component_digest": &self.component_digest,
            "at": now_rfc3339(),
        })
        .to_string();
        let defaults = &self.services.tiers.defaults;
        let transition = Transition {
            agent: &self.run.agent_id,
            owner: &self.run.lock_owner,
            lock_ttl: defaults.lock_ttl,
            heartbeat_ttl: defaults.heartbeat_ttl,
            checkpoint_json: &checkpoint,
        };
        let result = self
            .services
            .state
            .transition(&transition)
            .await
            .map_err(|e| Stop::Failed {
                code: "STATE_UNAVAILABLE",
                message: format!("transition to {} failed: {e}", phase.as_str()),
            })?;
        self.counts = result.errors.clone();
        if !result.lock_held {
            return Err(Stop::Failed {
                code: "LOCK_LOST",
                message: format!(
                    "the lock of agent `{}` is no longer held by this run; {} was not entered",
                    self.run.agent_id,
                    phase.as_str()
                ),
            });
        }
        if let Some((kind, details)) = budget_trigger(&result.errors, &self.run.packet) {
            revoke(
                &self.services,
                &self.run,
                RevocationReason {
                    kind: kind.into(),
                    details,
                },
                "host",
            )
            .await;
            return Err(Stop::Revoked);
        }
        self.log(phase, "phase.enter", phase.as_str());
        self.phases.push(PhaseRecord {
            phase,
            elapsed_ms: 0.0,
        });
        Ok(())
    }

    /// Interpret the end of a guest call.
    async fn settle<T>(
        &mut self,
        phase: Phase,
        result: Result<wasmtime::Result<Result<T, String>>, tokio::time::error::Elapsed>,
    ) -> Result<T, Stop> {
        let error = match result {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(message))) => {
                let signature = format!("AGENT_ERROR:{}", phase.as_str());
                let message = format!("the agent's {} failed: {message}", phase.as_str());
                if charge_error(&self.services, &self.run, &signature, false, &message)
                    .await
                    .is_some()
                {
                    return Err(Stop::Revoked);
                }
                return Err(Stop::Failed {
                    code: "AGENT_ERROR",
                    message,
                });
            }
            Ok(Err(trap)) => Some(trap),
            Err(_elapsed) => None,
        };
        if self.run.is_revoked() {
            return Err(Stop::Revoked);
        }
        let (interrupt, hit) = match &self.booted {
            Some(b) => (b.store.data().meter.interrupt, b.store.data().limits.hit),
            None => (None, None),
        };
        let (code, message) = match (interrupt, hit, &error) {
            (_, Some(LimitHit::Memory { limit, desired }), _) => (
                "RESOURCE_LIMIT",
                format!(
                    "{} stopped: the agent asked for {desired} bytes of memory; its limit is {limit} bytes (tier {} or the packet's `limits.memory_bytes`)",
                    phase.as_str(),
                    self.run.tier
                ),
            ),
            (_, Some(LimitHit::Table { limit, desired }), _) => (
                "RESOURCE_LIMIT",
                format!(
                    "{} stopped: the agent asked for {desired} table elements; its limit is {limit}",
                    phase.as_str()
                ),
            ),
            (Some(Interrupt::CpuDeadline), _, _) => (
                "DEADLINE_EXCEEDED",
                format!(
                    "{} stopped: the agent exceeded its cpu time for the phase",
                    phase.as_str()
                ),
            ),
            (Some(Interrupt::WallDeadline), _, _) | (_, _, None) => (
                "DEADLINE_EXCEEDED",
                format!(
                    "{} stopped: the agent exceeded its wall-clock deadline",
                    phase.as_str()
                ),
            ),
            (_, _, Some(trap)) => (
                "GUEST_TRAP",
                format!("{} trapped: {trap:#}", phase.as_str()),
            ),
        };
        // The instance is unusable after a trap or a cancelled call.
        if code != "GUEST_TRAP" {
            let entry = violation(
                &self.run.subject,
                phase,
                code,
                format!("phase:{}", phase.as_str()),
                message.clone(),
            );
            if let Err(error) = self.services.ledger_durable(entry).await {
                tracing::error!(%error, "cannot record violation");
            }
        }
        let signature = format!("{code}:{}", phase.as_str());
        if charge_error(&self.services, &self.run, &signature, false, &message)
            .await
            .is_some()
        {
            return Err(Stop::Revoked);
        }
        Err(Stop::Failed { code, message })
    }

    /// Every phase after BOOTSTRAP, in order.
    async fn drive(&mut self) -> Result<(), Stop> {
        let packet = wit_packet(&self.run.packet);

        self.transition(Phase::Preflight).await?;
        self.preflight()?;

        self.transition(Phase::Plan).await?;
        let plan = guest_call!(self, Phase::Plan, call_plan(&packet));
        self.write_host_artifact("plan.json", &plan_json(&plan))
            .await;
        self.log(Phase::Plan, "plan", plan.summary.clone());
        self.plan = Some(plan.clone());

        if self.policy().stops_after_plan {
            self.require_deliverables(Phase::Plan).await?;
            self.transition(Phase::Package).await?;
            self.package().await;
            return Ok(());
        }

        self.approval_gate().await?;

        self.transition(Phase::Execute).await?;
        let outcome = guest_call!(self, Phase::Execute, call_execute(&packet, &plan));
        self.log(Phase::Execute, "execute", outcome.summary.clone());
        self.require_deliverables(Phase::Execute).await?;

        self.transition(Phase::Verify).await?;
        let verification = guest_call!(self, Phase::Verify, call_verify(&packet, &outcome));
        let missing = self.missing_deliverables(Phase::Verify).await?;
        if !outcome.success {
            // The agent's own verdict on EXECUTE stands even if its VERIFY is lenient.
            self.verification_failed = Some(format!(
                "the agent reported EXECUTE unsuccessful: {}",
                outcome.summary
            ));
        } else if !verification.passed {
            self.verification_failed = Some(format!(
                "the agent's verification failed: {}",
                verification.findings.join("; ")
            ));
        } else if !missing.is_empty() {
            self.verification_failed = Some(format!(
                "deliverables missing at VERIFY: {}",
                missing.join(", ")
            ));
        }
        self.log(
            Phase::Verify,
            "verify",
            if self.verification_failed.is_none() {
                "passed"
            } else {
                "failed"
            },
        );
        self.verification = Some(verification.clone());

        self.transition(Phase::Package).await?;
        self.package().await;

        self.transition(Phase::Report).await?;
        let report = guest_call!(self, Phase::Report, call_report(&packet, &verification));
        let report_json = serde_json::json!({
            "summary": report.summary,
            "details": report.details,
            "verification": { "passed": verification.passed, "findings": verification.findings },
        });
        self.write_host_artifact("report.json", &report_json.to_string())
            .await;
        self.log(Phase::Report, "report", report.summary.clone());
        self.report = Some(report);
        Ok(())
    }

    /// PREFLIGHT: the packet against the tier — deliverables the tier may write, not
    /// forbidden, in scope; required steps the tier can reach.
    fn preflight(&self) -> Result<(), Stop> {
        let policy = self.policy();
        let packet = &self.run.packet;
        let fail = |message: String| Stop::Failed {
            code: "PREFLIGHT_FAILED",
            message,
        };
        for name in &packet.deliverables {
            if first_match(&policy.artifact_names, name).is_none() {
                return Err(fail(format!(
                    "deliverable `{name}` cannot be written at tier {}: it may only write {:?}",
                    self.run.tier,
                    policy
                        .artifact_names
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                )));
            }
            let resource = format!("artifact:{name}");
            if let Some(pattern) = first_match(&packet.constraints.forbidden, &resource) {
                return Err(fail(format!(
                    "deliverable `{name}` is forbidden by the packet's own `{pattern}`"
                )));
            }
            if !packet.constraints.scope.is_empty()
                && first_match(&packet.constraints.scope, &resource).is_none()
            {
                return Err(fail(format!(
                    "deliverable `{name}` is outside the packet's scope"
                )));
            }
        }
        if policy.stops_after_plan {
            let beyond = ["execute", "verify", "package", "report"];
            if let Some(step) = packet
                .constraints
                .required_steps
                .iter()
                .find(|s| beyond.contains(&s.to_ascii_lowercase().as_str()))
            {
                return Err(fail(format!(
                    "required step `{step}` is beyond PLAN, where tier {} stops; T1 (operator) runs every phase",
                    self.run.tier
                )));
            }
        }
        Ok(())
    }

    async fn approval_gate(&mut self) -> Result<(), Stop> {
        if self.policy().approval != Approval::Required {
            return Ok(());
        }
        let task = self.run.task_id.to_string();
        let timeout = self.run.packet.limits.approval_timeout_ms.map_or(
            self.services.tiers.defaults.approval_timeout,
            Duration::from_millis,
        );
        let request = action(
            &self.run.subject,
            Some(Phase::Plan),
            "approval.requested",
            format!(
                "waiting up to {}s for `warden approve {task}`",
                timeout.as_secs()
            ),
            None,
        );
        if let Err(error) = self.services.ledger_durable(request).await {
            tracing::error!(%error, "cannot record approval request");
        }
        tracing::info!(task = %task, "run needs approval: `warden approve {task}`");
        let deadline = Instant::now() + timeout;
        let mut last_refresh = Instant::now();
        loop {
            if self.run.is_revoked() {
                return Err(Stop::Revoked);
            }
            match self.services.state.approval(&task).await {
                Ok(Some(approval)) => {
                    self.log(Phase::Plan, "approval.granted", approval);
                    return Ok(());
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read approval"),
            }
            if Instant::now() >= deadline {
                return Err(Stop::Failed {
                    code: "APPROVAL_TIMEOUT",
                    message: format!(
                        "no approval for task `{task}` within {}s; approve it with `warden approve {task}` and run again",
                        timeout.as_secs()
                    ),
                });
            }
            if last_refresh.elapsed() >= Duration::from_secs(1) {
                last_refresh = Instant::now();
                let defaults = &self.services.tiers.defaults;
                let agent = &self.run.agent_id;
                let held = self
                    .services
                    .state
                    .refresh_lock(agent, &self.run.lock_owner, defaults.lock_ttl)
                    .await
                    .map_err(|e| Stop::Failed {
                        code: "STATE_UNAVAILABLE",
                        message: format!(
                            "cannot refresh the lock of agent `{agent}` while waiting for approval: {e}"
                        ),
                    })?;
                if !held {
                    return Err(Stop::Failed {
                        code: "LOCK_LOST",
                        message: format!(
                            "the lock of agent `{agent}` was lost while waiting for approval"
                        ),
                    });
                }
                let _ = self
                    .services
                    .state
                    .heartbeat(agent, defaults.heartbeat_ttl)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deliverables without an artifact. A state store that cannot list the artifacts stops
    /// the run rather than counting them missing (which would revoke the agent).
    async fn missing_deliverables(&mut self, phase: Phase) -> Result<Vec<String>, Stop> {
        if self.run.packet.deliverables.is_empty() {
            // Nothing to look for: skip listing a task whose artifacts may be thousands.
            return Ok(Vec::new());
        }
        let raw = self
            .services
            .state
            .artifacts(&self.run.task_id)
            .await
            .map_err(|e| Stop::Failed {
                code: "STATE_UNAVAILABLE",
                message: format!(
                    "cannot check the deliverables after {}: {e}",
                    phase.as_str()
                ),
            })?;
        let present: Vec<ArtifactRef> =
            latest_per_name(raw.iter().filter_map(|j| serde_json::from_str(j).ok()));
        Ok(self
            .run
            .packet
            .deliverables
            .iter()
            .filter(|name| !present.iter().any(|a| &a.name == *name))
            .cloned()
            .collect())
    }

    /// A required artifact missing after EXECUTE (after PLAN for T0) revokes the agent.
    async fn require_deliverables(&mut self, phase: Phase) -> Result<(), Stop> {
        let missing = self.missing_deliverables(phase).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let details = format!(
            "required artifact(s) missing after {}: {}",
            phase.as_str(),
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let entry = violation(
            &self.run.subject,
            phase,
            "MISSING_REQUIRED_ARTIFACT",
            missing.join(","),
            details.clone(),
        );
        if let Err(error) = self.services.ledger_durable(entry).await {
            tracing::error!(%error, "cannot record violation");
        }
        revoke(
            &self.services,
            &self.run,
            RevocationReason {
                kind: "MISSING_REQUIRED_ARTIFACT".into(),
                details,
            },
            "host",
        )
        .await;
        Err(Stop::Revoked)
    }

    async fn write_host_artifact(&mut self, name: &str, content: &str) {
        let write = async {
            let digest = self
                .services
                .blobs
                .put(content.as_bytes())
                .map_err(|e| e.to_string())?;
            let reference = ArtifactRef {
                name: name.to_string(),
                digest,
                size: content.len() as u64,
                author: "host".to_string(),
                created_at: now_rfc3339(),
            };
            let json = serde_json::to_string(&reference).map_err(|e| e.to_string())?;
            self.services
                .state
                .push_artifact(&self.run.task_id, &json)
                .await
                .map_err(|e| e.to_string())?;
            self.run.wrote(reference);
            Ok::<(), String>(())
        };
        if let Err(error) = write.await {
            tracing::warn!(%error, artifact = name, "cannot write host artifact");
        }
    }

    async fn package(&mut self) {
        let artifacts = self.run.written();
        let manifest: Vec<String> = artifacts
            .iter()
            .map(|a| format!("{} {}", a.name, a.digest))
            .collect();
        self.log(Phase::Package, "package", manifest.join("; "));
    }

    /// EXIT: checkpoint, release the lock, metrics, promotion check, flush the ledger.
    async fn exit(mut self, outcome: Result<(), Stop>) -> RunReport {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        let revoked = self.run.is_revoked() || matches!(outcome, Err(Stop::Revoked));
        let outcome = match outcome {
            Ok(()) if self.policy().stops_after_plan => RunOutcome::PlanOnly,
            Ok(()) => match self.verification_failed.take() {
                None => RunOutcome::Completed,
                Some(message) => RunOutcome::Failed {
                    code: "VERIFICATION_FAILED".into(),
                    message,
                },
            },
            Err(_) if revoked => {
                let reason = self.run.revocation().unwrap_or(RevocationReason {
                    kind: "REVOKED".into(),
                    details: String::new(),
                });
                RunOutcome::Revoked {
                    reason: reason.kind,
                    details: reason.details,
                }
            }
            Err(Stop::Failed { code, message }) => RunOutcome::Failed {
                code: code.to_string(),
                message,
            },
            Err(Stop::Revoked) => RunOutcome::Revoked {
                reason: "REVOKED".into(),
                details: String::new(),
            },
        };
        let agent = self.run.agent_id.to_string();
        if !revoked {
            // Best effort: the run is over whatever the checkpoint write says.
            let _ = self.transition(Phase::Exit).await;
        }
        // Owner-checked, so harmless when a revocation already released it.
        if let Err(error) = self
            .services
            .state
            .release_lock(&agent, &self.run.lock_owner)
            .await
        {
            tracing::warn!(%error, "cannot release lock");
        }
        if let Some(session) = self.run.secrets.lock().take() {
            drop(session);
        }
        self.services.running.lock().remove(&agent);
        if let Ok(counts) = self.services.state.error_counts(&agent).await {
            self.counts = counts;
        }

        let (stdout, stderr, dropped) = match &self.booted {
            Some(b) => {
                let (out, out_dropped) = b.stdout.contents();
                let (err, err_dropped) = b.stderr.contents();
                (out, err, out_dropped + err_dropped)
            }
            None => Default::default(),
        };
        for (stream, text) in [("agent.stdout", &stdout), ("agent.stderr", &stderr)] {
            if !text.is_empty() {
                self.log(Phase::Exit, stream, text.clone());
            }
        }
        if dropped > 0 {
            self.log(
                Phase::Exit,
                "agent.output_truncated",
                format!("{dropped} bytes past the cap were dropped"),
            );
        }

        let compliant =
            outcome.is_success() && self.counts.total == 0 && self.counts.procedure == 0;
        let mut promoted_to = None;
        let ledger = self.services.ledger.clone();
        let tier = self.run.tier;
        let metrics =
            tokio::task::spawn_blocking(move || ledger.record_run(&agent, tier, compliant)).await;
        match metrics {
            Ok(Ok(metrics)) => {
                let rules = &self.services.tiers.promotion;
                if compliant
                    && metrics.consecutive_compliant >= u64::from(rules.consecutive_compliant)
                    && let Some(next) = tier.next()
                {
                    if next < rules.auto_promote_below {
                        let reason = format!(
                            "{} consecutive compliant runs",
                            metrics.consecutive_compliant
                        );
                        match self.services.ledger.set_tier(
                            &self.run.agent_id,
                            next,
                            &reason,
                            "host",
                        ) {
                            Ok(()) => promoted_to = Some(next),
                            Err(error) => tracing::warn!(%error, "cannot promote"),
                        }
                    } else {
                        self.log(
                                Phase::Exit,
                                "promotion.eligible",
                                format!("eligible for {next}; promote with `warden agents promote {} --tier {}`", self.run.agent_id, next.code()),
                            );
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot record run metrics"),
            Err(error) => tracing::warn!(%error, "cannot record run metrics"),
        }

        let summary = match &outcome {
            RunOutcome::Completed => "completed".to_string(),
            RunOutcome::PlanOnly => "plan-only".to_string(),
            RunOutcome::Revoked { reason, .. } => format!("revoked: {reason}"),
            RunOutcome::Failed { code, .. } => format!("failed: {code}"),
        };
        let end = action(
            &self.run.subject,
            Some(Phase::Exit),
            "run.end",
            summary,
            match &outcome {
                RunOutcome::Failed { code, message } => Some((code.as_str(), message.clone())),
                RunOutcome::Revoked { reason, details } => Some((reason.as_str(), details.clone())),
                _ => None,
            },
        );
        self.services.ledger.append(end);
        if let Err(error) = self.services.ledger_flush().await {
            tracing::error!(%error, "ledger flush at exit failed");
        }
        self.write_logs(&stdout, &stderr);

        let artifacts = self.run.written();
        if let Some(last) = self.phases.last_mut()
            && last.phase == Phase::Exit
        {
            last.elapsed_ms = self.phase_started.elapsed().as_secs_f64() * 1e3;
        }
        RunReport {
            agent_id: self.run.agent_id.to_string(),
            task_id: self.run.task_id.to_string(),
            tier: self.run.tier,
            component_digest: self.component_digest.clone(),
            policy_revision: self.services.tiers.revision.clone(),
            outcome,
            phases: self.phases.clone(),
            plan_summary: self.plan.as_ref().map(|p| p.summary.clone()),
            plan_steps: self
                .plan
                .as_ref()
                .map(|p| p.steps.clone())
                .unwrap_or_default(),
            verification_findings: self
                .verification
                .as_ref()
                .map(|v| v.findings.clone())
                .unwrap_or_default(),
            report_summary: self.report.as_ref().map(|r| r.summary.clone()),
            artifacts,
            budget: BudgetUse::from(&self.counts),
            compliant,
            promoted_to,
            stdout,
            stderr,
            output_dropped_bytes: dropped,
            duration_ms: self.started.elapsed().as_secs_f64() * 1e3,
        }
    }

    fn write_logs(&self, stdout: &str, stderr: &str) {
        let Some(dir) = &self.services.data_dir else {
            return;
        };
        if stdout.is_empty() && stderr.is_empty() {
            return;
        }
        let dir = dir.join("logs").join(&*self.run.task_id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{}.stdout", self.run.agent_id)), stdout)?;
            std::fs::write(dir.join(format!("{}.stderr", self.run.agent_id)), stderr)
        };
        if let Err(error) = write() {
            tracing::warn!(%error, "cannot write agent logs");
        }
    }
}

/// The pre-instantiated component for a tier, cached per (digest, tier).
pub(crate) fn instance_pre(
    services: &Services,
    digest: &str,
    tier: Tier,
    component: &wasmtime::component::Component,
) -> Result<ArchitectPre<AgentCtx>, String> {
    let key = (digest.to_string(), tier);
    if let Some(pre) = services.pres.lock().get(&key) {
        return Ok(pre.clone());
    }
    let linker = &services.linkers[tier as usize];
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("component cannot be linked at tier {tier}: {e:#}"))?;
    let pre = ArchitectPre::new(instance_pre).map_err(|e| {
        format!("component does not export `warden:agent/agent@0.1.0` (plan, execute, verify, report): {e:#}")
    })?;
    services.pres.lock().insert(key, pre.clone());
    Ok(pre)
}

/// Benchmark access to the governed instantiate-and-call path, without the rest of the
/// lifecycle. Not part of the stable API.
#[doc(hidden)]
pub struct BenchInstance {
    services: Arc<Services>,
    run: Arc<RunShared>,
    pre: ArchitectPre<AgentCtx>,
    packet: wit::Packet,
}

impl BenchInstance {
    pub(crate) fn new(
        services: Arc<Services>,
        agent: &str,
        tier: Tier,
        bytes: &[u8],
        packet: Packet,
    ) -> Result<BenchInstance, Error> {
        let digest = digest(bytes);
        let component = services.runtime.component(&digest, bytes, agent)?;
        let pre = instance_pre(&services, &digest, tier, &component).map_err(Error::Invalid)?;
        let subject = host_subject(&services, agent, tier, Some(&packet.task_id), Some(&digest));
        let workspace = services.workspaces.for_agent(agent);
        let wit = wit_packet(&packet);
        let run = Arc::new(RunShared::new(
            subject,
            tier,
            packet,
            "bench".into(),
            workspace,
        ));
        run.set_phase(Phase::Execute);
        Ok(BenchInstance {
            services,
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
        let mut store = new_store(&self.services, &self.run, None, &stdout, &stderr, deadline)
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

/// A store for one run of an agent: deny-by-default WASI with the agent's workspace, its
/// limits, its governor, and the epoch callback that enforces deadlines and revocation.
pub(crate) fn new_store(
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
        .allow_ip_name_lookup(false);
    let perms = if policy.workspace_write {
        FsPerms::ReadWrite
    } else {
        FsPerms::ReadOnly
    };
    wasi.preopened_dir(&run.workspace, "/workspace", perms)
        .map_err(|e| format!("cannot open workspace `{}`: {e}", run.workspace.display()))?;
    let ctx = AgentCtx {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limits: GuestLimits::new(memory, policy.table_elements, policy.instances),
        gov: Governor::new(services.clone(), run.clone(), session),
        meter: Meter {
            cpu_ticks: 0,
            cpu_limit_ticks: u64::MAX,
            deadline,
            interrupt: None,
        },
    };
    let mut store = Store::new(services.runtime.engine(), ctx);
    store.limiter(|ctx| &mut ctx.limits);
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        let meter = &mut data.meter;
        if data.gov.run.is_revoked() {
            meter.interrupt = Some(Interrupt::Revoked);
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

fn not_booted() -> Stop {
    Stop::Failed {
        code: "INTERNAL",
        message: "the agent instance is missing".into(),
    }
}

fn plan_json(plan: &wit::Plan) -> String {
    serde_json::json!({
        "summary": plan.summary,
        "steps": plan.steps,
        "confidence": plan.confidence,
    })
    .to_string()
}

/// The packet as the guest sees it.
pub(crate) fn wit_packet(packet: &Packet) -> wit::Packet {
    let budget = &packet.error_budget;
    wit::Packet {
        agent_id: packet.agent_id.clone(),
        task_id: packet.task_id.clone(),
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

// ---------------------------------------------------------------------------------------------
// Error budget and revocation

/// The reference's automatic revocation triggers, first match wins.
fn budget_trigger(counts: &ErrorCounts, packet: &Packet) -> Option<(&'static str, String)> {
    let budget = &packet.error_budget;
    if counts.procedure >= budget.max_procedure_violations {
        return Some((
            "PROCEDURE_VIOLATION",
            format!(
                "{} procedure violation(s) reached `max_procedure_violations` of {}",
                counts.procedure, budget.max_procedure_violations
            ),
        ));
    }
    if counts.max_same >= budget.max_same_error_repeats {
        return Some((
            "ERROR_BUDGET_EXCEEDED",
            format!(
                "error `{}` repeated {} times; `max_same_error_repeats` is {}",
                counts.worst_signature.as_deref().unwrap_or("?"),
                counts.max_same,
                budget.max_same_error_repeats
            ),
        ));
    }
    if counts.total >= budget.max_total_errors {
        return Some((
            "ERROR_BUDGET_EXCEEDED",
            format!(
                "{} errors; `max_total_errors` is {}",
                counts.total, budget.max_total_errors
            ),
        ));
    }
    None
}

/// Count an error against the run's budget; revoke if it is spent. Returns the revocation
/// message when the agent was revoked.
pub(crate) async fn charge_error(
    services: &Services,
    run: &Arc<RunShared>,
    signature: &str,
    procedure: bool,
    cause: &str,
) -> Option<String> {
    let counts = match services
        .state
        .record_error(&run.agent_id, signature, procedure)
        .await
    {
        Ok(counts) => counts,
        Err(error) => {
            tracing::error!(%error, "cannot record error");
            return None;
        }
    };
    let (kind, budget) = budget_trigger(&counts, &run.packet)?;
    let details = format!("{budget}; last: {cause}");
    revoke(
        services,
        run,
        RevocationReason {
            kind: kind.into(),
            details,
        },
        "host",
    )
    .await;
    Some(run.revoked_message())
}

/// Revoke a running agent: interrupt its store (next epoch tick), record the revocation,
/// write the handoff, revoke its secrets session, release its lock. Idempotent.
pub(crate) async fn revoke(
    services: &Services,
    run: &Arc<RunShared>,
    reason: RevocationReason,
    by: &str,
) {
    if !run.mark_revoked(reason.clone()) {
        return;
    }
    let agent = run.agent_id.to_string();
    let task = run.task_id.to_string();
    let revocation = Revocation {
        agent_id: agent.clone(),
        task_id: Some(task.clone()),
        reason: reason.clone(),
        revoked_by: by.to_string(),
        revoked_at: now_rfc3339(),
    };
    if let Ok(json) = serde_json::to_string(&revocation)
        && let Err(error) = services.state.record_revocation(&agent, &json).await
    {
        tracing::error!(%error, "cannot record revocation in the state store");
    }
    let entry = action(
        &run.subject,
        Some(run.phase()),
        "agent.revoke",
        reason.kind.clone(),
        Some((reason.kind.as_str(), reason.details.clone())),
    );
    if let Err(error) = services.ledger_durable(entry).await {
        tracing::error!(%error, "cannot record revocation in the ledger");
    }
    finish_revocation(services, run, &reason).await;
}

/// What follows a revocation wherever it was recorded: the secrets session is revoked, the
/// handoff written, the lock released.
async fn finish_revocation(services: &Services, run: &Arc<RunShared>, reason: &RevocationReason) {
    let agent = run.agent_id.to_string();
    let task = run.task_id.to_string();
    let phase = run.phase();
    let session = run.secrets.lock().take();
    if let Some(session) = session
        && let Err(error) = session.revoke().await
    {
        tracing::warn!(%error, "cannot revoke secrets session");
    }
    let handoff = build_handoff(services, run, reason, phase).await;
    if let Ok(json) = serde_json::to_string(&handoff) {
        if let Err(error) = services.state.put_handoff(&task, &json).await {
            tracing::error!(%error, "cannot write handoff");
        }
        services.ledger.append(action(
            &run.subject,
            Some(phase),
            "handoff.write",
            json,
            None,
        ));
    }
    if let Err(error) = services.state.release_lock(&agent, &run.lock_owner).await {
        tracing::warn!(%error, "cannot release lock of revoked agent");
    }
    tracing::warn!(agent = %agent, task = %task, kind = %reason.kind, "agent revoked: {}", reason.details);
}

async fn build_handoff(
    services: &Services,
    run: &Arc<RunShared>,
    reason: &RevocationReason,
    phase: Phase,
) -> Handoff {
    let _ = services.ledger_flush().await;
    let query = crate::ledger::LedgerQuery {
        agent_id: Some(run.agent_id.to_string()),
        task_id: Some(run.task_id.to_string()),
        limit: Some(50),
        ..Default::default()
    };
    let tried: Vec<String> = services
        .ledger
        .query(&query)
        .map(|rows| rows.iter().filter_map(|row| row.tried()).collect())
        .unwrap_or_default();
    let last_step = tried.last().cloned().unwrap_or_else(|| "enter".to_string());
    let artifacts = match services.state.artifacts(&run.task_id).await {
        Ok(raw) => latest_per_name(
            raw.iter()
                .filter_map(|j| serde_json::from_str::<ArtifactRef>(j).ok()),
        )
        .into_iter()
        .map(|a| a.name)
        .collect(),
        Err(_) => Vec::new(),
    };
    let constraints = &run.packet.constraints;
    let mut reminder = Vec::new();
    if !constraints.scope.is_empty() {
        reminder.push(format!(
            "scope: {}",
            constraints
                .scope
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !constraints.forbidden.is_empty() {
        reminder.push(format!(
            "forbidden: {}",
            constraints
                .forbidden
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !constraints.required_steps.is_empty() {
        reminder.push(format!(
            "required steps: {}",
            constraints.required_steps.join(", ")
        ));
    }
    reminder.push(format!("tier: {}", run.tier));
    Handoff {
        task_id: run.task_id.to_string(),
        previous_agent_id: run.agent_id.to_string(),
        revoked: true,
        revocation_reason: reason.clone(),
        last_known_state: LastKnownState {
            phase: phase.as_str().to_string(),
            step: last_step,
        },
        what_was_tried: tried.into_iter().rev().take(20).rev().collect(),
        blocking_issue: reason.details.clone(),
        required_next_actions: vec![
            format!(
                "review the violations of `{}` in task `{}` (`warden ledger query --task {}`)",
                run.agent_id, run.task_id, run.task_id
            ),
            format!(
                "assign task `{}` to a new agent id with a fresh instruction packet",
                run.task_id
            ),
            format!("the next agent must not repeat: {}", reason.details),
        ],
        constraints_reminder: reminder,
        artifacts,
        created_at: now_rfc3339(),
    }
}

/// Watch the shared revocation ledger so a revocation by another process or host stops this
/// run too (the embedded store has no publish/subscribe; polling is the portable floor).
fn spawn_revocation_watcher(
    services: Arc<Services>,
    run: Arc<RunShared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Pushed revocations (Redis publish/subscribe) stop the run at once; polling the
        // revocation ledger is the floor for backends that cannot push, and for a missed
        // message.
        let mut events = services.state.revocation_events();
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        interval.tick().await;
        loop {
            let pushed = async {
                match events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interval.tick() => {}
                event = pushed => match event {
                    Ok(agent) if agent != *run.agent_id => continue,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => events = None,
                },
            }
            if run.is_revoked() {
                return;
            }
            if let Ok(Some(json)) = services.state.revocation(&run.agent_id).await {
                let reason = serde_json::from_str::<Revocation>(&json)
                    .map(|r| r.reason)
                    .unwrap_or(RevocationReason {
                        kind: "OPERATOR".into(),
                        details: "revoked elsewhere".into(),
                    });
                if run.mark_revoked(reason.clone()) {
                    finish_revocation(&services, &run, &reason).await;
                }
                return;
            }
        }
    })
}

/// Operator revocation (`warden agents revoke`).
pub(crate) async fn revoke_agent(
    services: &Arc<Services>,
    agent: &str,
    details: &str,
    actor: &str,
) -> Result<(), Error> {
    let record = services
        .ledger
        .agent(agent)?
        .ok_or_else(|| Refusal::UnknownAgent {
            agent: agent.to_string(),
        })?;
    let reason = RevocationReason {
        kind: "OPERATOR".into(),
        details: details.to_string(),
    };
    let running = services.running.lock().get(agent).cloned();
    if let Some(run) = running {
        revoke(services, &run, reason, actor).await;
        return Ok(());
    }
    if services.state.revocation(agent).await?.is_some() {
        return Err(Error::Invalid(format!(
            "agent `{agent}` is already revoked"
        )));
    }
    let revocation = Revocation {
        agent_id: agent.to_string(),
        task_id: None,
        reason: reason.clone(),
        revoked_by: actor.to_string(),
        revoked_at: now_rfc3339(),
    };
    let json = serde_json::to_string(&revocation).map_err(|e| Error::Invalid(e.to_string()))?;
    services.state.record_revocation(agent, &json).await?;
    let subject = host_subject(
        services,
        agent,
        record.tier,
        None,
        record.component_digest.as_deref(),
    );
    services
        .ledger_durable(action(
            &subject,
            None,
            "agent.revoke",
            "OPERATOR",
            Some(("OPERATOR", details.to_string())),
        ))
        .await?;
    Ok(())
}

/// Record an approval for a task (`warden approve`).
pub(crate) async fn approve(services: &Services, task: &str, approver: &str) -> Result<(), Error> {
    let json = serde_json::json!({ "task_id": task, "approved_by": approver, "approved_at": now_rfc3339() }).to_string();
    services.state.put_approval(task, &json).await?;
    let agent = services
        .state
        .active_agent(task)
        .await?
        .unwrap_or_else(|| "-".to_string());
    record_host_action(
        services,
        &agent,
        Some(task),
        "approval.grant",
        &format!("approved by {approver}"),
    )
    .await
}
