//! `warden:agent/artifacts`: named artifacts of the task.
//!
//! Tier section `[tiers.Tn.artifacts]`: `names`, the artifact names (globs) the tier may
//! write. With the section and no names the tier may read and list artifacts, not write them.
//! Its quotas bound what a put may make the host keep: `max_artifact_bytes` per artifact,
//! `max_bytes_per_run` of content per run (counted in the run's shared state), and per task
//! `max_bytes_per_task` (every version) and `max_artifacts_per_task` (distinct names), which
//! the state store checks in the same atomic step as it records the reference.
//!
//! Lookups and listings go through the state store's index of the latest version per name,
//! never the task's whole history: `get` and `info` are one lookup, `list` is a page.

use serde::Deserialize;

use super::AgentCtx;
use super::quota::{QuotaKeys, covers, refusal};
use crate::artifacts::{ArtifactRef, get_off_thread, put_off_thread};
use crate::bindings::WitError;
use crate::bindings::warden::agent::artifacts::{ArtifactInfo, Host};
use crate::governance::{CallRefusal, Governor, ViolationKind, unavailable};
use crate::interface::Interface;
use crate::packet::{now_rfc3339, validate_artifact_name};
use crate::pattern::{Pattern, first_match};
use crate::phase::Phase;
use crate::policy::{SectionSpec, TierPolicy, TierTable};
use crate::state::{Admission, OverQuota, Quota};
use crate::tier::Tier;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Artifacts);

/// Most artifacts one `list` returns, whatever it asks for.
pub(crate) const MAX_PAGE: u32 = 256;

/// The longest artifact name ([`validate_artifact_name`]).
const MAX_NAME_BYTES: usize = 200;

/// `[tiers.Tn.artifacts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Names the tier may write.
    #[serde(default)]
    pub names: Vec<Pattern>,
    /// The largest artifact the tier may put, in bytes.
    #[serde(default = "default_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
    /// Bytes of content one run may put.
    #[serde(default = "default_max_bytes_per_run")]
    pub max_bytes_per_run: u64,
    /// Bytes of content (every version) the task may hold when the tier puts.
    #[serde(default = "default_max_bytes_per_task")]
    pub max_bytes_per_task: u64,
    /// Distinct artifact names the task may hold when the tier puts.
    #[serde(default = "default_max_artifacts_per_task")]
    pub max_artifacts_per_task: u64,
}

/// Bytes per artifact when the section does not say: 16 MiB.
const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 16 << 20;
/// Bytes per run when the section does not say: 64 MiB.
const DEFAULT_MAX_BYTES_PER_RUN: u64 = 64 << 20;
/// Bytes per task when the section does not say: 256 MiB.
const DEFAULT_MAX_BYTES_PER_TASK: u64 = 256 << 20;
/// Names per task when the section does not say: 1,000.
const DEFAULT_MAX_ARTIFACTS_PER_TASK: u64 = 1000;

fn default_max_artifact_bytes() -> u64 {
    DEFAULT_MAX_ARTIFACT_BYTES
}

fn default_max_bytes_per_run() -> u64 {
    DEFAULT_MAX_BYTES_PER_RUN
}

fn default_max_bytes_per_task() -> u64 {
    DEFAULT_MAX_BYTES_PER_TASK
}

fn default_max_artifacts_per_task() -> u64 {
    DEFAULT_MAX_ARTIFACTS_PER_TASK
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        names: Vec::new(),
        max_artifact_bytes: 0,
        max_bytes_per_run: 0,
        max_bytes_per_task: 0,
        max_artifacts_per_task: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        covers(
            "max_artifact_bytes",
            self.max_artifact_bytes,
            lower.max_artifact_bytes,
        )?;
        covers(
            "max_bytes_per_run",
            self.max_bytes_per_run,
            lower.max_bytes_per_run,
        )?;
        covers(
            "max_bytes_per_task",
            self.max_bytes_per_task,
            lower.max_bytes_per_task,
        )?;
        covers(
            "max_artifacts_per_task",
            self.max_artifacts_per_task,
            lower.max_artifacts_per_task,
        )
    }
}

/// The task's quota of a put: names and bytes of every version.
const TASK_KEYS: QuotaKeys = QuotaKeys {
    section: Some("artifacts"),
    entries: ("max_artifacts_per_task", "artifact names"),
    bytes: ("max_bytes_per_task", "bytes of artifact content"),
};

