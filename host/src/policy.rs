//! The tier table: what each trust tier links, may touch, and how long it may run.
//!
//! The table is data (`policies/tiers.toml`), read when the host starts. A tier has a few
//! keys of its own (name, approval, deadlines, memory) and one optional section per
//! capability, which that capability's module parses ([`Grant`]): `[tiers.T3.secrets]
//! paths = […]`, `[tiers.T1.llm] models = […]`. A section links its interface; a missing
//! section grants nothing, so a table written before a capability existed keeps working and
//! grants it to no one. The table is validated as a whole: every tier present, every section
//! known, and no tier granting less than the tier below it, so "higher tier may do everything
//! a lower tier may" holds by construction.
//!
//! Durations are strings (`"30s"`, `"10m"`). Keys of the old flat layout (`interfaces`,
//! `llm_models`, `phase_wall_ms`, …) are refused with the form that replaces them.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use crate::interface::{Interface, InterfaceSet};
use crate::tier::Tier;

/// The built-in tier table, identical to `policies/tiers.toml` in the repository.
pub const BUILTIN_TIERS_TOML: &str = include_str!("../../policies/tiers.toml");

/// Whether a run of the tier proceeds past PLAN on its own or waits for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// The run goes on after PLAN.
    Automatic,
    /// The run waits after PLAN for `warden approve <task>`.
    Required,
}

/// What a run may do in PLAN, before the approval gate (`[tiers.Tn.plan]`). The gate is
/// there to hold effects back, so by default an agent only reads and plans: tools run in
/// check mode, secrets are closed, and only plan artifacts are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanRules {
    /// `"check"`: every tool runs its check command (or nothing) in PLAN; `"full"`: as in
    /// EXECUTE.
    pub tools: PlanTools,
    /// Whether secrets may be read in PLAN.
    pub secrets: bool,
    /// The artifact names (globs) that may be written in PLAN, within the tier's own
    /// `[tiers.Tn.artifacts] names`.
    pub artifacts: Vec<crate::pattern::Pattern>,
}

impl Default for PlanRules {
    fn default() -> Self {
        PlanRules {
            tools: PlanTools::Check,
            secrets: false,
            artifacts: vec![
                crate::pattern::Pattern::new("plan*"),
                crate::pattern::Pattern::new("plans/*"),
            ],
        }
    }
}

/// How tools run in PLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanTools {
    /// The check command, or nothing.
    Check,
    /// As in EXECUTE.
    Full,
}

/// A capability's grant: its section of a tier (`[tiers.T1.llm]`), parsed by the
/// capability's own module. `NONE` is what a tier without the section is granted.
pub trait Grant: Any + fmt::Debug + Send + Sync + DeserializeOwned {
    /// What a missing section grants: nothing.
    const NONE: &'static Self;

    /// Refuse a grant narrower than the one of the tier below (`lower`): a higher tier must
    /// grant everything a lower tier does. The message names what is missing.
    fn covers(&self, lower: &Self) -> Result<(), String> {
        let _ = lower;
        Ok(())
    }
}

/// The grant of a capability that has no settings: its section is empty (`[tiers.T1.tools]`)
/// and its presence links the interface.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linked {}

impl Grant for Linked {
    const NONE: &'static Self = &Linked {};
}

/// A parsed grant, type-erased so the table can hold every capability's own type.
trait GrantObject: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<G: Grant> GrantObject for G {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// How the table reads one capability's section: the registry of
/// [`capabilities`](crate::capabilities) has one per interface.
#[derive(Clone, Copy)]
pub(crate) struct SectionSpec {
    pub interface: Interface,
    /// Linked at every tier, without a section (`types`).
    pub always: bool,
    parse: fn(toml::Value) -> Result<Arc<dyn GrantObject>, String>,
    covers: fn(&dyn GrantObject, &dyn GrantObject) -> Result<(), String>,
}

impl SectionSpec {
    /// The section of `interface`, parsed as `G`.
    pub const fn of<G: Grant>(interface: Interface) -> SectionSpec {
        SectionSpec {
            interface,
            always: false,
            parse: parse_grant::<G>,
            covers: covers_grant::<G>,
        }
    }

