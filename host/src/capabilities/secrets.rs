//! `warden:agent/secrets`: secrets scoped by tier, read through the agent's own session.

use super::{AgentCtx, Refusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::secrets::Host;
use crate::policy::Interface;
use crate::secrets::{SecretsError, validate_path};

impl Host for AgentCtx {
    async fn get(&mut self, path: String) -> Result<String, WitError> {
        const OP: &str = "secrets.get";
        self.gov
            .gate(Interface::Secrets, OP, || format!("secret:{path}"))
            .await?;
        if let Err(error) = validate_path(&path) {
            let escape = path.contains("..");
            let refusal = Refusal {
                kind: if escape {
                    ViolationKind::PathEscape
                } else {
                    ViolationKind::Invalid
                },
                resource: format!("secret:{path}"),
                message: format!("`{OP}` refused: {error}"),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let agent = self.gov.agent_id();
        let policy = self.gov.policy();
        if !policy
            .secrets
            .iter()
            .any(|p| p.with_agent(agent).matches(&path))
        {
            let lowest = self
                .gov
                .services
                .tiers
                .lowest_tier_reading_secret(agent, &path);
            let refusal = Refusal {
                kind: ViolationKind::TierDenied,
                resource: format!("secret:{path}"),
                message: format!(
                    "`{OP}` refused: secret `{path}` is above tier {}; lowest tier that may read it: {}",
                    self.gov.run.tier,
                    lowest.map_or("none".to_string(), |t| t.to_string())
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let result = match &self.gov.secrets {
            None => Err(WitError::Unavailable(
                "no secrets session: the agent was not logged in at bootstrap".into(),
            )),
            Some(session) => match session.read(&path).await {
                Ok(Some(value)) => Ok(value),
                Ok(None) => Err(WitError::NotFound(format!(
                    "secret `{path}` does not exist"
                ))),
                Err(SecretsError::Revoked) => Err(WitError::Revoked(
                    "the agent's secrets session was revoked".into(),
                )),
                // The backend's own policy refused what the tier table allowed: the second
                // line of defence held, and the refusal is recorded like the host's own.
                Err(SecretsError::Denied { .. }) => {
                    let refusal = Refusal {
                        kind: ViolationKind::TierDenied,
                        resource: format!("secret:{path}"),
                        message: format!(
                            "`{OP}` refused: the secrets backend's policy for tier {} denies `{path}`",
                            self.gov.run.tier
                        ),
                    };
                    return Err(self.gov.refuse(OP, refusal).await);
                }
                Err(error) => Err(unavailable("the secrets store", error)),
            },
        };
        // Never the value: only that the read happened and how it ended.
        self.gov
            .record_result(OP, &result.as_ref().map(|_| ()).map_err(Clone::clone))
            .await;
        result
    }
}
