//! Replay: a recorded run re-executed offline against its journal.
//!
//! The component runs in a fresh instance on a host of its own that touches nothing live: an
//! in-memory state store and ledger, no secrets backend, no LLM, no tools. Every capability
//! call, clock read and random byte is answered from the journal, after the journal was checked
//! against the chained rows that vouch for it; the guest's phase results are compared with the
//! recorded ones. The first call (or result) that differs is the divergence, reported with
//! what the journal expected; a run that ends where the recorded one ended replays identical.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::artifacts::MemoryBlobs;
use crate::context::{CallDurability, ServiceParts, Services, Workspaces};
use crate::error::Error;
use crate::id::{AgentId, RunId};
use crate::journal::{self, Divergence, Journal, PastEnd, Recorded};
use crate::ledger::Ledger;
use crate::lifecycle::{self, RunMode};
use crate::packet::Packet;
use crate::report::RunOutcome;
use crate::secrets::EmbeddedSecrets;
use crate::state::MemoryState;
use crate::tools::ToolRegistry;

pub use crate::error::ReplayError;

/// What to replay a run with. Default: the component that ran, as the blob store keeps it.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The component to run instead of the kept one.
    pub component: Option<Vec<u8>>,
    /// Replay a component whose digest is not the recorded one (a new build of the agent).
    pub allow_other_digest: bool,
}

/// One phase of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseReplay {
    /// The phase (`EXECUTE`).
    pub phase: String,
    /// `identical`, `diverged` or `not-reached`.
    pub verdict: &'static str,
    /// Journal records the phase holds.
    pub recorded: u64,
    /// Of those, answered to the replayed guest.
    pub replayed: u64,
    /// The calls the phase made, in order (`state.get`, …; clock reads and random bytes
    /// counted, not listed).
    pub calls: Vec<String>,
}

/// What [`Host::replay`](crate::Host::replay) found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The run replayed.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// Its task.
    pub task_id: String,
    /// `identical` when every recorded answer was asked for in order and the replay ended
    /// where the run ended; `diverged` otherwise.
    pub verdict: &'static str,
    /// The component that ran.
    pub recorded_component: String,
    /// The component replayed.
    pub replayed_component: String,
    /// The recorded run's status and outcome code (`completed`, `COMPLETED`).
    pub recorded_status: String,
    /// The recorded outcome code.
    pub recorded_outcome: Option<String>,
    /// How the replay ended (its outcome code).
    pub replay_outcome: String,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// Why the journal stopped the guest, when it did (a divergence, the end of the recorded
    /// run, a call a replay cannot answer such as an HTTP request).
    pub halted: Option<String>,
    /// Per phase, in order.
    pub phases: Vec<PhaseReplay>,
    /// Journal records of the run.
    pub recorded_records: u64,
    /// Records answered to the replayed guest.
    pub replayed_records: u64,
    /// Wall-clock time of the replay, ms.
    pub duration_ms: f64,
}

/// Check `records` against the chained rows that vouch for them; the records up to the last
/// vouched one are what may be replayed.
pub(crate) fn vouched(
    run: &RunId,
    mut records: Vec<Recorded>,
    anchors: &[crate::ledger::JournalAnchor],
) -> Result<Vec<Recorded>, ReplayError> {
    let mut head = journal::genesis(run.as_str());
    let mut heads = Vec::with_capacity(records.len());
    for record in &records {
        head = journal::next_head(
            &head,
            record.seq,
            &record.op,
            &record.args_digest,
            &record.payload,
        );
        heads.push(journal::head_text(&head));
    }
    let mut last = 0usize;
    for anchor in anchors {
        let index = usize::try_from(anchor.call_seq).unwrap_or(usize::MAX);
        let actual = index
            .checked_sub(1)
            .and_then(|i| heads.get(i))
            .cloned()
            .unwrap_or_else(|| "no record".to_string());
        if actual != anchor.head {
            // The edited record: the first whose own stored head no longer follows from the
            // records before it, or (when the heads were rewritten too) the first after the
            // last row that still vouches.
            let edited = (last..records.len())
                .find(|&i| records[i].head != heads[i])
                .unwrap_or(last);
            let first = records
                .get(edited)
                .map_or((anchor.call_seq, String::new()), |r| (r.seq, r.op.clone()));
            return Err(ReplayError::Tampered {
                run: run.to_string(),
                seq: first.0,
                op: first.1,
                row: anchor.row,
                expected: anchor.head.clone(),
                actual,
            });
        }
        last = last.max(index);
    }
    records.truncate(last);
    Ok(records)
}