    /// An interface linked at every tier; a section for it is refused.
    pub const fn always(interface: Interface) -> SectionSpec {
        SectionSpec {
            interface,
            always: true,
            parse: parse_grant::<Linked>,
            covers: covers_grant::<Linked>,
        }
    }
}

fn parse_grant<G: Grant>(value: toml::Value) -> Result<Arc<dyn GrantObject>, String> {
    value
        .try_into::<G>()
        .map(|grant| Arc::new(grant) as Arc<dyn GrantObject>)
        .map_err(|e| e.message().to_string())
}

fn covers_grant<G: Grant>(upper: &dyn GrantObject, lower: &dyn GrantObject) -> Result<(), String> {
    match (
        upper.as_any().downcast_ref::<G>(),
        lower.as_any().downcast_ref::<G>(),
    ) {
        (Some(upper), Some(lower)) => upper.covers(lower),
        (Some(_), None) | (None, _) => Ok(()),
    }
}

/// Everything the tier table says about one tier.
#[derive(Debug, Clone)]
pub struct TierPolicy {
    /// The tier described.
    pub tier: Tier,
    /// Its `name` in the table (`observer`, `operator`, …).
    pub name: String,
    /// The interfaces the tier links: `types` and one per capability section.
    pub interfaces: InterfaceSet,
    /// Whether the workspace is mounted writable (otherwise read-only); default `false`.
    pub workspace_write: bool,
    /// What PLAN, before the approval gate, may do (`[tiers.Tn.plan]`).
    pub plan: PlanRules,
    /// Whether a run goes on after PLAN by itself or waits for `warden approve`.
    pub approval: Approval,
    /// Whether runs stop after PLAN (then PACKAGE and EXIT with the plan artifact).
    pub stops_after_plan: bool,
    /// Wall-clock limit of one phase.
    pub phase_wall: Duration,
    /// CPU limit of one phase: time the guest spends executing, counted in epoch ticks.
    pub phase_cpu: Duration,
    /// Wall-clock limit of the whole run.
    pub run_wall: Duration,
    /// Linear memory an agent may grow to, in bytes.
    pub memory_bytes: u64,
    /// Elements a table of the agent may grow to.
    pub table_elements: u64,
    /// Wasm instances an agent's store may hold (memories alike; tables four times as many).
    pub instances: u32,
    /// TTL of the tokens of the tier's secrets identity (Vault: the AppRole's token TTL).
    pub secrets_ttl: Duration,
    /// Bytes of text a plan, outcome, verification or report the agent returns may hold;
    /// over it the phase's result is refused and the run fails (`QUOTA_EXCEEDED`). An agent's
    /// error message is clipped to it. Default [`DEFAULT_MAX_TEXT_BYTES`].
    pub max_text_bytes: u64,
    /// Bytes the agent's workspace may hold: its size at boot plus every byte a run writes
    /// (an overwrite counts again) stays at or below this; a write past it fails with
    /// `wasi:filesystem` `quota`. Applies where the workspace is writable.
    pub workspace_bytes: u64,
    /// Files, directories and links the agent's workspace may hold: those found at boot plus
    /// those a run creates; a creation past it fails with `quota`.
    pub workspace_files: u64,
    /// Files and directories an agent may hold open at once (`open-at`); one more fails with
    /// `insufficient-memory` until the agent closes one.
    pub descriptors: u32,
    /// Host resources an agent's store may hold at once (descriptors, streams, pollables,
    /// directory listings): the cap of its resource table; past it the host call traps.
    pub wasi_resources: u32,
    /// The signature a component needs to load at this tier (`signed_by`: names of trusted
    /// keys in `policies/keys/`, one of which must have signed it); default: none.
    pub signature: crate::signing::Requirement,
    /// One per interface, in registry order; `None` where the tier has no section.
    grants: Vec<Option<Arc<dyn GrantObject>>>,
}

impl TierPolicy {
    /// The grant of `interface`'s section, parsed as `G`; [`Grant::NONE`] when the tier has no
    /// such section (or `G` is not that section's type), so a mistake grants nothing.
    pub fn grant<G: Grant>(&self, interface: Interface) -> &G {
        self.grants
            .get(interface as usize)
            .and_then(Option::as_ref)
            .and_then(|grant| grant.as_any().downcast_ref::<G>())
            .unwrap_or(G::NONE)
    }
}

/// Table-wide defaults.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// TTL of `agent:{id}:lock`, refreshed at every lifecycle transition; at least 1 ms.
    pub lock_ttl: Duration,
    /// TTL of `agent:{id}:heartbeat`; at least 1 ms.
    pub heartbeat_ttl: Duration,
    /// How long a run that needs approval waits for `warden approve <task>`.
    pub approval_timeout: Duration,
    /// Bytes of stdout, and of stderr, kept per run; output past the cap is dropped.
    pub output_cap_bytes: usize,
}

