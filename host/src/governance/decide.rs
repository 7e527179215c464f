//! The decision on a capability call, as a pure function: no I/O, no clock, no state.
//!
//! [`decide`] answers the questions every call shares, in this order: is the interface granted
//! to the tier, does the resource match the packet's `forbidden` (a procedure violation), is it
//! inside the packet's `scope`. A capability's own grant (a secret path, an artifact name, a
//! model) is its module's pure check, answering with the same [`CallRefusal`].

use crate::interface::Interface;
use crate::packet::Constraints;
use crate::pattern::first_match;
use crate::policy::TierTable;
use crate::tier::Tier;

/// Kinds of refusal, as written to the ledger's `violations.violation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViolationKind {
    /// Above the agent's tier.
    TierDenied,
    /// Outside the packet's `scope`.
    OutOfScope,
    /// Matches the packet's `forbidden`: a procedure violation.
    Forbidden,
    /// An attempt to leave the sandbox (path traversal): a procedure violation.
    PathEscape,
    /// Malformed input from the guest; counts as an error, not a violation row.
    Invalid,
    /// The task's LLM token budget is spent.
    TokenBudget,
    /// Not in this phase: an effect before the approval gate, a write to a sealed
    /// deliverable.
    PhaseDenied,
    /// A write to a record a capability owns (the blackboard's `consensus` section, the
    /// task's roster and settings): a forgery attempt, so a procedure violation.
    HostOwned,
    /// A vote on a proposal whose voters do not include the agent.
    NotAVoter,
    /// A write past one of the tier's quotas on what the host keeps (ledger notes per run,
    /// artifacts, state, blackboard, messages, returned text).
    QuotaExceeded,
    /// Past a tier limit on what an agent may hold on the host (workspace bytes or files,
    /// open descriptors).
    ResourceLimit,
    /// An HTTP request to a place the tier's `[tiers.Tn.http] allow` does not list.
    EgressDenied,
    /// An HTTP request that would reach a blocked network (loopback, private, link-local,
    /// metadata) no operator named: an attempt to leave the sandbox, a procedure violation.
    NetworkEscape,
    /// A placeholder of a secret bound to hosts, sent anywhere else (another host, a URL, a
    /// body, a tool argument, a message, an artifact, a prompt): a procedure violation.
    SecretLeak,
}

impl ViolationKind {
    /// The stable code in the ledger.
    pub fn code(self) -> &'static str {
        match self {
            ViolationKind::TierDenied => "TIER_DENIED",
            ViolationKind::OutOfScope => "OUT_OF_SCOPE",
            ViolationKind::Forbidden => "FORBIDDEN_ACTION",
            ViolationKind::PathEscape => "PATH_ESCAPE",
            ViolationKind::Invalid => "INVALID_ARGUMENT",
            ViolationKind::TokenBudget => "TOKEN_BUDGET_EXHAUSTED",
            ViolationKind::PhaseDenied => "PHASE_DENIED",
            ViolationKind::HostOwned => "HOST_OWNED_RECORD",
            ViolationKind::NotAVoter => "NOT_A_VOTER",
            ViolationKind::QuotaExceeded => "QUOTA_EXCEEDED",
            ViolationKind::ResourceLimit => "RESOURCE_LIMIT",
            ViolationKind::EgressDenied => "EGRESS_DENIED",
            ViolationKind::NetworkEscape => "NETWORK_ESCAPE",
            ViolationKind::SecretLeak => "SECRET_LEAK",
        }
    }

    /// Whether it counts as a procedure violation (`max_procedure_violations`).
    pub fn is_procedure(self) -> bool {
        matches!(
            self,
            ViolationKind::Forbidden
                | ViolationKind::PathEscape
                | ViolationKind::HostOwned
                | ViolationKind::NetworkEscape
                | ViolationKind::SecretLeak
        )
    }

    /// Whether it gets a `violations` row (malformed input only counts against the budget).
    pub fn is_violation(self) -> bool {
        !matches!(self, ViolationKind::Invalid)
    }
}

/// A refused call, before it is recorded: what kind, on which resource, and the message the
/// guest and the ledger get (what was refused, why, and what would allow it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallRefusal {
    pub kind: ViolationKind,
    pub resource: String,
    pub message: String,
}

