//! `warden:agent/artifacts`: named artifacts of the task.
//!
//! Tier section `[tiers.Tn.artifacts]`: `names`, the artifact names (globs) the tier may
//! write. With the section and no names the tier may read and list artifacts, not write them.

use serde::Deserialize;

use super::AgentCtx;
use crate::artifacts::{ArtifactRef, latest_per_name};
use crate::bindings::WitError;
use crate::bindings::warden::agent::artifacts::{ArtifactInfo, Host};
use crate::governance::{CallRefusal, Governor, ViolationKind, unavailable};
use crate::interface::Interface;
use crate::packet::{now_rfc3339, validate_artifact_name};
use crate::pattern::{Pattern, first_match};
use crate::policy::{SectionSpec, TierPolicy, TierTable};
use crate::tier::Tier;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Artifacts);

/// Largest artifact an agent may put.
const MAX_ARTIFACT_BYTES: usize = 16 << 20;

/// `[tiers.Tn.artifacts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Names the tier may write.
    #[serde(default)]
    pub names: Vec<Pattern>,
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant { names: Vec::new() };
}

impl Grant {
    fn of(policy: &TierPolicy) -> &Grant {
        policy.grant::<Grant>(Interface::Artifacts)
    }

    fn allowed(&self) -> Vec<&str> {
        self.names.iter().map(Pattern::as_str).collect()
    }
}

/// Whether `tier` may write an artifact named `name`; the refusal says what it may write.
/// PREFLIGHT asks this of every deliverable, `artifacts.put` of every write.
pub(crate) fn check_write(policy: &TierPolicy, name: &str) -> Result<(), String> {
    let grant = Grant::of(policy);
    if first_match(&grant.names, name).is_some() {
        return Ok(());
    }
    Err(format!(
        "tier {} may only write artifacts named {:?}",
        policy.tier,
        grant.allowed()
    ))
}

/// Names are checked before anything else: a traversal attempt is an escape attempt.
fn check_name(op: &str, name: &str) -> Result<(), CallRefusal> {
    let Err(reason) = validate_artifact_name(name) else {
        return Ok(());
    };
    let escape = name.split('/').any(|s| s == "..") || name.starts_with('/');
    Err(CallRefusal {
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
    })
}

/// The tier's grant and the size of the content of a put.
fn check_put(
    tiers: &TierTable,
    tier: Tier,
    op: &str,
    name: &str,
    size: usize,
) -> Result<(), CallRefusal> {
    check_write(tiers.policy(tier), name).map_err(|reason| {
        let lowest = tiers.lowest_tier(|p| check_write(p, name).is_ok());
        CallRefusal::tier_denied(
            format!("artifact:{name}"),
            format!(
                "`{op}` refused: {reason}; lowest tier that may write it: {}",
                lowest.map_or("none".to_string(), |t| t.to_string())
            ),
        )
    })?;
    if size > MAX_ARTIFACT_BYTES {
        return Err(CallRefusal::invalid(
            format!("artifact:{name}"),
            format!(
                "`{op}` refused: `{name}` is {size} bytes; artifacts are at most {MAX_ARTIFACT_BYTES} bytes"
            ),
        ));
    }
    Ok(())
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
        self.gov.check(OP, check_name(OP, &name)).await?;
        let decision = check_put(
            &self.gov.services.tiers,
            self.gov.run.tier,
            OP,
            &name,
            content.len(),
        );
        self.gov.check(OP, decision).await?;
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
        self.gov.check(OP, check_name(OP, &name)).await?;
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
