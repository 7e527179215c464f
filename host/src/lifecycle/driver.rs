//! The phase driver: from the lock to EXIT, every phase in order.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::artifacts::{ArtifactRef, put_off_thread};
use crate::bindings::Architect;
use crate::bindings::warden::agent::types as wit;
use crate::capabilities::{self, AgentCtx};
use crate::context::{RunShared, Services};
use crate::governance::{
    action, budget_trigger, charge_error, revoke, spawn_revocation_watcher, violation,
};
use crate::ledger::{ActionRecord, Entry};
use crate::packet::Checkpoint;
use crate::packet::RevocationKind;
use crate::packet::{RevocationReason, now_rfc3339};
use crate::pattern::first_match;
use crate::phase::Phase;
use crate::policy::{Approval, TierPolicy};
use crate::report::{BudgetUse, FailureCode, PhaseRecord, RunOutcome, RunReport};
use crate::runtime::EPOCH_TICK;
use crate::runtime::limits::{Interrupt, LimitHit, resource_table_full};
use crate::runtime::output::CappedOutput;
use crate::sandbox::{Sandbox, wit_packet};
use crate::state::{ErrorCounts, Quota, Transition, Ttl};
use crate::tier::Tier;

/// Why a run stopped early.
/// The guest's captured output at EXIT.
struct Output {
    stdout: String,
    stderr: String,
    dropped: u64,
}

pub(super) enum Stop {
    Revoked,
    Failed { code: FailureCode, message: String },
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

pub(super) struct Driver {
    services: Arc<Services>,
    sandbox: Arc<Sandbox>,
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
    /// The deliverables as VERIFY found them; sealed from then on, recorded by PACKAGE.
    sealed: Vec<ArtifactRef>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The packet as the `runs` row keeps it.
    packet_json: Arc<str>,
    /// 1, and one more per resume.
    attempt: u32,
    /// The ledger's committed head as the run began (see `RunRecord::from_row`).
    from_row: u64,
}

impl Driver {
    pub(super) fn new(
        services: Arc<Services>,
        sandbox: Arc<Sandbox>,
        run: Arc<RunShared>,
        started: Instant,
        (component_digest, attempt): (String, u32),
    ) -> Driver {
        let packet_json = Arc::from(serde_json::to_string(&run.packet).unwrap_or_default());
        let from_row = services.ledger.committed_seq();
        Driver {
            services,
            sandbox,
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
            sealed: Vec::new(),
            watcher: None,
            packet_json,
            attempt,
            from_row,
        }
    }

    fn policy(&self) -> &TierPolicy {
        self.services.tiers.policy(self.run.tier)
    }

    /// A ledger row of the run's own; waits (never blocks the runtime) while the writer's
    /// queue is full.
    /// (The future holds no borrow of the driver, which is not `Sync`.)
    fn log(
        &self,
        phase: Phase,
        name: &'static str,
        decision: impl Into<Cow<'static, str>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let services = self.services.clone();
        let entry = action(&self.run.subject, Some(phase), name, decision, None);
        async move { services.ledger.append_async(entry).await }
    }

