//! `warden:agent/state`: the agent's own key/value state (`agent:{id}:state`, `kv:*` fields).
//!
//! Tier section `[tiers.Tn.state]`: present, the interface is linked; `max_keys` and
//! `max_bytes` bound what one agent's state may hold (keys, and bytes of key + value), checked
//! by the state store in the same atomic step as the write. A delete gives its bytes back.

use serde::Deserialize;

use super::AgentCtx;
use super::quota::{QuotaKeys, covers, refusal};
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::{WitError, warden::agent::state::Host};
use crate::interface::Interface;
use crate::policy::SectionSpec;
use crate::state::{Admission, Quota};

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::State);

/// `[tiers.Tn.state]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Keys one agent's state may hold.
    #[serde(default = "default_max_keys")]
    pub max_keys: u64,
    /// Bytes (key + value of every key) one agent's state may hold.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

/// Keys when the section does not say: 1,000.
const DEFAULT_MAX_KEYS: u64 = 1000;
/// Bytes when the section does not say: 16 MiB.
const DEFAULT_MAX_BYTES: u64 = 16 << 20;

fn default_max_keys() -> u64 {
    DEFAULT_MAX_KEYS
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        max_keys: 0,
        max_bytes: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        covers("max_keys", self.max_keys, lower.max_keys)?;
        covers("max_bytes", self.max_bytes, lower.max_bytes)
    }
}

const KEYS: QuotaKeys = QuotaKeys {
    section: Some("state"),
    entries: ("max_keys", "keys"),
    bytes: ("max_bytes", "bytes"),
};

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 1 << 20;

impl AgentCtx {
    async fn check_key(&mut self, op: &'static str, key: &str) -> Result<(), WitError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            let refusal = CallRefusal {
                kind: ViolationKind::Invalid,
                resource: format!("state:{key}"),
                message: format!(
                    "`{op}` refused: key of {} bytes; keys are 1 to {MAX_KEY_BYTES} bytes",
                    key.len()
                ),
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        Ok(())
    }
}

