//! Human and JSON renderings of CLI results.

use serde::Serialize;
use serde_json::{Value, json};

use warden::ledger::{AgentRecord, LedgerRow, MetricsSnapshot, VerifyReport};
use warden::orchestrator::{TaskMetrics, TaskView};
use warden::packet::Revocation;
use warden::{ComponentSummary, Handoff, RunOutcome, RunReport};

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: cannot render JSON: {error}"),
    }
}

pub fn done(json: bool, human: &str, value: Value) {
    if json {
        print_json(&value);
    } else {
        println!("{human}");
    }
}

pub fn agent_registered(json: bool, record: &AgentRecord) {
    if json {
        print_json(record);
    } else {
        println!(
            "agent `{}` registered at {} bound to {}",
            record.agent_id,
            record.tier,
            record
                .component_digest
                .as_deref()
                .unwrap_or("no component yet (the first run binds one)")
        );
    }
}

pub fn agent_list(json: bool, rows: &[(AgentRecord, Option<MetricsSnapshot>, Option<Revocation>)]) {
    if json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(agent, metrics, revoked)| {
                json!({
                    "agent": agent,
                    "metrics": metrics,
                    "revoked": revoked,
                })
            })
            .collect();
        print_json(&rows);
        return;
    }
    if rows.is_empty() {
        println!(
            "no agents registered; `warden agents register <id> --tier <T> --component <file>`"
        );
        return;
    }
    println!(
        "{:<24} {:<15} {:>5} {:>9} {:>6}  {:<10} component",
        "agent", "tier", "runs", "compliant", "streak", "status"
    );
    for (agent, metrics, revoked) in rows {
        let (runs, compliant, streak) = metrics.as_ref().map_or((0, 0, 0), |m| {
            (m.total_runs, m.compliant_runs, m.consecutive_compliant)
        });
        let digest = agent.component_digest.as_deref().unwrap_or("-");
        println!(
            "{:<24} {:<15} {:>5} {:>9} {:>6}  {:<10} {}",
            agent.agent_id,
            agent.tier.to_string(),
            runs,
            compliant,
            streak,
            if revoked.is_some() {
                "revoked"
            } else {
                "active"
            },
            &digest[..digest.len().min(19)]
        );
    }
}

pub fn agent_show(
    json: bool,
    agent: &AgentRecord,
    metrics: Option<&MetricsSnapshot>,
    revocation: Option<&Revocation>,
    lock: Option<&str>,
) {
    if json {
        print_json(
            &json!({ "agent": agent, "metrics": metrics, "revocation": revocation, "lock_owner": lock }),
        );
        return;
    }
    println!("agent      {}", agent.agent_id);
    println!("tier       {}", agent.tier);
    println!(
        "component  {}",
        agent.component_digest.as_deref().unwrap_or("-")
    );
    println!(
        "registered {} (updated {})",
        agent.registered_at, agent.updated_at
    );
    if let Some(m) = metrics {
        println!(
            "runs       {} total, {} compliant, {} in a row; last active {}",
            m.total_runs, m.compliant_runs, m.consecutive_compliant, m.last_active_at
        );
    }
    match revocation {
        Some(r) => println!(
            "status     REVOKED at {} by {}: {} — {}",
            r.revoked_at, r.revoked_by, r.reason.kind, r.reason.details
        ),
        None => println!("status     active"),
    }
    if let Some(owner) = lock {
        println!("lock       held by {owner}");
    }
}