/// When agents move between tiers (`[promotion]`): up after compliant runs, down after
/// violations. `governance::promotion::decide` applies them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PromotionRules {
    /// Compliant runs in a row before an agent is eligible for the next tier.
    pub consecutive_compliant: u32,
    /// Automatic promotion only moves agents into tiers below this one.
    pub auto_promote_below: Tier,
    /// Tiers a promotion into needs a person for (`warden agents promote`), though below
    /// `auto_promote_below`.
    pub require_human: Vec<Tier>,
    /// The least time between two tier changes of one agent (`0s`: none).
    #[serde(serialize_with = "crate::duration::ser")]
    pub cooldown: Duration,
    /// Violations within `demotion_window` at which an agent drops one tier (`0`: never).
    /// Distinct from revocation: the agent keeps running, one tier lower.
    pub demote_after_violations: u32,
    /// The window `demote_after_violations` counts in.
    #[serde(serialize_with = "crate::duration::ser")]
    pub demotion_window: Duration,
}

/// The validated tier table.
#[derive(Debug, Clone)]
pub struct TierTable {
    /// The table's `revision`, recorded as `policy_revision` in ledger rows; never empty.
    pub revision: String,
    /// `[defaults]`: table-wide settings.
    pub defaults: Defaults,
    /// `[promotion]`: when compliant agents move up.
    pub promotion: PromotionRules,
    tiers: [TierPolicy; 5],
    source: Option<PathBuf>,
    /// The trusted keys `signed_by` names (`keys/` beside the table file).
    keyring: Arc<crate::signing::Keyring>,
}

/// A tier table that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The table file cannot be read.
    #[error("cannot read tier table `{path}`: {source}")]
    Read {
        /// The table file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not TOML, or not of a tier table's shape.
    #[error("tier table {origin} is not valid TOML for a tier table: {message}")]
    Syntax {
        /// The table: `` `path` ``, `(inline)` or `(built-in)`.
        origin: String,
        /// The TOML parser's message.
        message: String,
    },
    /// The table parses but breaks a rule (a tier missing, a grant narrower than below, …).
    #[error("tier table {origin}: {message}")]
    Invalid {
        /// The table: `` `path` ``, `(inline)` or `(built-in)`.
        origin: String,
        /// The rule broken.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    revision: String,
    defaults: RawDefaults,
    promotion: RawPromotion,
    tiers: BTreeMap<String, toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(deserialize_with = "crate::duration::de")]
    lock_ttl: Duration,
    #[serde(deserialize_with = "crate::duration::de")]
    heartbeat_ttl: Duration,
    #[serde(deserialize_with = "crate::duration::de")]
    approval_timeout: Duration,
    output_cap_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromotion {
    consecutive_compliant: u32,
    auto_promote_below: Tier,
    #[serde(default)]
    require_human: Vec<Tier>,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    cooldown: Option<Duration>,
    #[serde(default)]
    demote_after_violations: u32,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    demotion_window: Option<Duration>,
}

/// A tier's own keys, once its capability sections are taken out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    #[serde(default)]
    workspace_write: bool,
    #[serde(default)]
    plan: PlanRules,
    approval: Approval,
    stops_after_plan: bool,
    #[serde(deserialize_with = "crate::duration::de")]
    phase_wall: Duration,
    #[serde(deserialize_with = "crate::duration::de")]
    phase_cpu: Duration,
    #[serde(deserialize_with = "crate::duration::de")]
    run_wall: Duration,
    memory_bytes: u64,
    table_elements: u64,
    instances: u32,
    #[serde(deserialize_with = "crate::duration::de")]
    secrets_ttl: Duration,
    #[serde(default = "default_max_text_bytes")]
    max_text_bytes: u64,
    #[serde(default = "default_workspace_bytes")]
    workspace_bytes: u64,
    #[serde(default = "default_workspace_files")]
    workspace_files: u64,
    #[serde(default = "default_descriptors")]
    descriptors: u32,
    #[serde(default = "default_wasi_resources")]
    wasi_resources: u32,
    #[serde(default)]
    signed_by: Vec<String>,
}

