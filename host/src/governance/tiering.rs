//! The side effects of the promotion engine: reading an agent's facts from the ledger, and
//! carrying a tier change out. The decision itself is `promotion::decide`.

use std::time::SystemTime;

use serde_json::Value as Json;

use super::promotion::Facts;
use crate::context::Services;
use crate::error::Error;
use crate::ledger::{LedgerQuery, RunFilter, Table};
use crate::tier::Tier;

/// What the promotion rules look at, for `agent` after a run at `tier`.
pub(crate) fn promotion_facts(
    services: &Services,
    agent: &str,
    (tier, compliant, revoked): (Tier, bool, bool),
    consecutive_compliant: u64,
) -> Result<Facts, Error> {
    let rules = &services.tiers.promotion;
    let ledger = &services.ledger;
    // The last change of tier (a registration is not one).
    let last_change = ledger
        .query(&LedgerQuery {
            table: Some(Table::Promotions),
            agent_id: Some(agent.to_string()),
            descending: true,
            limit: Some(20),
            ..LedgerQuery::default()
        })?
        .into_iter()
        .find(|row| row.fields.get("from_tier").is_some_and(|t| !t.is_null()))
        .and_then(|row| humantime::parse_rfc3339_weak(&row.timestamp).ok());
    let now = SystemTime::now();
    let since_last_change = last_change.map(|at| now.duration_since(at).unwrap_or_default());
    let window_start = now
        .checked_sub(rules.demotion_window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let from = last_change.map_or(window_start, |at| at.max(window_start));
    let violations = if !compliant && rules.demote_after_violations > 0 {
        ledger
            .query(&LedgerQuery {
                table: Some(Table::Violations),
                agent_id: Some(agent.to_string()),
                since: Some(humantime::format_rfc3339_millis(from).to_string()),
                limit: Some(1000),
                ..LedgerQuery::default()
            })?
            .into_iter()
            .map(|row| {
                let run = row
                    .fields
                    .get("run_id")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string();
                (run, row.kind)
            })
            .collect()
    } else {
        Vec::new()
    };
    let compliant_runs = if compliant {
        let wanted = usize::try_from(consecutive_compliant.min(20)).unwrap_or(20);
        ledger
            .runs(&RunFilter {
                agent: Some(agent.to_string()),
                status: Some("completed".into()),
                limit: wanted.max(1),
                ..RunFilter::default()
            })?
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Facts {
        tier,
        compliant,
        revoked,
        consecutive_compliant,
        compliant_runs,
        since_last_change,
        violations,
    })
}

/// Carry out a tier change the rules decided: the `promotions` row names the rule and its
/// evidence in words, an `agent.tier_change` action row holds the evidence as JSON, and the
/// agent's secrets identity follows (a backend that cannot be reached binds it at the next
/// login).
pub(crate) async fn change_tier(
    services: &Services,
    agent: &str,
    (from, to): (Tier, Tier),
    rule: &str,
    evidence: &Json,
) -> Result<(), Error> {
    let reason = match rule {
        "demote_after_violations" => format!(
            "rule `{rule}`: {} violations within {} (runs {})",
            evidence["violations"],
            evidence["window"].as_str().unwrap_or_default(),
            join(&evidence["runs"])
        ),
        _ => format!(
            "rule `{rule}`: {} consecutive compliant runs (runs {})",
            evidence["consecutive_compliant"],
            join(&evidence["runs"])
        ),
    };
    services.ledger.set_tier(agent, to, &reason, "host")?;
    let subject = super::host_subject(services, agent, to, None, None);
    let row = crate::ledger::ActionRecord::new(
        subject,
        "agent.tier_change",
        format!("{} → {} by rule `{rule}`", from.code(), to.code()),
    )
    .details(evidence.to_string());
    services
        .ledger_durable(crate::ledger::Entry::Action(row))
        .await?;
    let ttl = services.tiers.policy(to).secrets_ttl;
    if let Err(error) = services.secrets.bind_agent(agent, to, ttl).await {
        tracing::warn!(agent, %to, %error, "tier changed; the secrets identity follows at the agent's next login");
    }
    Ok(())
}

fn join(runs: &Json) -> String {
    runs.as_array()
        .map(|r| {
            r.iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
