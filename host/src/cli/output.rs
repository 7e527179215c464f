//! Human and JSON renderings of CLI results.
//!
//! Human output goes through [`say!`], which escapes control characters, line breaks and
//! bidirectional overrides, so nothing an agent wrote (a plan, a note, a message, an error)
//! can fake a line or rewrite the operator's terminal. `--json` is printed exactly.

use serde::Serialize;
use serde_json::{Value, json};

use warden::ledger::{AgentRecord, LedgerRow, MetricsSnapshot, RunRow, VerifyReport};
use warden::orchestrator::{TaskMetrics, TaskView};
use warden::packet::Revocation;
use warden::replay::ReplayReport;
use warden::signing::{Keyring, Verdict};
use warden::{ComponentSummary, Handoff, RunOutcome, RunReport};

/// `println!` for human output: the formatted line with [`escape`] applied.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(&escape(&format!($($arg)*)))
    };
}

/// Set once stdout's reader went away (`warden ledger query | head -1`).
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One line to stdout. When the reader has closed the pipe, this and every later line are
/// dropped: the command still finishes (its rows committed, its exit code its own) instead of
/// panicking on `EPIPE` as `println!` does.
pub fn emit(line: &str) {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if written.is_err() {
        // A closed pipe, a full disk behind a redirect: nothing more can be shown there.
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `text` with every character that could move the cursor, break a line, switch the
/// terminal's state or reorder what is shown replaced by its escape (`\n`, `\u{1b}`).
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => emit(&text),
        Err(error) => eprintln!("error: cannot render JSON: {error}"),
    }
}

/// A signature verdict as JSON: `status` (`signed`, `unsigned`, `invalid`), the signers with
/// their key fingerprints, or why it is invalid.
fn signature_json(verdict: &Verdict, keyring: &Keyring) -> Value {
    match verdict {
        Verdict::Signed(names) => {
            let signers: Vec<Value> = names
                .iter()
                .map(|n| json!({ "name": n, "key": keyring.get(n).map(|k| &k.fingerprint) }))
                .collect();
            json!({ "status": "signed", "signers": signers })
        }
        Verdict::Unsigned => json!({ "status": "unsigned" }),
        Verdict::Invalid(why) => json!({ "status": "invalid", "reason": why }),
    }
}

