//! `warden:agent/ledger`: the agent's own notes and decisions, chained with the host's rows.

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind};
use crate::bindings::{WitError, warden::agent::ledger::Host};
use crate::ledger::{ActionRecord, Entry};
use crate::interface::Interface;
use crate::policy::{Linked, SectionSpec};

/// Its section (`[tiers.T1.ledger]`) has no settings: present, the interface is linked.
pub(super) const SECTION: SectionSpec = SectionSpec::of::<Linked>(Interface::Ledger);

const MAX_TEXT_BYTES: usize = 8192;

impl AgentCtx {
    async fn agent_entry(
        &mut self,
        op: &'static str,
        action: String,
        decision: String,
        confidence: Option<f64>,
    ) -> Result<(), WitError> {
        self.gov
            .gate(Interface::Ledger, op, || "ledger:write".to_string())
            .await?;
        if action.len() + decision.len() > MAX_TEXT_BYTES {
            let refusal = CallRefusal {
                kind: ViolationKind::Invalid,
                resource: "ledger:write".into(),
                message: format!(
                    "`{op}` refused: entry of {} bytes; entries are at most {MAX_TEXT_BYTES} bytes",
                    action.len() + decision.len()
                ),
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        if confidence.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            let refusal = CallRefusal {
                kind: ViolationKind::Invalid,
                resource: "ledger:write".into(),
                message: format!(
                    "`{op}` refused: confidence {} is outside 0.0..=1.0",
                    confidence.unwrap_or_default()
                ),
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        let run = &self.gov.run;
        let mut record =
            ActionRecord::new(run.subject.clone(), action, decision).phase(run.phase().as_str());
        if let Some(confidence) = confidence {
            record = record.confidence(confidence);
        }
        self.gov.append(Entry::Action(record)).await;
        Ok(())
    }
}

impl Host for AgentCtx {
    async fn note(&mut self, message: String) -> Result<(), WitError> {
        self.agent_entry("ledger.note", "agent.note".into(), message, None)
            .await
    }

    async fn decision(
        &mut self,
        action: String,
        decision: String,
        confidence: f32,
    ) -> Result<(), WitError> {
        self.agent_entry(
            "ledger.decision",
            format!("agent.decision:{action}"),
            decision,
            Some(f64::from(confidence)),
        )
        .await
    }
}