/// [`TierPolicy::max_text_bytes`] when the tier does not say: 64 KiB.
pub const DEFAULT_MAX_TEXT_BYTES: u64 = 64 * 1024;

fn default_max_text_bytes() -> u64 {
    DEFAULT_MAX_TEXT_BYTES
}

/// `workspace_bytes` of a tier that does not set it: 64 MiB, as in `policies/tiers.toml`.
fn default_workspace_bytes() -> u64 {
    64 << 20
}

/// `workspace_files` of a tier that does not set it, as in `policies/tiers.toml`.
fn default_workspace_files() -> u64 {
    4096
}

/// `descriptors` of a tier that does not set it, as in `policies/tiers.toml`.
fn default_descriptors() -> u32 {
    64
}

/// `wasi_resources` of a tier that does not set it, as in `policies/tiers.toml`.
fn default_wasi_resources() -> u32 {
    1024
}

/// Resource-table entries one open descriptor may come with: a file opened through wasi-libc
/// holds the descriptor, a read and a write stream, and a pollable for each stream.
const WASI_RESOURCES_PER_DESCRIPTOR: u32 = 5;

/// Resource-table entries a run needs besides its descriptors': standard streams, preopens,
/// pollables of its clocks.
const WASI_RESOURCES_BESIDES_DESCRIPTORS: u32 = 32;

impl TierTable {
    /// Read and validate a tier table with the given capability sections.
    pub(crate) fn parse_with(
        text: &str,
        origin: String,
        sections: &[SectionSpec],
        keyring: crate::signing::Keyring,
    ) -> Result<TierTable, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.clone(),
            message,
        };
        let syntax = |e: toml::de::Error| PolicyError::Syntax {
            origin: origin.clone(),
            message: e.to_string(),
        };
        let document: toml::Table = toml::from_str(text).map_err(syntax)?;
        if let Some(toml::Value::Table(defaults)) = document.get("defaults") {
            crate::duration::refuse_renamed(
                "`[defaults]`",
                defaults,
                &["lock_ttl_ms", "heartbeat_ttl_ms", "approval_timeout_ms"],
            )
            .map_err(invalid)?;
        }
        let raw: RawTable = toml::from_str(text).map_err(syntax)?;
        if raw.revision.trim().is_empty() {
            return Err(invalid("`revision` must not be empty".into()));
        }
        for key in raw.tiers.keys() {
            if !Tier::ALL.iter().any(|t| t.code() == key) {
                return Err(invalid(format!(
                    "unknown tier `[tiers.{key}]`: expected T0, T1, T2, T3 and T4"
                )));
            }
        }
        let mut tiers = Vec::with_capacity(Tier::ALL.len());
        for tier in Tier::ALL {
            let code = tier.code();
            let table = raw.tiers.get(code).ok_or_else(|| {
                invalid(format!(
                    "missing `[tiers.{code}]`: every tier T0..T4 must be defined"
                ))
            })?;
            tiers.push(parse_tier(tier, table.clone(), sections).map_err(invalid)?);
        }
        for pair in tiers.windows(2) {
            check_covers(&pair[1], &pair[0], sections).map_err(invalid)?;
        }
        for policy in &tiers {
            for key in &policy.signature.keys {
                if keyring.get(key).is_none() {
                    let held: Vec<String> = keyring
                        .keys()
                        .iter()
                        .map(|k| format!("`{}`", k.name))
                        .collect();
                    return Err(invalid(format!(
                        "`tiers.{}.signed_by` names key `{}`, which is not among the trusted keys ({}): put its public key in `keys/{}.pub` beside the table (`warden keys generate {}`)",
                        policy.tier.code(),
                        key.escape_debug(),
                        if held.is_empty() {
                            "none".to_string()
                        } else {
                            held.join(", ")
                        },
                        key.escape_debug(),
                        key.escape_debug(),
                    )));
                }
            }
        }
        let [t0, t1, t2, t3, t4]: [TierPolicy; 5] = tiers
            .try_into()
            .map_err(|_| invalid("expected exactly five tiers".into()))?;
        Ok(TierTable {
            revision: raw.revision,
            defaults: Defaults {
                lock_ttl: raw.defaults.lock_ttl.max(Duration::from_millis(1)),
                heartbeat_ttl: raw.defaults.heartbeat_ttl.max(Duration::from_millis(1)),
                approval_timeout: raw.defaults.approval_timeout,
                output_cap_bytes: raw.defaults.output_cap_bytes,
            },
            promotion: PromotionRules {
                consecutive_compliant: raw.promotion.consecutive_compliant,
                auto_promote_below: raw.promotion.auto_promote_below,
                require_human: raw.promotion.require_human,
                cooldown: raw.promotion.cooldown.unwrap_or_default(),
                demote_after_violations: raw.promotion.demote_after_violations,
                demotion_window: raw
                    .promotion
                    .demotion_window
                    .unwrap_or(Duration::from_secs(3600)),
            },
            tiers: [t0, t1, t2, t3, t4],
            source: None,
            keyring: Arc::new(keyring),
        })
    }

    /// The file the table was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub(crate) fn set_source(&mut self, path: &Path) {
        self.source = Some(path.to_path_buf());
    }

    /// The trusted keys the tiers' `signed_by` name (`keys/` beside the table file; none for
    /// the built-in or an inline table).
    pub fn keyring(&self) -> &Arc<crate::signing::Keyring> {
        &self.keyring
    }

    /// The policy of one tier.
    pub fn policy(&self, tier: Tier) -> &TierPolicy {
        &self.tiers[tier as usize]
    }

    /// The lowest tier whose policy satisfies `grants`.
    pub fn lowest_tier(&self, grants: impl Fn(&TierPolicy) -> bool) -> Option<Tier> {
        self.tiers.iter().find(|p| grants(p)).map(|p| p.tier)
    }

    /// The lowest tier whose policy links `interface`.
    pub fn lowest_tier_granting(&self, interface: Interface) -> Option<Tier> {
        self.lowest_tier(|p| p.interfaces.contains(interface))
    }
}

