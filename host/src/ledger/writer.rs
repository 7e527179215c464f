//! The single writer thread.
//!
//! Owning the write connection on one thread gives the chain a total order
//! without locks on the hot path, and lets every command queued while a
//! commit was in flight share the next transaction (group commit): the batch
//! interval is exactly one commit, with no timer.

use std::fmt::Write as _;
use std::iter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Transaction, TransactionBehavior, params, params_from_iter};

use super::chain::{self, Field, Head};
use super::error::LedgerError;
use super::journal_chain as journal;
use super::read;
use super::record::{AgentRecord, Entry, JournalHead, MetricsSnapshot, Registration, Text};
use super::schema::{self, ActionRow, MetricsRow, PromotionRow, Table, ViolationRow};
use crate::tier::Tier;

/// Upper bound on commands per transaction, so one commit's latency (and
/// the work lost if it fails) stays bounded under a flood.
pub(super) const MAX_BATCH: usize = 4096;

/// Where the writer sends an answer: a blocking caller or an async one (which must not
/// park a runtime thread while the batch commits).
pub(crate) enum Reply<T> {
    Blocking(SyncSender<Result<T, LedgerError>>),
    Async(tokio::sync::oneshot::Sender<Result<T, LedgerError>>),
}

impl<T> Reply<T> {
    /// Deliver the answer; a caller that gave up waiting is not an error.
    pub(crate) fn send(self, value: Result<T, LedgerError>) {
        match self {
            Reply::Blocking(sender) => drop(sender.send(value)),
            Reply::Async(sender) => drop(sender.send(value)),
        }
    }
}

pub(crate) enum Command {
    Append {
        at: SystemTime,
        entry: Entry,
        /// `None` for fire-and-forget.
        reply: Option<Reply<u64>>,
    },
    /// Entries that are written in the same transaction, in order (a call's journal records
    /// and its rows).
    AppendAll {
        at: SystemTime,
        entries: Vec<Entry>,
        reply: Option<Reply<u64>>,
    },
    Flush(Reply<()>),
    Register {
        at: SystemTime,
        agent_id: String,
        tier: Tier,
        digest: Option<String>,
        actor: String,
        reply: Reply<Registration>,
    },
    SetTier {
        at: SystemTime,
        agent_id: String,
        tier: Tier,
        reason: String,
        actor: String,
        reply: Reply<()>,
    },
    RecordRun {
        at: SystemTime,
        agent_id: String,
        tier: Tier,
        compliant: bool,
        run_id: Option<String>,
        reply: Reply<MetricsSnapshot>,
    },
}

impl Command {
    /// Reports `err` to a waiter that only wanted this command's result;
    /// hands back what needs batch-level accounting.
    fn fail(self, err: &LedgerError) -> Unanswered {
        // A waiter that gave up has nobody left to tell.
        match self {
            Command::Append { reply: None, .. } | Command::AppendAll { reply: None, .. } => {
                return Unanswered::Lost;
            }
            Command::Flush(r) => return Unanswered::Flush(r),
            Command::Append { reply: Some(r), .. } | Command::AppendAll { reply: Some(r), .. } => {
                r.send(Err(err.clone()));
            }
            Command::SetTier { reply: r, .. } => r.send(Err(err.clone())),
            Command::Register { reply, .. } => reply.send(Err(err.clone())),
            Command::RecordRun { reply, .. } => reply.send(Err(err.clone())),
        }
        Unanswered::None
    }
}

/// What is left to do for a command of a failed batch.
enum Unanswered {
    None,
    /// A fire-and-forget entry that will not be written.
    Lost,
    Flush(Reply<()>),
}

/// A processed command whose answer is held until its batch commits.
enum Done {
    Quiet,
    Seq(Reply<u64>, u64),
    Flush(Reply<()>),
    Unit(Reply<()>, Result<(), LedgerError>),
    Registered(Reply<Registration>, Result<Registration, LedgerError>),
    Run(Reply<MetricsSnapshot>, Result<MetricsSnapshot, LedgerError>),
}

