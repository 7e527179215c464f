//! The host-owned lifecycle:
//!
//! ```text
//! BOOTSTRAP → PREFLIGHT → PLAN → approval gate → EXECUTE → VERIFY → PACKAGE → REPORT → EXIT
//! ```
//!
//! The agent exports one function per agent-driven phase and the host calls them in order,
//! so no phase can be skipped or reordered. This module is BOOTSTRAP up to the lock: the
//! registration, revocation, packet and load-gate checks, each refusal recorded. From the lock
//! on, [`driver`] runs the phases. Each transition heartbeats, refreshes the lock, writes a
//! checkpoint and reads the error budget in one state-store round trip. A tier that stops
//! after PLAN (T0) goes PLAN → PACKAGE → EXIT with its plan artifact.

mod driver;

use std::sync::Arc;
use std::time::Instant;

use crate::artifacts::put_off_thread;
use crate::context::{RunShared, Services};
use crate::error::{Error, Refusal};
use crate::governance::{self, action, run_subject, violation};
use crate::id::{AgentId, RunId};
use crate::journal::Journal;
use crate::ledger::Subject;
use crate::phase::Phase;
use crate::report::RunReport;
use crate::sandbox::Sandbox;
use crate::state::{LockAttempt, LockOwner, StateError, Ttl};

use driver::Driver;

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
        Err(error) => Err(state_failure(services, subject, agent, error).await),
    }
}

async fn state_failure(
    services: &Services,
    subject: &Arc<Subject>,
    agent: &str,
    error: StateError,
) -> Error {
    if !error.is_unavailable() {
        return error.into();
    }
    let refusal = Refusal::StateUnavailable {
        agent: agent.to_string(),
        reason: error.to_string(),
    };
    refuse_bootstrap(services, subject, refusal).await
}

/// How a run's guest is answered.
pub(crate) enum RunMode {
    /// Live: every call runs and is journaled under a new run id.
    Live,
    /// Live under an id chosen before the run (a pipeline records it first, so a resume
    /// finds the run of a stage).
    LiveAs(RunId),
    /// A replay of recorded run `run_id`: every call is answered from `journal`.
    Replay {
        run_id: RunId,
        journal: Arc<Journal>,
    },
    /// Attempt `attempt` of interrupted run `run_id`: answered from `journal` up to its end,
    /// live from there, with the packet the run began with.
    Resume {
        run_id: RunId,
        journal: Arc<Journal>,
        packet: Box<crate::packet::Packet>,
        attempt: u32,
    },
}

