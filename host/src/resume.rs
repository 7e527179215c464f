//! Resume: an interrupted run goes on where it stopped, with no effect repeated.
//!
//! A run whose process died (SIGKILL, a lost machine) keeps its `runs` row at `running`, its
//! journal up to the last committed record, and its agent's lock until the lock's TTL. Resuming
//! it runs the same component in a fresh instance under the same run id: every recorded answer
//! is fed back in order (a call that differs stops the run, `REPLAY_DIVERGED`), so the guest
//! rebuilds its state without repeating an effect, and from the first call past the journal the
//! run is live. The dead run's lock is taken over at once when its holder is provably gone: on
//! the same machine, its process no longer exists; on another, the lock has expired.

use std::sync::Arc;

use crate::bindings::WitError;
use crate::bindings::warden::agent::tools::ToolOutput;
use crate::error::{Error, ResumeError};
use crate::id::{AgentId, RunId};
use crate::journal::{self, Journal, PastEnd, Recorded, ToolIntent};
use crate::ledger::{ActionRecord, Entry, JournalRecord, RunRow};
use crate::lifecycle::{self, RunMode};
use crate::replay::{ReplayError, recorded_packet, vouched};
use crate::report::RunReport;
use crate::state::LockOwner;

/// What the operator decided about the tool call a run was interrupted in (see
/// [`ResumeError::Uncertain`]), by the intent's position in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The tool took effect: the guest is answered an empty output, exit code 0, and the
    /// tool is not run again.
    AssumeDone(u64),
    /// Run the tool again.
    Rerun(u64),
}

/// How [`Host::resume_with`](crate::Host::resume_with) resumes. Default: no decision, so a
/// run interrupted while a tool that is not idempotent ran is refused (`RESUME_UNCERTAIN`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    /// The operator's decision about the interrupted tool call.
    pub decision: Option<Decision>,
}

/// A run checked by [`Host::prepare_resume`](crate::Host): what
/// [`Host::resume_prepared`](crate::Host) needs, nothing written yet.
pub(crate) struct Prepared {
    run: RunId,
    row: RunRow,
    agent: AgentId,
    records: Vec<Recorded>,
    interrupted: Interrupted,
    lock_held_by_run: bool,
    packet: crate::packet::Packet,
    component: Vec<u8>,
}

/// What a resume does with the call a run was interrupted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// Nothing was in flight: the journal's last record is a result.
    Nothing,
    /// Answer the recorded intent at `seq` as done.
    AssumeDone { seq: u64, intent: ToolIntent },
    /// Run it again; `idempotent` when the tools file allows that without asking.
    Rerun {
        seq: u64,
        intent: ToolIntent,
        idempotent: bool,
    },
}

/// Decide what to do with the journal's last record `last`: pure, so every case is tested
/// without a run. `idempotent` says whether a tool is declared so in the tools file.
pub(crate) fn decide_interrupted(
    run: &RunId,
    last: Option<&Recorded>,
    idempotent: impl Fn(&str) -> bool,
    decision: Option<Decision>,
) -> Result<Interrupted, ResumeError> {
    let in_flight = last.filter(|r| r.op == journal::OP_TOOL_INTENT).map(|r| {
        let intent = serde_json::from_slice::<ToolIntent>(&r.payload).unwrap_or(ToolIntent {
            tool: "(unreadable intent)".into(),
            args: Vec::new(),
        });
        (r.seq, intent)
    });
    let invalid = |actual: String| ResumeError::DecisionInvalid {
        run: run.to_string(),
        actual,
    };
    match (in_flight, decision) {
        (None, None) => Ok(Interrupted::Nothing),
        (None, Some(Decision::AssumeDone(seq) | Decision::Rerun(seq))) => Err(invalid(format!(
            "was not interrupted while a tool ran, so there is no call {seq} to decide; resume it without a decision"
        ))),
        (Some((seq, _)), Some(Decision::AssumeDone(given) | Decision::Rerun(given)))
            if given != seq =>
        {
            Err(invalid(format!(
                "was interrupted in call {seq}, not call {given}"
            )))
        }
        (Some((seq, intent)), Some(Decision::AssumeDone(_))) => {
            Ok(Interrupted::AssumeDone { seq, intent })
        }
        (Some((seq, intent)), Some(Decision::Rerun(_))) => Ok(Interrupted::Rerun {
            seq,
            intent,
            idempotent: false,
        }),
        (Some((seq, intent)), None) if idempotent(&intent.tool) => Ok(Interrupted::Rerun {
            seq,
            intent,
            idempotent: true,
        }),
        (Some((seq, intent)), None) => Err(ResumeError::Uncertain {
            run: run.to_string(),
            seq,
            tool: crate::text::clip(&intent.tool.escape_debug().to_string(), 128),
            args: crate::text::clip(
                &serde_json::to_string(&intent.args).unwrap_or_default(),
                512,
            ),
        }),
    }
}

