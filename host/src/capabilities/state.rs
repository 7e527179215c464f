//! `warden:agent/state`: the agent's own key/value state (`agent:{id}:state`, `kv:*` fields).

use super::{AgentCtx, Refusal, ViolationKind, unavailable};
use crate::bindings::{WitError, warden::agent::state::Host};
use crate::policy::Interface;

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 1 << 20;

impl AgentCtx {
    async fn check_key(&mut self, op: &'static str, key: &str) -> Result<(), WitError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            let refusal = Refusal {
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
            let refusal = Refusal {
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
