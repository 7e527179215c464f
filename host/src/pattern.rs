//! Glob patterns over resource strings (`tool:deploy-prod*`, `secret:t3/*`, `artifact:*.md`).
//!
//! `*` matches any run of characters (including `/`), `?` exactly one; everything else is
//! literal. Patterns are anchored at both ends. Kept deliberately small: operators write
//! these in packets and tier tables, and a surprising match is a security bug.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct Pattern {
    source: String,
    /// True when the pattern has no wildcard, so matching is a string compare.
    literal: bool,
}

impl Pattern {
    /// Compile `source`; every string is a valid pattern.
    pub fn new(source: impl Into<String>) -> Pattern {
        let source = source.into();
        let literal = !source.contains(['*', '?']);
        Pattern { source, literal }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Replace `{agent}` with the agent id (used for per-agent secret paths).
    pub fn with_agent(&self, agent: &str) -> Pattern {
        Pattern::new(self.source.replace("{agent}", agent))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return self.source == text;
        }
        glob_match(self.source.as_bytes(), text.as_bytes())
    }
}

/// Iterative glob matcher with single-star backtracking: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl From<String> for Pattern {
    fn from(source: String) -> Self {
        Pattern::new(source)
    }
}

impl From<&str> for Pattern {
    fn from(source: &str) -> Self {
        Pattern::new(source)
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> String {
        pattern.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The first pattern in `patterns` that matches `text`.
pub fn first_match<'a>(patterns: &'a [Pattern], text: &str) -> Option<&'a Pattern> {
    patterns.iter().find(|pattern| pattern.matches(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_strings() {
        let p = Pattern::new("tool:deploy-prod*");
        assert!(p.matches("tool:deploy-prod"));
        assert!(p.matches("tool:deploy-prod --force"));
        assert!(!p.matches("tool:deploy-staging"));
        assert!(!p.matches("xtool:deploy-prod"));
        assert!(Pattern::new("secret:t3/*").matches("secret:t3/db/password"));
        assert!(Pattern::new("a?c").matches("abc"));
        assert!(!Pattern::new("a?c").matches("ac"));
        assert!(Pattern::new("*.md").matches("plan.md"));
        assert!(Pattern::new("*a*b*").matches("xxaxxbxx"));
        assert!(!Pattern::new("*a*b").matches("xxaxxbxxc"));
        assert!(Pattern::new("*").matches(""));
        assert!(Pattern::new("exact").matches("exact"));
        assert!(!Pattern::new("exact").matches("exactly"));
    }

    #[test]
    fn agent_placeholder_is_substituted() {
        let p = Pattern::new("agents/{agent}/*").with_agent("planner");
        assert!(p.matches("agents/planner/key"));
        assert!(!p.matches("agents/other/key"));
    }
}
