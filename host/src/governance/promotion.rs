//! The promotion engine: whether an agent's tier changes at the end of a run. A pure function
//! of the rules (`[promotion]`) and what the ledger says of the agent ([`Facts`]); the driver
//! gathers the facts and carries the change out (a `promotions` row naming the rule, an
//! `agent.tier_change` row with its evidence, the secrets identity following).

use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::policy::PromotionRules;
use crate::tier::Tier;

/// What the ledger says of an agent at the end of one of its runs.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// Its tier now.
    pub tier: Tier,
    /// The run that just ended was compliant.
    pub compliant: bool,
    /// The run ended in a revocation (which stands; no tier change on top of it).
    pub revoked: bool,
    /// Compliant runs in a row, this one included.
    pub consecutive_compliant: u64,
    /// The latest of those runs, newest first (the evidence of a promotion).
    pub compliant_runs: Vec<String>,
    /// Time since its last tier change (not its registration); `None` if it never changed.
    pub since_last_change: Option<Duration>,
    /// Its violations since the later of its last tier change and the start of the
    /// demotion window: `(run id, violation type)`, oldest first.
    pub violations: Vec<(String, String)>,
}

/// What happens to the agent's tier.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Nothing.
    Stay,
    /// Up one tier, by rule `rule`, with `evidence`.
    Promote {
        to: Tier,
        rule: &'static str,
        evidence: Json,
    },
    /// Eligible for `to`, which a person must grant (`warden agents promote`).
    NeedsHuman { to: Tier, why: String },
    /// Eligible for `to` once the cool-down is over.
    CoolingDown { to: Tier, left: Duration },
    /// Down one tier, by rule `rule`, with `evidence`.
    Demote {
        to: Tier,
        rule: &'static str,
        evidence: Json,
    },
}

/// The tier change `rules` make of `facts`. A demotion is checked first and is not held by
/// the cool-down: losing trust is never delayed.
pub(crate) fn decide(rules: &PromotionRules, facts: &Facts) -> Change {
    if facts.revoked {
        return Change::Stay;
    }
    let threshold = rules.demote_after_violations;
    if threshold > 0
        && facts.violations.len() >= threshold as usize
        && let Some(to) = facts.tier.previous()
    {
        let mut runs: Vec<&str> = facts.violations.iter().map(|(r, _)| r.as_str()).collect();
        runs.dedup();
        return Change::Demote {
            to,
            rule: "demote_after_violations",
            evidence: json!({
                "rule": "demote_after_violations",
                "violations": facts.violations.len(),
                "threshold": threshold,
                "window": crate::duration::format(rules.demotion_window),
                "kinds": facts.violations.iter().map(|(_, k)| k).collect::<Vec<_>>(),
                "runs": runs,
            }),
        };
    }
    if !facts.compliant || facts.consecutive_compliant < u64::from(rules.consecutive_compliant) {
        return Change::Stay;
    }
    let Some(to) = facts.tier.next() else {
        return Change::Stay;
    };
    if to >= rules.auto_promote_below {
        return Change::NeedsHuman {
            to,
            why: format!(
                "automatic promotion stops below {} (`auto_promote_below`)",
                rules.auto_promote_below
            ),
        };
    }
    if rules.require_human.contains(&to) {
        return Change::NeedsHuman {
            to,
            why: format!("a promotion into {to} needs a person (`require_human`)"),
        };
    }
    if let Some(since) = facts.since_last_change
        && since < rules.cooldown
    {
        return Change::CoolingDown {
            to,
            left: rules.cooldown - since,
        };
    }
    Change::Promote {
        to,
        rule: "consecutive_compliant",
        evidence: json!({
            "rule": "consecutive_compliant",
            "consecutive_compliant": facts.consecutive_compliant,
            "threshold": rules.consecutive_compliant,
            "runs": facts.compliant_runs,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PromotionRules {
        PromotionRules {
            consecutive_compliant: 3,
            auto_promote_below: Tier::Executor,
            require_human: vec![Tier::Builder],
            cooldown: Duration::from_secs(3600),
            demote_after_violations: 2,
            demotion_window: Duration::from_secs(86400),
        }
    }

    fn base() -> Facts {
        Facts {
            tier: Tier::Observer,
            compliant: false,
            revoked: false,
            consecutive_compliant: 0,
            compliant_runs: Vec::new(),
            since_last_change: None,
            violations: Vec::new(),
        }
    }

    fn facts(tier: Tier, consecutive: u64) -> Facts {
        Facts {
            tier,
            compliant: true,
            consecutive_compliant: consecutive,
            compliant_runs: vec!["run-3".into(), "run-2".into(), "run-1".into()],
            ..base()
        }
    }

    #[test]
    fn compliance_promotes_with_its_evidence_unless_a_rule_holds_it() {
        let r = rules();
        assert_eq!(decide(&r, &facts(Tier::Observer, 2)), Change::Stay);
        match decide(&r, &facts(Tier::Observer, 3)) {
            Change::Promote { to, rule, evidence } => {
                assert_eq!((to, rule), (Tier::Operator, "consecutive_compliant"));
                assert_eq!(evidence["runs"], json!(["run-3", "run-2", "run-1"]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&r, &facts(Tier::Operator, 3)),
            Change::NeedsHuman { to: Tier::Builder, why } if why.contains("require_human")
        ));
        assert!(matches!(
            decide(&r, &facts(Tier::Builder, 3)),
            Change::NeedsHuman { to: Tier::Executor, why } if why.contains("auto_promote_below")
        ));
        let cooling = Facts {
            since_last_change: Some(Duration::from_secs(600)),
            ..facts(Tier::Observer, 9)
        };
        assert_eq!(
            decide(&r, &cooling),
            Change::CoolingDown {
                to: Tier::Operator,
                left: Duration::from_secs(3000)
            }
        );
        let cooled = Facts {
            since_last_change: Some(Duration::from_secs(3600)),
            ..facts(Tier::Observer, 9)
        };
        assert!(matches!(decide(&r, &cooled), Change::Promote { .. }));
        let top = facts(Tier::Architect, 9);
        assert_eq!(decide(&r, &top), Change::Stay);
    }

    #[test]
    fn violations_demote_one_tier_at_once_and_a_revocation_changes_nothing() {
        let r = rules();
        let violating = Facts {
            tier: Tier::Builder,
            compliant: false,
            since_last_change: Some(Duration::from_secs(1)),
            violations: vec![
                ("run-1".into(), "scope_violation".into()),
                ("run-1".into(), "forbidden".into()),
            ],
            ..base()
        };
        match decide(&r, &violating) {
            Change::Demote { to, rule, evidence } => {
                assert_eq!((to, rule), (Tier::Operator, "demote_after_violations"));
                assert_eq!(evidence["runs"], json!(["run-1"]));
                assert_eq!(evidence["violations"], 2);
            }
            other => panic!("the cool-down does not hold a demotion: {other:?}"),
        }
        let once = Facts {
            violations: vec![("run-1".into(), "forbidden".into())],
            ..violating.clone()
        };
        assert_eq!(decide(&r, &once), Change::Stay);
        let revoked = Facts {
            revoked: true,
            ..violating.clone()
        };
        assert_eq!(decide(&r, &revoked), Change::Stay);
        let floor = Facts {
            tier: Tier::Observer,
            ..violating
        };
        assert_eq!(decide(&r, &floor), Change::Stay, "T0 has no lower tier");
        let off = PromotionRules {
            demote_after_violations: 0,
            ..rules()
        };
        assert_eq!(decide(&off, &floor), Change::Stay);
    }
}