/// Run an agent's whole lifecycle.
pub(crate) async fn run(
    services: Arc<Services>,
    sandbox: Arc<Sandbox>,
    agent: &AgentId,
    bytes: &[u8],
    mode: RunMode,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let (run_id, journal, resumed) = match mode {
        RunMode::Live => {
            let run_id = RunId::generate();
            let journal = Arc::new(Journal::recording(run_id.as_str()));
            (run_id, journal, None)
        }
        RunMode::LiveAs(run_id) => {
            let journal = Arc::new(Journal::recording(run_id.as_str()));
            (run_id, journal, None)
        }
        RunMode::Replay { run_id, journal } => (run_id, journal, None),
        RunMode::Resume {
            run_id,
            journal,
            packet,
            attempt,
        } => (run_id, journal, Some((*packet, attempt))),
    };
    let attempt_no = resumed.as_ref().map_or(1, |(_, attempt)| *attempt);
    let record = services.registered(agent)?;
    let tier = record.tier;
    // The ledger's chain is the registration; the registry row is its working copy.
    if let Some(mismatch) = services.ledger.registry_mismatch(&record)? {
        let subject = run_subject(&services, (agent, tier), None, None, &run_id);
        let refusal = Refusal::RegistryTampered {
            agent: agent.to_string(),
            mismatch: mismatch.to_string(),
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }
    let component_digest = sandbox
        .runtime
        .digest_of(bytes, record.component_digest.as_deref());
    let mut subject = run_subject(
        &services,
        (agent, tier),
        None,
        Some(&component_digest),
        &run_id,
    );

    if let Some(registered) = &record.component_digest
        && *registered != component_digest
    {
        let refusal = Refusal::ComponentMismatch {
            agent: agent.to_string(),
            registered: registered.clone(),
            offered: component_digest.clone(),
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }
    // Compiled before a first run binds it: bytes that are no component are refused (recorded)
    // and never become the agent's binding.
    let component = match sandbox.runtime.component(&component_digest, bytes, agent) {
        Ok(component) => component,
        Err(crate::runtime::ComponentError::Invalid { message, .. }) => {
            let refusal = Refusal::InvalidComponent {
                agent: agent.to_string(),
                digest: component_digest.clone(),
                reason: crate::text::clip(&message, 1024),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
        Err(error) => return Err(error.into()),
    };
    if record.component_digest.is_none() {
        // First run of an agent registered without a component binds it (recorded), and
        // keeps the component, so `warden replay` finds what ran.
        services
            .ledger
            .register_agent(agent, tier, Some(&component_digest), "host")?;
        if let Err(error) = put_off_thread(&services.blobs, bytes.to_vec()).await {
            tracing::warn!(%error, "cannot keep the component for replay");
        }
    }

    let revocation = match services.state.revocation(agent).await {
        Ok(found) => found.map(|r| {
            (
                format!("{}: {}", r.reason.kind, r.reason.details),
                r.revoked_at,
            )
        }),
        // Something is recorded under the agent: it was revoked, even if the record cannot
        // be read.
        Err(error @ StateError::Corrupt { .. }) => Some((
            format!("its record cannot be read: {error}"),
            "an unknown time".to_string(),
        )),
        Err(error) => return Err(state_failure(&services, &subject, agent, error).await),
    };
    // The ledger holds every revocation this host recorded: one the state store lost (a
    // Redis restart without persistence, a deleted key) is put back and still refuses.
    let revocation = match revocation {
        Some(found) => Some(found),
        None => match services.ledger.revocation(agent)? {
            Some(lost) => {
                governance::reseed_revocation(&services, agent, &lost).await;
                Some((format!("{}: {}", lost.kind, lost.details), lost.revoked_at))
            }
            None => None,
        },
    };
    if let Some((reason, revoked_at)) = revocation {
        let refusal = Refusal::PreviouslyRevoked {
            agent: agent.to_string(),
            reason,
            revoked_at,
        };
        return Err(refuse_bootstrap(&services, &subject, refusal).await);
    }

    let stored = match resumed {
        // A resumed run goes on with the packet it began with, whatever was submitted since.
        Some((packet, _)) => Ok(Some(packet)),
        None => services.state.packet(agent).await,
    };
    let packet = match stored {
        Ok(packet) => Ok(packet),
        // A stored packet that does not parse is the packet's fault, refused like one.
        Err(StateError::Corrupt { message, .. }) => Err(message),
        Err(error) => return Err(state_failure(&services, &subject, agent, error).await),
    };
    let packet = match packet {
        Ok(Some(packet)) if packet.agent_id == *agent => packet,
        Ok(Some(packet)) => {
            let refusal = Refusal::InvalidPacket {
                agent: agent.to_string(),
                reason: format!("it is addressed to agent `{}`", packet.agent_id),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
        Ok(None) => {
            let refusal = Refusal::NoInstructionPacket {
                agent: agent.to_string(),
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
        Err(reason) => {
            let refusal = Refusal::InvalidPacket {
                agent: agent.to_string(),
                reason,
            };
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
    };
    subject = run_subject(
        &services,
        (agent, tier),
        Some(&packet.task_id),
        Some(&component_digest),
        &run_id,
    );

    match sandbox.load_gate(
        &services.tiers,
        agent,
        tier,
        (&component_digest, bytes, &component),
    ) {
        Ok(Some(signer)) => {
            let entry = crate::governance::signature_row(&subject, Some(Phase::Bootstrap), &signer);
            services.ledger.append_async(entry).await;
        }
        Ok(None) => {}
        Err(refusal) => {
            let entry = violation(
                &subject,
                Phase::Bootstrap,
                refusal.code(),
                component_digest.clone(),
                refusal.to_string(),
            );
            services.ledger.append_async(entry).await;
            return Err(refuse_bootstrap(&services, &subject, refusal).await);
        }
    }

    let policy = services.tiers.policy(tier);
    let owner = LockOwner::new(format!(
        "{}:{}",
        services.host_id,
        uuid::Uuid::new_v4().simple()
    ))?;
    let lock_ttl = Ttl::new("lock", services.tiers.defaults.lock_ttl)?;
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
        (run_id, journal),
    ));
    services.running.lock().insert(agent.clone(), run.clone());
    let mut driver = Driver::new(
        services.clone(),
        sandbox,
        run,
        started,
        (component_digest.clone(), attempt_no),
    );
    let booted = driver.boot(&component, policy).await;
    let outcome = match booted {
        Ok(()) => driver.drive().await,
        Err(stop) => Err(stop),
    };
    Ok(driver.exit(outcome).await)
}
