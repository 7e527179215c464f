//! The tier table: what each trust tier links, may touch, and how long it may run.
//!
//! The table is data (`policies/tiers.toml`), read when the host starts. It is validated as a
//! whole: every tier present, every interface known, and no tier granting less than the tier
//! below it, so "higher tier may do everything a lower tier may" holds by construction.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pattern::Pattern;
use crate::tier::Tier;

/// The built-in tier table, identical to `policies/tiers.toml` in the repository.
pub const BUILTIN_TIERS_TOML: &str = include_str!("../../policies/tiers.toml");

/// A WIT interface an agent can import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interface {
    Types,
    Ledger,
    State,
    Artifacts,
    Llm,
    Blackboard,
    Messaging,
    Consensus,
    Tools,
    Secrets,
}

impl Interface {
    /// Every interface of `warden:agent`.
    pub const ALL: [Interface; 10] = [
        Interface::Types,
        Interface::Ledger,
        Interface::State,
        Interface::Artifacts,
        Interface::Llm,
        Interface::Blackboard,
        Interface::Messaging,
        Interface::Consensus,
        Interface::Tools,
        Interface::Secrets,
    ];

    /// The interface's WIT name (`secrets`).
    pub fn name(self) -> &'static str {
        match self {
            Interface::Types => "types",
            Interface::Ledger => "ledger",
            Interface::State => "state",
            Interface::Artifacts => "artifacts",
            Interface::Llm => "llm",
            Interface::Blackboard => "blackboard",
            Interface::Messaging => "messaging",
            Interface::Consensus => "consensus",
            Interface::Tools => "tools",
            Interface::Secrets => "secrets",
        }
    }

    /// Parse a WIT interface name (`secrets`).
    pub fn from_name(name: &str) -> Option<Interface> {
        Interface::ALL.into_iter().find(|i| i.name() == name)
    }

    /// The fully qualified import name (`warden:agent/secrets@0.1.0`).
    pub fn qualified(self) -> String {
        format!("warden:agent/{}@0.1.0", self.name())
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warden:agent/{}", self.name())
    }
}

/// A set of interfaces, as a bitmask: the call gate tests membership on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceSet(u16);

impl InterfaceSet {
    pub fn contains(self, interface: Interface) -> bool {
        self.0 & interface.bit() != 0
    }
    pub fn insert(&mut self, interface: Interface) {
        self.0 |= interface.bit();
    }
    pub fn is_superset(self, other: InterfaceSet) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn iter(self) -> impl Iterator<Item = Interface> {
        Interface::ALL
            .into_iter()
            .filter(move |i| self.contains(*i))
    }
}

/// Whether a run of the tier proceeds past PLAN on its own or waits for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Automatic,
    Required,
}

/// Everything the tier table says about one tier.
#[derive(Debug, Clone)]
pub struct TierPolicy {
    pub tier: Tier,
    pub name: String,
    pub interfaces: InterfaceSet,
    pub blackboard_write: bool,
    pub workspace_write: bool,
    /// Artifact names the tier may write.
    pub artifact_names: Vec<Pattern>,
    /// Secret paths the tier may read; `{agent}` is substituted per agent.
    pub secrets: Vec<Pattern>,
    pub llm_models: Vec<Pattern>,
    pub llm_token_budget: u64,
    pub approval: Approval,
    pub stops_after_plan: bool,
    pub phase_wall: Duration,
    pub phase_cpu: Duration,
    pub run_wall: Duration,
    pub memory_bytes: u64,
    pub table_elements: u64,
    pub instances: u32,
    pub secrets_ttl: Duration,
}

/// Table-wide defaults.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub lock_ttl: Duration,
    pub heartbeat_ttl: Duration,
    pub approval_timeout: Duration,
    pub output_cap_bytes: usize,
}

/// When compliant agents move up a tier.
#[derive(Debug, Clone)]
pub struct PromotionRules {
    pub consecutive_compliant: u32,
    /// Automatic promotion only moves agents into tiers below this one.
    pub auto_promote_below: Tier,
}

/// The validated tier table.
#[derive(Debug, Clone)]
pub struct TierTable {
    pub revision: String,
    pub defaults: Defaults,
    pub promotion: PromotionRules,
    tiers: [TierPolicy; 5],
    source: Option<PathBuf>,
}