impl CallRefusal {
    /// Malformed input: counted against the error budget, no violation row.
    pub fn invalid(resource: impl Into<String>, message: impl Into<String>) -> CallRefusal {
        CallRefusal {
            kind: ViolationKind::Invalid,
            resource: resource.into(),
            message: message.into(),
        }
    }

    /// Past a quota of the tier.
    pub fn over_quota(resource: impl Into<String>, message: impl Into<String>) -> CallRefusal {
        CallRefusal {
            kind: ViolationKind::QuotaExceeded,
            resource: resource.into(),
            message: message.into(),
        }
    }

    /// Above the agent's tier.
    pub fn tier_denied(resource: impl Into<String>, message: impl Into<String>) -> CallRefusal {
        CallRefusal {
            kind: ViolationKind::TierDenied,
            resource: resource.into(),
            message: message.into(),
        }
    }
}

/// The principal and action of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub tier: Tier,
    pub interface: Interface,
    /// The operation, as the ledger names it (`secrets.get`).
    pub op: &'static str,
}

/// Decide a call. `resource` names what the call touches (`secret:t3/db`); it is built only
/// when the packet has `scope` or `forbidden` patterns, so a packet without them costs the
/// hot path no allocation.
pub(crate) fn decide(
    tiers: &TierTable,
    constraints: &Constraints,
    request: &Request,
    resource: impl FnOnce() -> String,
) -> Result<(), CallRefusal> {
    let Request {
        tier,
        interface,
        op,
    } = *request;
    if !tiers.policy(tier).interfaces.contains(interface) {
        let lowest = tiers.lowest_tier_granting(interface);
        return Err(CallRefusal {
            kind: ViolationKind::TierDenied,
            resource: interface.to_string(),
            message: format!(
                "`{op}` refused: `{interface}` is not granted to tier {tier}; lowest tier granting it: {}",
                lowest.map_or("none".to_string(), |t| t.to_string())
            ),
        });
    }
    if constraints.forbidden.is_empty() && constraints.scope.is_empty() {
        return Ok(());
    }
    let resource = resource();
    if let Some(pattern) = first_match(&constraints.forbidden, &resource) {
        let message = format!(
            "`{op}` on `{resource}` refused: the packet forbids `{pattern}`; this is a procedure violation and no tier allows it"
        );
        return Err(CallRefusal {
            kind: ViolationKind::Forbidden,
            resource,
            message,
        });
    }
    if !constraints.scope.is_empty() && first_match(&constraints.scope, &resource).is_none() {
        let scope: Vec<&str> = constraints.scope.iter().map(|p| p.as_str()).collect();
        let message = format!(
            "`{op}` on `{resource}` refused: outside the packet's scope {scope:?}; a packet whose scope includes `{resource}` would allow it"
        );
        return Err(CallRefusal {
            kind: ViolationKind::OutOfScope,
            resource,
            message,
        });
    }
    Ok(())
}