/// What the guest is answered for a tool call the operator says took effect.
const ASSUMED_DONE: &str = "warden: the run was interrupted while this tool ran; the operator decided at resume that it took effect (`--assume-done`); its output was not recorded";

/// Whether the process that held `row` is provably gone: `Ok` when it is, the holder when
/// it may be alive. Pure, so every case is tested without processes.
pub(crate) fn holder_gone(
    row: &RunRow,
    this_machine: &str,
    this_pid: u32,
    process_exists: impl Fn(u32) -> bool,
    running_here: bool,
    lock_held_by_run: bool,
) -> Result<(), String> {
    if let Some(gone) = same_machine_gone(
        &row.host,
        row.pid,
        this_machine,
        this_pid,
        process_exists,
        running_here,
    ) {
        return gone;
    }
    if lock_held_by_run {
        Err(format!(
            "process {} on `{}`, whose lock on the agent has not expired",
            row.pid, row.host
        ))
    } else {
        Ok(())
    }
}

/// Whether the process that orchestrated a task (`host`, `pid`) is provably gone: `Ok` when
/// it is, the holder when it may be alive. Another machine's orchestrator is not judged here:
/// its agents' runs are, each by its lock, when they are resumed.
pub(crate) fn orchestrator_gone(
    host: &str,
    pid: u32,
    this_machine: &str,
    this_pid: u32,
    running_here: bool,
) -> Result<(), String> {
    same_machine_gone(
        host,
        pid,
        this_machine,
        this_pid,
        process_exists,
        running_here,
    )
    .unwrap_or(Ok(()))
}

/// On the machine that ran it, whether process `pid` is gone (`None`: another machine).
fn same_machine_gone(
    host: &str,
    pid: u32,
    this_machine: &str,
    this_pid: u32,
    process_exists: impl Fn(u32) -> bool,
    running_here: bool,
) -> Option<Result<(), String>> {
    if host != this_machine {
        return None;
    }
    Some(if pid == this_pid {
        if running_here {
            Err(format!(
                "this process (pid {this_pid}), which is running it"
            ))
        } else {
            Ok(())
        }
    } else if process_exists(pid) {
        Err(format!("process {pid} on this machine, which is alive"))
    } else {
        Ok(())
    })
}

/// Whether process `pid` exists and is not a zombie (a killed process its parent has not
/// reaped yet runs nothing).
fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X")),
        Err(_) => false,
    }
}

impl crate::Host {
    /// Resume interrupted run `run` (see [`crate::resume`]) with no decision about a tool
    /// call it was interrupted in: [`Host::resume_with`] and default [`ResumeOptions`].
    pub async fn resume(&self, run: &RunId) -> Result<RunReport, Error> {
        self.resume_with(run, ResumeOptions::default()).await
    }

    /// Resume interrupted run `run` (see [`crate::resume`]). A run killed while a tool ran
    /// whose tool is not declared `idempotent = true` needs `options.decision`; without it
    /// the resume is refused with [`ResumeError::Uncertain`], before anything runs. The
    /// decision is recorded in the ledger.
    pub async fn resume_with(
        &self,
        run: &RunId,
        options: ResumeOptions,
    ) -> Result<RunReport, Error> {
        let prepared = self.prepare_resume(run, options).await?;
        self.resume_prepared(prepared).await
    }