/// A tier table that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read tier table `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tier table {origin} is not valid TOML for a tier table: {message}")]
    Syntax { origin: String, message: String },
    #[error("tier table {origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    revision: String,
    defaults: RawDefaults,
    promotion: RawPromotion,
    tiers: BTreeMap<String, RawTier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    lock_ttl_ms: u64,
    heartbeat_ttl_ms: u64,
    approval_timeout_ms: u64,
    output_cap_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromotion {
    consecutive_compliant: u32,
    auto_promote_below: Tier,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    interfaces: Vec<String>,
    blackboard_write: bool,
    workspace_write: bool,
    artifact_names: Vec<String>,
    secrets: Vec<String>,
    llm_models: Vec<String>,
    llm_token_budget: u64,
    approval: Approval,
    stops_after_plan: bool,
    phase_wall_ms: u64,
    phase_cpu_ms: u64,
    run_wall_ms: u64,
    memory_bytes: u64,
    table_elements: u64,
    instances: u32,
    secrets_ttl_s: u64,
}

impl TierTable {
    /// The table shipped with Warden (`policies/tiers.toml`).
    pub fn builtin() -> Result<TierTable, PolicyError> {
        TierTable::parse(BUILTIN_TIERS_TOML, "(built-in)".to_string())
    }

