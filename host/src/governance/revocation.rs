//! Revocation and handoff: a revoked run is interrupted at its next epoch tick, the
//! revocation is recorded in the state store and the ledger, its secrets session is revoked,
//! a handoff is written for the next agent and its lock is released. Revocations made by
//! other hosts reach a run through [`spawn_revocation_watcher`].

use std::sync::Arc;
use std::time::Duration;

use super::record::{action, host_subject};
use crate::context::{RunShared, Services};
use crate::error::Error;
use crate::id::AgentId;
use crate::packet::{
    Handoff, LastKnownState, Revocation, RevocationKind, RevocationReason, now_rfc3339,
};
use crate::phase::Phase;
use crate::state::StateError;

/// Most artifact names a handoff lists: the first, by name, of the task's.
pub(crate) const HANDOFF_ARTIFACTS: usize = 100;

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
    let revocation = Revocation {
        agent_id: run.agent_id.clone(),
        task_id: Some(run.task_id.clone()),
        reason: reason.clone(),
        revoked_by: by.to_string(),
        revoked_at: now_rfc3339(),
    };
    if let Err(error) = services.state.record_revocation(&revocation).await {
        tracing::error!(%error, "cannot record revocation in the state store");
    }
    let entry = action(
        &run.subject,
        Some(run.phase()),
        "agent.revoke",
        reason.kind.as_str(),
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
    let (agent, task) = (&run.agent_id, &run.task_id);
    let phase = run.phase();
    let session = run.secrets.lock().take();
    if let Some(session) = session
        && let Err(error) = session.revoke().await
    {
        tracing::warn!(%error, "cannot revoke secrets session");
    }
    let handoff = build_handoff(services, run, reason, phase).await;
    if let Err(error) = services.state.put_handoff(&handoff).await {
        tracing::error!(%error, "cannot write handoff");
    }
    if let Ok(json) = serde_json::to_string(&handoff) {
        services
            .ledger
            .append_async(action(
                &run.subject,
                Some(phase),
                "handoff.write",
                json,
                None,
            ))
            .await;
    }
    if let Err(error) = services.state.release_lock(agent, &run.lock_owner).await {
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
    let mut tried: Vec<String> = services
        .ledger
        .query(&query)
        .map(|rows| rows.iter().filter_map(|row| row.tried()).collect())
        .unwrap_or_default();
    // The call being refused, whose rows are written when it returns.
    if let Some(op) = run.call() {
        tried.push(format!("{op} -> refused: {}", reason.details));
    }
    let last_step = tried.last().cloned().unwrap_or_else(|| "enter".to_string());
    // A bounded page of the index, never the task's whole history.
    let artifacts = match services
        .state
        .artifact_page(&run.task_id, None, HANDOFF_ARTIFACTS)
        .await
    {
        Ok(refs) => refs.into_iter().map(|a| a.name).collect(),
        Err(error) => {
            tracing::warn!(%error, "the handoff lists no artifacts: the state store cannot list them");
            Vec::new()
        }
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
        task_id: run.task_id.clone(),
        previous_agent_id: run.agent_id.clone(),
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
pub(crate) fn spawn_revocation_watcher(
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
            let reason = match services.state.revocation(&run.agent_id).await {
                Ok(Some(revocation)) => revocation.reason,
                // Something is recorded under the agent: it was revoked, even if the record
                // cannot be read.
                Err(error @ StateError::Corrupt { .. }) => RevocationReason {
                    kind: RevocationKind::Operator,
                    details: format!("revoked elsewhere; the record cannot be read: {error}"),
                },
                Ok(None) | Err(_) => continue,
            };
            if run.mark_revoked(reason.clone()) {
                finish_revocation(&services, &run, &reason).await;
            }
            return;
        }
    })
}