    /// Every check of a resume, with nothing written: so a task refuses before any of its
    /// runs goes on.
    pub(crate) async fn prepare_resume(
        &self,
        run: &RunId,
        options: ResumeOptions,
    ) -> Result<Prepared, Error> {
        let ledger = self.ledger();
        let row = ledger.run(run)?.ok_or_else(|| ReplayError::UnknownRun {
            run: run.to_string(),
        })?;
        if row.status != "running" {
            return Err(ResumeError::NotInterrupted {
                run: run.to_string(),
                status: row.status.clone(),
                outcome: row.outcome.clone().unwrap_or_default(),
            }
            .into());
        }
        let agent = AgentId::new(&row.agent_id)?;
        let services = &self.services;
        let lock = services.state.lock_owner(&agent).await?;
        let lock_held_by_run = lock.as_deref() == Some(row.lock_owner.as_str());
        let running_here = services.running.lock().contains_key(agent.as_str());
        holder_gone(
            &row,
            crate::context::machine_name(),
            std::process::id(),
            process_exists,
            running_here,
            lock_held_by_run,
        )
        .map_err(|holder| ResumeError::StillActive {
            run: run.to_string(),
            holder,
        })?;
        let records = vouched(run, ledger.journal(run)?, &ledger.journal_anchors(&row)?)?;
        let interrupted = decide_interrupted(
            run,
            records.last(),
            |tool| services.tools.get(tool).is_some_and(|t| t.idempotent),
            options.decision,
        )?;
        let packet = recorded_packet(run, &row)?;
        let component = self.kept_component(run, &row).await?;
        Ok(Prepared {
            run: run.clone(),
            row,
            agent,
            records,
            interrupted,
            lock_held_by_run,
            packet,
            component,
        })
    }

    /// Take over the run's lock, record the operator's decision, and run it on.
    pub(crate) async fn resume_prepared(&self, prepared: Prepared) -> Result<RunReport, Error> {
        let Prepared {
            run,
            row,
            agent,
            mut records,
            interrupted,
            lock_held_by_run,
            packet,
            component,
        } = prepared;
        let services = &self.services;
        if lock_held_by_run {
            // The holder is gone: its lock is taken over now, not at its TTL.
            services
                .state
                .release_lock(&agent, &LockOwner::new(row.lock_owner.clone())?)
                .await?;
        }
        if let Some(answer) = self
            .record_decision(&run, &row, &records, interrupted)
            .await?
        {
            records.push(answer);
        }
        let last_seen = crate::capabilities::last_received(&records);
        let journal = Arc::new(Journal::replaying(run.as_str(), records, PastEnd::Live));
        journal.set_inbox_rewind(last_seen);
        lifecycle::run(
            services.clone(),
            self.sandbox.clone(),
            &agent,
            &component,
            RunMode::Resume {
                run_id: run.clone(),
                journal,
                packet: Box::new(packet),
                attempt: row.attempts.saturating_add(1),
            },
        )
        .await
    }