/// Whether some call on `resource` (`tool:ls`, its arguments after a space) could be inside
/// the packet's scope. A listing touches nothing in particular, so the scope filters what it
/// names instead of refusing it. Over-approximates: a pattern with a wildcard after a prefix of
/// `resource` reaches it, so nothing reachable is ever hidden (the call itself is still
/// decided by [`decide`]).
pub(crate) fn scope_reaches(constraints: &Constraints, resource: &str) -> bool {
    constraints.scope.is_empty()
        || constraints.scope.iter().any(|pattern| {
            let source = pattern.as_str();
            let wildcard = source.find(['*', '?']);
            let literal = &source[..wildcard.unwrap_or(source.len())];
            pattern.matches(resource)
                || source
                    .strip_prefix(resource)
                    .is_some_and(|rest| rest.starts_with(' '))
                || (wildcard.is_some() && resource.starts_with(literal))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;

    #[test]
    fn a_listing_names_what_some_call_in_scope_could_reach() {
        let rows: &[(&[&str], &str, bool)] = &[
            (&[], "tool:ls", true),
            (&["tool:ls *"], "tool:ls", true),
            (&["tool:ls *"], "tool:lsblk", false),
            (&["tool:ls"], "tool:ls", true),
            (&["tool:l*"], "tool:ls", true),
            (&["tool:*"], "tool:deploy", true),
            (&["*"], "tool:deploy", true),
            (&["tool:ls-*"], "tool:ls", false),
            (&["state:*", "artifact:*"], "tool:ls", false),
            (&["tool:wc *", "tool:ls ?*"], "tool:ls", true),
        ];
        for &(scope, resource, expected) in rows {
            assert_eq!(
                scope_reaches(&constraints(scope, &[]), resource),
                expected,
                "{scope:?} {resource}"
            );
        }
    }

    fn constraints(scope: &[&str], forbidden: &[&str]) -> Constraints {
        Constraints {
            scope: scope.iter().map(|s| Pattern::new(*s)).collect(),
            forbidden: forbidden.iter().map(|s| Pattern::new(*s)).collect(),
            required_steps: Vec::new(),
        }
    }

    /// Tier, interface, resource, scope, forbidden → the kind refused.
    type Row<'a> = (
        Tier,
        Interface,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        Option<ViolationKind>,
    );

    /// One row per rule.
    #[test]
    fn decisions() {
        let tiers = TierTable::builtin().expect("built-in tier table");
        let none: &[&str] = &[];
        let rows: &[Row<'_>] = &[
            // The tier's grant.
            (
                Tier::Observer,
                Interface::State,
                "state:k",
                none,
                none,
                None,
            ),
            (
                Tier::Observer,
                Interface::Tools,
                "tool:ls",
                none,
                none,
                Some(ViolationKind::TierDenied),
            ),
            (
                Tier::Operator,
                Interface::Tools,
                "tool:ls",
                none,
                none,
                None,
            ),
            (
                Tier::Builder,
                Interface::Secrets,
                "secret:t3/x",
                none,
                none,
                Some(ViolationKind::TierDenied),
            ),
            (
                Tier::Executor,
                Interface::Secrets,
                "secret:t3/x",
                none,
                none,
                None,
            ),
            // The tier comes first: an ungranted interface is refused even when forbidden.
            (
                Tier::Observer,
                Interface::Tools,
                "tool:rm",
                none,
                &["tool:rm*"],
                Some(ViolationKind::TierDenied),
            ),
            // `forbidden` is a procedure violation, before `scope`.
            (
                Tier::Architect,
                Interface::Tools,
                "tool:rm -rf",
                &["tool:*"],
                &["tool:rm*"],
                Some(ViolationKind::Forbidden),
            ),
            (
                Tier::Operator,
                Interface::State,
                "state:k",
                &["artifact:*"],
                none,
                Some(ViolationKind::OutOfScope),
            ),
            (
                Tier::Operator,
                Interface::State,
                "state:k",
                &["state:*"],
                none,
                None,
            ),
            (
                Tier::Operator,
                Interface::State,
                "state:k",
                none,
                &["secret:*"],
                None,
            ),
        ];
        for &(tier, interface, resource, scope, forbidden, expected) in rows {
            let request = Request {
                tier,
                interface,
                op: "test.op",
            };
            let decision = decide(&tiers, &constraints(scope, forbidden), &request, || {
                resource.to_string()
            });
            assert_eq!(
                decision.as_ref().err().map(|r| r.kind),
                expected,
                "{tier} {interface} {resource} scope {scope:?} forbidden {forbidden:?}: {decision:?}"
            );
        }
    }

    #[test]
    fn refusals_say_what_would_allow_the_call() {
        let tiers = TierTable::builtin().expect("built-in tier table");
        let request = Request {
            tier: Tier::Builder,
            interface: Interface::Secrets,
            op: "secrets.get",
        };
        let refusal = decide(&tiers, &Constraints::default(), &request, String::new).unwrap_err();
        assert_eq!(
            refusal.message,
            "`secrets.get` refused: `warden:agent/secrets` is not granted to tier T2 (builder); lowest tier granting it: T3 (executor)"
        );
        assert_eq!(refusal.resource, "warden:agent/secrets");

        let request = Request {
            tier: Tier::Operator,
            interface: Interface::State,
            op: "state.get",
        };
        let refusal = decide(&tiers, &constraints(&["artifact:*"], &[]), &request, || {
            "state:k".into()
        })
        .unwrap_err();
        assert!(
            refusal
                .message
                .contains("a packet whose scope includes `state:k` would allow it"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn the_resource_is_built_only_when_patterns_need_it() {
        let tiers = TierTable::builtin().expect("built-in tier table");
        let request = Request {
            tier: Tier::Operator,
            interface: Interface::State,
            op: "state.get",
        };
        let decision = decide(&tiers, &Constraints::default(), &request, || {
            panic!("the resource was built for a packet without patterns")
        });
        assert_eq!(decision, Ok(()));
    }
}