fn signature_text(verdict: &Verdict, keyring: &Keyring) -> String {
    match verdict {
        Verdict::Signed(names) => names
            .iter()
            .map(|n| match keyring.get(n) {
                Some(k) => format!("{n} ({})", k.fingerprint),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Verdict::Unsigned => "none (unsigned)".to_string(),
        Verdict::Invalid(why) => format!("none: {why}"),
    }
}

/// `warden verify`.
pub fn signature(json: bool, component: &str, verdict: &Verdict, keyring: &Keyring) {
    if json {
        let mut value = signature_json(verdict, keyring);
        if let Some(map) = value.as_object_mut() {
            map.insert("component".into(), json!(component));
        }
        print_json(&value);
        return;
    }
    let component = escape(component);
    match verdict {
        Verdict::Signed(_) => say!(
            "`{component}` is signed by {}",
            signature_text(verdict, keyring)
        ),
        _ => say!(
            "`{component}` is not signed by a trusted key: {}",
            signature_text(verdict, keyring)
        ),
    }
}

/// `warden artifacts list`.
pub fn artifact_list(json: bool, task: &str, page: &[warden::artifacts::ArtifactRef]) {
    if json {
        print_json(&json!({ "task": task, "artifacts": page }));
        return;
    }
    if page.is_empty() {
        say!("task `{task}` has no artifacts");
    }
    for a in page {
        say!(
            "{:<32} {:>9} B  {:<16} {}  {}",
            a.name,
            a.size,
            a.author,
            a.created_at,
            a.digest
        );
    }
}

/// `warden artifacts get` without `--output`: the exact bytes into a pipe or file; on a
/// terminal the text escaped line by line, since an agent wrote it.
pub fn artifact_content(content: &[u8]) {
    use std::io::{IsTerminal as _, Write as _};
    if std::io::stdout().is_terminal() {
        for line in String::from_utf8_lossy(content).lines() {
            say!("{line}");
        }
        return;
    }
    let mut out = std::io::stdout().lock();
    // A reader that went away (`| head`) ends the output quietly, as `emit` does.
    let _ = out.write_all(content).and_then(|()| out.flush());
}

/// `warden keys list`.
pub fn keyring(json: bool, keyring: &Keyring) {
    if json {
        let keys: Vec<Value> = keyring
            .keys()
            .iter()
            .map(|k| json!({ "name": k.name, "fingerprint": k.fingerprint }))
            .collect();
        print_json(&json!({ "keys": keys }));
        return;
    }
    if keyring.is_empty() {
        say!("no trusted keys (put `<name>.pub` files in `keys/` beside the tier table)");
    }
    for key in keyring.keys() {
        say!("{:<24} {}", key.name, key.fingerprint);
    }
}

pub fn done(json: bool, human: &str, value: Value) {
    if json {
        print_json(&value);
    } else {
        say!("{human}");
    }
}

pub fn agent_registered(json: bool, record: &AgentRecord, revoked: Option<&Revocation>) {
    if json {
        let mut value = serde_json::to_value(record).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("revoked".into(), json!(revoked));
        }
        print_json(&value);
        return;
    }
    say!(
        "agent `{}` registered at {} bound to {}",
        record.agent_id,
        record.tier,
        record
            .component_digest
            .as_deref()
            .unwrap_or("no component yet (the first run binds one)")
    );
    if let Some(r) = revoked {
        say!(
            "agent `{}` stays revoked (since {}: {} — {}); `warden agents reinstate {} --reason <why>` lifts it",
            record.agent_id,
            r.revoked_at,
            r.reason.kind,
            r.reason.details,
            record.agent_id
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
        say!("no agents registered; `warden agents register <id> --tier <T> --component <file>`");
        return;
    }
    say!(
        "{:<24} {:<15} {:>5} {:>9} {:>6}  {:<10} component",
        "agent",
        "tier",
        "runs",
        "compliant",
        "streak",
        "status"
    );
    for (agent, metrics, revoked) in rows {
        let (runs, compliant, streak) = metrics.as_ref().map_or((0, 0, 0), |m| {
            (m.total_runs, m.compliant_runs, m.consecutive_compliant)
        });
        let digest = agent.component_digest.as_deref().unwrap_or("-");
        say!(
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
    signature: Option<(&Verdict, &Keyring)>,
) {
    if json {
        let signature = signature.map(|(v, k)| signature_json(v, k));
        print_json(
            &json!({ "agent": agent, "metrics": metrics, "revocation": revocation, "lock_owner": lock, "signature": signature }),
        );
        return;
    }
    say!("agent      {}", agent.agent_id);
    say!("tier       {}", agent.tier);
    say!(
        "component  {}",
        agent.component_digest.as_deref().unwrap_or("-")
    );
    say!(
        "registered {} (updated {})",
        agent.registered_at,
        agent.updated_at
    );
    if let Some(m) = metrics {
        say!(
            "runs       {} total, {} compliant, {} in a row; last active {}",
            m.total_runs,
            m.compliant_runs,
            m.consecutive_compliant,
            m.last_active_at
        );
    }
    match revocation {
        Some(r) => say!(
            "status     REVOKED at {} by {}: {} — {}",
            r.revoked_at,
            r.revoked_by,
            r.reason.kind,
            r.reason.details
        ),
        None => say!("status     active"),
    }
    if let Some(owner) = lock {
        say!("lock       held by {owner}");
    }
    if let Some((verdict, keyring)) = signature {
        say!("signer     {}", signature_text(verdict, keyring));
    }
}

pub fn run_report(json: bool, report: &RunReport) {
    if json {
        print_json(report);
        return;
    }
    say!(
        "run {} · agent `{}` ({}) · task `{}` · {}",
        report.run_id,
        report.agent_id,
        report.tier,
        report.task_id,
        report.component_digest
    );
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| format!("{} {:.1}ms", p.phase.as_str(), p.elapsed_ms))
        .collect();
    say!("  phases     {}", phases.join(" → "));
    if let Some(plan) = &report.plan_summary {
        say!("  plan       {plan}");
        for step in &report.plan_steps {
            say!("             - {step}");
        }
    }
    for artifact in &report.artifacts {
        say!(
            "  artifact   {:<24} {} bytes  {}  by {}",
            artifact.name,
            artifact.size,
            &artifact.digest[..artifact.digest.len().min(19)],
            artifact.author
        );
    }
    for finding in &report.verification_findings {
        say!("  finding    {finding}");
    }
    if let Some(summary) = &report.report_summary {
        say!("  report     {summary}");
    }
    say!(
        "  budget     {} errors, {} procedure violations (worst repeat {})",
        report.budget.total_errors,
        report.budget.procedure_violations,
        report.budget.max_same_error
    );
    if let Some(tier) = report.promoted_to {
        say!("  promoted   to {tier}");
    }
    match &report.outcome {
        RunOutcome::Completed => say!(
            "  outcome    completed in {:.1} ms{}",
            report.duration_ms,
            if report.compliant { " (compliant)" } else { "" }
        ),
        RunOutcome::PlanOnly => say!(
            "  outcome    plan only (tier stops after PLAN) in {:.1} ms",
            report.duration_ms
        ),
        RunOutcome::Revoked { reason, details } => {
            say!("  outcome    REVOKED ({reason}): {details}")
        }
        RunOutcome::Failed { code, message } => say!("  outcome    FAILED ({code}): {message}"),
    }
}

pub fn runs_list(json: bool, rows: &[RunRow]) {
    if json {
        print_json(&json!({ "runs": rows }));
        return;
    }
    if rows.is_empty() {
        say!("no runs");
        return;
    }
    for row in rows {
        say!(
            "{}  {:<10} {:<9} {:<20} agent `{}` · task `{}` · {} calls · {}",
            row.run_id,
            row.status,
            row.phase,
            row.outcome.as_deref().unwrap_or("-"),
            row.agent_id,
            row.task_id,
            row.calls,
            row.started_at
        );
    }
}

pub fn run_show(json: bool, row: &RunRow, phases: &[(String, String)]) {
    if json {
        let phases: Vec<Value> = phases
            .iter()
            .map(|(phase, at)| json!({ "phase": phase, "entered_at": at }))
            .collect();
        print_json(&json!({ "run": row, "phases": phases }));
        return;
    }
    say!("run {}", row.run_id);
    say!("  agent      `{}` ({})", row.agent_id, row.tier);
    say!("  task       `{}`", row.task_id);
    say!("  component  {}", row.component_digest);
    say!(
        "  status     {} · outcome {} · attempts {}",
        row.status,
        row.outcome.as_deref().unwrap_or("-"),
        row.attempts
    );
    say!("  host       {} (pid {})", row.host, row.pid);
    say!(
        "  started    {} · last written {}",
        row.started_at,
        row.updated_at
    );
    say!("  journal    {} records", row.calls);
    for (phase, at) in phases {
        say!("  checkpoint {phase:<9} {at}");
    }
    say!("  stopped at {}", row.phase);
}

pub fn replay_report(json: bool, report: &ReplayReport) {
    if json {
        print_json(report);
        return;
    }
    say!(
        "replay of {} · agent `{}` · task `{}`: {}",
        report.run_id,
        report.agent_id,
        report.task_id,
        report.verdict
    );
    if report.recorded_component != report.replayed_component {
        say!(
            "  component  {} (recorded {})",
            report.replayed_component,
            report.recorded_component
        );
    }
    for phase in &report.phases {
        say!(
            "  {:<9} {:<11} {}/{} records · {}",
            phase.phase,
            phase.verdict,
            phase.replayed,
            phase.recorded,
            phase.calls.join(", ")
        );
    }
    if let Some(divergence) = &report.divergence {
        say!("  diverged   {divergence}");
    } else if let Some(halted) = report
        .halted
        .as_ref()
        .filter(|_| report.verdict != "identical")
    {
        say!("  halted     {halted}");
    }
    say!(
        "  outcome    recorded {} ({}) · replay {} · {}/{} records in {:.1}ms",
        report.recorded_outcome.as_deref().unwrap_or("-"),
        report.recorded_status,
        report.replay_outcome,
        report.replayed_records,
        report.recorded_records,
        report.duration_ms
    );
}

pub fn ledger_rows(json: bool, rows: &[LedgerRow]) {
    if json {
        print_json(&rows);
        return;
    }
    for row in rows {
        say!("{}", row.one_line());
    }
}

pub fn verify_report(json: bool, report: &VerifyReport) {
    if json {
        print_json(report);
        return;
    }
    match &report.broken {
        None => say!(
            "ledger intact: {} rows, chain head {}",
            report.rows,
            report.head
        ),
        Some(broken) => say!("LEDGER TAMPERED: {broken}"),
    }
    for mismatch in &report.registry {
        say!("REGISTRY TAMPERED: {mismatch}");
    }
}

pub fn handoff(json: bool, handoff: &Handoff) {
    if json {
        print_json(handoff);
        return;
    }
    say!("task               {}", handoff.task_id);
    say!(
        "previous agent     {} (revoked: {})",
        handoff.previous_agent_id,
        handoff.revoked
    );
    say!(
        "reason             {}: {}",
        handoff.revocation_reason.kind,
        handoff.revocation_reason.details
    );
    say!(
        "last known state   {} / {}",
        handoff.last_known_state.phase,
        handoff.last_known_state.step
    );
    say!("blocking issue     {}", handoff.blocking_issue);
    for tried in &handoff.what_was_tried {
        say!("tried              {tried}");
    }
    for next in &handoff.required_next_actions {
        say!("next               {next}");
    }
    for reminder in &handoff.constraints_reminder {
        say!("constraint         {reminder}");
    }
    say!("artifacts          {}", handoff.artifacts.join(", "));
}

pub fn compile_summary(json: bool, summary: &ComponentSummary) {
    if json {
        print_json(summary);
        return;
    }
    say!("digest       {}", summary.digest);
    say!(
        "imports      {}",
        if summary.imports.is_empty() {
            "-".to_string()
        } else {
            summary.imports.join(", ")
        }
    );
    say!("wasi         {}", summary.wasi.len());
    if !summary.unknown.is_empty() {
        say!(
            "unknown      {} (refused at load)",
            summary.unknown.join(", ")
        );
    }
    match (&summary.lowest_tier, &summary.unrunnable) {
        (Some(tier), _) => say!("lowest tier  {tier}"),
        (None, why) => say!(
            "lowest tier  none: no tier can run it: {}",
            why.as_deref().unwrap_or("no tier links it")
        ),
    }
    if let Some(path) = &summary.cached {
        say!("cached       {}", path.display());
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
        say!(
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
    say!("task `{}` · {}", metrics.task_id, metrics.objective);
    for agent in &metrics.agents {
        let role = if agent.mediator { "mediator" } else { "agent" };
        let detail = if agent.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", agent.detail)
        };
        say!(
            "  {role:<9} {:<12} {} in {:.1} ms{detail}",
            agent.agent_id,
            agent.status,
            agent.duration_ms
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
            "validation",
            consensus
                .validation
                .clone()
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "outcome",
            if metrics.success { "success" } else { "FAILED" }.to_string(),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    say!("  ┌{}┬{}", "─".repeat(width + 2), "─".repeat(40));
    for (key, value) in rows {
        say!("  │ {key:<width$} │ {value}");
    }
    say!("  └{}┴{}", "─".repeat(width + 2), "─".repeat(40));
}

pub fn task_view(json: bool, view: &TaskView) {
    if json {
        print_json(view);
        return;
    }
    say!("task `{}`", view.task_id);
    for (section, entries) in &view.blackboard {
        say!("  blackboard/{section} ({} entries)", entries.len());
        for (key, value) in entries {
            let first_line = value.lines().next().unwrap_or("");
            let more = if value.lines().nth(1).is_some() {
                " …"
            } else {
                ""
            };
            say!("    {key:<20} {}{more}", truncate(first_line, 90));
        }
    }
    say!("  proposals ({})", view.proposals.len());
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
        say!(
            "    {:<4} {:<40} by {:<8} {} accept / {} reject / {} abstain · {status}",
            p.proposal.record.id,
            truncate(&p.proposal.record.title, 40),
            p.proposal.record.proposer,
            t.accepts,
            t.rejects,
            t.abstains
        );
        for vote in &p.proposal.votes {
            say!(
                "           {} {}: {}",
                vote.agent,
                vote.choice.as_str(),
                truncate(&vote.reasoning, 80)
            );
        }
    }
    say!("  messages ({})", view.messages.len());
    for m in &view.messages {
        say!(
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

/// `warden agents history`.
pub fn agent_history(json: bool, history: &warden::AgentHistory) {
    if json {
        emit(&serde_json::to_string(history).unwrap_or_default());
        return;
    }
    let mut out = format!(
        "agent {} ({})\n",
        escape(&history.agent.agent_id),
        history.agent.tier.code()
    );
    out.push_str(&format!("tier changes ({}):\n", history.tier_changes.len()));
    for row in &history.tier_changes {
        out.push_str(&format!("  {}  {}\n", row.timestamp, escape(&row.summary)));
    }
    out.push_str(&format!("violations ({}):\n", history.violations.len()));
    for row in &history.violations {
        out.push_str(&format!("  {}  {}\n", row.timestamp, escape(&row.summary)));
    }
    out.push_str(&format!("runs ({}):\n", history.runs.len()));
    for run in &history.runs {
        out.push_str(&format!(
            "  {}  {}  {} {}\n",
            run.started_at,
            run.run_id,
            run.status,
            run.outcome.as_deref().unwrap_or_default()
        ));
    }
    emit(out.trim_end());
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(escape("plain — ünïcode → ok"), "plain — ünïcode → ok");
        assert_eq!(
            escape("line\nfake row\r\u{1b}[2Jgone\u{7}"),
            "line\\nfake row\\r\\u{1b}[2Jgone\\u{7}"
        );
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }
}
