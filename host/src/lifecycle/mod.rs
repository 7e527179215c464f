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

use crate::context::{RunShared, Services};
use crate::error::{Error, Refusal};
use crate::governance::{action, host_subject, violation};
use crate::ledger::Subject;
use crate::packet::{Packet, Revocation};
use crate::phase::Phase;
use crate::report::RunReport;
use crate::sandbox::Sandbox;
use crate::state::{LockAttempt, StateError};

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
    sandbox: Arc<Sandbox>,
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
    let component_digest = sandbox
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

    let component = sandbox.runtime.component(&component_digest, bytes, agent)?;
    if let Err(refusal) = sandbox.load_gate(&services.tiers, agent, tier, &component) {
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
    let mut driver = Driver::new(
        services.clone(),
        sandbox,
        run,
        started,
        component_digest.clone(),
    );
    let booted = driver.boot(&component, policy).await;
    let outcome = match booted {
        Ok(()) => driver.drive().await,
        Err(stop) => Err(stop),
    };
    Ok(driver.exit(outcome).await)
}
