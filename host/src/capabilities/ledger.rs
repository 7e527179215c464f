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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;
    use crate::tier::Tier;

    #[tokio::test]
    async fn notes_and_decisions_are_rows_of_the_run() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        agent.ctx.note("looked around".into()).await.unwrap();
        agent
            .ctx
            .decision("deploy".into(), "not yet".into(), 0.25)
            .await
            .unwrap();
        let actions: Vec<(String, String)> = agent
            .actions()
            .into_iter()
            .map(|(a, d, _)| (a, d))
            .collect();
        assert_eq!(
            actions,
            [
                ("agent.note".to_string(), "looked around".to_string()),
                ("agent.decision:deploy".to_string(), "not yet".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn oversized_entries_and_bad_confidence_are_refused() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        let err = agent.ctx.note("x".repeat(MAX_TEXT_BYTES + 1)).await.unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("entries are at most 8192 bytes")), "{err:?}");
        let err = agent
            .ctx
            .decision("a".into(), "b".into(), 1.5)
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("outside 0.0..=1.0")), "{err:?}");
        assert_eq!(agent.errors().await.total, 2);
        let kinds: Vec<String> = agent.actions().into_iter().map(|(a, _, _)| a).collect();
        assert_eq!(kinds, ["ledger.note", "ledger.decision"], "only the refusals");
    }
}
