//! Tamper-evident audit ledger.
//!
//! Every governance event (actions, violations, tier changes, run metrics)
//! is a row in SQLite, and all rows of the four audit tables form one hash
//! chain in a global `seq` order: each row's `row_hash` covers its content,
//! its table, its `seq` and the previous row's hash. Editing, deleting or
//! reordering rows is therefore detectable by [`Ledger::verify`], and the
//! reported head can be published elsewhere to detect truncation or a
//! wholesale rewrite.
//!
//! Writes go through one background thread (see `writer`): [`Ledger::append`]
//! only enqueues, so agents never wait on disk, while group commit keeps
//! throughput high. Calls that must be on disk before the caller continues
//! (registry changes, [`Ledger::append_durable`], [`Ledger::flush`]) wait for
//! the commit of the batch that carries them.
//!
//! The queue holds at most [`QUEUE_CAPACITY`] commands: when the writer falls
//! behind (a slow disk, a flood of calls), appenders wait for room —
//! [`Ledger::append`] blocks its thread, [`Ledger::append_async`] yields —
//! rather than the host's memory growing without bound. Nothing is dropped.

mod chain;
mod error;
pub(crate) mod journal_chain;
mod read;
mod record;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

pub use chain::GENESIS_HASH;
pub use error::LedgerError;
pub use read::{
    BreakReason, ChainBreak, ChainRegistration, ChainRevocation, LedgerQuery, LedgerRow,
    RegistryMismatch, VerifyReport,
};
pub use read::{JournalAnchor, RunFilter, RunRow};
pub use record::{
    ActionRecord, AgentRecord, ArgsDigest, Entry, JournalHead, JournalRecord, MetricsSnapshot,
    PromotionRecord, Recorded, Registration, RunRecord, Subject, Text, ViolationRecord,
};
pub use schema::{SCHEMA_VERSION, Table};

use crate::tier::Tier;
use writer::{Command, Reply, Writer};

/// How long a connection waits for a lock held by another connection
/// (a checkpoint, another process reading) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands the writer's queue holds before appenders wait: twice a batch, so
/// the writer always has a full next batch while one commits. With entries of
/// at most a few KiB (an agent's note is at most 8 KiB) it bounds the queue to
/// tens of MiB.
pub const QUEUE_CAPACITY: usize = 8192;

/// The queue of a [`Ledger::scratch`] ledger.
const SCRATCH_QUEUE_CAPACITY: usize = 64;

/// How much a commit survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: survives a process crash; an OS crash or power
    /// loss may drop the last commits (never corrupts the chain).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is reported.
    Full,
}

/// A handle to one ledger. Cloning is cheap; the writer thread stops (after
/// committing everything queued) when the last clone is dropped.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only while dropping, to hang up on the writer. Bounded: a send
    /// waits while [`QUEUE_CAPACITY`] commands are queued.
    tx: Option<SyncSender<Command>>,
    /// Notified by the writer each time it takes a batch off the queue, for
    /// async appenders waiting for room.
    room: Arc<tokio::sync::Notify>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
    path: Option<PathBuf>,
    /// The writer's head seq as of its last commit.
    committed: Arc<AtomicU64>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Hanging up lets the writer drain the queue, commit, and exit.
        drop(self.tx.take());
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("ledger writer thread panicked; queued entries may be lost");
        }
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn check_agent_id(agent_id: &str) -> Result<(), LedgerError> {
    if agent_id.is_empty() {
        Err(LedgerError::EmptyAgentId)
    } else {
        Ok(())
    }
}