    /// Record what happens to the call `run` was interrupted in. An assumed-done call gets
    /// its answer as a journal record (returned, to be fed back like any other), so a later
    /// replay of the run sees what the resumed guest saw.
    async fn record_decision(
        &self,
        run: &RunId,
        row: &RunRow,
        records: &[Recorded],
        interrupted: Interrupted,
    ) -> Result<Option<Recorded>, Error> {
        let (decision, seq, intent) = match &interrupted {
            Interrupted::Nothing => return Ok(None),
            Interrupted::AssumeDone { seq, intent } => ("assume-done", *seq, intent),
            Interrupted::Rerun {
                seq,
                intent,
                idempotent,
            } => (
                if *idempotent {
                    "rerun-idempotent"
                } else {
                    "rerun"
                },
                *seq,
                intent,
            ),
        };
        let subject = crate::governance::run_subject(
            &self.services,
            (&row.agent_id, row.tier),
            Some(&row.task_id),
            Some(&row.component_digest),
            run,
        );
        let details = serde_json::json!({
            "call": seq,
            "tool": intent.tool,
            "args": intent.args,
            "decision": decision,
        });
        let mut action =
            ActionRecord::new(subject, "resume.decision", decision).details(details.to_string());
        let mut entries = Vec::with_capacity(2);
        let mut answer = None;
        if let Interrupted::AssumeDone { .. } = interrupted {
            let mut head = journal::genesis(run.as_str());
            for r in records {
                head = journal::next_head(&head, r.seq, &r.op, &r.args_digest, &r.payload);
            }
            // The intent carries the call's argument digest and phase; the answer follows it.
            let Some(last) = records.last() else {
                return Ok(None);
            };
            let output: Result<ToolOutput, WitError> = Ok(ToolOutput {
                exit_code: 0,
                stdout: String::new(),
                stderr: ASSUMED_DONE.to_string(),
                check_mode: false,
            });
            let payload = serde_json::to_vec(&output).unwrap_or_default();
            let answer_seq = seq + 1;
            head = journal::next_head(
                &head,
                answer_seq,
                "tools.invoke",
                &last.args_digest,
                &payload,
            );
            let head = journal::head_text(&head);
            let phase = crate::phase::Phase::parse(&last.phase).map_or("EXECUTE", |p| p.as_str());
            action = action.phase(phase);
            action.call_seq = Some(answer_seq);
            action.result_digest = Some(head.clone().into());
            entries.push(Entry::Journal(JournalRecord {
                run_id: Arc::from(run.as_str()),
                seq: answer_seq,
                phase,
                op: "tools.invoke".into(),
                args_digest: last.args_digest.clone().into(),
                payload: payload.clone(),
                head: head.clone().into(),
            }));
            answer = Some(Recorded {
                seq: answer_seq,
                phase: phase.to_string(),
                op: "tools.invoke".to_string(),
                args_digest: last.args_digest.clone(),
                payload,
                head,
            });
        }
        entries.push(Entry::Action(action));
        self.services.ledger.append_all_async(entries, true).await?;
        Ok(answer)
    }