/// Operator revocation (`warden agents revoke`).
pub(crate) async fn revoke_agent(
    services: &Arc<Services>,
    agent: &AgentId,
    details: &str,
    actor: &str,
) -> Result<(), Error> {
    let record = services.registered(agent)?;
    let reason = RevocationReason {
        kind: RevocationKind::Operator,
        details: details.to_string(),
    };
    let running = services.running.lock().get(agent).cloned();
    if let Some(run) = running {
        revoke(services, &run, reason, actor).await;
        return Ok(());
    }
    if standing(services, agent).await?.is_some() {
        return Err(Error::Invalid(format!(
            "agent `{agent}` is already revoked; `warden agents reinstate {agent} --reason <why>` lifts a revocation"
        )));
    }
    let revocation = Revocation {
        agent_id: agent.clone(),
        task_id: None,
        reason: reason.clone(),
        revoked_by: actor.to_string(),
        revoked_at: now_rfc3339(),
    };
    services.state.record_revocation(&revocation).await?;
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

/// The state-store record of a revocation the ledger holds.
/// The agent's revocation: the state store's record, else the chain's (which the ledger
/// keeps whatever the state store lost).
pub(crate) async fn standing(
    services: &Services,
    agent: &AgentId,
) -> Result<Option<Revocation>, Error> {
    if let Some(found) = services.state.revocation(agent).await? {
        return Ok(Some(found));
    }
    Ok(services
        .ledger
        .revocation(agent)?
        .map(|lost| from_chain(agent, &lost)))
}

pub(crate) fn from_chain(agent: &AgentId, lost: &crate::ledger::ChainRevocation) -> Revocation {
    Revocation {
        agent_id: agent.clone(),
        task_id: lost
            .task_id
            .as_deref()
            .and_then(|t| crate::id::TaskId::new(t).ok()),
        reason: RevocationReason {
            kind: RevocationKind::from_code(&lost.kind).unwrap_or(RevocationKind::Revoked),
            details: lost.details.clone(),
        },
        revoked_by: "ledger".to_string(),
        revoked_at: lost.revoked_at.clone(),
    }
}

/// Put a revocation the state store lost back from the ledger's record of it.
pub(crate) async fn reseed_revocation(
    services: &Services,
    agent: &AgentId,
    lost: &crate::ledger::ChainRevocation,
) {
    let revocation = from_chain(agent, lost);
    match services.state.record_revocation(&revocation).await {
        Ok(()) => tracing::warn!(
            agent = %agent,
            seq = lost.seq,
            "the state store had lost the agent's revocation; restored from the ledger"
        ),
        Err(error) => tracing::error!(%error, agent = %agent, "cannot restore a revocation"),
    }
}

/// Lift a revocation (`warden agents reinstate`): the only act that does, recorded in the
/// ledger before the state store forgets the standing.
pub(crate) async fn reinstate_agent(
    services: &Arc<Services>,
    agent: &AgentId,
    reason: &str,
    actor: &str,
) -> Result<(), Error> {
    let record = services.registered(agent)?;
    if reason.trim().is_empty() {
        return Err(Error::Invalid(
            "a reinstatement needs a reason: `--reason <why the agent may run again>`".into(),
        ));
    }
    let in_state = services.state.revocation(agent).await?;
    let in_ledger = services.ledger.revocation(agent)?;
    if in_state.is_none() && in_ledger.is_none() {
        return Err(Error::Invalid(format!(
            "agent `{agent}` is not revoked; nothing to reinstate"
        )));
    }
    let subject = host_subject(
        services,
        agent,
        record.tier,
        None,
        record.component_digest.as_deref(),
    );
    let details = serde_json::json!({
        "by": actor,
        "reason": reason,
        "lifts": in_ledger.map(|r| r.seq),
    });
    let row = crate::ledger::ActionRecord::new(subject, "agent.reinstate", "OPERATOR")
        .details(details.to_string());
    services
        .ledger_durable(crate::ledger::Entry::Action(row))
        .await?;
    services.state.clear_revocation(agent).await?;
    Ok(())
}
