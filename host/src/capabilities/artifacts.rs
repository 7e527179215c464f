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
use crate::phase::Phase;
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

/// What the phase allows: in PLAN, before the approval gate, only the tier's plan artifacts
/// (`[tiers.Tn.plan] artifacts`); from VERIFY on, the deliverables are sealed, so what was
/// verified is what is packaged.
fn check_phase(
    policy: &TierPolicy,
    phase: Phase,
    deliverables: &[String],
    op: &str,
    name: &str,
) -> Result<(), CallRefusal> {
    let refuse = |message: String| CallRefusal {
        kind: ViolationKind::PhaseDenied,
        resource: format!("artifact:{name}"),
        message,
    };
    match phase {
        Phase::Plan if first_match(&policy.plan.artifacts, name).is_none() => {
            let allowed: Vec<&str> = policy.plan.artifacts.iter().map(Pattern::as_str).collect();
            Err(refuse(format!(
                "`{op}` of `{name}` refused: in PLAN, before the approval gate, tier {} may only write artifacts named {allowed:?} (`[tiers.{}.plan] artifacts`); write it in EXECUTE",
                policy.tier,
                policy.tier.code()
            )))
        }
        Phase::Verify | Phase::Package | Phase::Report | Phase::Exit
            if deliverables.iter().any(|d| d == name) =>
        {
            Err(refuse(format!(
                "`{op}` of `{name}` refused: deliverables are sealed from VERIFY on, so the artifact packaged is the one verified; write deliverables in EXECUTE"
            )))
        }
        _ => Ok(()),
    }
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
        let refs = self
            .services
            .state
            .artifacts(self.task_id())
            .await
            .map_err(|e| unavailable("the state store", e))?;
        Ok(latest_per_name(refs))
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
        let run = &self.gov.run;
        let decision = check_phase(
            self.gov.policy(),
            run.phase(),
            &run.packet.deliverables,
            OP,
            &name,
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
            gov.services
                .state
                .push_artifact(gov.task_id(), &reference)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::TestEnv;

    #[tokio::test]
    async fn a_put_is_read_back_and_listed() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let digest = agent.ctx.put("out/a.txt".into(), b"hello".to_vec()).await.unwrap();
        assert!(digest.starts_with("sha256:"), "{digest}");
        assert_eq!(agent.ctx.get("out/a.txt".into()).await.unwrap(), b"hello");
        let listed = agent.ctx.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("out/a.txt", 5));
        assert_eq!(agent.ctx.gov.run.written().len(), 1, "the run knows what it wrote");
        let err = agent.ctx.get("missing".into()).await.unwrap_err();
        assert!(matches!(&err, WitError::NotFound(m) if m.contains("`missing` does not exist in task `task-1`")), "{err:?}");
        assert_eq!(agent.errors().await.total, 0, "not found is an answer, not an error");
    }

    #[tokio::test]
    async fn an_observer_writes_only_plans_and_is_told_who_may() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        agent.ctx.put("plan.md".into(), b"p".to_vec()).await.unwrap();
        let err = agent.ctx.put("notes.txt".into(), b"n".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, WitError::Denied(m) if m.contains("tier T0 (observer) may only write artifacts named [\"plan*\", \"plans/*\"]; lowest tier that may write it: T1 (operator)")),
            "{err:?}"
        );
        assert_eq!(agent.violations(), ["TIER_DENIED"]);
        assert_eq!(agent.errors().await.total, 1);
    }

    #[tokio::test]
    async fn a_traversal_is_a_procedure_violation_checked_before_the_tier() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        let err = agent.ctx.put("../escape".into(), b"x".to_vec()).await.unwrap_err();
        assert!(matches!(&err, WitError::Revoked(m) if m.contains("leaves the task's artifact space")), "{err:?}");
        assert_eq!(agent.violations(), ["PATH_ESCAPE"]);
        assert!(agent.is_revoked());
    }

    #[tokio::test]
    async fn an_oversized_artifact_is_refused_before_it_is_stored() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let err = agent
            .ctx
            .put("big.bin".into(), vec![0; MAX_ARTIFACT_BYTES + 1])
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("artifacts are at most")), "{err:?}");
        assert!(agent.ctx.list().await.unwrap().is_empty());
    }

    #[test]
    fn preflight_asks_the_same_grant() {
        let tiers = TierTable::builtin().unwrap();
        assert_eq!(check_write(tiers.policy(Tier::Observer), "plans/a"), Ok(()));
        assert_eq!(
            check_write(tiers.policy(Tier::Observer), "report.md"),
            Err("tier T0 (observer) may only write artifacts named [\"plan*\", \"plans/*\"]".into())
        );
        assert_eq!(check_write(tiers.policy(Tier::Operator), "report.md"), Ok(()));
    }
}