impl Ledger {
    /// Opens or creates a ledger file with [`Durability::Normal`].
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_with(path, Durability::Normal)
    }

    /// Opens or creates a ledger file. A file that is not a ledger, or is
    /// from a newer Warden, is rejected without being modified.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Ledger, LedgerError> {
        schema::check_header(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |flags| -> Result<Connection, LedgerError> {
            let conn =
                Connection::open_with_flags(path, flags).map_err(|e| schema::classify(path, e))?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| schema::classify(path, e))?;
            Ok(conn)
        };
        let mut conn = open(flags)?;
        schema::prepare(&mut conn, path, true)?;
        Ledger::start(
            conn,
            open(flags)?,
            durability,
            Some(path.to_path_buf()),
            QUEUE_CAPACITY,
        )
    }

    /// Opens an existing ledger file for reading only: nothing is created, migrated or
    /// written — not even SQLite's WAL index when the directory is read-only (an auditor's
    /// copy), where the file is read as immutable. Queries and [`Ledger::verify`] work;
    /// appends are refused ([`LedgerError::ReadOnly`]).
    pub fn open_read_only(path: &Path) -> Result<Ledger, LedgerError> {
        schema::check_header(path)?;
        if !path.is_file() {
            return Err(LedgerError::Io {
                path: path.to_path_buf(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such ledger file",
                )),
            });
        }
        let plain = || -> Result<Connection, LedgerError> {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn =
                Connection::open_with_flags(path, flags).map_err(|e| schema::classify(path, e))?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| schema::classify(path, e))?;
            schema::check_current(&conn, path)?;
            Ok(conn)
        };
        // A WAL database needs its `-shm` index, which a read-only directory cannot hold:
        // there nobody can be writing through this path, so the file is read as it is.
        let immutable = || -> Result<Connection, LedgerError> {
            let mut uri = String::from("file:");
            for byte in path.as_os_str().as_encoded_bytes() {
                match byte {
                    b'?' | b'#' | b'%' => uri.push_str(&format!("%{byte:02X}")),
                    _ => uri.push(char::from(*byte)),
                }
            }
            uri.push_str("?immutable=1");
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn =
                Connection::open_with_flags(&uri, flags).map_err(|e| schema::classify(path, e))?;
            schema::check_current(&conn, path)?;
            Ok(conn)
        };
        let reader = match plain() {
            Ok(conn) => conn,
            Err(error @ (LedgerError::NotALedger { .. } | LedgerError::NeedsMigration { .. })) => {
                return Err(error);
            }
            Err(_) => immutable()?,
        };
        reader.pragma_update(None, "query_only", true)?;
        let head = schema::load_head(&reader)?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                tx: None,
                room: Arc::new(tokio::sync::Notify::new()),
                writer: None,
                reader: Mutex::new(reader),
                path: Some(path.to_path_buf()),
                committed: Arc::new(AtomicU64::new(head.seq.unsigned_abs())),
            }),
        })
    }

    /// A private, process-local ledger that vanishes with its last handle.
    pub fn in_memory() -> Result<Ledger, LedgerError> {
        Ledger::memory(QUEUE_CAPACITY)
    }

    /// An in-memory ledger for rows nobody keeps (an offline replay's): its queue is small,
    /// since setting up [`QUEUE_CAPACITY`] slots costs more than a short replay itself.
    pub(crate) fn scratch() -> Result<Ledger, LedgerError> {
        Ledger::memory(SCRATCH_QUEUE_CAPACITY)
    }

    fn memory(capacity: usize) -> Result<Ledger, LedgerError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // The memdb VFS shares a database between connections that name it
        // with a leading `/`, and, unlike shared cache, uses ordinary file
        // locks, so the reader waits on busy_timeout instead of failing.
        let name = format!(
            "file:/warden-ledger-{}-{}?vfs=memdb",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let label = Path::new(":memory:");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = || -> Result<Connection, LedgerError> {
            let conn = Connection::open_with_flags(&name, flags)
                .map_err(|e| schema::classify(label, e))?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(conn)
        };
        let mut conn = open()?;
        schema::prepare(&mut conn, label, false)?;
        Ledger::start(conn, open()?, Durability::Normal, None, capacity)
    }

    fn start(
        writer_conn: Connection,
        reader: Connection,
        durability: Durability,
        path: Option<PathBuf>,
        capacity: usize,
    ) -> Result<Ledger, LedgerError> {
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        writer_conn.pragma_update(None, "synchronous", sync)?;
        reader.pragma_update(None, "query_only", true)?;
        let head = schema::load_head(&writer_conn)?;
        let (tx, rx) = mpsc::sync_channel(capacity);
        let room = Arc::new(tokio::sync::Notify::new());
        let committed = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(writer_conn, head, Arc::clone(&committed));
        let writer_room = Arc::clone(&room);
        let handle = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || writer.run(rx, &writer_room))
            .map_err(|e| LedgerError::Io {
                path: path.clone().unwrap_or_default(),
                source: Arc::new(e),
            })?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                tx: Some(tx),
                room,
                writer: Some(handle),
                reader: Mutex::new(reader),
                path,
                committed,
            }),
        })
    }

    /// The ledger file; `None` for [`Ledger::in_memory`].
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Why a handle without a writer refuses to record: it was opened read-only (the
    /// writer's sender is only taken away otherwise while the last handle drops).
    fn read_only(&self) -> LedgerError {
        LedgerError::ReadOnly {
            path: self.inner.path.clone().unwrap_or_default(),
        }
    }

    /// Queues a command, blocking the thread while the queue is full.
    fn send(&self, cmd: Command) -> Result<(), LedgerError> {
        match &self.inner.tx {
            Some(tx) => tx.send(cmd).map_err(|_| LedgerError::WriterStopped),
            None => Err(self.read_only()),
        }
    }

    /// Queues a command, yielding (not blocking a runtime thread) while the
    /// queue is full.
    async fn send_async(&self, mut cmd: Command) -> Result<(), LedgerError> {
        let Some(tx) = &self.inner.tx else {
            return Err(self.read_only());
        };
        // The queue almost always has room: no waiter is registered for that.
        match tx.try_send(cmd) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(back)) => cmd = back,
            Err(TrySendError::Disconnected(_)) => return Err(LedgerError::WriterStopped),
        }
        loop {
            // Registered before the attempt, so room made between a full
            // queue and the wait still wakes us.
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match tx.try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    cmd = back;
                    room.await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(LedgerError::WriterStopped),
            }
        }
    }

    /// Sends a command and waits for the commit that carries it.
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LedgerError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(make(Reply::Blocking(reply)))?;
        answer.recv().map_err(|_| LedgerError::WriterStopped)?
    }

    async fn call_async<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, LedgerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send_async(make(Reply::Async(reply))).await?;
        answer.await.map_err(|_| LedgerError::WriterStopped)?
    }

    /// [`Ledger::append_durable`] for async callers: waits without blocking a thread.
    pub async fn append_durable_async(&self, entry: impl Into<Entry>) -> Result<u64, LedgerError> {
        let (at, entry) = (now(), entry.into());
        self.call_async(|reply| Command::Append {
            at,
            entry,
            reply: Some(reply),
        })
        .await
    }

    /// [`Ledger::flush`] for async callers.
    pub async fn flush_async(&self) -> Result<(), LedgerError> {
        self.call_async(Command::Flush).await
    }

    /// [`Ledger::record_run`] for async callers; the row names `run_id`, the run it counts.
    pub async fn record_run_async(
        &self,
        agent_id: &str,
        tier: Tier,
        compliant: bool,
        run_id: Option<&crate::id::RunId>,
    ) -> Result<MetricsSnapshot, LedgerError> {
        let run_id = run_id.map(|r| r.as_str().to_string());
        self.call_async(record_run_command(agent_id, tier, compliant, run_id)?)
            .await
    }

    /// Records `entry` without waiting for its commit. It is committed with
    /// the next batch; if that commit fails the loss is logged and reported by
    /// the next [`Ledger::flush`]. While [`QUEUE_CAPACITY`] commands are
    /// queued it blocks the thread until the writer makes room: the caller,
    /// not memory, absorbs a flood. Async callers use [`Ledger::append_async`].
    pub fn append(&self, entry: impl Into<Entry>) {
        let cmd = Command::Append {
            at: now(),
            entry: entry.into(),
            reply: None,
        };
        if self.send(cmd).is_err() {
            tracing::error!("ledger writer has stopped; entry dropped");
        }
    }

    /// [`Ledger::append`] for async callers: waits for room in the queue
    /// without blocking a thread, never for the commit.
    pub async fn append_async(&self, entry: impl Into<Entry>) {
        let cmd = Command::Append {
            at: now(),
            entry: entry.into(),
            reply: None,
        };
        if self.send_async(cmd).await.is_err() {
            tracing::error!("ledger writer has stopped; entry dropped");
        }
    }

    /// Queue `entries` to be written in one transaction, in order: all of them are
    /// committed or none is. Waits only while the queue is full, like [`Ledger::append_async`];
    /// `durable` waits for the commit too.
    pub async fn append_all_async(
        &self,
        entries: Vec<Entry>,
        durable: bool,
    ) -> Result<(), LedgerError> {
        let at = now();
        if durable {
            self.call_async(|reply| Command::AppendAll {
                at,
                entries,
                reply: Some(reply),
            })
            .await
            .map(drop)
        } else {
            self.send_async(Command::AppendAll {
                at,
                entries,
                reply: None,
            })
            .await
        }
    }

    /// Queue `entries` for one transaction without waiting; a full queue (or a stopped
    /// writer) hands them back.
    pub fn try_append_all(&self, entries: Vec<Entry>) -> Result<(), Vec<Entry>> {
        let Some(tx) = &self.inner.tx else {
            return Err(entries);
        };
        let cmd = Command::AppendAll {
            at: now(),
            entries,
            reply: None,
        };
        match tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(cmd) | TrySendError::Disconnected(cmd)) => match cmd {
                Command::AppendAll { entries, .. } => Err(entries),
                _ => Err(Vec::new()),
            },
        }
    }

    /// Records `entry` and returns its `seq` once committed.
    pub fn append_durable(&self, entry: impl Into<Entry>) -> Result<u64, LedgerError> {
        let (at, entry) = (now(), entry.into());
        self.call(|reply| Command::Append {
            at,
            entry,
            reply: Some(reply),
        })
    }

    /// Returns once everything appended before this call is committed, or
    /// reports fire-and-forget entries lost since the previous flush.
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.call(Command::Flush)
    }

    /// Recomputes the whole chain from a consistent snapshot.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        read::verify(&mut self.inner.reader.lock())
    }

    /// The newest `limit` rows across all tables, oldest first.
    pub fn tail(&self, limit: usize) -> Result<Vec<LedgerRow>, LedgerError> {
        read::tail(&mut self.inner.reader.lock(), limit)
    }

    /// How many allowed, successful calls of each action (`blackboard.write`,
    /// `messaging.send`, …) the rows of `task_id` record. Committed rows only: flush first
    /// to count a run that just ended.
    pub fn action_counts(
        &self,
        task_id: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, LedgerError> {
        read::action_counts(&self.inner.reader.lock(), task_id)
    }

    /// Rows matching `q`, oldest first.
    pub fn query(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>, LedgerError> {
        read::query(&mut self.inner.reader.lock(), q)
    }

    /// Adds `agent_id` to the registry, or updates its tier and component
    /// digest; every change is also recorded as chained rows (`agent.register`
    /// / `agent.rebind` actions, promotions). Durable on return.
    pub fn register_agent(
        &self,
        agent_id: &str,
        tier: Tier,
        component_digest: Option<&str>,
        actor: &str,
    ) -> Result<Registration, LedgerError> {
        check_agent_id(agent_id)?;
        self.call(|reply| Command::Register {
            at: now(),
            agent_id: agent_id.to_string(),
            tier,
            digest: component_digest.map(str::to_string),
            actor: actor.to_string(),
            reply,
        })
    }

    /// Changes a registered agent's tier, recording a promotion row even if
    /// the tier is unchanged (the decision itself is auditable). Durable on
    /// return.
    pub fn set_tier(
        &self,
        agent_id: &str,
        tier: Tier,
        reason: &str,
        actor: &str,
    ) -> Result<(), LedgerError> {
        check_agent_id(agent_id)?;
        self.call(|reply| Command::SetTier {
            at: now(),
            agent_id: agent_id.to_string(),
            tier,
            reason: reason.to_string(),
            actor: actor.to_string(),
            reply,
        })
    }

    /// Whether the ledger is a file, which outlives the process (an in-memory one does not,
    /// so nothing waits on its commits to survive a crash).
    pub fn is_persistent(&self) -> bool {
        self.inner.path.is_some()
    }

    /// The `runs` row of `run_id`.
    pub fn run(&self, run_id: &crate::id::RunId) -> Result<Option<RunRow>, LedgerError> {
        read::run(&self.inner.reader.lock(), run_id.as_str())
    }

    /// Runs, newest first, narrowed by `filter`.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, LedgerError> {
        read::runs(&self.inner.reader.lock(), filter)
    }

    /// The latest run of `agent_id`.
    pub fn last_run(&self, agent_id: &str) -> Result<Option<RunRow>, LedgerError> {
        read::last_run(&self.inner.reader.lock(), agent_id)
    }

    /// The journal of `run_id`, in order.
    pub fn journal(&self, run_id: &crate::id::RunId) -> Result<Vec<Recorded>, LedgerError> {
        read::journal(&self.inner.reader.lock(), run_id.as_str())
    }

    /// The chained rows of `run_id` that vouch for its journal, in order.
    pub fn journal_anchors(&self, run: &RunRow) -> Result<Vec<JournalAnchor>, LedgerError> {
        read::anchors(&self.inner.reader.lock(), run)
    }

    /// The seq of the last committed row: rows queued from now on come after it. An atomic
    /// the writer sets at each commit, so a run's start asks no query of the reader.
    pub(crate) fn committed_seq(&self) -> u64 {
        self.inner.committed.load(Ordering::Acquire)
    }

    /// The phases `run_id` entered, with the time of each, in order.
    pub fn run_phases(&self, run: &RunRow) -> Result<Vec<(String, String)>, LedgerError> {
        read::run_phases(&self.inner.reader.lock(), run)
    }

    /// The registry row for `agent_id`.
    pub fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, LedgerError> {
        read::agent(&self.inner.reader.lock(), agent_id)
    }

    /// How the agent's registry row disagrees with the chain, if it does.
    pub fn registry_mismatch(
        &self,
        record: &AgentRecord,
    ) -> Result<Option<RegistryMismatch>, LedgerError> {
        read::registry_mismatch(&self.inner.reader.lock(), record)
    }

    /// The agent's revocation as the chain holds it, unless a later reinstatement lifted it.
    /// An indexed lookup, never a scan of the agent's history.
    pub fn revocation(&self, agent_id: &str) -> Result<Option<ChainRevocation>, LedgerError> {
        read::chain_revocation(&self.inner.reader.lock(), agent_id)
    }

    /// Every registered agent, by id.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, LedgerError> {
        read::agents(&self.inner.reader.lock())
    }

    /// Counts one run of `agent_id` and returns the new snapshot. The
    /// read-modify-write happens on the writer thread, so concurrent callers
    /// never lose an update. Durable on return.
    pub fn record_run(
        &self,
        agent_id: &str,
        tier: Tier,
        compliant: bool,
    ) -> Result<MetricsSnapshot, LedgerError> {
        self.call(record_run_command(agent_id, tier, compliant, None)?)
    }

    /// The latest metrics snapshot for `agent_id`.
    pub fn metrics(&self, agent_id: &str) -> Result<Option<MetricsSnapshot>, LedgerError> {
        read::metrics(&self.inner.reader.lock(), agent_id)
    }
}

/// The writer command for one run's metrics, shared by the blocking and async callers.
fn record_run_command(
    agent_id: &str,
    tier: Tier,
    compliant: bool,
    run_id: Option<String>,
) -> Result<impl FnOnce(Reply<MetricsSnapshot>) -> Command, LedgerError> {
    check_agent_id(agent_id)?;
    let agent_id = agent_id.to_string();
    Ok(move |reply| Command::RecordRun {
        at: now(),
        agent_id,
        tier,
        compliant,
        run_id,
        reply,
    })
}