    /// The rest of BOOTSTRAP once the lock is held: secrets login, sandbox, instantiate.
    pub(super) async fn boot(
        &mut self,
        component: &wasmtime::component::Component,
        policy: &TierPolicy,
    ) -> Result<(), Stop> {
        let agent = self.run.agent_id.clone();
        let fail = |code: FailureCode, message: String| Stop::Failed { code, message };
        // A resumed run goes on with the error budget its first attempts spent.
        if self.attempt == 1 {
            self.services
                .state
                .reset_errors(&agent)
                .await
                .map_err(|e| fail(FailureCode::StateUnavailable, e.to_string()))?;
        }
        self.services
            .state
            .set_active_agent(&self.run.task_id, &agent)
            .await
            .map_err(|e| fail(FailureCode::StateUnavailable, e.to_string()))?;

        let session = if policy
            .interfaces
            .contains(crate::interface::Interface::Secrets)
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
                        FailureCode::SecretsLoginFailed,
                        format!("secrets login for `{agent}` failed: {e}"),
                    )
                })?;
            *self.run.secrets.lock() = Some(session.clone());
            Some(session)
        } else {
            None
        };

        let pre = self
            .sandbox
            .instance_pre(&self.component_digest, self.run.tier, component)
            .map_err(|e| fail(FailureCode::InvalidComponent, e))?;
        let cap = self.services.tiers.defaults.output_cap_bytes;
        let stdout = CappedOutput::new(cap);
        let stderr = CappedOutput::new(cap);
        let deadline = self.started + self.run_wall();
        let mut store = self
            .sandbox
            .new_store(
                &self.services,
                &self.run,
                session,
                &stdout,
                &stderr,
                deadline,
            )
            .map_err(|message| fail(FailureCode::SandboxFailed, message))?;
        let guest = match pre.instantiate_async(&mut store).await {
            Ok(guest) => guest,
            Err(error) => {
                return Err(fail(
                    FailureCode::InstantiationFailed,
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
        self.log(Phase::Bootstrap, "bootstrap", "complete").await;
        self.services
            .ledger
            .append_async(self.run_row("running", None))
            .await;
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
        // The reads of the phase that ended go to the ledger before the next one's rows.
        let held = self.run.journal.take_pending();
        if !held.is_empty()
            && let Err(error) = self.services.ledger.append_all_async(held, false).await
        {
            tracing::error!(%error, "cannot record the phase's reads");
        }
        self.run.set_phase(phase);
        let checkpoint = Checkpoint {
            phase: phase.as_str().to_string(),
            step: "enter".to_string(),
            task_id: self.run.task_id.clone(),
            component_digest: self.component_digest.clone(),
            at: now_rfc3339(),
        };
        let defaults = &self.services.tiers.defaults;
        let transition = Transition {
            agent: &self.run.agent_id,
            owner: &self.run.lock_owner,
            lock_ttl: Ttl::at_least_1ms(defaults.lock_ttl),
            heartbeat_ttl: Ttl::at_least_1ms(defaults.heartbeat_ttl),
            checkpoint: &checkpoint,
        };
        let result = self
            .services
            .state
            .transition(&transition)
            .await
            .map_err(|e| Stop::Failed {
                code: FailureCode::StateUnavailable,
                message: format!("transition to {} failed: {e}", phase.as_str()),
            })?;
        self.counts = result.errors.clone();
        if !result.lock_held {
            return Err(Stop::Failed {
                code: FailureCode::LockLost,
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
                RevocationReason { kind, details },
                "host",
            )
            .await;
            return Err(Stop::Revoked);
        }
        self.log(phase, "phase.enter", phase.as_str()).await;
        self.services
            .ledger
            .append_async(self.run_row("running", None))
            .await;
        self.phases.push(PhaseRecord {
            phase,
            elapsed_ms: 0.0,
        });
        Ok(())
    }

    /// Interpret the end of a guest call.
    async fn settle<T: serde::Serialize>(
        &mut self,
        phase: Phase,
        result: Result<wasmtime::Result<Result<T, String>>, tokio::time::error::Elapsed>,
    ) -> Result<T, Stop> {
        // What the guest returned, its error included, is part of the journal; a replay
        // compares it.
        if let Ok(Ok(returned)) = &result {
            self.journal_phase(phase, returned).await?;
        }
        // A refused stream write into the workspace is recorded here, when the guest is back.
        if let Some(booted) = &mut self.booted {
            booted.store.data_mut().record_quota_refusal().await;
        }
        let error = match result {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(message))) => {
                let signature = format!("AGENT_ERROR:{}", phase.as_str());
                // The run fails either way; the host keeps the agent's explanation only up to
                // the tier's bound, with a note of what was cut.
                let message = crate::text::clip(&message, self.max_text());
                let message = format!("the agent's {} failed: {message}", phase.as_str());
                if charge_error(&self.services, &self.run, &signature, false, &message)
                    .await
                    .is_some()
                {
                    return Err(Stop::Revoked);
                }
                return Err(Stop::Failed {
                    code: FailureCode::AgentError,
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
                FailureCode::ResourceLimit,
                format!(
                    "{} stopped: the agent asked for {desired} bytes of memory; its limit is {limit} bytes (tier {} or the packet's `limits.memory_bytes`)",
                    phase.as_str(),
                    self.run.tier
                ),
            ),
            (_, Some(LimitHit::Table { limit, desired }), _) => (
                FailureCode::ResourceLimit,
                format!(
                    "{} stopped: the agent asked for {desired} table elements; its limit is {limit}",
                    phase.as_str()
                ),
            ),
            (Some(Interrupt::Halted), _, _) => self.halted(phase),
            (Some(Interrupt::CpuDeadline), _, _) => (
                FailureCode::DeadlineExceeded,
                format!(
                    "{} stopped: the agent exceeded its cpu time for the phase",
                    phase.as_str()
                ),
            ),
            (Some(Interrupt::WallDeadline), _, _) | (_, _, None) => (
                FailureCode::DeadlineExceeded,
                format!(
                    "{} stopped: the agent exceeded its wall-clock deadline",
                    phase.as_str()
                ),
            ),
            (_, _, Some(trap)) if resource_table_full(trap) => (
                FailureCode::ResourceLimit,
                format!(
                    "{} stopped: the agent holds {} host resources (descriptors, streams, pollables), its limit; a host call past it traps (`tiers.{}.wasi_resources`)",
                    phase.as_str(),
                    self.policy().wasi_resources,
                    self.run.tier.code()
                ),
            ),
            (_, _, Some(trap)) => (
                FailureCode::GuestTrap,
                // The backtrace names the guest's own functions, whatever their length.
                format!(
                    "{} trapped: {}",
                    phase.as_str(),
                    crate::text::clip(&format!("{trap:#}"), self.max_text())
                ),
            ),
        };
        // The instance is unusable after a trap or a cancelled call.
        let record = code != FailureCode::GuestTrap;
        Err(self.stop_phase(phase, code, message, record).await)
    }

    /// A replay that stops at a host step of `phase`: diverged, or past the recorded end.
    fn replay_stop(&self, phase: Phase, reason: &str) -> Stop {
        let code = if self.run.journal.divergence().is_some() {
            FailureCode::ReplayDiverged
        } else {
            FailureCode::ReplayEnded
        };
        Stop::Failed {
            code,
            message: format!("{} stopped: {reason}", phase.as_str()),
        }
    }

    /// Why the journal halted the guest, as the run's failure.
    fn halted(&self, phase: Phase) -> (FailureCode, String) {
        let journal = &self.run.journal;
        let reason = journal
            .halt_reason()
            .unwrap_or_else(|| "the journal halted the run".to_string());
        if journal.is_replaying()
            && let Stop::Failed { code, message } = self.replay_stop(phase, &reason)
        {
            return (code, message);
        }
        (
            FailureCode::JournalFull,
            format!("{} stopped: {reason}", phase.as_str()),
        )
    }

    /// The guest's result of `phase` through the journal: recorded (chained by a
    /// `phase.result` row) when live; on replay, compared with the recorded one, and a
    /// different result is a divergence that stops the run.
    async fn journal_phase<T: serde::Serialize>(
        &mut self,
        phase: Phase,
        result: &T,
    ) -> Result<(), Stop> {
        let op = match phase {
            Phase::Plan => "phase.PLAN",
            Phase::Execute => "phase.EXECUTE",
            Phase::Verify => "phase.VERIFY",
            _ => "phase.REPORT",
        };
        // A revoked run records nothing more: a replay ends at the revocation as the run did.
        if self.run.is_revoked() {
            return Ok(());
        }
        let args = crate::journal::CallArgs::of(result);
        let digest = args.digest().to_string();
        let journal = self.run.journal.clone();
        match journal.begin(op, &args) {
            crate::journal::Begin::Recorded(_) => return Ok(()),
            crate::journal::Begin::Halt(reason) => return Err(self.replay_stop(phase, &reason)),
            crate::journal::Begin::Live => {}
        }
        let committed = journal.commit(op, digest.clone(), Vec::new());
        let mut record = ActionRecord::new(self.run.subject.clone(), "phase.result", digest)
            .phase(phase.as_str());
        record.call_seq = Some(committed.seq);
        record.result_digest = Some(committed.head);
        let mut entries: Vec<Entry> = committed.records;
        entries.push(Entry::Action(record));
        if let Err(error) = self.services.ledger.append_all_async(entries, false).await {
            tracing::error!(%error, "cannot record the phase result");
        }
        Ok(())
    }

    /// The run's `runs` row as it is now.
    fn run_row(&self, status: &'static str, outcome: Option<String>) -> Entry {
        Entry::Run(crate::ledger::RunRecord {
            run_id: Arc::from(&self.run.run_id),
            agent_id: Arc::from(&self.run.agent_id),
            task_id: Arc::from(&self.run.task_id),
            tier: self.run.tier,
            component_digest: Arc::from(self.component_digest.as_str()),
            status,
            phase: self.run.phase().as_str(),
            attempts: self.attempt,
            host: Arc::from(crate::context::machine_name()),
            pid: std::process::id(),
            lock_owner: Arc::from(self.run.lock_owner.as_str()),
            outcome: outcome.map(Into::into),
            calls: self.run.journal.len(),
            packet: self.packet_json.clone(),
            from_row: self.from_row,
        })
    }

    /// A phase that fails the run: a `violations` row when `record` (durable before the run
    /// goes on), a charge against the error budget, and the stop (`Revoked` when the charge
    /// exhausted the budget).
    async fn stop_phase(
        &mut self,
        phase: Phase,
        code: FailureCode,
        message: String,
        record: bool,
    ) -> Stop {
        if record {
            let entry = violation(
                &self.run.subject,
                phase,
                code.as_str(),
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
            return Stop::Revoked;
        }
        Stop::Failed { code, message }
    }

    /// `[tiers.Tn] max_text_bytes`, as a length.
    fn max_text(&self) -> usize {
        usize::try_from(self.policy().max_text_bytes).unwrap_or(usize::MAX)
    }

    /// A phase's result holds `bytes` of text the host would keep (store, log, report): past
    /// the tier's `max_text_bytes` it is refused whole, recorded as a `QUOTA_EXCEEDED`
    /// violation, charged, and the run fails. Refused, not clipped: a clipped plan is not
    /// the plan the agent made, and approving, executing or reporting on a plan, outcome or
    /// verdict the agent did not return would misstate the record.
    async fn bound_text(&mut self, phase: Phase, what: &str, bytes: u64) -> Result<(), Stop> {
        let policy = self.policy();
        let max = policy.max_text_bytes;
        if bytes <= max {
            return Ok(());
        }
        let code = FailureCode::QuotaExceeded;
        let message = format!(
            "{}'s result refused: the {what} the agent returned holds {bytes} bytes of text, over the quota of {max} of tier {} (`[tiers.{}] max_text_bytes`); the host kept none of it. Return less text, or an operator raises `max_text_bytes` in the tier table to allow more",
            phase.as_str(),
            policy.tier,
            policy.tier.code()
        );
        Err(self.stop_phase(phase, code, message, true).await)
    }

    /// Every phase after BOOTSTRAP, in order.
    pub(super) async fn drive(&mut self) -> Result<(), Stop> {
        let packet = wit_packet(&self.run.packet);

        self.transition(Phase::Preflight).await?;
        self.preflight()?;

        self.transition(Phase::Plan).await?;
        let plan = guest_call!(self, Phase::Plan, call_plan(&packet));
        let text = text_bytes(plan.steps.iter().chain([&plan.summary]));
        self.bound_text(Phase::Plan, "plan (summary and steps)", text)
            .await?;
        self.write_host_artifact("plan.json", &plan_json(&plan))
            .await;
        self.log(Phase::Plan, "plan", plan.summary.clone()).await;
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
        let text = text_bytes(outcome.artifacts.iter().chain([&outcome.summary]));
        self.bound_text(Phase::Execute, "outcome (summary and artifact names)", text)
            .await?;
        self.log(Phase::Execute, "execute", outcome.summary.clone())
            .await;
        self.require_deliverables(Phase::Execute).await?;

        self.transition(Phase::Verify).await?;
        let verification = guest_call!(self, Phase::Verify, call_verify(&packet, &outcome));
        let text = text_bytes(&verification.findings);
        self.bound_text(Phase::Verify, "verification (findings)", text)
            .await?;
        let (sealed, missing) = self.find_deliverables(Phase::Verify).await?;
        self.sealed = sealed;
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
        )
        .await;
        self.verification = Some(verification.clone());

        self.transition(Phase::Package).await?;
        self.package().await;

        self.transition(Phase::Report).await?;
        let report = guest_call!(self, Phase::Report, call_report(&packet, &verification));
        let text = text_bytes(report.details.iter().chain([&report.summary]));
        self.bound_text(Phase::Report, "report (summary and details)", text)
            .await?;
        let report_json = serde_json::json!({
            "summary": report.summary,
            "details": report.details,
            "verification": { "passed": verification.passed, "findings": verification.findings },
        });
        self.write_host_artifact("report.json", &report_json.to_string())
            .await;
        self.log(Phase::Report, "report", report.summary.clone())
            .await;
        self.report = Some(report);
        Ok(())
    }

    /// PREFLIGHT: the packet against the tier — deliverables the tier may write, not
    /// forbidden, in scope; required steps the tier can reach.
    fn preflight(&self) -> Result<(), Stop> {
        let policy = self.policy();
        let packet = &self.run.packet;
        let fail = |message: String| Stop::Failed {
            code: FailureCode::PreflightFailed,
            message,
        };
        for name in &packet.deliverables {
            if let Err(reason) = capabilities::check_artifact_write(policy, name) {
                return Err(fail(format!(
                    "deliverable `{name}` cannot be written: {reason}"
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
        // A replay, and a resume whose journal goes on past PLAN, go on where the recorded run
        // went on: its journal holds EXECUTE only if the approval was given.
        let journal = &self.run.journal;
        if self.policy().approval != Approval::Required
            || journal.is_offline_replay()
            || journal.has_recorded()
        {
            return Ok(());
        }
        let task = self.run.task_id.clone();
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
                    let record = serde_json::to_string(&approval)
                        .unwrap_or_else(|_| approval.approved_by.clone());
                    self.log(Phase::Plan, "approval.granted", record).await;
                    return Ok(());
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read approval"),
            }
            if Instant::now() >= deadline {
                return Err(Stop::Failed {
                    code: FailureCode::ApprovalTimeout,
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
                    .refresh_lock(
                        agent,
                        &self.run.lock_owner,
                        Ttl::at_least_1ms(defaults.lock_ttl),
                    )
                    .await
                    .map_err(|e| Stop::Failed {
                        code: FailureCode::StateUnavailable,
                        message: format!(
                            "cannot refresh the lock of agent `{agent}` while waiting for approval: {e}"
                        ),
                    })?;
                if !held {
                    return Err(Stop::Failed {
                        code: FailureCode::LockLost,
                        message: format!(
                            "the lock of agent `{agent}` was lost while waiting for approval"
                        ),
                    });
                }
                let _ = self
                    .services
                    .state
                    .heartbeat(agent, Ttl::at_least_1ms(defaults.heartbeat_ttl))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deliverables without an artifact. A state store that cannot list the artifacts stops
    /// the run rather than counting them missing (which would revoke the agent).
    async fn missing_deliverables(&mut self, phase: Phase) -> Result<Vec<String>, Stop> {
        Ok(self.find_deliverables(phase).await?.1)
    }

    /// The packet's deliverables: the latest reference of each one found, and the names of
    /// those missing.
    async fn find_deliverables(
        &mut self,
        phase: Phase,
    ) -> Result<(Vec<ArtifactRef>, Vec<String>), Stop> {
        // What the host found is an input of the run's course like any answer to the guest:
        // journaled, and read back on replay (whose store holds none of the run's artifacts).
        let op = "host.deliverables";
        let journal = self.run.journal.clone();
        if journal.is_replaying() {
            match journal.begin(op, &crate::journal::CallArgs::observed()) {
                crate::journal::Begin::Recorded(payload) => {
                    return serde_json::from_slice(&payload).map_err(|e| Stop::Failed {
                        code: FailureCode::ReplayDiverged,
                        message: format!("the journal's deliverables cannot be read: {e}"),
                    });
                }
                crate::journal::Begin::Halt(reason) => {
                    return Err(self.replay_stop(phase, &reason));
                }
                crate::journal::Begin::Live => {}
            }
        }
        let found = self.look_up_deliverables(phase).await?;
        let payload = serde_json::to_vec(&found).unwrap_or_default();
        let decision = format!("{} found, {} missing", found.0.len(), found.1.len());
        self.journal_host(op, "sha256:-".to_string(), payload, decision, false)
            .await;
        Ok(found)
    }

    async fn look_up_deliverables(
        &mut self,
        phase: Phase,
    ) -> Result<(Vec<ArtifactRef>, Vec<String>), Stop> {
        // One indexed lookup per deliverable, whatever the number of the task's artifacts.
        let mut found_refs = Vec::with_capacity(self.run.packet.deliverables.len());
        let mut missing = Vec::new();
        for name in &self.run.packet.deliverables {
            let found = self
                .services
                .state
                .artifact(&self.run.task_id, name)
                .await
                .map_err(|e| Stop::Failed {
                    code: FailureCode::StateUnavailable,
                    message: format!(
                        "cannot check the deliverables after {}: {e}",
                        phase.as_str()
                    ),
                })?;
            match found {
                Some(reference) => found_refs.push(reference),
                None => missing.push(name.clone()),
            }
        }
        Ok((found_refs, missing))
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
                kind: RevocationKind::MissingRequiredArtifact,
                details,
            },
            "host",
        )
        .await;
        Err(Stop::Revoked)
    }

    async fn write_host_artifact(&mut self, name: &str, content: &str) {
        // The host's own effect, journaled like the guest's: a resume that finds it recorded
        // does not write it again.
        let op = "host.artifact";
        let args =
            crate::journal::CallArgs::of(&(name, crate::journal::bytes_digest(content.as_bytes())));
        let journal = self.run.journal.clone();
        match journal.begin(op, &args) {
            crate::journal::Begin::Recorded(_) | crate::journal::Begin::Halt(_) => return,
            crate::journal::Begin::Live => {}
        }
        // Its receipt makes a resume killed between the push and the record push nothing.
        let once = self.services.ledger.is_persistent().then(|| {
            crate::state::Once::new(&self.run.run_id, journal.len() + 1, op, args.digest())
        });
        let write = async {
            let digest = put_off_thread(&self.services.blobs, content.as_bytes().to_vec())
                .await
                .map_err(|e| e.to_string())?;
            let reference = ArtifactRef {
                name: name.to_string(),
                digest,
                size: content.len() as u64,
                author: "host".to_string(),
                created_at: now_rfc3339(),
            };
            // The host's own artifacts: counted in the task's usage, never refused.
            let _stored = self
                .services
                .state
                .push_artifact(
                    &self.run.task_id,
                    &reference,
                    Quota::UNLIMITED,
                    once.as_ref(),
                )
                .await
                .map_err(|e| e.to_string())?;
            self.run.wrote(reference);
            Ok::<(), String>(())
        };
        if let Err(error) = write.await {
            tracing::warn!(%error, artifact = name, "cannot write host artifact");
        }
        self.journal_host(op, args, Vec::new(), name.to_string(), true)
            .await;
    }

    /// A record of the host's own (an artifact it wrote, what it found), chained by a row
    /// of its own so a resume knows it happened; `durable` waits for the commit.
    /// (The future holds no borrow of the driver, which is not `Sync`.)
    fn journal_host(
        &self,
        op: &'static str,
        args: impl Into<crate::ledger::ArgsDigest>,
        payload: Vec<u8>,
        decision: String,
        durable: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let committed = self.run.journal.commit(op, args, payload);
        let mut record = ActionRecord::new(self.run.subject.clone(), op, decision)
            .phase(self.run.phase().as_str());
        record.call_seq = Some(committed.seq);
        record.result_digest = Some(committed.head);
        let mut entries: Vec<Entry> = committed.records;
        entries.push(Entry::Action(record));
        let services = self.services.clone();
        let durable = durable && services.ledger.is_persistent();
        async move {
            if let Err(error) = services.ledger.append_all_async(entries, durable).await {
                tracing::error!(%error, op, "cannot record the host's own step");
            }
        }
    }

    /// PACKAGE: the chained row names every artifact the run wrote and each sealed
    /// deliverable with its digest and size, so the ledger alone says which bytes were
    /// delivered (a blob or reference changed later no longer matches it).
    async fn package(&mut self) {
        let artifacts = self.run.written();
        let manifest: Vec<String> = artifacts
            .iter()
            .map(|a| format!("{} {}", a.name, a.digest))
            .collect();
        let entry = |a: &ArtifactRef| serde_json::json!({ "digest": a.digest, "size": a.size });
        let deliverables: serde_json::Map<String, serde_json::Value> = self
            .sealed
            .iter()
            .map(|a| (a.name.clone(), entry(a)))
            .collect();
        let written: Vec<serde_json::Value> = artifacts
            .iter()
            .map(|a| serde_json::json!({ "name": a.name, "digest": a.digest, "size": a.size }))
            .collect();
        let details = serde_json::json!({ "deliverables": deliverables, "artifacts": written });
        let record = ActionRecord::new(self.run.subject.clone(), "package", manifest.join("; "))
            .phase(Phase::Package.as_str())
            .details(details.to_string());
        self.services
            .ledger
            .append_async(Entry::Action(record))
            .await;
    }

    /// EXIT: checkpoint, release the lock, metrics, promotion check, flush the ledger.
    pub(super) async fn exit(mut self, outcome: Result<(), Stop>) -> RunReport {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        let revoked = self.run.is_revoked() || matches!(outcome, Err(Stop::Revoked));
        let outcome = self.outcome(outcome, revoked);
        self.release(revoked).await;
        let output = self.collect_output().await;
        let compliant =
            outcome.is_success() && self.counts.total == 0 && self.counts.procedure == 0;
        let promoted_to = self.promote(compliant, revoked).await;
        self.record_end(&outcome).await;
        self.write_logs(&output.stdout, &output.stderr);
        self.assemble_report(outcome, output, compliant, promoted_to)
    }

    /// How the run ended, from how the phases stopped.
    fn outcome(&mut self, stopped: Result<(), Stop>, revoked: bool) -> RunOutcome {
        match stopped {
            Ok(()) if self.policy().stops_after_plan => RunOutcome::PlanOnly,
            Ok(()) => match self.verification_failed.take() {
                None => RunOutcome::Completed,
                Some(message) => RunOutcome::Failed {
                    code: FailureCode::VerificationFailed,
                    message,
                },
            },
            Err(_) if revoked => {
                let reason = self.run.revocation().unwrap_or(RevocationReason {
                    kind: RevocationKind::Revoked,
                    details: String::new(),
                });
                RunOutcome::Revoked {
                    reason: reason.kind,
                    details: reason.details,
                }
            }
            Err(Stop::Failed { code, message }) => RunOutcome::Failed { code, message },
            Err(Stop::Revoked) => RunOutcome::Revoked {
                reason: RevocationKind::Revoked,
                details: String::new(),
            },
        }
    }

    /// The last checkpoint (unless revoked), the lock, the secrets session, the running-agent
    /// entry; then the final error counts.
    async fn release(&mut self, revoked: bool) {
        let agent = self.run.agent_id.clone();
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
        // The run's secrets token ends with the run, not with its TTL.
        let session = self.run.secrets.lock().take();
        if let Some(session) = session
            && let Err(error) = session.revoke().await
        {
            tracing::warn!(%error, agent = %agent, "cannot revoke the run's secrets token");
        }
        self.services.running.lock().remove(&agent);
        if let Ok(counts) = self.services.state.error_counts(&agent).await {
            self.counts = counts;
        }
    }

    /// The guest's captured stdout and stderr, each logged to the ledger.
    async fn collect_output(&mut self) -> Output {
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
                self.log(Phase::Exit, stream, text.clone()).await;
            }
        }
        if dropped > 0 {
            self.log(
                Phase::Exit,
                "agent.output_truncated",
                format!("{dropped} bytes past the cap were dropped"),
            )
            .await;
        }
        Output {
            stdout,
            stderr,
            dropped,
        }
    }

    /// Count the run in the agent's metrics and change its tier when the promotion rules say
    /// so (`governance::promotion::decide`); returns the tier it moved to, up or down.
    async fn promote(&mut self, compliant: bool, revoked: bool) -> Option<Tier> {
        let tier = self.run.tier;
        let agent = self.run.agent_id.clone();
        let metrics = self
            .services
            .ledger
            .record_run_async(&agent, tier, compliant, Some(&self.run.run_id))
            .await;
        let metrics = match metrics {
            Ok(metrics) => metrics,
            Err(error) => {
                tracing::warn!(%error, "cannot record run metrics");
                return None;
            }
        };
        let rules = &self.services.tiers.promotion;
        // Facts are read only when a rule can fire: a compliant run below the promotion
        // count, or a run without a violation, changes nothing.
        let may_promote =
            compliant && metrics.consecutive_compliant >= u64::from(rules.consecutive_compliant);
        let may_demote = !compliant && !revoked && rules.demote_after_violations > 0;
        if !may_promote && !may_demote {
            return None;
        }
        let facts = match crate::governance::promotion_facts(
            &self.services,
            &agent,
            (tier, compliant, revoked),
            metrics.consecutive_compliant,
        ) {
            Ok(facts) => facts,
            Err(error) => {
                tracing::warn!(%error, "cannot read the agent's record for the promotion rules");
                return None;
            }
        };
        use crate::governance::promotion::Change;
        match crate::governance::promotion::decide(rules, &facts) {
            Change::Stay => None,
            Change::NeedsHuman { to, why } => {
                self.log(
                    Phase::Exit,
                    "promotion.eligible",
                    format!(
                        "eligible for {to}, {why}: promote with `warden agents promote {agent} --tier {}`",
                        to.code()
                    ),
                )
                .await;
                None
            }
            Change::CoolingDown { to, left } => {
                self.log(
                    Phase::Exit,
                    "promotion.eligible",
                    format!(
                        "eligible for {to} in {} (`cooldown` since the last tier change)",
                        crate::duration::format(left)
                    ),
                )
                .await;
                None
            }
            Change::Promote { to, rule, evidence } | Change::Demote { to, rule, evidence } => {
                match crate::governance::change_tier(
                    &self.services,
                    &agent,
                    (tier, to),
                    rule,
                    &evidence,
                )
                .await
                {
                    Ok(()) => Some(to),
                    Err(error) => {
                        tracing::warn!(%error, "cannot change the agent's tier");
                        None
                    }
                }
            }
        }
    }

    /// The `run.end` row; then every row of the run is committed.
    async fn record_end(&mut self, outcome: &RunOutcome) {
        let summary = match outcome {
            RunOutcome::Completed => "completed".to_string(),
            RunOutcome::PlanOnly => "plan-only".to_string(),
            RunOutcome::Revoked { reason, .. } => format!("revoked: {reason}"),
            RunOutcome::Failed { code, .. } => format!("failed: {code}"),
        };
        let error = match outcome {
            RunOutcome::Failed { code, message } => Some((code.as_str(), message.clone())),
            RunOutcome::Revoked { reason, details } => Some((reason.as_str(), details.clone())),
            _ => None,
        };
        let status = match outcome {
            RunOutcome::Completed | RunOutcome::PlanOnly => "completed",
            RunOutcome::Revoked { .. } => "revoked",
            RunOutcome::Failed { .. } => "failed",
        };
        let code = match outcome {
            RunOutcome::Completed => "COMPLETED".to_string(),
            RunOutcome::PlanOnly => "PLAN_ONLY".to_string(),
            RunOutcome::Revoked { reason, .. } => reason.as_str().to_string(),
            RunOutcome::Failed { code, .. } => code.as_str().to_string(),
        };
        let mut end = action(
            &self.run.subject,
            Some(Phase::Exit),
            "run.end",
            summary,
            error,
        );
        // The last observations ride with the end row, which vouches for the whole journal.
        let journal = &self.run.journal;
        let mut entries: Vec<Entry> = journal.take_pending();
        if let Entry::Action(record) = &mut end
            && !journal.is_empty()
        {
            record.call_seq = Some(journal.len());
            record.result_digest = Some(journal.chain().into());
        }
        entries.push(end);
        entries.push(self.run_row(status, Some(code)));
        if let Err(error) = self.services.ledger.append_all_async(entries, false).await {
            tracing::error!(%error, "cannot record the end of the run");
        }
        if let Err(error) = self.services.ledger_flush().await {
            tracing::error!(%error, "ledger flush at exit failed");
        } else if self.services.ledger.is_persistent()
            && let Err(error) = self.services.state.forget_receipt(&self.run.run_id).await
        {
            // Harmless: one key left behind, never read again (a run that ended is not
            // resumed).
            tracing::warn!(%error, "cannot drop the run's write receipt");
        }
    }

    fn assemble_report(
        mut self,
        outcome: RunOutcome,
        output: Output,
        compliant: bool,
        promoted_to: Option<Tier>,
    ) -> RunReport {
        if let Some(last) = self.phases.last_mut()
            && last.phase == Phase::Exit
        {
            last.elapsed_ms = self.phase_started.elapsed().as_secs_f64() * 1e3;
        }
        RunReport {
            run_id: self.run.run_id.to_string(),
            agent_id: self.run.agent_id.to_string(),
            task_id: self.run.task_id.to_string(),
            tier: self.run.tier,
            component_digest: self.component_digest.clone(),
            policy_revision: self.services.tiers.revision.clone(),
            outcome,
            phases: std::mem::take(&mut self.phases),
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
            artifacts: self.run.written(),
            budget: BudgetUse::from(&self.counts),
            compliant,
            promoted_to: promoted_to.filter(|&to| to > self.run.tier),
            demoted_to: promoted_to.filter(|&to| to < self.run.tier),
            stdout: output.stdout,
            stderr: output.stderr,
            output_dropped_bytes: output.dropped,
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
fn not_booted() -> Stop {
    Stop::Failed {
        code: FailureCode::Internal,
        message: "the agent instance is missing".into(),
    }
}

/// The bytes of text of a phase result's strings.
fn text_bytes<'a>(parts: impl IntoIterator<Item = &'a String>) -> u64 {
    parts
        .into_iter()
        .map(|part| u64::try_from(part.len()).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add)
}

fn plan_json(plan: &wit::Plan) -> String {
    serde_json::json!({
        "summary": plan.summary,
        "steps": plan.steps,
        "confidence": plan.confidence,
    })
    .to_string()
}
