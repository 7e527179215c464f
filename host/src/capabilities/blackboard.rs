//! `warden:agent/blackboard`: the shared memory of the run's task (`blackboard:{task}:{section}`).
//!
//! The task is always the run's own: the interface takes no task id, so an agent cannot name
//! another task's blackboard. Tier section `[tiers.Tn.blackboard]`: present, the tier may
//! read (T0 and up in the built-in table); `write = true` lets it write too (T1 and up);
//! `max_entries` and `max_bytes` bound what the task's blackboard may hold when the tier
//! writes it (entries of all sections, bytes of key + value), checked by the state store in
//! the same atomic step as the write.

use super::AgentCtx;
use super::quota::{QuotaKeys, covers, refusal};
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::blackboard::{Host, Section as WitSection};
use crate::interface::Interface;
use crate::state::{Admission, Quota, Section};
use crate::policy::{SectionSpec, TierTable};
use crate::tier::Tier;
use serde::Deserialize;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Blackboard);

/// `[tiers.Tn.blackboard]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Whether the tier may write entries (reading needs only the section).
    #[serde(default)]
    pub write: bool,
    /// Entries (all sections) the task's blackboard may hold when the tier writes.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Bytes (key + value of every entry) the task's blackboard may hold when the tier writes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

/// Entries per task when the section does not say: 1,000.
const DEFAULT_MAX_ENTRIES: u64 = 1000;
/// Bytes per task when the section does not say: 16 MiB.
const DEFAULT_MAX_BYTES: u64 = 16 << 20;

fn default_max_entries() -> u64 {
    DEFAULT_MAX_ENTRIES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        write: false,
        max_entries: 0,
        max_bytes: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        if lower.write && !self.write {
            return Err("it may not write where the tier below may".into());
        }
        covers("max_entries", self.max_entries, lower.max_entries)?;
        covers("max_bytes", self.max_bytes, lower.max_bytes)
    }
}

const KEYS: QuotaKeys = QuotaKeys {
    section: Some("blackboard"),
    entries: ("max_entries", "entries"),
    bytes: ("max_bytes", "bytes"),
};

/// Whether the tier may write the blackboard.
fn check_write(
    tiers: &TierTable,
    tier: Tier,
    op: &str,
    section: Section,
    key: &str,
) -> Result<(), CallRefusal> {
    let writes = |tier: Tier| tiers.policy(tier).grant::<Grant>(Interface::Blackboard).write;
    if writes(tier) {
        return Ok(());
    }
    let lowest = Tier::ALL.into_iter().find(|t| writes(*t));
    Err(CallRefusal::tier_denied(
        resource(section, key),
        format!(
            "`{op}` of `{section}/{key}` refused: tier {tier} may read the blackboard but not write it; lowest tier with blackboard write: {}",
            lowest.map_or("none".to_string(), |t| t.to_string())
        ),
    ))
}

/// Entries a capability owns are written only by it: an agent's write there would forge
/// the task's decision or its roster.
fn check_owner(op: &str, section: Section, key: &str) -> Result<(), CallRefusal> {
    if !crate::state::coordination::is_host_owned(section, key) {
        return Ok(());
    }
    let owner = match section {
        Section::Consensus => {
            "the consensus interface writes it from its own tally (`consensus.finalize`, `consensus.validate`)"
        }
        _ => "the host writes it when the task starts or its mediator is spawned",
    };
    Err(CallRefusal {
        kind: ViolationKind::HostOwned,
        resource: resource(section, key),
        message: format!(
            "`{op}` of `{section}/{key}` refused: the entry is the host's, not an agent's: {owner}; agents write `solutions`, `progress` and the other `problem` entries; this is a procedure violation"
        ),
    })
}

/// Longest entry key.
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// Largest entry value.
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;

pub(crate) fn section(section: WitSection) -> Section {
    match section {
        WitSection::Problem => Section::Problem,
        WitSection::Solutions => Section::Solutions,
        WitSection::Progress => Section::Progress,
        WitSection::Consensus => Section::Consensus,
    }
}

fn resource(section: Section, key: &str) -> String {
    format!("blackboard:{section}/{key}")
}