/// The run's quota of a put: bytes of content.
const RUN_KEYS: QuotaKeys = QuotaKeys {
    section: Some("artifacts"),
    entries: ("max_bytes_per_run", "bytes of artifact content"),
    bytes: ("max_bytes_per_run", "bytes of artifact content"),
};

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
    size: u64,
) -> Result<(), CallRefusal> {
    let policy = tiers.policy(tier);
    check_write(policy, name).map_err(|reason| {
        let lowest = tiers.lowest_tier(|p| check_write(p, name).is_ok());
        CallRefusal::tier_denied(
            format!("artifact:{name}"),
            format!(
                "`{op}` refused: {reason}; lowest tier that may write it: {}",
                lowest.map_or("none".to_string(), |t| t.to_string())
            ),
        )
    })?;
    let max = Grant::of(policy).max_artifact_bytes;
    if size > max {
        let key = format!("[tiers.{}.artifacts] max_artifact_bytes", tier.code());
        return Err(CallRefusal::over_quota(
            format!("artifact:{name}"),
            format!(
                "`{op}` of `{name}` refused: it is {size} bytes, over the quota of {max} bytes per artifact of tier {tier} (`{key}`); split it, or an operator raises `max_artifact_bytes` in the tier table to allow more"
            ),
        ));
    }
    Ok(())
}

/// The refusal of a put over a quota the store or the run counts.
fn over_quota(
    policy: &TierPolicy,
    keys: QuotaKeys,
    op: &str,
    name: &str,
    scope: &str,
    over: OverQuota,
) -> CallRefusal {
    refusal(
        policy,
        keys,
        format!("artifact:{name}"),
        &format!("`{op}` of `{name}`"),
        scope,
        over,
        None,
    )
}

fn info(reference: ArtifactRef) -> ArtifactInfo {
    ArtifactInfo {
        name: reference.name,
        digest: reference.digest,
        size: reference.size,
        author: reference.author,
    }
}

impl Governor {
    /// The latest version of `name`: one indexed lookup.
    async fn task_artifact(&self, name: &str) -> Result<Option<ArtifactRef>, WitError> {
        self.services
            .state
            .artifact(self.task_id(), name)
            .await
            .map_err(|e| unavailable("the state store", e))
    }
}