/// One tier: its own keys, then one section per capability it grants.
fn parse_tier(
    tier: Tier,
    mut table: toml::Table,
    sections: &[SectionSpec],
) -> Result<TierPolicy, String> {
    let code = tier.code();
    if let Some(message) = table
        .iter()
        .find_map(|(key, value)| legacy_key(code, key, value))
    {
        return Err(message);
    }
    let mut interfaces = InterfaceSet::default();
    let mut grants = vec![None; Interface::ALL.len()];
    for spec in sections {
        let name = spec.interface.name();
        let Some(value) = table.remove(name) else {
            if spec.always {
                interfaces.insert(spec.interface);
            }
            continue;
        };
        if spec.always {
            return Err(format!(
                "`[tiers.{code}.{name}]`: `{name}` is linked at every tier and takes no section; remove it"
            ));
        }
        if !value.is_table() {
            return Err(format!(
                "`tiers.{code}.{name}` must be a section (`[tiers.{code}.{name}]`), not a {}",
                value.type_str()
            ));
        }
        let grant = (spec.parse)(value).map_err(|e| format!("`[tiers.{code}.{name}]`: {e}"))?;
        interfaces.insert(spec.interface);
        grants[spec.interface as usize] = Some(grant);
    }
    let raw: RawTier = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        let known: Vec<&str> = sections
            .iter()
            .filter(|s| !s.always)
            .map(|s| s.interface.name())
            .collect();
        format!(
            "`[tiers.{code}]`: {}; a capability's section is one of `[tiers.{code}.<name>]` for {}",
            e.message(),
            known.join(", ")
        )
    })?;
    for (field, zero) in [
        ("phase_wall", raw.phase_wall.is_zero()),
        ("phase_cpu", raw.phase_cpu.is_zero()),
        ("run_wall", raw.run_wall.is_zero()),
        ("memory_bytes", raw.memory_bytes == 0),
        ("secrets_ttl", raw.secrets_ttl.is_zero()),
        ("max_text_bytes", raw.max_text_bytes == 0),
    ] {
        if zero {
            return Err(format!("`tiers.{code}.{field}` must be greater than 0"));
        }
    }
    let least = raw
        .descriptors
        .saturating_mul(WASI_RESOURCES_PER_DESCRIPTOR)
        .saturating_add(WASI_RESOURCES_BESIDES_DESCRIPTORS);
    if raw.wasi_resources < least {
        return Err(format!(
            "`tiers.{code}.wasi_resources` is {}: it must be at least {WASI_RESOURCES_PER_DESCRIPTOR} × `descriptors` + {WASI_RESOURCES_BESIDES_DESCRIPTORS} ({least}), so that an agent holding all its descriptors never runs out of resources (a file opened through wasi-libc holds up to {WASI_RESOURCES_PER_DESCRIPTOR}: the descriptor, two streams and their pollables)",
            raw.wasi_resources
        ));
    }
    Ok(TierPolicy {
        tier,
        name: raw.name,
        interfaces,
        workspace_write: raw.workspace_write,
        plan: raw.plan,
        approval: raw.approval,
        stops_after_plan: raw.stops_after_plan,
        phase_wall: raw.phase_wall,
        phase_cpu: raw.phase_cpu,
        run_wall: raw.run_wall,
        memory_bytes: raw.memory_bytes,
        table_elements: raw.table_elements,
        instances: raw.instances,
        secrets_ttl: raw.secrets_ttl,
        max_text_bytes: raw.max_text_bytes,
        workspace_bytes: raw.workspace_bytes,
        workspace_files: raw.workspace_files,
        descriptors: raw.descriptors,
        wasi_resources: raw.wasi_resources,
        signature: crate::signing::Requirement {
            keys: raw.signed_by,
        },
        grants,
    })
}

