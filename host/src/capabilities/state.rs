//! `warden:agent/state`: the agent's own key/value state (`agent:{id}:state`, `kv:*` fields).

use super::AgentCtx;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::{WitError, warden::agent::state::Host};
use crate::interface::Interface;
use crate::policy::{Linked, SectionSpec};

/// Its section (`[tiers.T1.state]`) has no settings: present, the interface is linked.
pub(super) const SECTION: SectionSpec = SectionSpec::of::<Linked>(Interface::State);

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
    }

    async fn set(&mut self, key: String, value: String) -> Result<(), WitError> {
        const OP: &str = "state.set";
        self.gov
            .gate(Interface::State, OP, || format!("state:{key}"))
            .await?;
        self.check_key(OP, &key).await?;
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
        let gov = &self.gov;
        let result = gov
            .services
            .state
            .kv_set(gov.agent_id(), &key, &value)
            .await
            .map_err(|e| unavailable("the state store", e));
        gov.record_result(OP, &result).await;
        result
    }

    async fn delete(&mut self, key: String) -> Result<bool, WitError> {
        const OP: &str = "state.delete";
        self.gov
            .gate(Interface::State, OP, || format!("state:{key}"))
            .await?;
        self.check_key(OP, &key).await?;
        let gov = &self.gov;
        let result = gov
            .services
            .state
            .kv_delete(gov.agent_id(), &key)
            .await
            .map_err(|e| unavailable("the state store", e));
        gov.record_result(OP, &result).await;
        result
    }

    async fn keys(&mut self) -> Result<Vec<String>, WitError> {
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
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;
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
}