impl AgentCtx {
    async fn check_entry_key(
        &mut self,
        op: &'static str,
        section: Section,
        key: &str,
    ) -> Result<(), WitError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            let refusal = CallRefusal {
                kind: ViolationKind::Invalid,
                resource: resource(section, key),
                message: format!(
                    "`{op}` refused: key of {} bytes; blackboard keys are 1 to {MAX_KEY_BYTES} bytes without control characters",
                    key.len()
                ),
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        Ok(())
    }
}

impl Host for AgentCtx {
    async fn read(&mut self, section: WitSection, key: String) -> Result<Option<String>, WitError> {
        super::journal_call!(self, "blackboard.read", Json, super::journaled::args(&(&section, &key)), {
            const OP: &str = "blackboard.read";
            let section = self::section(section);
            self.gov
                .gate(Interface::Blackboard, OP, || resource(section, &key))
                .await?;
            self.check_entry_key(OP, section, &key).await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .board_read(gov.task_id(), section, &key)
                .await
                .map_err(|e| unavailable("the blackboard", e));
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn write(
        &mut self,
        section: WitSection,
        key: String,
        value: String,
    ) -> Result<(), WitError> {
        super::journal_call!(self, "blackboard.write", Json, super::journaled::args(&(&section, &key, &value)), {
            const OP: &str = "blackboard.write";
            let section = self::section(section);
            self.gov
                .gate(Interface::Blackboard, OP, || resource(section, &key))
                .await?;
            self.refuse_placeholders(OP, || resource(section, &key), &[value.as_bytes()])
                .await?;
            let decision = check_write(
                &self.gov.services.tiers,
                self.gov.run.tier,
                OP,
                section,
                &key,
            );
            self.gov.check(OP, decision).await?;
            self.check_entry_key(OP, section, &key).await?;
            self.gov.check(OP, check_owner(OP, section, &key)).await?;
            if value.len() > MAX_VALUE_BYTES {
                let refusal = CallRefusal {
                    kind: ViolationKind::Invalid,
                    resource: resource(section, &key),
                    message: format!(
                        "`{OP}` refused: value of {} bytes for `{section}/{key}`; blackboard values are at most {MAX_VALUE_BYTES} bytes",
                        value.len()
                    ),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let policy = self.gov.policy();
            let grant = policy.grant::<Grant>(Interface::Blackboard);
            let quota = Quota {
                max_entries: grant.max_entries,
                max_bytes: grant.max_bytes,
            };
            let gov = &self.gov;
            let stored = gov
                .services
                .state
                .board_write(gov.task_id(), section, &key, &value, quota, gov.once())
                .await;
            let result = match stored {
                Ok(Admission::Stored(())) => Ok(()),
                Ok(Admission::Refused(over)) => {
                    let refusal = refusal(
                        policy,
                        KEYS,
                        resource(section, &key),
                        &format!("`{OP}` of `{section}/{key}`"),
                        &format!("task `{}`'s blackboard", gov.task_id()),
                        over,
                        Some("overwrite an existing entry with no more bytes instead"),
                    );
                    return Err(self.gov.refuse(OP, refusal).await);
                }
                Err(e) => Err(unavailable("the blackboard", e)),
            };
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn entries(&mut self, section: WitSection) -> Result<Vec<(String, String)>, WitError> {
        super::journal_call!(self, "blackboard.entries", Json, super::journaled::args(&(&section,)), {
            const OP: &str = "blackboard.entries";
            let section = self::section(section);
            self.gov
                .gate(Interface::Blackboard, OP, || resource(section, "*"))
                .await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .board_entries(gov.task_id(), section)
                .await
                .map_err(|e| unavailable("the blackboard", e));
            gov.record_result(OP, &result).await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::{TestEnv, tiers_with};

    #[tokio::test]
    async fn an_operator_writes_and_an_observer_reads() {
        let mut writer = TestEnv::new().agent(Tier::Operator, json!({})).await;
        writer
            .ctx
            .write(WitSection::Solutions, "p1".into(), "use a queue".into())
            .await
            .unwrap();
        let mut reader = writer.peer("observer-1", Tier::Observer).await;
        assert_eq!(
            reader.ctx.read(WitSection::Solutions, "p1".into()).await.unwrap().as_deref(),
            Some("use a queue")
        );
        assert_eq!(
            reader.ctx.entries(WitSection::Solutions).await.unwrap(),
            [("p1".to_string(), "use a queue".to_string())]
        );
        let err = reader
            .ctx
            .write(WitSection::Progress, "k".into(), "v".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("tier T0 (observer) may read the blackboard but not write it; lowest tier with blackboard write: T1 (operator)")), "{err:?}");
        assert_eq!(reader.violations(), ["TIER_DENIED"]);
        assert!(writer.violations().is_empty());
    }

    /// Each refusal is charged; the second of the same kind spends the reference's
    /// `max_same_error_repeats` of 2 and revokes.
    #[tokio::test]
    async fn a_forged_decision_is_refused_as_a_procedure_violation() {
        // Even an architect may not write what the consensus interface owns.
        let mut agent = TestEnv::new().agent(Tier::Architect, json!({})).await;
        let err = agent
            .ctx
            .write(WitSection::Consensus, "final".into(), "{\"reached\":true}".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("the entry is the host's")), "{err:?}");
        assert_eq!(agent.violations(), ["HOST_OWNED_RECORD"]);
        let task = crate::id::TaskId::new("task-1").unwrap();
        assert_eq!(
            agent
                .state()
                .board_read(&task, Section::Consensus, "final")
                .await
                .unwrap(),
            None,
            "nothing was written"
        );
        // The task's roster is the host's too; an agent's own problem entries are not.
        let mut other = agent.peer("agent-2", Tier::Operator).await;
        other
            .ctx
            .write(WitSection::Problem, "analysis".into(), "mine".into())
            .await
            .unwrap();
        let err = other
            .ctx
            .write(WitSection::Problem, "agents".into(), "agent-2".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Revoked(_)), "{err:?}");
        assert_eq!(other.violations(), ["HOST_OWNED_RECORD"]);
    }

    #[tokio::test]
    async fn keys_and_values_are_bounded_and_repeats_revoke() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let err = agent
            .ctx
            .write(WitSection::Progress, "a\nb".into(), "v".into())
            .await
            .unwrap_err();
        assert!(matches!(err, WitError::Invalid(_)), "{err:?}");
        let err = agent
            .ctx
            .write(WitSection::Progress, "k".into(), "v".repeat(MAX_VALUE_BYTES + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WitError::Revoked(m) if m.contains("blackboard values are at most") && m.contains("repeated 2 times")),
            "{err:?}"
        );
        assert_eq!(agent.errors().await.total, 2);
        assert!(agent.is_revoked());
    }

    /// The quota is the task's: two agents share it, the host's own entries count against it
    /// without being refused.
    #[tokio::test]
    async fn a_tasks_blackboard_holds_at_most_its_entries() {
        let tiers = tiers_with(&[("max_entries = 1000", "max_entries = 3")]);
        let mut alpha = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let task = alpha.ctx.gov.task_id().clone();
        let host = alpha
            .state()
            .board_write(&task, Section::Problem, "objective", "o", Quota::UNLIMITED, None)
            .await
            .unwrap();
        assert_eq!(host, Admission::Stored(()));
        alpha.ctx.write(WitSection::Solutions, "a".into(), "1".into()).await.unwrap();
        beta.ctx.write(WitSection::Progress, "b".into(), "2".into()).await.unwrap();
        beta.ctx.write(WitSection::Progress, "b".into(), "3".into()).await.unwrap();
        let err = alpha
            .ctx
            .write(WitSection::Solutions, "c".into(), "4".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("`blackboard.write` of `solutions/c` refused: task `task-1`'s blackboard would hold 4 entries (it holds 3), over the quota of 3 of tier T1 (operator) (`[tiers.T1.blackboard] max_entries`)")),
            "{err:?}"
        );
        assert_eq!(alpha.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(alpha.errors().await.total, 1);
        assert_eq!(
            alpha.actions().pop(),
            Some(("blackboard.write".into(), "denied".into(), Some("QUOTA_EXCEEDED".into())))
        );
        assert_eq!(alpha.ctx.read(WitSection::Solutions, "c".into()).await.unwrap(), None);
        assert!(beta.violations().is_empty());
    }
}