/// `upper` must grant everything `lower` (the tier below) does.
fn check_covers(
    upper: &TierPolicy,
    lower: &TierPolicy,
    sections: &[SectionSpec],
) -> Result<(), String> {
    let (up, low) = (upper.tier.code(), lower.tier.code());
    if let Some(missing) = lower
        .interfaces
        .iter()
        .find(|i| !upper.interfaces.contains(*i))
    {
        return Err(format!(
            "`tiers.{low}` grants `{}` but `tiers.{up}` does not: a higher tier must grant everything a lower tier does",
            missing.name()
        ));
    }
    if upper.max_text_bytes < lower.max_text_bytes {
        return Err(format!(
            "`tiers.{up}.max_text_bytes` of {} is below `tiers.{low}`'s {}: a higher tier must grant everything a lower tier does",
            upper.max_text_bytes, lower.max_text_bytes
        ));
    }
    if lower.workspace_write && !upper.workspace_write {
        return Err(format!(
            "`tiers.{low}` may write its workspace but `tiers.{up}` may not: a higher tier must grant everything a lower tier does"
        ));
    }
    for spec in sections {
        let index = spec.interface as usize;
        if let (Some(Some(upper)), Some(Some(lower))) =
            (upper.grants.get(index), lower.grants.get(index))
        {
            (spec.covers)(upper.as_ref(), lower.as_ref()).map_err(|e| {
                format!(
                    "`[tiers.{up}.{name}]` grants less than `[tiers.{low}.{name}]`: {e}; a higher tier must grant everything a lower tier does",
                    name = spec.interface.name()
                )
            })?;
        }
    }
    Ok(())
}

/// The message for a key of the old flat layout, naming the form that replaces it.
fn legacy_key(code: &str, key: &str, value: &toml::Value) -> Option<String> {
    let list = |value: &toml::Value| value.to_string();
    let section = |name: &str, body: String| {
        Some(format!(
            "`tiers.{code}.{key}` is the old flat form; write it as a section:\n  [tiers.{code}.{name}]\n  {body}"
        ))
    };
    match key {
        "interfaces" => {
            let granted: Vec<String> = value
                .as_array()
                .map(|names| {
                    names
                        .iter()
                        .filter_map(toml::Value::as_str)
                        .filter(|name| *name != "types")
                        .map(|name| format!("`[tiers.{code}.{name}]`"))
                        .collect()
                })
                .unwrap_or_default();
            Some(format!(
                "`tiers.{code}.interfaces` is the old flat form: each interface is granted by a section of its own ({}); a missing section grants nothing and `types` is always linked",
                if granted.is_empty() {
                    format!("`[tiers.{code}.state]`, …")
                } else {
                    granted.join(", ")
                }
            ))
        }
        "artifact_names" => section("artifacts", format!("names = {}", list(value))),
        "secrets" if value.is_array() => section("secrets", format!("paths = {}", list(value))),
        "llm_models" => section("llm", format!("models = {}", list(value))),
        "llm_token_budget" => section("llm", format!("token_budget = {value}")),
        "blackboard_write" => section("blackboard", format!("write = {value}")),
        "phase_wall_ms" | "phase_cpu_ms" | "run_wall_ms" | "secrets_ttl_s" => {
            crate::duration::renamed(key, value).map(|new_form| {
                format!(
                    "`tiers.{code}.{key}` is the old form; durations are strings now: write {new_form}"
                )
            })
        }
        _ => None,
    }
}