impl Host for AgentCtx {
    async fn get(&mut self, key: String) -> Result<Option<String>, WitError> {
        super::journal_call!(self, "state.get", Json, super::journaled::args(&(&key,)), {
            const OP: &str = "state.get";
            self.gov
                .gate(Interface::State, OP, || format!("state:{key}"))
                .await?;
            self.check_key(OP, &key).await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .kv_get(gov.agent_id(), &key)
                .await
                .map_err(|e| unavailable("the state store", e));
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn set(&mut self, key: String, value: String) -> Result<(), WitError> {
        super::journal_call!(self, "state.set", Json, super::journaled::args(&(&key, &value)), {
            const OP: &str = "state.set";
            self.gov
                .gate(Interface::State, OP, || format!("state:{key}"))
                .await?;
            self.check_key(OP, &key).await?;
            self.refuse_placeholders(OP, || format!("state:{key}"), &[value.as_bytes()])
                .await?;
            if value.len() > MAX_VALUE_BYTES {
                let refusal = CallRefusal {
                    kind: ViolationKind::Invalid,
                    resource: format!("state:{key}"),
                    message: format!(
                        "`{OP}` refused: value of {} bytes for `{key}`; values are at most {MAX_VALUE_BYTES} bytes",
                        value.len()
                    ),
                };
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let policy = self.gov.policy();
            let grant = policy.grant::<Grant>(Interface::State);
            let quota = Quota {
                max_entries: grant.max_keys,
                max_bytes: grant.max_bytes,
            };
            let gov = &self.gov;
            let stored = gov
                .services
                .state
                .kv_set(gov.agent_id(), &key, &value, quota, gov.once())
                .await;
            let result = match stored {
                Ok(Admission::Stored(())) => Ok(()),
                Ok(Admission::Refused(over)) => {
                    let refusal = refusal(
                        policy,
                        KEYS,
                        format!("state:{key}"),
                        &format!("`{OP}` of `{key}`"),
                        &format!("agent `{}`'s state", gov.agent_id()),
                        over,
                        Some("delete keys it no longer needs"),
                    );
                    return Err(self.gov.refuse(OP, refusal).await);
                }
                Err(e) => Err(unavailable("the state store", e)),
            };
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn delete(&mut self, key: String) -> Result<bool, WitError> {
        super::journal_call!(self, "state.delete", Json, super::journaled::args(&(&key,)), {
            const OP: &str = "state.delete";
            self.gov
                .gate(Interface::State, OP, || format!("state:{key}"))
                .await?;
            self.check_key(OP, &key).await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .kv_delete(gov.agent_id(), &key, gov.once())
                .await
                .map_err(|e| unavailable("the state store", e));
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn keys(&mut self) -> Result<Vec<String>, WitError> {
        super::journal_call!(self, "state.keys", Json, super::journaled::args(&()), {
            const OP: &str = "state.keys";
            self.gov
                .gate(Interface::State, OP, || "state:*".to_string())
                .await?;
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .kv_keys(gov.agent_id())
                .await
                .map_err(|e| unavailable("the state store", e));
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
    use crate::tier::Tier;

    #[tokio::test]
    async fn an_allowed_call_does_its_work_and_is_recorded() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        agent.ctx.set("k".into(), "v".into()).await.unwrap();
        assert_eq!(agent.ctx.get("k".into()).await.unwrap().as_deref(), Some("v"));
        assert_eq!(agent.ctx.keys().await.unwrap(), ["k"]);
        assert!(agent.ctx.delete("k".into()).await.unwrap());
        assert_eq!(agent.ctx.get("k".into()).await.unwrap(), None);
        let ops: Vec<(String, String)> = agent
            .actions()
            .into_iter()
            .map(|(op, decision, _)| (op, decision))
            .collect();
        assert_eq!(
            ops,
            [
                ("state.set", "allowed"),
                ("state.get", "allowed"),
                ("state.keys", "allowed"),
                ("state.delete", "allowed"),
                ("state.get", "allowed"),
            ]
            .map(|(op, d)| (op.to_string(), d.to_string()))
        );
        assert_eq!(agent.errors().await.total, 0);
    }

    #[tokio::test]
    async fn malformed_input_is_refused_and_charged_without_a_violation() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        let err = agent.ctx.get(String::new()).await.unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("keys are 1 to 256 bytes")), "{err:?}");
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let err = agent.ctx.set("k".into(), big).await.unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("values are at most")), "{err:?}");
        assert!(agent.violations().is_empty());
        let counts = agent.errors().await;
        assert_eq!((counts.total, counts.procedure), (2, 0));
        assert_eq!(
            agent.actions().last().map(|(op, d, e)| (op.clone(), d.clone(), e.clone())),
            Some(("state.set".into(), "denied".into(), Some("INVALID_ARGUMENT".into())))
        );
        assert_eq!(agent.state().kv_get(agent.ctx.gov.agent_id(), "k").await.unwrap(), None);
    }

    /// The gate comes first: a forbidden key is a procedure violation, which revokes at the
    /// reference's budget, and a revoked agent is answered with nothing more recorded.
    #[tokio::test]
    async fn a_forbidden_key_revokes_and_later_calls_are_refused_unrecorded() {
        let packet = json!({ "constraints": { "forbidden": ["state:secret*"] } });
        let mut agent = TestEnv::new().agent(Tier::Operator, packet).await;
        let err = agent.ctx.set("secret-plan".into(), "v".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("the packet forbids `state:secret*`")), "{err:?}");
        assert_eq!(agent.violations(), ["FORBIDDEN_ACTION"]);
        assert!(agent.is_revoked());
        assert_eq!(agent.errors().await.procedure, 1);
        let rows = agent.actions().len();
        let err = agent.ctx.get("other".into()).await.unwrap_err();
        assert!(matches!(err, WitError::Revoked(_)), "{err:?}");
        assert_eq!(agent.actions().len(), rows, "a revoked agent's calls are not recorded");
    }

    #[tokio::test]
    async fn a_key_outside_the_scope_is_denied() {
        let packet = json!({ "constraints": { "scope": ["state:plan/*"] } });
        let mut agent = TestEnv::new().agent(Tier::Operator, packet).await;
        agent.ctx.set("plan/a".into(), "v".into()).await.unwrap();
        let err = agent.ctx.set("notes".into(), "v".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("outside the packet's scope")), "{err:?}");
        assert_eq!(agent.violations(), ["OUT_OF_SCOPE"]);
        assert!(!agent.is_revoked());
    }

    #[tokio::test]
    async fn an_agents_state_holds_at_most_its_keys_and_a_delete_makes_room() {
        let tiers = tiers_with(&[("max_keys = 1000", "max_keys = 2")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Observer, json!({})).await;
        agent.ctx.set("k1".into(), "v".into()).await.unwrap();
        agent.ctx.set("k2".into(), "v".into()).await.unwrap();
        agent.ctx.set("k2".into(), "replaced".into()).await.unwrap();
        let err = agent.ctx.set("k3".into(), "v".into()).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("`state.set` of `k3` refused: agent `agent-1`'s state would hold 3 keys (it holds 2), over the quota of 2 of tier T0 (observer) (`[tiers.T0.state] max_keys`); delete keys it no longer needs, or an operator raises `max_keys`")),
            "{err:?}"
        );
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(agent.errors().await.total, 1);
        assert_eq!(
            agent.actions().pop(),
            Some(("state.set".into(), "denied".into(), Some("QUOTA_EXCEEDED".into())))
        );
        assert_eq!(agent.ctx.get("k3".into()).await.unwrap(), None);
        assert!(agent.ctx.delete("k1".into()).await.unwrap());
        agent.ctx.set("k3".into(), "v".into()).await.unwrap();
    }

    #[tokio::test]
    async fn an_agents_state_holds_at_most_its_bytes() {
        let tiers = tiers_with(&[("max_bytes = 16777216          # bytes (key + value) one agent's", "max_bytes = 10          # bytes (key + value) one agent's"), ("max_keys = 1000\nmax_bytes = 16777216", "max_keys = 1000\nmax_bytes = 10")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        agent.ctx.set("k".into(), "123456789".into()).await.unwrap();
        let err = agent.ctx.set("k".into(), "1234567890".into()).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("would hold 11 bytes (it holds 10), over the quota of 10 of tier T1 (operator) (`[tiers.T1.state] max_bytes`)")),
            "{err:?}"
        );
        assert_eq!(agent.ctx.get("k".into()).await.unwrap().as_deref(), Some("123456789"));
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"]);
    }
}
