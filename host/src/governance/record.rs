//! Ledger records of the host's own decisions: the subject of a row, action and violation
//! entries, operator actions that belong to no run.

use std::borrow::Cow;
use std::sync::Arc;

use crate::context::Services;
use crate::error::{Error, Refusal};
use crate::id::{AgentId, TaskId};
use crate::ledger::{ActionRecord, Entry, Subject, ViolationRecord};
use crate::packet::{Approval, now_rfc3339};
use crate::phase::Phase;
use crate::tier::Tier;

pub(crate) fn host_subject(
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
        run_id: None,
    })
}

/// [`host_subject`] of a row of run `run`.
pub(crate) fn run_subject(
    services: &Services,
    (agent, tier): (&str, Tier),
    task: Option<&str>,
    digest: Option<&str>,
    run: &crate::id::RunId,
) -> Arc<Subject> {
    let mut subject = Arc::unwrap_or_clone(host_subject(services, agent, tier, task, digest));
    subject.run_id = Some(Arc::from(run));
    Arc::new(subject)
}

fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub(crate) fn action(
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

/// The row that records who signed the component a load or registration accepted
/// (`component.signature`, decision `verified`; details: the key's name and fingerprint).
pub(crate) fn signature_row(
    subject: &Arc<Subject>,
    phase: Option<Phase>,
    signer: &crate::signing::TrustedKey,
) -> Entry {
    let details = serde_json::json!({ "signer": signer.name, "key": signer.fingerprint });
    let mut record = ActionRecord::new(subject.clone(), "component.signature", "verified")
        .details(details.to_string());
    if let Some(phase) = phase {
        record = record.phase(phase.as_str());
    }
    Entry::Action(record)
}

pub(crate) fn violation(
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

/// Record, durably, an operator or host request the host refused before any run began.
pub(crate) async fn record_host_refusal(
    services: &Services,
    agent: &str,
    task: Option<&str>,
    name: &'static str,
    refusal: &Refusal,
) {
    let tier = services
        .ledger
        .agent(agent)
        .ok()
        .flatten()
        .map_or(Tier::Observer, |a| a.tier);
    let subject = host_subject(services, agent, tier, task, None);
    let entry = action(
        &subject,
        Some(Phase::Bootstrap),
        name,
        "refused",
        Some((refusal.code(), refusal.to_string())),
    );
    if let Err(error) = services.ledger_durable(entry).await {
        tracing::error!(%error, "cannot record a refusal");
    }
}

/// Record an approval for a task (`warden approve`).
pub(crate) async fn approve(
    services: &Services,
    task: &TaskId,
    approver: &str,
) -> Result<(), Error> {
    let approval = Approval {
        task_id: task.clone(),
        approved_by: approver.to_string(),
        approved_at: now_rfc3339(),
    };
    services.state.put_approval(&approval).await?;
    let agent = services.state.active_agent(task).await?;
    record_host_action(
        services,
        agent.as_ref().map_or("-", AgentId::as_str),
        Some(task),
        "approval.grant",
        &format!("approved by {approver}"),
    )
    .await
}