impl Done {
    fn fail(self, err: &LedgerError) -> Unanswered {
        match self {
            Done::Quiet => return Unanswered::Lost,
            Done::Flush(r) => return Unanswered::Flush(r),
            Done::Seq(r, _) => r.send(Err(err.clone())),
            Done::Unit(r, _) => r.send(Err(err.clone())),
            Done::Registered(r, _) => r.send(Err(err.clone())),
            Done::Run(r, _) => r.send(Err(err.clone())),
        }
        Unanswered::None
    }
}

pub(crate) struct Writer {
    conn: Connection,
    state: State,
    /// The head's seq as of the last commit, for readers that need a bound without a query.
    committed: Arc<AtomicU64>,
}

/// Everything but the connection, so it can be borrowed mutably while a
/// transaction borrows the connection.
struct State {
    head: Head,
    insert_sql: [String; 4],
    /// Fire-and-forget entries lost to failed commits, for the next flush.
    lost: Option<(u64, LedgerError)>,
    done: Vec<Done>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, head: Head, committed: Arc<AtomicU64>) -> Self {
        conn.set_prepared_statement_cache_capacity(32);
        committed.store(head.seq.unsigned_abs(), Ordering::Release);
        Writer {
            committed,
            conn,
            state: State {
                head,
                insert_sql: Table::ALL.map(Table::insert_sql),
                lost: None,
                done: Vec::new(),
            },
        }
    }

    /// Runs until every sender is gone and the queue is drained. `room` is
    /// notified each time a batch is taken off the (bounded) queue, for the
    /// async appenders waiting for room.
    pub(crate) fn run(mut self, rx: Receiver<Command>, room: &tokio::sync::Notify) {
        let mut batch = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            room.notify_waiters();
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        let start = self.state.head.clone();
        let result = self.write_batch(batch);
        let state = &mut self.state;
        match result {
            Ok(()) => {
                self.committed
                    .store(state.head.seq.unsigned_abs(), Ordering::Release);
                for done in state.done.drain(..) {
                    match done {
                        Done::Quiet => {}
                        Done::Seq(r, seq) => r.send(Ok(seq)),
                        Done::Flush(r) => {
                            let res = match state.lost.take() {
                                Some((count, cause)) => Err(LedgerError::AppendsLost {
                                    count,
                                    cause: Box::new(cause),
                                }),
                                None => Ok(()),
                            };
                            r.send(res);
                        }
                        Done::Unit(r, res) => r.send(res),
                        Done::Registered(r, res) => r.send(res),
                        Done::Run(r, res) => r.send(res),
                    }
                }
            }
            Err(err) => {
                state.head = start;
                // Walk in queue order so each flush reports exactly the
                // entries lost before it.
                let mut lost_here = 0u64;
                let failed = state.done.drain(..).map(|d| d.fail(&err));
                let failed = failed.chain(batch.drain(..).map(|c| c.fail(&err)));
                for unanswered in failed {
                    match unanswered {
                        Unanswered::None => {}
                        Unanswered::Lost => {
                            lost_here += 1;
                            let (count, cause) = state.lost.take().unwrap_or((0, err.clone()));
                            state.lost = Some((count + 1, cause));
                        }
                        Unanswered::Flush(r) => {
                            let res = match state.lost.take() {
                                Some((count, cause)) => LedgerError::AppendsLost {
                                    count,
                                    cause: Box::new(cause),
                                },
                                None => err.clone(),
                            };
                            r.send(Err(res));
                        }
                    }
                }
                if lost_here > 0 {
                    tracing::error!(lost = lost_here, error = %err, "ledger commit failed; fire-and-forget entries were lost");
                } else {
                    tracing::warn!(error = %err, "ledger commit failed");
                }
            }
        }
    }

    /// One transaction for the whole batch. Commands are moved out of
    /// `batch` as they are applied; on error the rest stay for the caller
    /// to fail.
    fn write_batch(&mut self, batch: &mut Vec<Command>) -> Result<(), LedgerError> {
        let state = &mut self.state;
        if batch.iter().all(|c| matches!(c, Command::Flush(_))) {
            // Nothing to write: answering is the barrier.
            state.done.extend(batch.drain(..).map(|c| match c {
                Command::Flush(r) => Done::Flush(r),
                _ => Done::Quiet,
            }));
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another `Ledger` (or process) may have appended since our last
        // batch; the IMMEDIATE lock makes its committed head final, so
        // continuing from it keeps one linear chain.
        let stored = schema::meta_head(&tx)?;
        if stored != state.head {
            tracing::debug!(
                ours = state.head.seq,
                theirs = stored.seq,
                "ledger head moved; resuming from it"
            );
            state.head = stored;
        }
        let start_seq = state.head.seq;
        let mut cmds = batch.drain(..);
        for cmd in cmds.by_ref() {
            match state.apply(&tx, cmd) {
                Ok(done) => state.done.push(done),
                Err((cmd, err)) => {
                    // Keep the failing command and the rest for `fail`.
                    let rest: Vec<Command> = iter::once(*cmd).chain(cmds).collect();
                    batch.extend(rest);
                    return Err(err);
                }
            }
        }
        drop(cmds);
        if state.head.seq != start_seq {
            let mut stmt = tx.prepare_cached(
                "UPDATE meta SET value = CASE key WHEN 'head_seq' THEN ?1 ELSE ?2 END \
                 WHERE key IN ('head_seq', 'head_hash')",
            )?;
            stmt.execute(params![state.head.seq, state.head.hash])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Formats at the writer so the hot path only reads the clock.
fn stamp(at: SystemTime) -> String {
    // humantime cannot format outside 1970..=9999; a clock that far off is
    // clamped rather than allowed to fail the batch.
    let max = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    let at = at.clamp(UNIX_EPOCH, max);
    let mut out = String::with_capacity(24);
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(at));
    out
}

/// How a row writes a journal head: a chained one is the chain's head at this row (every
/// record before the row was written before it).
fn written_head(head: &JournalHead) -> Text {
    match head {
        JournalHead::Known(head) => head.clone(),
        JournalHead::Chained(chain) => journal::head_text(&chain.head()).into(),
    }
}

/// On error, the command comes back so its waiter can be told.
type Applied = Result<Done, (Box<Command>, LedgerError)>;

impl State {
    /// Applies one command inside the batch transaction. Errors returned
    /// here abort the batch; per-command failures found before anything is
    /// written (unknown agent, unreadable registry row) go to that caller
    /// only and leave the transaction usable.
    fn apply(&mut self, tx: &Transaction<'_>, cmd: Command) -> Applied {
        match cmd {
            Command::Append { at, entry, reply } => match self.append(tx, &stamp(at), &entry) {
                Ok(seq) => Ok(match reply {
                    Some(r) => Done::Seq(r, seq),
                    None => Done::Quiet,
                }),
                Err(e) => Err((Box::new(Command::Append { at, entry, reply }), e)),
            },
            Command::AppendAll { at, entries, reply } => {
                let mut last = self.head.seq.unsigned_abs();
                // One timestamp for the batch: its entries were handed over together.
                let ts = stamp(at);
                for entry in &entries {
                    match self.append(tx, &ts, entry) {
                        Ok(seq) => last = seq,
                        Err(e) => {
                            return Err((Box::new(Command::AppendAll { at, entries, reply }), e));
                        }
                    }
                }
                Ok(match reply {
                    Some(r) => Done::Seq(r, last),
                    None => Done::Quiet,
                })
            }
            Command::Flush(r) => Ok(Done::Flush(r)),
            Command::Register {
                at,
                agent_id,
                tier,
                digest,
                actor,
                reply,
            } => match read::agent(tx, &agent_id) {
                Err(e) => Ok(Done::Registered(reply, Err(e))),
                Ok(previous) => {
                    match self.register(
                        tx,
                        at,
                        &agent_id,
                        tier,
                        digest.as_deref(),
                        &actor,
                        previous,
                    ) {
                        Ok(reg) => Ok(Done::Registered(reply, Ok(reg))),
                        Err(e) => Err((
                            Box::new(Command::Register {
                                at,
                                agent_id,
                                tier,
                                digest,
                                actor,
                                reply,
                            }),
                            e,
                        )),
                    }
                }
            },
            Command::SetTier {
                at,
                agent_id,
                tier,
                reason,
                actor,
                reply,
            } => match read::agent(tx, &agent_id) {
                Err(e) => Ok(Done::Unit(reply, Err(e))),
                Ok(None) => Ok(Done::Unit(reply, Err(LedgerError::UnknownAgent(agent_id)))),
                Ok(Some(previous)) => match self.set_tier(tx, at, &previous, tier, &reason, &actor)
                {
                    Ok(()) => Ok(Done::Unit(reply, Ok(()))),
                    Err(e) => Err((
                        Box::new(Command::SetTier {
                            at,
                            agent_id,
                            tier,
                            reason,
                            actor,
                            reply,
                        }),
                        e,
                    )),
                },
            },
            Command::RecordRun {
                at,
                agent_id,
                tier,
                compliant,
                run_id,
                reply,
            } => match read::metrics(tx, &agent_id) {
                Err(e) => Ok(Done::Run(reply, Err(e))),
                Ok(last) => match self.record_run(
                    tx,
                    at,
                    (&agent_id, run_id.as_deref()),
                    tier,
                    compliant,
                    last,
                ) {
                    Ok(snapshot) => Ok(Done::Run(reply, Ok(snapshot))),
                    Err(e) => Err((
                        Box::new(Command::RecordRun {
                            at,
                            agent_id,
                            tier,
                            compliant,
                            run_id,
                            reply,
                        }),
                        e,
                    )),
                },
            },
        }
    }

    /// Appends one chained row; the head moves only after the insert
    /// succeeded, and the caller rewinds it if the batch later fails.
    fn insert(
        &mut self,
        tx: &Transaction<'_>,
        table: Table,
        fields: &[Field<'_>],
    ) -> Result<u64, LedgerError> {
        let seq = self.head.seq + 1;
        let hash = chain::row_hash(
            self.head.hash.as_bytes(),
            table.name(),
            seq,
            table.hashed(fields),
        );
        let sql = &self.insert_sql[table as usize];
        let mut stmt = tx.prepare_cached(sql)?;
        let params = iter::once(Field::Int(seq))
            .chain(fields.iter().copied())
            .chain([Field::text(&self.head.hash), Field::text(&hash)]);
        stmt.execute(params_from_iter(params))?;
        self.head = Head { seq, hash };
        Ok(seq.unsigned_abs())
    }

    fn append(
        &mut self,
        tx: &Transaction<'_>,
        ts: &str,
        entry: &Entry,
    ) -> Result<u64, LedgerError> {
        match entry {
            Entry::Action(r) => {
                let s = &*r.subject;
                let result_digest = r.result_digest.as_ref().map(written_head);
                let row = ActionRow {
                    timestamp: ts,
                    agent_id: &s.agent_id,
                    agent_version: Some(&s.agent_version),
                    tier: s.tier,
                    action: &r.action,
                    decision: &r.decision,
                    confidence: r.confidence,
                    success: r.success,
                    error_type: r.error_type.as_deref(),
                    error_message: r.error_message.as_deref(),
                    details: r.details.as_deref(),
                    task_id: s.task_id.as_deref(),
                    phase: r.phase,
                    component_digest: s.component_digest.as_deref(),
                    policy_revision: s.policy_revision.as_deref(),
                    run_id: s.run_id.as_deref(),
                    call_seq: r.call_seq,
                    result_digest: result_digest.as_deref(),
                };
                self.insert(tx, Table::Actions, &row.fields())
            }
            Entry::Violation(r) => {
                let s = &*r.subject;
                let row = ViolationRow {
                    timestamp: ts,
                    agent_id: &s.agent_id,
                    tier: s.tier,
                    task_id: s.task_id.as_deref(),
                    phase: r.phase,
                    violation_type: &r.violation_type,
                    procedure: r.procedure,
                    resource: r.resource.as_deref(),
                    details: &r.details,
                    component_digest: s.component_digest.as_deref(),
                    policy_revision: s.policy_revision.as_deref(),
                    run_id: s.run_id.as_deref(),
                };
                self.insert(tx, Table::Violations, &row.fields())
            }
            Entry::Promotion(r) => {
                let row = PromotionRow {
                    timestamp: ts,
                    agent_id: &r.agent_id,
                    from_tier: r.from_tier,
                    to_tier: r.to_tier,
                    reason: &r.reason,
                    actor: &r.actor,
                };
                self.insert(tx, Table::Promotions, &row.fields())
            }
            Entry::Journal(r) => {
                let args_digest = r.args_digest.resolve();
                let head = match &r.head {
                    JournalHead::Known(head) => head.clone(),
                    // The run's records reach the writer in their order: extending the chain
                    // here gives each the head the guest's thread would have computed.
                    JournalHead::Chained(chain) => {
                        journal::head_text(&chain.extend(r.seq, &r.op, &args_digest, &r.payload))
                            .into()
                    }
                };
                tx.prepare_cached(
                    "INSERT INTO journal (run_id, seq, phase, op, args_digest, payload, head) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    &*r.run_id,
                    i64::try_from(r.seq).unwrap_or(i64::MAX),
                    r.phase,
                    &*r.op,
                    &*args_digest,
                    r.payload,
                    &*head
                ])?;
                Ok(self.head.seq.unsigned_abs())
            }
            Entry::Run(r) => {
                tx.prepare_cached(
                    "INSERT INTO runs (run_id, agent_id, task_id, tier, component_digest, status, \
                     phase, attempts, host, pid, lock_owner, started_at, updated_at, outcome, \
                     calls, packet, from_row, to_row) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?15, ?11, ?11, ?12, ?13, ?14, \
                     ?16, ?17) \
                     ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, \
                     phase = excluded.phase, attempts = excluded.attempts, host = excluded.host, \
                     pid = excluded.pid, lock_owner = excluded.lock_owner, \
                     updated_at = excluded.updated_at, \
                     outcome = excluded.outcome, calls = excluded.calls, to_row = excluded.to_row",
                )?
                .execute(params![
                    &*r.run_id,
                    &*r.agent_id,
                    &*r.task_id,
                    r.tier.level(),
                    &*r.component_digest,
                    r.status,
                    r.phase,
                    r.attempts,
                    &*r.host,
                    r.pid,
                    ts,
                    r.outcome.as_deref(),
                    i64::try_from(r.calls).unwrap_or(i64::MAX),
                    &*r.packet,
                    &*r.lock_owner,
                    i64::try_from(r.from_row).unwrap_or(i64::MAX),
                    // Every row queued before this one: once the run ended, none of it follows.
                    self.head.seq
                ])?;
                Ok(self.head.seq.unsigned_abs())
            }
        }
    }

    /// A registry event as an action row; registry events have no build,
    /// task or phase.
    fn registry_action(
        &mut self,
        tx: &Transaction<'_>,
        ts: &str,
        agent: &AgentRecord,
        action: &str,
        details: &str,
    ) -> Result<u64, LedgerError> {
        let row = ActionRow {
            timestamp: ts,
            agent_id: &agent.agent_id,
            agent_version: None,
            tier: agent.tier,
            action,
            decision: "recorded",
            confidence: None,
            success: true,
            error_type: None,
            error_message: None,
            details: Some(details),
            task_id: None,
            phase: None,
            component_digest: agent.component_digest.as_deref(),
            policy_revision: None,
            run_id: None,
            call_seq: None,
            result_digest: None,
        };
        self.insert(tx, Table::Actions, &row.fields())
    }

    fn promotion(
        &mut self,
        tx: &Transaction<'_>,
        row: &PromotionRow<'_>,
    ) -> Result<u64, LedgerError> {
        self.insert(tx, Table::Promotions, &row.fields())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per column of the registration row"
    )]
    fn register(
        &mut self,
        tx: &Transaction<'_>,
        at: SystemTime,
        agent_id: &str,
        tier: Tier,
        digest: Option<&str>,
        actor: &str,
        previous: Option<AgentRecord>,
    ) -> Result<Registration, LedgerError> {
        let ts = stamp(at);
        let Some(prev) = previous else {
            let agent = AgentRecord {
                agent_id: agent_id.to_string(),
                tier,
                component_digest: digest.map(str::to_string),
                registered_at: ts.clone(),
                updated_at: ts.clone(),
            };
            tx.prepare_cached(
                "INSERT INTO agents (agent_id, tier, component_digest, registered_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![agent_id, tier.level(), digest, ts])?;
            let details = serde_json::json!({ "actor": actor, "component_digest": digest });
            self.registry_action(tx, &ts, &agent, "agent.register", &details.to_string())?;
            self.promotion(
                tx,
                &PromotionRow {
                    timestamp: &ts,
                    agent_id,
                    from_tier: None,
                    to_tier: tier,
                    reason: "registered",
                    actor,
                },
            )?;
            return Ok(Registration {
                agent,
                previous: None,
            });
        };
        // Re-registering without a component keeps the binding; a new one is a rebind.
        let mut agent = AgentRecord {
            tier,
            component_digest: digest.map(str::to_string).or(prev.component_digest.clone()),
            ..prev.clone()
        };
        if agent == prev {
            return Ok(Registration {
                agent,
                previous: Some(prev),
            });
        }
        agent.updated_at = ts.clone();
        self.update_agent(tx, &agent)?;
        if prev.tier != tier {
            self.promotion(
                tx,
                &PromotionRow {
                    timestamp: &ts,
                    agent_id,
                    from_tier: Some(prev.tier),
                    to_tier: tier,
                    reason: "re-registered",
                    actor,
                },
            )?;
        }
        if prev.component_digest != agent.component_digest {
            let details = serde_json::json!({
                "actor": actor,
                "from": prev.component_digest,
                "to": agent.component_digest,
            });
            self.registry_action(tx, &ts, &agent, "agent.rebind", &details.to_string())?;
        }
        Ok(Registration {
            agent,
            previous: Some(prev),
        })
    }

    fn set_tier(
        &mut self,
        tx: &Transaction<'_>,
        at: SystemTime,
        previous: &AgentRecord,
        tier: Tier,
        reason: &str,
        actor: &str,
    ) -> Result<(), LedgerError> {
        let ts = stamp(at);
        let agent = AgentRecord {
            tier,
            updated_at: ts.clone(),
            ..previous.clone()
        };
        self.update_agent(tx, &agent)?;
        self.promotion(
            tx,
            &PromotionRow {
                timestamp: &ts,
                agent_id: &agent.agent_id,
                from_tier: Some(previous.tier),
                to_tier: tier,
                reason,
                actor,
            },
        )?;
        Ok(())
    }

    fn update_agent(
        &mut self,
        tx: &Transaction<'_>,
        agent: &AgentRecord,
    ) -> Result<(), LedgerError> {
        tx.prepare_cached(
            "UPDATE agents SET tier = ?2, component_digest = ?3, updated_at = ?4 WHERE agent_id = ?1",
        )?
        .execute(params![
            agent.agent_id,
            agent.tier.level(),
            agent.component_digest,
            agent.updated_at
        ])?;
        Ok(())
    }

    fn record_run(
        &mut self,
        tx: &Transaction<'_>,
        at: SystemTime,
        (agent_id, run_id): (&str, Option<&str>),
        tier: Tier,
        compliant: bool,
        last: Option<MetricsSnapshot>,
    ) -> Result<MetricsSnapshot, LedgerError> {
        let (total, ok, streak) = last.map_or((0, 0, 0), |m| {
            (m.total_runs, m.compliant_runs, m.consecutive_compliant)
        });
        let ts = stamp(at);
        let row = MetricsRow {
            agent_id,
            current_tier: tier,
            total_runs: total.saturating_add(1),
            compliant_runs: ok.saturating_add(u64::from(compliant)),
            consecutive_compliant: if compliant {
                streak.saturating_add(1)
            } else {
                0
            },
            last_active_at: &ts,
            run_id,
        };
        let seq = self.insert(tx, Table::Metrics, &row.fields())?;
        Ok(MetricsSnapshot {
            seq,
            agent_id: agent_id.to_string(),
            current_tier: tier,
            total_runs: row.total_runs,
            compliant_runs: row.compliant_runs,
            consecutive_compliant: row.consecutive_compliant,
            last_active_at: ts,
        })
    }
}
