//! Trust tiers: T0 observer … T4 architect.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An agent's trust tier. Higher tiers may do everything lower tiers may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Tier {
    /// T0: reads, plans; runs PLAN only.
    Observer = 0,
    /// T1: blackboard writes, messaging, check-mode tools.
    Operator = 1,
    /// T2: workspace writes, tools up to T2.
    Builder = 2,
    /// T3: secrets, tools up to T3.
    Executor = 3,
    /// T4: governance; every run needs approval.
    Architect = 4,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Observer,
        Tier::Operator,
        Tier::Builder,
        Tier::Executor,
        Tier::Architect,
    ];

    /// The tier's number, 0 ..= 4.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The tier with the given number.
    pub fn from_level(level: u8) -> Option<Tier> {
        Tier::ALL.get(usize::from(level)).copied()
    }

    /// `T0` … `T4`.
    pub fn code(self) -> &'static str {
        ["T0", "T1", "T2", "T3", "T4"][self as usize]
    }

    /// `observer` … `architect`.
    pub fn name(self) -> &'static str {
        ["observer", "operator", "builder", "executor", "architect"][self as usize]
    }

    /// The next tier up, if any.
    pub fn next(self) -> Option<Tier> {
        Tier::from_level(self.level() + 1)
    }

    /// The next tier down, if any.
    pub fn previous(self) -> Option<Tier> {
        self.level().checked_sub(1).and_then(Tier::from_level)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

/// A string that is not a tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown tier `{0}`: expected one of T0..T4, 0..4, or observer, operator, builder, executor, architect"
)]
pub struct ParseTierError(pub String);

impl FromStr for Tier {
    type Err = ParseTierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let found = Tier::ALL.into_iter().find(|tier| {
            lower == tier.name()
                || lower == tier.code().to_ascii_lowercase()
                || lower == tier.level().to_string()
        });
        found.ok_or_else(|| ParseTierError(s.to_string()))
    }
}

impl TryFrom<String> for Tier {
    type Error = ParseTierError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Tier> for String {
    fn from(tier: Tier) -> String {
        tier.code().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codes_names_and_levels() {
        assert_eq!("T3".parse::<Tier>(), Ok(Tier::Executor));
        assert_eq!("architect".parse::<Tier>(), Ok(Tier::Architect));
        assert_eq!("0".parse::<Tier>(), Ok(Tier::Observer));
        assert!("T5".parse::<Tier>().is_err());
        assert_eq!(Tier::Builder.next(), Some(Tier::Executor));
        assert_eq!(Tier::Architect.next(), None);
    }
}
