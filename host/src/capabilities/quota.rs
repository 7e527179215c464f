//! What the capabilities share about quotas: the refusal of a write past one (its message
//! names what was refused, what the scope would hold, the limit and the tier-table key an
//! operator raises), and the rule that a higher tier's quota is at least the lower one's.

use crate::governance::CallRefusal;
use crate::policy::TierPolicy;
use crate::state::{Bound, OverQuota};

/// One quota of a tier-table section: the section and the keys of its two bounds, and what
/// the entries are called in messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotaKeys {
    /// The capability section (`state`), or `None` for a key of the tier itself.
    pub section: Option<&'static str>,
    /// The key bounding the entries (`max_keys`), with what they are (`keys`).
    pub entries: (&'static str, &'static str),
    /// The key bounding the bytes (`max_bytes`), with what they are (`bytes`).
    pub bytes: (&'static str, &'static str),
}

impl QuotaKeys {
    /// `[tiers.T1.state] max_keys`, or `[tiers.T1] max_text_bytes` for a key of the tier.
    pub fn key(&self, policy: &TierPolicy, bound: Bound) -> String {
        let key = match bound {
            Bound::Entries => self.entries.0,
            Bound::Bytes => self.bytes.0,
        };
        match self.section {
            Some(section) => format!("[tiers.{}.{section}] {key}", policy.tier.code()),
            None => format!("[tiers.{}] {key}", policy.tier.code()),
        }
    }
}

/// The refusal of a write that `over` says would take `scope` past the tier's quota.
/// `refused` names the call and its target (``"`state.set` of `k`"``), `scope` what the quota
/// bounds (``"agent `a`'s state"``), `remedy` what the agent itself could do first, if
/// anything (`"delete keys it no longer needs"`).
pub(crate) fn refusal(
    policy: &TierPolicy,
    keys: QuotaKeys,
    resource: String,
    refused: &str,
    scope: &str,
    over: OverQuota,
    remedy: Option<&str>,
) -> CallRefusal {
    let unit = match over.bound {
        Bound::Entries => keys.entries.1,
        Bound::Bytes => keys.bytes.1,
    };
    let key = keys.key(policy, over.bound);
    let name = key.rsplit(' ').next().unwrap_or(&key);
    let remedy = remedy.map_or_else(String::new, |r| format!("{r}, or "));
    CallRefusal::over_quota(
        resource,
        format!(
            "{refused} refused: {scope} would hold {} {unit} (it holds {}), over the quota of {} of tier {} (`{key}`); {remedy}an operator raises `{name}` in the tier table to allow more",
            over.requested, over.used, over.limit, policy.tier
        ),
    )
}

/// A higher tier's quota `key` must be at least the lower tier's: `upper` may do everything
/// `lower` may.
pub(crate) fn covers(key: &str, upper: u64, lower: u64) -> Result<(), String> {
    if upper < lower {
        return Err(format!(
            "its `{key}` of {upper} is below the tier below's {lower}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TierTable;
    use crate::tier::Tier;

    #[test]
    fn a_refusal_names_the_scope_the_limit_and_the_key() {
        let tiers = TierTable::builtin().unwrap();
        let keys = QuotaKeys {
            section: Some("state"),
            entries: ("max_keys", "keys"),
            bytes: ("max_bytes", "bytes"),
        };
        let over = OverQuota {
            bound: Bound::Entries,
            limit: 10,
            used: 10,
            requested: 11,
        };
        let refusal = refusal(
            tiers.policy(Tier::Operator),
            keys,
            "state:k".into(),
            "`state.set` of `k`",
            "agent `a`'s state",
            over,
            Some("delete keys it no longer needs"),
        );
        assert_eq!(refusal.kind.code(), "QUOTA_EXCEEDED");
        assert_eq!(
            refusal.message,
            "`state.set` of `k` refused: agent `a`'s state would hold 11 keys (it holds 10), over the quota of 10 of tier T1 (operator) (`[tiers.T1.state] max_keys`); delete keys it no longer needs, or an operator raises `max_keys` in the tier table to allow more"
        );
        assert_eq!(
            QuotaKeys {
                section: None,
                entries: ("max_text_bytes", "bytes"),
                bytes: ("max_text_bytes", "bytes")
            }
            .key(tiers.policy(Tier::Builder), Bound::Bytes),
            "[tiers.T2] max_text_bytes"
        );
        assert!(covers("max_keys", 5, 10).is_err());
        assert!(covers("max_keys", 10, 10).is_ok());
    }
}