    /// Read and validate a tier table file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TierTable, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut table = TierTable::parse(&text, format!("`{}`", path.display()))?;
        table.source = Some(path.to_path_buf());
        Ok(table)
    }

    /// Validate a tier table given as TOML text.
    pub fn from_toml_str(text: &str) -> Result<TierTable, PolicyError> {
        TierTable::parse(text, "(inline)".to_string())
    }

    fn parse(text: &str, origin: String) -> Result<TierTable, PolicyError> {
        let raw: RawTable = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| PolicyError::Invalid {
            origin: origin.clone(),
            message,
        };
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
        let mut tiers = Vec::with_capacity(5);
        for tier in Tier::ALL {
            let code = tier.code();
            let raw_tier = raw.tiers.get(code).ok_or_else(|| {
                invalid(format!(
                    "missing `[tiers.{code}]`: every tier T0..T4 must be defined"
                ))
            })?;
            let mut interfaces = InterfaceSet::default();
            for name in &raw_tier.interfaces {
                let interface = Interface::from_name(name).ok_or_else(|| {
                    invalid(format!(
                        "`tiers.{code}.interfaces` names unknown interface `{name}`: expected one of {}",
                        Interface::ALL.map(Interface::name).join(", ")
                    ))
                })?;
                interfaces.insert(interface);
            }
            for (field, value) in [
                ("phase_wall_ms", raw_tier.phase_wall_ms),
                ("phase_cpu_ms", raw_tier.phase_cpu_ms),
                ("run_wall_ms", raw_tier.run_wall_ms),
                ("memory_bytes", raw_tier.memory_bytes),
                ("secrets_ttl_s", raw_tier.secrets_ttl_s),
            ] {
                if value == 0 {
                    return Err(invalid(format!(
                        "`tiers.{code}.{field}` must be greater than 0"
                    )));
                }
            }
            tiers.push(TierPolicy {
                tier,
                name: raw_tier.name.clone(),
                interfaces,
                blackboard_write: raw_tier.blackboard_write,
                workspace_write: raw_tier.workspace_write,
                artifact_names: raw_tier.artifact_names.iter().map(Pattern::new).collect(),
                secrets: raw_tier.secrets.iter().map(Pattern::new).collect(),
                llm_models: raw_tier.llm_models.iter().map(Pattern::new).collect(),
                llm_token_budget: raw_tier.llm_token_budget,
                approval: raw_tier.approval,
                stops_after_plan: raw_tier.stops_after_plan,
                phase_wall: Duration::from_millis(raw_tier.phase_wall_ms),
                phase_cpu: Duration::from_millis(raw_tier.phase_cpu_ms),
                run_wall: Duration::from_millis(raw_tier.run_wall_ms),
                memory_bytes: raw_tier.memory_bytes,
                table_elements: raw_tier.table_elements,
                instances: raw_tier.instances,
                secrets_ttl: Duration::from_secs(raw_tier.secrets_ttl_s),
            });
        }
        for pair in tiers.windows(2) {
            let (lower, upper) = (&pair[0], &pair[1]);
            if let Some(missing) = lower
                .interfaces
                .iter()
                .find(|i| !upper.interfaces.contains(*i))
            {
                return Err(invalid(format!(
                    "`tiers.{}` grants `{}` but `tiers.{}` does not: a higher tier must grant everything a lower tier does",
                    lower.tier.code(),
                    missing.name(),
                    upper.tier.code()
                )));
            }
            if (lower.blackboard_write && !upper.blackboard_write)
                || (lower.workspace_write && !upper.workspace_write)
            {
                return Err(invalid(format!(
                    "`tiers.{}` may write more than `tiers.{}`: a higher tier must grant everything a lower tier does",
                    lower.tier.code(),
                    upper.tier.code()
                )));
            }
        }
        if !tiers[0].interfaces.contains(Interface::Types) {
            return Err(invalid("`tiers.T0.interfaces` must include `types`".into()));
        }
        let [t0, t1, t2, t3, t4]: [TierPolicy; 5] = tiers
            .try_into()
            .map_err(|_| invalid("expected exactly five tiers".into()))?;
        Ok(TierTable {
            revision: raw.revision,
            defaults: Defaults {
                lock_ttl: Duration::from_millis(raw.defaults.lock_ttl_ms.max(1)),
                heartbeat_ttl: Duration::from_millis(raw.defaults.heartbeat_ttl_ms.max(1)),
                approval_timeout: Duration::from_millis(raw.defaults.approval_timeout_ms),
                output_cap_bytes: raw.defaults.output_cap_bytes,
            },
            promotion: PromotionRules {
                consecutive_compliant: raw.promotion.consecutive_compliant,
                auto_promote_below: raw.promotion.auto_promote_below,
            },
            tiers: [t0, t1, t2, t3, t4],
            source: None,
        })
    }

    /// The policy of one tier.
    pub fn policy(&self, tier: Tier) -> &TierPolicy {
        &self.tiers[tier as usize]
    }

    /// The lowest tier whose policy links `interface`.
    pub fn lowest_tier_granting(&self, interface: Interface) -> Option<Tier> {
        self.tiers
            .iter()
            .find(|p| p.interfaces.contains(interface))
            .map(|p| p.tier)
    }

    /// The lowest tier whose secret patterns admit `path` for `agent`.
    pub fn lowest_tier_reading_secret(&self, agent: &str, path: &str) -> Option<Tier> {
        self.tiers
            .iter()
            .find(|p| p.secrets.iter().any(|s| s.with_agent(agent).matches(path)))
            .map(|p| p.tier)
    }

    /// The file the table was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_valid_and_monotonic() {
        let table = TierTable::builtin().unwrap();
        assert_eq!(
            table.lowest_tier_granting(Interface::Secrets),
            Some(Tier::Executor)
        );
        assert_eq!(
            table.lowest_tier_granting(Interface::Tools),
            Some(Tier::Operator)
        );
        assert_eq!(
            table.lowest_tier_granting(Interface::Llm),
            Some(Tier::Observer)
        );
        assert_eq!(table.policy(Tier::Architect).approval, Approval::Required);
        assert!(table.policy(Tier::Observer).stops_after_plan);
        assert_eq!(
            table.lowest_tier_reading_secret("x", "t4/root-token"),
            Some(Tier::Architect)
        );
    }

    #[test]
    fn a_tier_granting_less_than_the_one_below_is_refused() {
        let text = BUILTIN_TIERS_TOML.replacen(
            "interfaces = [\"types\", \"ledger\", \"state\", \"artifacts\", \"llm\", \"blackboard\", \"messaging\", \"consensus\", \"tools\"]",
            "interfaces = [\"types\"]",
            1,
        );
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`tiers.T0` grants `ledger` but `tiers.T1` does not"),
            "{err}"
        );
    }

    #[test]
    fn unknown_interface_and_missing_tier_are_named() {
        let text = BUILTIN_TIERS_TOML.replacen("\"blackboard\"]", "\"telepathy\"]", 1);
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("unknown interface `telepathy`"), "{err}");

        let text = BUILTIN_TIERS_TOML.replace("[tiers.T4]", "[tiers.T9]");
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("unknown tier `[tiers.T9]`"), "{err}");

        let err = TierTable::from_toml_str("revision = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid TOML for a tier table"), "{err}");
    }
}