impl crate::Host {
    /// Re-execute recorded run `run` offline against its journal (see [`crate::replay`]).
    pub async fn replay(&self, run: &RunId, options: ReplayOptions) -> Result<ReplayReport, Error> {
        let started = Instant::now();
        let ledger = self.ledger();
        let row = ledger.run(run)?.ok_or_else(|| ReplayError::UnknownRun {
            run: run.to_string(),
        })?;
        let records = ledger.journal(run)?;
        let anchors = ledger.journal_anchors(&row)?;
        let recorded_records = records.len() as u64;
        let records = vouched(run, records, &anchors)?;
        let packet = recorded_packet(run, &row)?;
        let bytes = match options.component {
            Some(bytes) => bytes,
            None => self.kept_component(run, &row).await?,
        };
        let offered = self
            .sandbox
            .runtime
            .digest_of(&bytes, Some(&row.component_digest));
        if offered != row.component_digest && !options.allow_other_digest {
            return Err(ReplayError::ComponentMismatch {
                run: run.to_string(),
                recorded: row.component_digest.clone(),
                offered,
            }
            .into());
        }
        let agent = AgentId::new(&row.agent_id)?;
        let offline = self.offline_services()?;
        offline
            .ledger
            .register_agent(&agent, row.tier, Some(&offered), "replay")?;
        offline.state.put_packet(&packet).await?;
        let phases_of: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.phase.clone(), r.op.clone()))
            .collect();
        let journal = Arc::new(Journal::replaying(run.as_str(), records, PastEnd::Halt));
        let report = lifecycle::run(
            Arc::new(offline),
            self.sandbox.clone(),
            &agent,
            &bytes,
            RunMode::Replay {
                run_id: run.clone(),
                journal: journal.clone(),
            },
        )
        .await?;
        let divergence = journal.divergence();
        let replay_outcome = outcome_code(&report.outcome);
        let replayed_records = journal.answered();
        // The recorded run's own end (a revocation, a failure the live host decided) is not
        // re-decided offline: the replay is identical when it asked for every recorded answer,
        // in order, and nothing else.
        let identical = divergence.is_none() && replayed_records == phases_of.len() as u64;
        Ok(ReplayReport {
            run_id: run.to_string(),
            agent_id: row.agent_id.clone(),
            task_id: row.task_id.clone(),
            verdict: if identical { "identical" } else { "diverged" },
            recorded_component: row.component_digest.clone(),
            replayed_component: report.component_digest.clone(),
            recorded_status: row.status.clone(),
            recorded_outcome: row.outcome.clone(),
            replay_outcome,
            phases: per_phase(&phases_of, replayed_records, divergence.as_ref()),
            divergence,
            halted: journal.halt_reason(),
            recorded_records,
            replayed_records,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The component run `run` ran, as the blob store kept it when the agent was bound.
    pub(crate) async fn kept_component(
        &self,
        run: &RunId,
        row: &crate::ledger::RunRow,
    ) -> Result<Vec<u8>, Error> {
        // Bytes this process hashed already are the component; the blob store's copy would
        // be read and hashed again for nothing.
        if let Some(known) = self.sandbox.runtime.known_source(&row.component_digest) {
            return Ok(known.to_vec());
        }
        let bytes = crate::artifacts::get_off_thread(&self.services.blobs, &row.component_digest)
            .await?
            .ok_or_else(|| ReplayError::ComponentNotKept {
                run: run.to_string(),
                digest: row.component_digest.clone(),
            })?;
        // The store verified them against the digest.
        self.sandbox.runtime.remember(&row.component_digest, &bytes);
        Ok(bytes)
    }

    /// A host of the same tier table and engine that touches nothing live.
    fn offline_services(&self) -> Result<Services, Error> {
        Ok(Services::new(ServiceParts {
            tiers: self.tiers().clone(),
            ledger: Ledger::scratch()?,
            state: Arc::new(MemoryState::new()),
            secrets: Arc::new(EmbeddedSecrets::in_memory()),
            llm: None,
            tools: ToolRegistry::empty(),
            blobs: Arc::new(MemoryBlobs::default()),
            workspaces: Workspaces::Temp(
                tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?,
            ),
            host_id: "replay".to_string(),
            data_dir: None,
            call_durability: CallDurability::Batched,
            // A replay never sends a request (the send hook halts it); the connector is inert.
            egress: self.services.egress.clone(),
        }))
    }
}

/// The packet run `run` began with, as its `runs` row keeps it.
pub(crate) fn recorded_packet(run: &RunId, row: &crate::ledger::RunRow) -> Result<Packet, Error> {
    Packet::from_json(&row.packet).map_err(|e| {
        ReplayError::Packet {
            run: run.to_string(),
            reason: e.to_string(),
        }
        .into()
    })
}

fn outcome_code(outcome: &RunOutcome) -> String {
    match outcome {
        RunOutcome::Completed => "COMPLETED".to_string(),
        RunOutcome::PlanOnly => "PLAN_ONLY".to_string(),
        RunOutcome::Revoked { reason, .. } => reason.as_str().to_string(),
        RunOutcome::Failed { code, .. } => code.as_str().to_string(),
    }
}

fn per_phase(
    records: &[(String, String)],
    replayed: u64,
    divergence: Option<&Divergence>,
) -> Vec<PhaseReplay> {
    let mut phases: Vec<PhaseReplay> = Vec::new();
    for (index, (phase, op)) in records.iter().enumerate() {
        let seq = index as u64 + 1;
        if phases.last().is_none_or(|p| p.phase != *phase) {
            phases.push(PhaseReplay {
                phase: phase.clone(),
                verdict: "identical",
                recorded: 0,
                replayed: 0,
                calls: Vec::new(),
            });
        }
        let Some(current) = phases.last_mut() else {
            continue;
        };
        current.recorded += 1;
        if seq <= replayed {
            current.replayed += 1;
        }
        let observation = matches!(
            op.as_str(),
            journal::OP_WALL | journal::OP_MONOTONIC | journal::OP_RANDOM
        );
        if !observation && current.calls.len() < 256 {
            current.calls.push(op.clone());
        }
        if divergence.is_some_and(|d| d.seq == seq) {
            current.verdict = "diverged";
        } else if seq > replayed && current.verdict == "identical" && current.replayed == 0 {
            current.verdict = "not-reached";
        }
    }
    phases
}