pub fn run_report(json: bool, report: &RunReport) {
    if json {
        print_json(report);
        return;
    }
    println!(
        "agent `{}` ({}) · task `{}` · {}",
        report.agent_id, report.tier, report.task_id, report.component_digest
    );
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| format!("{} {:.1}ms", p.phase.as_str(), p.elapsed_ms))
        .collect();
    println!("  phases     {}", phases.join(" → "));
    if let Some(plan) = &report.plan_summary {
        println!("  plan       {plan}");
        for step in &report.plan_steps {
            println!("             - {step}");
        }
    }
    for artifact in &report.artifacts {
        println!(
            "  artifact   {:<24} {} bytes  {}  by {}",
            artifact.name,
            artifact.size,
            &artifact.digest[..artifact.digest.len().min(19)],
            artifact.author
        );
    }
    for finding in &report.verification_findings {
        println!("  finding    {finding}");
    }
    if let Some(summary) = &report.report_summary {
        println!("  report     {summary}");
    }
    println!(
        "  budget     {} errors, {} procedure violations (worst repeat {})",
        report.budget.total_errors,
        report.budget.procedure_violations,
        report.budget.max_same_error
    );
    if let Some(tier) = report.promoted_to {
        println!("  promoted   to {tier}");
    }
    match &report.outcome {
        RunOutcome::Completed => println!(
            "  outcome    completed in {:.1} ms{}",
            report.duration_ms,
            if report.compliant { " (compliant)" } else { "" }
        ),
        RunOutcome::PlanOnly => println!(
            "  outcome    plan only (tier stops after PLAN) in {:.1} ms",
            report.duration_ms
        ),
        RunOutcome::Revoked { reason, details } => {
            println!("  outcome    REVOKED ({reason}): {details}")
        }
        RunOutcome::Failed { code, message } => println!("  outcome    FAILED ({code}): {message}"),
    }
}

pub fn ledger_rows(json: bool, rows: &[LedgerRow]) {
    if json {
        print_json(&rows);
        return;
    }
    for row in rows {
        println!("{}", row.one_line());
    }
}

pub fn verify_report(json: bool, report: &VerifyReport) {
    if json {
        print_json(report);
        return;
    }
    match &report.broken {
        None => println!(
            "ledger intact: {} rows, chain head {}",
            report.rows, report.head
        ),
        Some(broken) => println!("LEDGER TAMPERED: {broken}"),
    }
}

pub fn handoff(json: bool, handoff: &Handoff) {
    if json {
        print_json(handoff);
        return;
    }
    println!("task               {}", handoff.task_id);
    println!(
        "previous agent     {} (revoked: {})",
        handoff.previous_agent_id, handoff.revoked
    );
    println!(
        "reason             {}: {}",
        handoff.revocation_reason.kind, handoff.revocation_reason.details
    );
    println!(
        "last known state   {} / {}",
        handoff.last_known_state.phase, handoff.last_known_state.step
    );
    println!("blocking issue     {}", handoff.blocking_issue);
    for tried in &handoff.what_was_tried {
        println!("tried              {tried}");
    }
    for next in &handoff.required_next_actions {
        println!("next               {next}");
    }
    for reminder in &handoff.constraints_reminder {
        println!("constraint         {reminder}");
    }
    println!("artifacts          {}", handoff.artifacts.join(", "));
}

pub fn compile_summary(json: bool, summary: &ComponentSummary) {
    if json {
        print_json(summary);
        return;
    }
    println!("digest       {}", summary.digest);
    println!(
        "imports      {}",
        if summary.imports.is_empty() {
            "-".to_string()
        } else {
            summary.imports.join(", ")
        }
    );
    println!("wasi         {}", summary.wasi.len());
    if !summary.unknown.is_empty() {
        println!(
            "unknown      {} (refused at load)",
            summary.unknown.join(", ")
        );
    }
    println!(
        "lowest tier  {}",
        summary.lowest_tier.map_or(
            "none: the component cannot run at any tier".to_string(),
            |t| t.to_string()
        )
    );
    if let Some(path) = &summary.cached {
        println!("cached       {}", path.display());
    }
}

pub fn health(json: bool, report: &warden::health::HealthReport) {
    if json {
        print_json(report);
        return;
    }
    for check in &report.checks {
        let breaker = check
            .breaker
            .as_ref()
            .map_or_else(|| "-".to_string(), |b| format!("breaker {b}"));
        println!(
            "{:<8} {:<18} {:<4} {:>8.1} ms  {:<28} {}",
            check.component,
            check.backend,
            if check.healthy { "ok" } else { "DOWN" },
            check.latency_ms,
            breaker,
            check.detail
        );
    }
}

