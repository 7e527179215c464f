//! `warden:agent/governance`: an architect (T4) reads the policy and its task's record and
//! proposes tier changes for other agents, which only a person approves
//! (`Host::decide_tier_change`, `warden agents approve-change`).
//!
//! Tier section `[tiers.Tn.governance]`: present, the interface is linked (the shipped table
//! grants it to T4 only); `max_proposals_per_run` bounds the proposals one run may make.

use serde::Deserialize;
use serde_json::json;

use super::AgentCtx;
use super::tools::wit_tier;
use crate::bindings::WitError;
use crate::bindings::warden::agent::governance::{Host, LedgerEntry};
use crate::bindings::warden::agent::types::Tier as WitTier;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::id::AgentId;
use crate::interface::Interface;
use crate::ledger::{ActionRecord, Entry, LedgerQuery};
use crate::policy::SectionSpec;
use crate::tier::Tier;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Governance);

/// `[tiers.Tn.governance]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Tier-change proposals one run may make (default 10).
    #[serde(default = "default_max_proposals")]
    pub max_proposals_per_run: u64,
}

fn default_max_proposals() -> u64 {
    10
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        max_proposals_per_run: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        super::quota::covers(
            "max_proposals_per_run",
            self.max_proposals_per_run,
            lower.max_proposals_per_run,
        )
    }
}

/// Rows one `read-task-ledger` returns at most.
pub(crate) const MAX_ROWS: u32 = 100;
/// Bytes of a row's summary a guest sees.
const MAX_SUMMARY_BYTES: usize = 1024;
/// Bytes of a proposal's reason.
const MAX_REASON_BYTES: usize = 2048;

/// The action row of a proposal.
pub(crate) const PROPOSE: &str = "governance.propose";

fn from_wit(tier: WitTier) -> Tier {
    match tier {
        WitTier::Observer => Tier::Observer,
        WitTier::Operator => Tier::Operator,
        WitTier::Builder => Tier::Builder,
        WitTier::Executor => Tier::Executor,
        WitTier::Architect => Tier::Architect,
    }
}

/// A malformed argument: charged, not a violation.
fn malformed(resource: String, message: String) -> CallRefusal {
    CallRefusal {
        kind: ViolationKind::Invalid,
        resource,
        message,
    }
}

