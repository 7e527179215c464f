//! `warden:agent/ledger`: the agent's own notes and decisions, chained with the host's rows.
//!
//! Tier section `[tiers.Tn.ledger]`: present, the interface is linked; `max_entries_per_run`
//! and `max_bytes_per_run` bound the notes and decisions one run may add (counted in the
//! run's shared state), so an agent cannot grow the ledger, or the host's memory on the way
//! to it, without bound.

use serde::Deserialize;

use super::AgentCtx;
use super::quota::{QuotaKeys, covers, refusal};
use crate::governance::{CallRefusal, ViolationKind};
use crate::bindings::{WitError, warden::agent::ledger::Host};
use crate::ledger::{ActionRecord, Entry};
use crate::interface::Interface;
use crate::policy::SectionSpec;
use crate::state::Quota;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Ledger);

/// `[tiers.Tn.ledger]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Notes and decisions one run may add.
    #[serde(default = "default_max_entries_per_run")]
    pub max_entries_per_run: u64,
    /// Bytes of their text (action and decision) one run may add.
    #[serde(default = "default_max_bytes_per_run")]
    pub max_bytes_per_run: u64,
}

/// Entries per run when the section does not say: 1,000.
const DEFAULT_MAX_ENTRIES_PER_RUN: u64 = 1000;
/// Bytes per run when the section does not say: 1 MiB.
const DEFAULT_MAX_BYTES_PER_RUN: u64 = 1 << 20;

fn default_max_entries_per_run() -> u64 {
    DEFAULT_MAX_ENTRIES_PER_RUN
}

fn default_max_bytes_per_run() -> u64 {
    DEFAULT_MAX_BYTES_PER_RUN
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        max_entries_per_run: 0,
        max_bytes_per_run: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        covers(
            "max_entries_per_run",
            self.max_entries_per_run,
            lower.max_entries_per_run,
        )?;
        covers(
            "max_bytes_per_run",
            self.max_bytes_per_run,
            lower.max_bytes_per_run,
        )
    }
}

impl Grant {
    fn quota(&self) -> Quota {
        Quota {
            max_entries: self.max_entries_per_run,
            max_bytes: self.max_bytes_per_run,
        }
    }
}

const KEYS: QuotaKeys = QuotaKeys {
    section: Some("ledger"),
    entries: ("max_entries_per_run", "ledger entries"),
    bytes: ("max_bytes_per_run", "bytes of ledger entries"),
};

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
        self.refuse_placeholders(op, || "ledger:write".to_string(), &[action.as_bytes(), decision.as_bytes()])
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
        let bytes = u64::try_from(action.len() + decision.len()).unwrap_or(u64::MAX);
        let policy = self.gov.policy();
        let quota = policy.grant::<Grant>(Interface::Ledger).quota();
        if let Err(over) = self.gov.run.charge_note(bytes, quota) {
            let refusal = refusal(
                policy,
                KEYS,
                "ledger:write".into(),
                &format!("`{op}`"),
                &format!("this run of `{}`", self.gov.agent_id()),
                over,
                None,
            );
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
        super::journal_call!(self, "ledger.note", Json, super::journaled::args(&(&message,)), {
            self.agent_entry("ledger.note", "agent.note".into(), message, None)
                .await
        })
    }

    async fn decision(
        &mut self,
        action: String,
        decision: String,
        confidence: f32,
    ) -> Result<(), WitError> {
        super::journal_call!(self, "ledger.decision", Json, super::journaled::args(&(&action, &decision, &confidence)), {
            self.agent_entry(
                "ledger.decision",
                format!("agent.decision:{action}"),
                decision,
                Some(f64::from(confidence)),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::{TestEnv, tiers_with};
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

    #[tokio::test]
    async fn a_run_adds_at_most_its_entries_and_each_is_charged() {
        let tiers = tiers_with(&[("max_entries_per_run = 1000", "max_entries_per_run = 3")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Observer, json!({})).await;
        for n in 0..3 {
            agent.ctx.note(format!("note {n}")).await.unwrap();
        }
        let err = agent
            .ctx
            .decision("d".into(), "one too many".into(), 0.5)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("`ledger.decision` refused: this run of `agent-1` would hold 4 ledger entries (it holds 3), over the quota of 3 of tier T0 (observer) (`[tiers.T0.ledger] max_entries_per_run`)")),
            "{err:?}"
        );
        let err = agent.ctx.note("again".into()).await.unwrap_err();
        assert!(matches!(err, WitError::BudgetExhausted(_)), "{err:?}");
        let err = agent.ctx.note("and again".into()).await.unwrap_err();
        assert!(
            matches!(err, WitError::Revoked(_)),
            "the same refusal twice spends `max_same_error_repeats`: {err:?}"
        );
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"; 3]);
        assert_eq!(agent.errors().await.total, 3);
        let notes = agent
            .actions()
            .into_iter()
            .filter(|(kind, _, _)| kind == "agent.note")
            .count();
        assert_eq!(notes, 3, "the refused entries were not written");
        // The quota is the run's: another run has its own.
        let mut next = agent.peer("agent-2", Tier::Observer).await;
        next.ctx.note("a fresh run".into()).await.unwrap();
    }

    #[tokio::test]
    async fn a_run_adds_at_most_its_bytes() {
        let tiers = tiers_with(&[("max_bytes_per_run = 1048576", "max_bytes_per_run = 30")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Observer, json!({})).await;
        // `agent.note` (10 bytes) + 5, twice: 30 bytes, the limit exactly.
        agent.ctx.note("12345".into()).await.unwrap();
        agent.ctx.note("12345".into()).await.unwrap();
        let err = agent.ctx.note(String::new()).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("would hold 40 bytes of ledger entries (it holds 30), over the quota of 30") && m.contains("`[tiers.T0.ledger] max_bytes_per_run`")),
            "{err:?}"
        );
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(agent.errors().await.total, 1);
    }
}