impl Host for AgentCtx {
    async fn put(&mut self, name: String, content: Vec<u8>) -> Result<String, WitError> {
        super::journal_call!(self, "artifacts.put", Json, super::journaled::args(&(&name, crate::journal::bytes_digest(&content))), {
            const OP: &str = "artifacts.put";
            self.gov
                .gate(Interface::Artifacts, OP, || format!("artifact:{name}"))
                .await?;
            self.gov.check(OP, check_name(OP, &name)).await?;
            self.refuse_placeholders(OP, || format!("artifact:{name}"), &[&content])
                .await?;
            let size = u64::try_from(content.len()).unwrap_or(u64::MAX);
            let decision = check_put(
                &self.gov.services.tiers,
                self.gov.run.tier,
                OP,
                &name,
                size,
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
            let policy = self.gov.policy();
            let grant = Grant::of(policy);
            // The run's share first: it is what the host is about to write, refused or not.
            let run_bytes = self
                .gov
                .run
                .charge_artifact_bytes(size, grant.max_bytes_per_run);
            if let Err(over) = run_bytes {
                let scope = format!("this run of `{}`", self.gov.agent_id());
                let refusal = over_quota(policy, RUN_KEYS, OP, &name, &scope, over);
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let quota = Quota {
                max_entries: grant.max_artifacts_per_task,
                max_bytes: grant.max_bytes_per_task,
            };
            let gov = &self.gov;
            let stored = async {
                let digest = put_off_thread(&gov.services.blobs, content)
                    .await
                    .map_err(|e| unavailable("the artifact store", e))?;
                let reference = ArtifactRef {
                    name: name.clone(),
                    digest: digest.clone(),
                    size,
                    author: gov.agent_id().to_string(),
                    created_at: now_rfc3339(),
                };
                let admission = gov
                    .services
                    .state
                    .push_artifact(gov.task_id(), &reference, quota, gov.once())
                    .await
                    .map_err(|e| unavailable("the state store", e))?;
                Ok(match admission {
                    Admission::Stored(()) => {
                        gov.run.wrote(reference);
                        Ok(digest)
                    }
                    Admission::Refused(over) => Err(over),
                })
            }
            .await;
            let result = match stored {
                Ok(Ok(digest)) => Ok(digest),
                Ok(Err(over)) => {
                    let scope = format!("task `{}`", gov.task_id());
                    let refusal = over_quota(policy, TASK_KEYS, OP, &name, &scope, over);
                    return Err(self.gov.refuse(OP, refusal).await);
                }
                Err(error) => Err(error),
            };
            gov.record_result(OP, &result).await;
            result
        })
    }

    async fn get(&mut self, name: String) -> Result<Vec<u8>, WitError> {
        super::journal_call!(self, "artifacts.get", Bytes, super::journaled::args(&(&name,)), {
            const OP: &str = "artifacts.get";
            self.gov
                .gate(Interface::Artifacts, OP, || format!("artifact:{name}"))
                .await?;
            self.gov.check(OP, check_name(OP, &name)).await?;
            let gov = &self.gov;
            let result = async {
                let Some(reference) = gov.task_artifact(&name).await? else {
                    return Err(WitError::NotFound(format!(
                        "artifact `{name}` does not exist in task `{}`",
                        gov.task_id()
                    )));
                };
                match get_off_thread(&gov.services.blobs, &reference.digest).await {
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
        })
    }

    async fn info(&mut self, name: String) -> Result<Option<ArtifactInfo>, WitError> {
        super::journal_call!(self, "artifacts.info", Json, super::journaled::args(&(&name,)), {
            const OP: &str = "artifacts.info";
            self.gov
                .gate(Interface::Artifacts, OP, || format!("artifact:{name}"))
                .await?;
            self.gov.check(OP, check_name(OP, &name)).await?;
            let result = self.gov.task_artifact(&name).await.map(|r| r.map(info));
            self.gov.record_result(OP, &result).await;
            result
        })
    }

    async fn list(
        &mut self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<ArtifactInfo>, WitError> {
        super::journal_call!(self, "artifacts.list", Json, super::journaled::args(&(&after, &limit)), {
            const OP: &str = "artifacts.list";
            self.gov
                .gate(Interface::Artifacts, OP, || "artifact:*".to_string())
                .await?;
            // A cursor is any string: the page starts after it in name order, so it need not be
            // a name that exists, and it is never a key. Past the longest name it is no use.
            if let Some(after) = after.as_deref().filter(|a| a.len() > MAX_NAME_BYTES) {
                let refusal = CallRefusal::invalid(
                    "artifact:*",
                    format!(
                        "`{OP}` refused: a cursor of {} bytes; artifact names, and so cursors, are at most {MAX_NAME_BYTES} bytes",
                        after.len()
                    ),
                );
                return Err(self.gov.refuse(OP, refusal).await);
            }
            let limit = usize::try_from(limit.min(MAX_PAGE)).unwrap_or(0);
            let gov = &self.gov;
            let result = gov
                .services
                .state
                .artifact_page(gov.task_id(), after.as_deref(), limit)
                .await
                .map(|page| page.into_iter().map(info).collect())
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

    #[tokio::test]
    async fn a_put_is_read_back_and_listed() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let digest = agent.ctx.put("out/a.txt".into(), b"hello".to_vec()).await.unwrap();
        assert!(digest.starts_with("sha256:"), "{digest}");
        assert_eq!(agent.ctx.get("out/a.txt".into()).await.unwrap(), b"hello");
        let listed = agent.ctx.list(None, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("out/a.txt", 5));
        let info = agent.ctx.info("out/a.txt".into()).await.unwrap().unwrap();
        assert_eq!((info.digest.as_str(), info.author.as_str()), (digest.as_str(), "agent-1"));
        assert!(agent.ctx.info("missing".into()).await.unwrap().is_none());
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
    async fn an_artifact_over_the_tier_size_is_refused_before_it_is_stored() {
        let tiers = tiers_with(&[("max_artifact_bytes = 16777216", "max_artifact_bytes = 8")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        agent.ctx.put("fits.bin".into(), vec![0; 8]).await.unwrap();
        let err = agent.ctx.put("big.bin".into(), vec![0; 9]).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("`artifacts.put` of `big.bin` refused: it is 9 bytes, over the quota of 8 bytes per artifact of tier T1 (operator) (`[tiers.T1.artifacts] max_artifact_bytes`)")),
            "{err:?}"
        );
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(agent.errors().await.total, 1, "charged");
        assert_eq!(
            agent.actions().pop().unwrap(),
            ("artifacts.put".into(), "denied".into(), Some("QUOTA_EXCEEDED".into()))
        );
        let names: Vec<String> = agent.ctx.list(None, 10).await.unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["fits.bin"]);
    }

    #[tokio::test]
    async fn a_run_puts_at_most_its_bytes_and_the_next_run_starts_afresh() {
        let tiers = tiers_with(&[("max_bytes_per_run = 67108864", "max_bytes_per_run = 10")]);
        let mut agent = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        agent.ctx.put("a".into(), vec![1; 6]).await.unwrap();
        agent.ctx.put("a".into(), vec![2; 4]).await.unwrap();
        let err = agent.ctx.put("b".into(), vec![3; 1]).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("this run of `agent-1` would hold 11 bytes of artifact content (it holds 10), over the quota of 10") && m.contains("`[tiers.T1.artifacts] max_bytes_per_run`")),
            "{err:?}"
        );
        assert_eq!(agent.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(agent.errors().await.total, 1);
        let mut next = agent.peer("agent-2", Tier::Operator).await;
        next.ctx.put("b".into(), vec![3; 10]).await.unwrap();
    }

    /// The task's quota holds across agents: it is the state store's, not a run's.
    #[tokio::test]
    async fn a_task_holds_at_most_its_bytes_and_names_whoever_puts() {
        let tiers = tiers_with(&[
            ("max_bytes_per_task = 268435456", "max_bytes_per_task = 10"),
            ("max_artifacts_per_task = 1000", "max_artifacts_per_task = 2"),
        ]);
        let mut alpha = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        alpha.ctx.put("a".into(), vec![1; 4]).await.unwrap();
        beta.ctx.put("b".into(), vec![2; 4]).await.unwrap();
        let err = beta.ctx.put("c".into(), vec![3; 1]).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("task `task-1` would hold 3 artifact names (it holds 2), over the quota of 2") && m.contains("`[tiers.T1.artifacts] max_artifacts_per_task`")),
            "{err:?}"
        );
        // A new version of a name adds bytes, not names: up to 10 exactly, then refused.
        alpha.ctx.put("a".into(), vec![4; 2]).await.unwrap();
        let err = alpha.ctx.put("a".into(), vec![5; 1]).await.unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("task `task-1` would hold 11 bytes of artifact content (it holds 10), over the quota of 10") && m.contains("`[tiers.T1.artifacts] max_bytes_per_task`")),
            "{err:?}"
        );
        assert_eq!(alpha.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(beta.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!((alpha.errors().await.total, beta.errors().await.total), (1, 1));
        assert_eq!(alpha.ctx.get("a".into()).await.unwrap(), [4, 4], "the refused version is not the latest");
        let task = alpha.ctx.gov.task_id().clone();
        assert_eq!(alpha.state().artifacts(&task).await.unwrap().len(), 3, "nothing refused was recorded");
    }

    #[tokio::test]
    async fn a_listing_is_a_page_in_name_order() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        for i in (0..300).rev() {
            agent.ctx.put(format!("out/{i:03}"), vec![1]).await.unwrap();
        }
        let page = |p: Vec<ArtifactInfo>| -> Vec<String> { p.into_iter().map(|a| a.name).collect() };
        assert_eq!(page(agent.ctx.list(None, 2).await.unwrap()), ["out/000", "out/001"]);
        assert_eq!(page(agent.ctx.list(Some("out/001".into()), 1).await.unwrap()), ["out/002"]);
        let capped = agent.ctx.list(None, u32::MAX).await.unwrap();
        assert_eq!(capped.len(), MAX_PAGE as usize, "a page is at most MAX_PAGE");
        let rest = agent.ctx.list(Some(capped[255].name.clone()), u32::MAX).await.unwrap();
        assert_eq!(rest.len(), 300 - 256, "the last page is short");
        assert_eq!(page(agent.ctx.list(Some("out/299".into()), 5).await.unwrap()), Vec::<String>::new());
        let err = agent.ctx.list(Some("x".repeat(201)), 5).await.unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("a cursor of 201 bytes")), "{err:?}");
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