impl Host for AgentCtx {
    async fn read_policy(&mut self) -> Result<String, WitError> {
        super::journal_call!(self, "governance.read-policy", Json, super::journaled::args(&()), {
            const OP: &str = "governance.read-policy";
            self.gov
                .gate(Interface::Governance, OP, || "governance:policy".to_string())
                .await?;
            let tiers = &self.gov.services.tiers;
            let policy = json!({
                "revision": tiers.revision,
                "promotion": tiers.promotion,
                "tiers": Tier::ALL.iter().map(|&t| {
                    let p = tiers.policy(t);
                    json!({
                        "tier": t.code(),
                        "name": p.name,
                        "approval": format!("{:?}", p.approval).to_lowercase(),
                        "interfaces": p.interfaces.iter().map(Interface::name).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            });
            let result = Ok(policy.to_string());
            self.gov.record_result(OP, &result).await;
            result
        })
    }

    async fn read_task_ledger(
        &mut self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, WitError> {
        super::journal_call!(self, "governance.read-task-ledger", Json, super::journaled::args(&(&after_seq, &limit)), {
            const OP: &str = "governance.read-task-ledger";
            let task = self.gov.task_id().to_string();
            self.gov
                .gate(Interface::Governance, OP, || format!("governance:ledger:{task}"))
                .await?;
            if !(1..=MAX_ROWS).contains(&limit) {
                let refusal = malformed(
                    format!("governance:ledger:{task}"),
                    format!("`{OP}` refused: limit {limit}; expected 1 to {MAX_ROWS}"),
                );
                return Err(self.gov.refuse(OP, refusal).await);
            }
            // The rows before this call are in the ledger: a read sees what was written.
            let services = self.gov.services.clone();
            let _ = services.ledger_flush().await;
            let rows = services.ledger.query(&LedgerQuery {
                task_id: Some(task),
                after_seq: Some(after_seq),
                limit: Some(limit as usize),
                ..LedgerQuery::default()
            });
            let result = rows
                .map(|rows| {
                    rows.into_iter()
                        .map(|row| LedgerEntry {
                            seq: row.seq,
                            timestamp: row.timestamp,
                            agent_id: row.agent_id,
                            table: row.table.name().to_string(),
                            kind: row.kind,
                            summary: crate::text::clip(&row.summary, MAX_SUMMARY_BYTES),
                        })
                        .collect::<Vec<_>>()
                })
                .map_err(|e| unavailable("the ledger", e));
            self.gov.record_result(OP, &result).await;
            result
        })
    }

    async fn propose_tier_change(
        &mut self,
        agent: String,
        to: WitTier,
        reason: String,
    ) -> Result<String, WitError> {
        super::journal_call!(self, "governance.propose-tier-change", Json, super::journaled::args(&(&agent, &wit_tier(from_wit(to)), &reason)), {
            const OP: &str = "governance.propose-tier-change";
            let resource = format!("governance:propose:{agent}");
            self.gov
                .gate(Interface::Governance, OP, || resource.clone())
                .await?;
            let to = from_wit(to);
            let target = match AgentId::new(&agent) {
                Ok(id) => id,
                Err(e) => {
                    let refusal = malformed(resource, format!("`{OP}` refused: {e}"));
                    return Err(self.gov.refuse(OP, refusal).await);
                }
            };
            if &target == self.gov.agent_id() {
                // Raising one's own tier is what governance exists to stop.
                let refusal = CallRefusal {
                    kind: ViolationKind::TierDenied,
                    resource,
                    message: format!(
                        "`{OP}` refused: agent `{agent}` may not propose a tier change for itself; a person changes its tier with `warden agents promote`"
                    ),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
            if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
                let refusal = malformed(
                    resource,
                    format!("`{OP}` refused: a reason of 1 to {MAX_REASON_BYTES} bytes is needed"),
                );
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let from = match self.gov.services.ledger.agent(target.as_str()) {
                Ok(Some(record)) => record.tier,
                Ok(None) => {
                    let refusal = malformed(
                        resource,
                        format!("`{OP}` refused: agent `{agent}` is not registered"),
                    );
                    return Err(self.gov.refuse(OP, refusal).await);
                }
                Err(e) => return Err(unavailable("the ledger", e)),
            };
            if from == to {
                let refusal = malformed(
                    resource,
                    format!("`{OP}` refused: agent `{agent}` is already {to}"),
                );
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let max = self
                .gov
                .policy()
                .grant::<Grant>(Interface::Governance)
                .max_proposals_per_run;
            if let Err(made) = self.gov.run.charge_proposal(max) {
                let refusal = CallRefusal {
                    kind: ViolationKind::QuotaExceeded,
                    resource,
                    message: format!(
                        "`{OP}` refused: this run made {made} proposals; `[tiers.{}.governance] max_proposals_per_run` is {max}",
                        self.gov.run.tier.code()
                    ),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let request = format!("tc-{}", uuid::Uuid::now_v7().simple());
            let run = &self.gov.run;
            let details = json!({
                "request": request,
                "agent": agent,
                "from": from.code(),
                "to": to.code(),
                "reason": reason,
                "proposer": run.agent_id,
                "run": run.run_id.as_str(),
                "task": run.task_id,
            });
            let row = ActionRecord::new(
                run.subject.clone(),
                PROPOSE,
                format!("proposed {agent} {} → {}; waits for a person", from.code(), to.code()),
            )
            .phase(run.phase().as_str())
            .details(details.to_string());
            // A request a person will look for is committed before the guest hears of it.
            let result = self
                .gov
                .services
                .ledger_durable(Entry::Action(row))
                .await
                .map(|_| request)
                .map_err(|e| unavailable("the ledger", e));
            self.gov.record_result(OP, &result).await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;

    #[tokio::test]
    async fn an_architect_reads_the_policy_and_its_task_and_proposes_for_others_only() {
        let env = TestEnv::new();
        let mut agent = env.agent(Tier::Architect, json!({})).await;
        agent
            .ctx
            .gov
            .services
            .ledger
            .register_agent("worker", Tier::Operator, None, "test")
            .unwrap();
        let policy: serde_json::Value =
            serde_json::from_str(&agent.ctx.read_policy().await.unwrap()).unwrap();
        let interfaces = policy["tiers"][4]["interfaces"].as_array().unwrap();
        assert!(interfaces.contains(&json!("governance")) && interfaces.contains(&json!("http")), "{interfaces:?}");
        assert!(policy["promotion"]["consecutive_compliant"].is_number());

        crate::bindings::warden::agent::ledger::Host::note(&mut agent.ctx, "a row of the task".into())
            .await
            .unwrap();
        let rows = agent.ctx.read_task_ledger(0, 100).await.unwrap();
        assert!(rows.iter().any(|r| r.kind == "agent.note"), "{rows:?}");
        assert!(matches!(agent.ctx.read_task_ledger(0, 0).await, Err(WitError::Invalid(_))));

        let request = agent
            .ctx
            .propose_tier_change("worker".into(), WitTier::Builder, "steady for a month".into())
            .await
            .unwrap();
        assert!(request.starts_with("tc-"));
        assert_eq!(
            agent.ctx.gov.services.ledger.agent("worker").unwrap().unwrap().tier,
            Tier::Operator,
            "a proposal changes nothing by itself"
        );
        let err = agent
            .ctx
            .propose_tier_change("agent-1".into(), WitTier::Architect, "me".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("may not propose a tier change for itself")), "{err:?}");
        let err = agent
            .ctx
            .propose_tier_change("nobody".into(), WitTier::Builder, "x".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("not registered")), "{err:?}");
    }

    #[tokio::test]
    async fn below_t4_the_interface_is_refused_and_proposals_are_bounded() {
        let mut executor = TestEnv::new().agent(Tier::Executor, json!({})).await;
        let err = executor.ctx.read_policy().await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("T4")), "{err:?}");

        let tiers = crate::capabilities::testing::tiers_with(&[("max_proposals_per_run = 10", "max_proposals_per_run = 1")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Architect, json!({})).await;
        agent.ctx.gov.services.ledger.register_agent("worker", Tier::Operator, None, "test").unwrap();
        agent.ctx.propose_tier_change("worker".into(), WitTier::Builder, "one".into()).await.unwrap();
        let err = agent
            .ctx
            .propose_tier_change("worker".into(), WitTier::Builder, "two".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::BudgetExhausted(m) if m.contains("max_proposals_per_run")), "{err:?}");
    }
}
