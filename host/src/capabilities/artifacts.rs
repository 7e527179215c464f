//! `warden:agent/artifacts`: named artifacts of the task.

use super::{AgentCtx, Governor, Refusal, ViolationKind, unavailable};
use crate::artifacts::{ArtifactRef, latest_per_name};
use crate::bindings::WitError;
use crate::bindings::warden::agent::artifacts::{ArtifactInfo, Host};
use crate::packet::{now_rfc3339, validate_artifact_name};
use crate::pattern::first_match;
use crate::policy::Interface;

const MAX_ARTIFACT_BYTES: usize = 16 << 20;

impl AgentCtx {
    /// Names are checked before anything else: a traversal attempt is an escape attempt.
    async fn check_name(&mut self, op: &'static str, name: &str) -> Result<(), WitError> {
        if let Err(reason) = validate_artifact_name(name) {
            let escape = name.split('/').any(|s| s == "..") || name.starts_with('/');
            let refusal = Refusal {
                kind: if escape {
                    ViolationKind::PathEscape
                } else {
                    ViolationKind::Invalid
                },
                resource: format!("artifact:{name}"),
                message: if escape {
                    format!(
                        "`{op}` refused: artifact name `{name}` leaves the task's artifact space; this is a procedure violation"
                    )
                } else {
                    format!("`{op}` refused: {reason}")
                },
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        Ok(())
    }
}

impl Governor {
    async fn task_artifacts(&self) -> Result<Vec<ArtifactRef>, WitError> {
        let raw = self
            .services
            .state
            .artifacts(self.task_id())
            .await
            .map_err(|e| unavailable("the state store", e))?;
        Ok(latest_per_name(raw.iter().filter_map(|json| {
            serde_json::from_str::<ArtifactRef>(json).ok()
        })))
    }
}

impl Host for AgentCtx {
    async fn put(&mut self, name: String, content: Vec<u8>) -> Result<String, WitError> {
        const OP: &str = "artifacts.put";
        self.gov
            .gate(Interface::Artifacts, OP, || format!("artifact:{name}"))
            .await?;
        self.check_name(OP, &name).await?;
        let policy = self.gov.policy();
        if first_match(&policy.artifact_names, &name).is_none() {
            let allowed: Vec<&str> = policy.artifact_names.iter().map(|p| p.as_str()).collect();
            let refusal = Refusal {
                kind: ViolationKind::TierDenied,
                resource: format!("artifact:{name}"),
                message: format!(
                    "`{OP}` refused: tier {} may only write artifacts named {allowed:?}; T1 (operator) may write any name",
                    self.gov.run.tier
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        if content.len() > MAX_ARTIFACT_BYTES {
            let refusal = Refusal {
                kind: ViolationKind::Invalid,
                resource: format!("artifact:{name}"),
                message: format!(
                    "`{OP}` refused: `{name}` is {} bytes; artifacts are at most {MAX_ARTIFACT_BYTES} bytes",
                    content.len()
                ),
            };
            return Err(self.gov.refuse(OP, refusal).await);
        }
        let gov = &self.gov;
        let result = async {
            let digest = gov
                .services
                .blobs
                .put(&content)
                .map_err(|e| unavailable("the artifact store", e))?;
            let reference = ArtifactRef {
                name: name.clone(),
                digest: digest.clone(),
                size: content.len() as u64,
                author: gov.agent_id().to_string(),
                created_at: now_rfc3339(),
            };
            let json =
                serde_json::to_string(&reference).map_err(|e| unavailable("serialization", e))?;
            gov.services
                .state
                .push_artifact(gov.task_id(), &json)
                .await
                .map_err(|e| unavailable("the state store", e))?;
            gov.run.wrote(reference);
            Ok(digest)
        }
        .await;
        gov.record_result(OP, &result).await;
        result
    }

    async fn get(&mut self, name: String) -> Result<Vec<u8>, WitError> {
        const OP: &str = "artifacts.get";
        self.gov
            .gate(Interface::Artifacts, OP, || format!("artifact:{name}"))
            .await?;
        self.check_name(OP, &name).await?;
        let gov = &self.gov;
        let result = async {
            let refs = gov.task_artifacts().await?;
            let Some(reference) = refs.into_iter().find(|r| r.name == name) else {
                return Err(WitError::NotFound(format!(
                    "artifact `{name}` does not exist in task `{}`",
                    gov.task_id()
                )));
            };
            match gov.services.blobs.get(&reference.digest) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(WitError::NotFound(format!(
                    "artifact `{name}` ({}) is recorded but its content is missing",
                    reference.digest
                ))),
                Err(e) => Err(unavailable("the artifact store", e)),
            }
        }
        .await;
        self.gov.record_result(OP, &result).await;
        result
    }

    async fn list(&mut self) -> Result<Vec<ArtifactInfo>, WitError> {
        const OP: &str = "artifacts.list";
        self.gov
            .gate(Interface::Artifacts, OP, || "artifact:*".to_string())
            .await?;
        let result = self.gov.task_artifacts().await.map(|refs| {
            refs.into_iter()
                .map(|r| ArtifactInfo {
                    name: r.name,
                    digest: r.digest,
                    size: r.size,
                    author: r.author,
                })
                .collect()
        });
        self.gov.record_result(OP, &result).await;
        result
    }
}