    /// The latest run of `agent` when it was interrupted (its status is still `running` and
    /// its holder is provably gone, as [`Host::resume`](crate::Host::resume) decides it): what
    /// `warden run` warns of, with the command that resumes it.
    pub async fn interrupted_run(&self, agent: &str) -> Result<Option<RunRow>, Error> {
        let Some(row) = self.ledger().last_run(agent)? else {
            return Ok(None);
        };
        if row.status != "running" {
            return Ok(None);
        }
        let id = AgentId::new(agent)?;
        let lock = self.services.state.lock_owner(&id).await?;
        let running_here = self.services.running.lock().contains_key(agent);
        let gone = holder_gone(
            &row,
            crate::context::machine_name(),
            std::process::id(),
            process_exists,
            running_here,
            lock.as_deref() == Some(row.lock_owner.as_str()),
        )
        .is_ok();
        Ok(gone.then_some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::Tier;

    fn row(host: &str, pid: u32) -> RunRow {
        RunRow {
            run_id: "run-x".into(),
            agent_id: "a".into(),
            task_id: "t".into(),
            tier: Tier::Operator,
            component_digest: "sha256:00".into(),
            status: "running".into(),
            phase: "EXECUTE".into(),
            attempts: 1,
            host: host.into(),
            pid,
            lock_owner: "h:1".into(),
            started_at: String::new(),
            updated_at: String::new(),
            outcome: None,
            calls: 3,
            packet: String::new(),
            from_row: None,
            to_row: None,
        }
    }

    fn record(op: &str, payload: &[u8]) -> Recorded {
        Recorded {
            seq: 9,
            phase: "EXECUTE".into(),
            op: op.into(),
            args_digest: "sha256:aa".into(),
            payload: payload.to_vec(),
            head: String::new(),
        }
    }

    #[test]
    fn an_interrupted_tool_call_needs_a_decision_unless_the_tool_is_idempotent() {
        let run = RunId::generate();
        let intent = record(
            journal::OP_TOOL_INTENT,
            br#"{"tool":"append","args":["x[31m"]}"#,
        );
        let result = record("tools.invoke", b"{}");
        let never = |_: &str| false;
        let always = |_: &str| true;
        assert_eq!(
            decide_interrupted(&run, Some(&result), never, None).unwrap(),
            Interrupted::Nothing
        );
        assert_eq!(
            decide_interrupted(&run, None, never, None).unwrap(),
            Interrupted::Nothing
        );
        let err = decide_interrupted(&run, Some(&intent), never, None).unwrap_err();
        assert_eq!(err.code(), "RESUME_UNCERTAIN");
        let message = err.to_string();
        assert!(message.contains("call 9"), "{message}");
        assert!(message.contains("--assume-done 9"), "{message}");
        assert!(
            !message.contains('\u{1b}'),
            "guest text is escaped: {message}"
        );
        assert!(matches!(
            decide_interrupted(&run, Some(&intent), always, None).unwrap(),
            Interrupted::Rerun {
                seq: 9,
                idempotent: true,
                ..
            }
        ));
        assert!(matches!(
            decide_interrupted(&run, Some(&intent), never, Some(Decision::Rerun(9))).unwrap(),
            Interrupted::Rerun {
                seq: 9,
                idempotent: false,
                ..
            }
        ));
        assert!(matches!(
            decide_interrupted(&run, Some(&intent), never, Some(Decision::AssumeDone(9))).unwrap(),
            Interrupted::AssumeDone { seq: 9, .. }
        ));
        let err = decide_interrupted(&run, Some(&intent), never, Some(Decision::AssumeDone(8)))
            .unwrap_err();
        assert!(err.to_string().contains("in call 9, not call 8"), "{err}");
        let err =
            decide_interrupted(&run, Some(&result), never, Some(Decision::Rerun(9))).unwrap_err();
        assert_eq!(err.code(), "RESUME_DECISION_INVALID");
    }

    #[test]
    fn a_holder_is_gone_only_when_that_is_proven() {
        let alive = |_| true;
        let dead = |_| false;
        // Same machine: the process decides, whatever the lock says.
        assert!(holder_gone(&row("m", 7), "m", 1, dead, false, true).is_ok());
        let err = holder_gone(&row("m", 7), "m", 1, alive, false, false).unwrap_err();
        assert!(err.contains("process 7 on this machine"), "{err}");
        // This process: gone unless it is running the agent now.
        assert!(holder_gone(&row("m", 1), "m", 1, alive, false, true).is_ok());
        assert!(holder_gone(&row("m", 1), "m", 1, alive, true, true).is_err());
        // Another machine: only an expired lock proves it.
        let err = holder_gone(&row("other", 7), "m", 1, dead, false, true).unwrap_err();
        assert!(err.contains("has not expired"), "{err}");
        assert!(holder_gone(&row("other", 7), "m", 1, alive, false, false).is_ok());
    }

    #[test]
    fn a_tasks_orchestrator_is_gone_when_its_process_on_this_machine_is() {
        let me = std::process::id();
        // pid 1 always exists; no process has the largest pid.
        let err = orchestrator_gone("m", 1, "m", me, false).unwrap_err();
        assert!(err.contains("process 1 on this machine"), "{err}");
        assert!(orchestrator_gone("m", u32::MAX, "m", me, false).is_ok());
        // This process: gone unless one of the task's agents runs here now.
        assert!(orchestrator_gone("m", me, "m", me, false).is_ok());
        assert!(orchestrator_gone("m", me, "m", me, true).is_err());
        // Another machine: its agents' runs are judged by their locks instead.
        assert!(orchestrator_gone("other", 1, "m", me, false).is_ok());
    }
}