pub fn task_metrics(json: bool, metrics: &TaskMetrics) {
    if json {
        print_json(metrics);
        return;
    }
    println!("task `{}` · {}", metrics.task_id, metrics.objective);
    for agent in &metrics.agents {
        let role = if agent.mediator { "mediator" } else { "agent" };
        let detail = if agent.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", agent.detail)
        };
        println!(
            "  {role:<9} {:<12} {} in {:.1} ms{detail}",
            agent.agent_id, agent.status, agent.duration_ms
        );
    }
    let mediator = match &metrics.mediator {
        Some(spawn) => format!(
            "{} spawned at {:.0} ms on {}: {}",
            spawn.agent, spawn.after_ms, spawn.reason, spawn.detail
        ),
        None => "not spawned".to_string(),
    };
    let consensus = &metrics.consensus;
    let result = format!(
        "{} ({} proposals, {} reached, {} settled by mediation, {} in conflict)",
        metrics.consensus_result,
        consensus.proposals,
        consensus.reached.len(),
        consensus.resolved,
        consensus.in_conflict
    );
    let rows = [
        ("duration", format!("{:.1} s", metrics.duration_ms / 1e3)),
        ("messages", metrics.messages.to_string()),
        ("blackboard ops", metrics.blackboard_ops.to_string()),
        ("llm calls", metrics.llm_calls.to_string()),
        (
            "proposals / votes",
            format!("{} / {}", metrics.proposals, metrics.votes),
        ),
        ("mediator", mediator),
        ("consensus", result),
        (
            "final decision",
            consensus
                .final_decision
                .clone()
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "outcome",
            if metrics.success { "success" } else { "FAILED" }.to_string(),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("  ┌{}┬{}", "─".repeat(width + 2), "─".repeat(40));
    for (key, value) in rows {
        println!("  │ {key:<width$} │ {value}");
    }
    println!("  └{}┴{}", "─".repeat(width + 2), "─".repeat(40));
}

pub fn task_view(json: bool, view: &TaskView) {
    if json {
        print_json(view);
        return;
    }
    println!("task `{}`", view.task_id);
    for (section, entries) in &view.blackboard {
        println!("  blackboard/{section} ({} entries)", entries.len());
        for (key, value) in entries {
            let first_line = value.lines().next().unwrap_or("");
            let more = if value.lines().nth(1).is_some() {
                " …"
            } else {
                ""
            };
            println!("    {key:<20} {}{more}", truncate(first_line, 90));
        }
    }
    println!("  proposals ({})", view.proposals.len());
    for p in &view.proposals {
        let t = &p.tally;
        let status = if let Some(r) = &p.proposal.record.resolution {
            format!("settled by {}: {}", r.by, r.note)
        } else if t.reached {
            "consensus reached".to_string()
        } else if p.in_conflict {
            "IN CONFLICT".to_string()
        } else {
            format!("open, waiting for {}", t.missing.join(", "))
        };
        println!(
            "    {:<4} {:<40} by {:<8} {} accept / {} reject / {} abstain · {status}",
            p.proposal.record.id,
            truncate(&p.proposal.record.title, 40),
            p.proposal.record.proposer,
            t.accepts,
            t.rejects,
            t.abstains
        );
        for vote in &p.proposal.votes {
            println!(
                "           {} {}: {}",
                vote.agent,
                vote.choice.as_str(),
                truncate(&vote.reasoning, 80)
            );
        }
    }
    println!("  messages ({})", view.messages.len());
    for m in &view.messages {
        println!(
            "    #{:<3} {} → {} [{}] {}",
            m.id,
            m.sender,
            m.recipient.as_deref().unwrap_or("all"),
            m.kind,
            truncate(m.body.lines().next().unwrap_or(""), 80)
        );
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
