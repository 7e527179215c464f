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

use crate::error::{Error, ResumeError};
use crate::id::{AgentId, RunId};
use crate::journal::{Journal, PastEnd};
use crate::ledger::RunRow;
use crate::lifecycle::{self, RunMode};
use crate::replay::{ReplayError, recorded_packet, vouched};
use crate::report::RunReport;
use crate::state::LockOwner;

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
    if row.host == this_machine {
        if row.pid == this_pid {
            return if running_here {
                Err(format!(
                    "this process (pid {this_pid}), which is running it"
                ))
            } else {
                Ok(())
            };
        }
        return if process_exists(row.pid) {
            Err(format!(
                "process {} on this machine, which is alive",
                row.pid
            ))
        } else {
            Ok(())
        };
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
    /// Resume interrupted run `run` (see [`crate::resume`]).
    pub async fn resume(&self, run: &RunId) -> Result<RunReport, Error> {
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
        if lock_held_by_run {
            // The holder is gone: its lock is taken over now, not at its TTL.
            services
                .state
                .release_lock(&agent, &LockOwner::new(row.lock_owner.clone())?)
                .await?;
        }
        let records = vouched(
            run,
            ledger.journal(run)?,
            &ledger.journal_anchors(&row.agent_id, run)?,
        )?;
        let packet = recorded_packet(run, &row)?;
        let bytes = self.kept_component(run, &row).await?;
        let journal = Arc::new(Journal::replaying(run.as_str(), records, PastEnd::Live));
        lifecycle::run(
            services.clone(),
            self.sandbox.clone(),
            &agent,
            &bytes,
            RunMode::Resume {
                run_id: run.clone(),
                journal,
                packet: Box::new(packet),
                attempt: row.attempts.saturating_add(1),
            },
        )
        .await
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
        }
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
}
