//! [`StateStore`] on SQLite: the Redis keyspace as three tables.
//!
//! `strings(key, value, expires_at_ms)`, `hashes(key, field, value)` and `lists(key, idx,
//! value)` hold exactly what `SET`/`HSET`/`LPUSH`/`RPUSH` would, so the Redis backend is a
//! direct mapping. TTLs are wall-clock milliseconds checked on every read (lazy expiry, like
//! Redis), and expired rows are purged every [`PURGE_EVERY`] writes.
//!
//! A file-backed store is shared by every `warden` process on the machine: WAL journal, a
//! 5 s busy timeout, and `BEGIN IMMEDIATE` around every read-modify-write (locks, counters,
//! list pushes) so two processes never interleave one. Its calls run on the blocking pool,
//! since they can wait on another process; in-memory calls take microseconds and run inline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::quota::{BYTES_FIELD, ENTRIES_FIELD, entry_bytes};
use super::{
    Admission, AgentId, Approval, ArtifactRef, Checkpoint, ErrorCounts, GateDecision, Handoff,
    LockAttempt, LockOwner, Once, Packet, Quota, Receipt, Revocation, RunId, StateError,
    StateStore, TaskId, Transition, TransitionResult, Ttl, Usage, decode, decode_all, decoded,
    encode, keys, kv_field, stored_id,
};

mod coordination;

const BACKEND: &str = "embedded";

/// Schema version in `PRAGMA user_version`; a newer file is refused rather than misread.
/// Version 2 added the artifact index and the usage hashes of the quotas; a version 1 file
/// is brought up to it when opened ([`migrate_v2`]).
const SCHEMA_VERSION: i64 = 2;

/// Expired strings are deleted once every this many writes.
const PURGE_EVERY: u32 = 1024;

/// How long a file-backed store waits for another process's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strings (
    key           TEXT NOT NULL PRIMARY KEY,
    value         TEXT NOT NULL,
    expires_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS strings_expiry ON strings (expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS hashes (
    key   TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lists (
    key   TEXT NOT NULL,
    idx   INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
";

/// The built-in [`StateStore`]: SQLite, in memory or in a file shared between processes.
#[derive(Clone)]
pub struct EmbeddedState {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    /// `None` in memory.
    path: Option<PathBuf>,
    writes: AtomicU32,
    /// The thread that runs a file store's operations; `None` in memory.
    worker: Option<std::sync::mpsc::Sender<Job>>,
}

/// One operation for the worker thread; it reports back through its own channel.
type Job = Box<dyn FnOnce() + Send>;

/// Start the thread that runs every operation of one file store, in arrival order. One
/// thread rather than the blocking pool: operations serialize on the connection anyway, and a
/// thousand concurrent runs would otherwise park hundreds of pool threads on its mutex. It
/// ends when the store's last handle is dropped (its sender with it).
fn spawn_worker(path: &Path) -> Result<std::sync::mpsc::Sender<Job>, StateError> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("warden-state".into())
        .spawn(move || {
            while let Ok(job) = queue.recv() {
                // A panicking operation drops its reply channel (its caller sees an error);
                // the thread keeps serving the others.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|source| StateError::Open {
            backend: BACKEND,
            location: path.display().to_string(),
            source: Box::new(source),
        })?;
    Ok(jobs)
}

impl std::fmt::Debug for EmbeddedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedState")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Failure inside one operation; converted to [`StateError`] at the API boundary.
enum OpError {
    Sqlite(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sqlite(e)
    }
}

impl From<StateError> for OpError {
    fn from(e: StateError) -> Self {
        OpError::State(e)
    }
}

impl From<OpError> for StateError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Sqlite(source) => StateError::Backend {
                backend: BACKEND,
                source: Box::new(source),
            },
            OpError::State(e) => e,
        }
    }
}

type OpResult<T> = Result<T, OpError>;

/// Whether an operation writes (and so counts towards the next purge).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl EmbeddedState {
    /// A private in-memory store, gone when the last handle is dropped.
    pub fn in_memory() -> Result<EmbeddedState, StateError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open_in_memory()?;
            init(&conn, false)?;
            Ok(conn)
        };
        let conn = open().map_err(|source| StateError::Open {
            backend: BACKEND,
            location: ":memory:".into(),
            source: Box::new(source),
        })?;
        Ok(EmbeddedState::from_conn(conn, None, None))
    }

    /// Open (or create) the store in a file, typically `<data-dir>/state.db`. Several handles,
    /// in one process or many, may open the same file and see each other's writes and locks.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedState, StateError> {
        let path = path.as_ref();
        let open = || -> Result<Connection, StateError> {
            let conn = Connection::open(path).map_err(boxed)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(boxed)?;
            init(&conn, true).map_err(boxed)?;
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(boxed)?;
            if version > SCHEMA_VERSION {
                return Err(StateError::Open {
                    backend: BACKEND,
                    location: path.display().to_string(),
                    source: format!(
                        "schema version {version} was written by a newer warden; this one reads version {SCHEMA_VERSION}"
                    )
                    .into(),
                });
            }
            Ok(conn)
        };
        let conn = open().map_err(|e| match e {
            StateError::Backend { source, .. } => StateError::Open {
                backend: BACKEND,
                location: path.display().to_string(),
                source,
            },
            other => other,
        })?;
        let worker = spawn_worker(path)?;
        Ok(EmbeddedState::from_conn(
            conn,
            Some(path.to_path_buf()),
            Some(worker),
        ))
    }

    fn from_conn(
        conn: Connection,
        path: Option<PathBuf>,
        worker: Option<std::sync::mpsc::Sender<Job>>,
    ) -> EmbeddedState {
        conn.set_prepared_statement_cache_capacity(64);
        EmbeddedState {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
                writes: AtomicU32::new(0),
                worker,
            }),
        }
    }

    /// Delete expired heartbeats and locks now; returns how many. Reads never see them
    /// either way; this only reclaims space.
    pub async fn purge_expired(&self) -> Result<usize, StateError> {
        self.run(Access::Read, |conn| purge(conn)).await
    }

    /// Run one operation against the connection: inline in memory, on the store's worker
    /// thread for a file (where `BEGIN IMMEDIATE` may wait up to [`BUSY_TIMEOUT`] for another
    /// process, which must not block the async runtime).
    async fn run<T, F>(&self, access: Access, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> OpResult<T> + Send + 'static,
    {
        let Some(worker) = &self.inner.worker else {
            return self.inner.apply(access, op).map_err(StateError::from);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let job: Job = Box::new(move || {
            let _ = reply.send(inner.apply(access, op));
        });
        let lost = |what: &str| StateError::Backend {
            backend: BACKEND,
            source: format!("the state worker thread {what}").into(),
        };
        worker.send(job).map_err(|_| lost("has stopped"))?;
        match answer.await {
            Ok(result) => result.map_err(StateError::from),
            Err(_) => Err(lost("panicked during the operation")),
        }
    }

    /// [`EmbeddedState::run_tx`] of a write given a [`Once`]: in the same transaction, its
    /// receipt is read (a write already made answers what it did, and writes nothing) and
    /// written after it.
    async fn run_once<T, F>(&self, once: Option<&Once>, op: F) -> Result<T, StateError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&Connection) -> OpResult<T> + Send + 'static,
    {
        let Some(once) = once.cloned() else {
            return self.run_tx(op).await;
        };
        self.run_tx(move |conn| {
            let key = keys::receipt(once.run().as_str());
            if let Some(json) = get(conn, &key, now_ms())? {
                let receipt: Receipt = decode(&key, &json)?;
                if let Some(answer) = receipt.answer_of(&key, &once)? {
                    return Ok(answer);
                }
            }
            let answer = op(conn)?;
            let receipt = encode(&key, &Receipt::of(&key, &once, &answer)?)?;
            set(conn, &key, &receipt, None)?;
            Ok(answer)
        })
        .await
    }

    /// Run `op` inside `BEGIN IMMEDIATE … COMMIT`.
    async fn run_tx<T, F>(&self, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> OpResult<T> + Send + 'static,
    {
        self.run(Access::Write, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = op(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }
}

impl Inner {
    fn apply<T>(
        &self,
        access: Access,
        op: impl FnOnce(&mut Connection) -> OpResult<T>,
    ) -> OpResult<T> {
        let mut conn = self.conn.lock();
        let value = op(&mut conn)?;
        if access == Access::Write
            && self.writes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1
        {
            // Housekeeping: a failure here must not fail the write that already committed.
            if let Err(OpError::Sqlite(error)) = purge(&conn) {
                tracing::warn!(%error, "cannot purge expired state entries");
            }
        }
        Ok(value)
    }
}

fn boxed(source: rusqlite::Error) -> StateError {
    StateError::Backend {
        backend: BACKEND,
        source: Box::new(source),
    }
}

fn init(conn: &Connection, file: bool) -> rusqlite::Result<()> {
    if file {
        // `journal_mode` answers with the resulting mode, so it is a query, not an update.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        // WAL + NORMAL: a crash of the process loses nothing; a power loss may lose the last
        // transactions, which for heartbeats, locks and counters is acceptable.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    // One write transaction: two processes opening an old file at once migrate it once.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < SCHEMA_VERSION {
        if version == 1 {
            migrate_v2(&tx)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()
}

/// Version 1 → 2: build what version 2 keeps beside the data from the data itself — the
/// artifact index and usage of every task's history, the usage of every agent's state, of
/// every blackboard and of every message log. One pass over each, once.
fn migrate_v2(conn: &Connection) -> rusqlite::Result<()> {
    let usage_row = |key: &str, usage: Usage| -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO hashes (key, field, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (key, field) DO UPDATE SET value = excluded.value",
        )?;
        stmt.execute(params![key, ENTRIES_FIELD, usage.entries.to_string()])?;
        stmt.execute(params![key, BYTES_FIELD, usage.bytes.to_string()])?;
        Ok(())
    };
    // Histories, oldest first: the last reference of a name is its latest.
    let histories: Vec<(String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT key, value FROM lists WHERE key LIKE 'task:%:artifacts' ORDER BY key, idx",
        )?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    // Per task: its usage and each name's latest reference (one map insert per row, so a
    // task of tens of thousands of artifacts migrates in linear time).
    let mut tasks: std::collections::BTreeMap<
        String,
        (Usage, std::collections::HashMap<String, String>),
    > = std::collections::BTreeMap::new();
    for (list, json) in histories {
        let Some(task) = list
            .strip_prefix("task:")
            .and_then(|rest| rest.strip_suffix(":artifacts"))
        else {
            continue;
        };
        // A row that does not parse stays in the history, where reading it is an error
        // naming it; it is not indexed.
        let Ok(artifact) = serde_json::from_str::<ArtifactRef>(&json) else {
            tracing::warn!(key = %list, "not indexing an artifact reference that does not parse");
            continue;
        };
        let (usage, latest) = tasks.entry(task.to_string()).or_default();
        usage.bytes = usage.bytes.saturating_add(artifact.size);
        latest.insert(artifact.name, json);
    }
    for (task, (mut usage, latest)) in tasks {
        usage.entries = latest.len() as u64;
        let index = keys::artifact_index(&task);
        let mut stmt = conn.prepare_cached(
            "INSERT INTO hashes (key, field, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (key, field) DO UPDATE SET value = excluded.value",
        )?;
        for (name, json) in latest {
            stmt.execute(params![index, name, json])?;
        }
        usage_row(&keys::artifact_usage(&task), usage)?;
    }
    // Keyed scopes: `agent:{id}:state` `kv:` fields and the four blackboard sections.
    let mut scopes: std::collections::BTreeMap<String, Usage> = std::collections::BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT key, field, value FROM hashes
             WHERE (key LIKE 'agent:%:state' AND field LIKE 'kv:%')
                OR key LIKE 'blackboard:%:problem' OR key LIKE 'blackboard:%:solutions'
                OR key LIKE 'blackboard:%:progress' OR key LIKE 'blackboard:%:consensus'",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (key, field, value): (String, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let (scope, entry) = if let Some(agent) = key
                .strip_prefix("agent:")
                .and_then(|rest| rest.strip_suffix(":state"))
            {
                (keys::state_usage(agent), &field[keys::KV_PREFIX.len()..])
            } else {
                let Some((task, _section)) = key
                    .strip_prefix("blackboard:")
                    .and_then(|rest| rest.rsplit_once(':'))
                else {
                    continue;
                };
                (super::coordination::keys::board_usage(task), field.as_str())
            };
            let usage = scopes.entry(scope).or_default();
            *usage = usage.after_write(true, entry_bytes(entry, &value), 0);
        }
    }
    // Message logs: every message sent.
    {
        let mut stmt = conn
            .prepare("SELECT key, value FROM lists WHERE key LIKE 'msg:%:log' ORDER BY key, idx")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (log, json): (String, String) = (row.get(0)?, row.get(1)?);
            let Some(task) = log
                .strip_prefix("msg:")
                .and_then(|rest| rest.strip_suffix(":log"))
            else {
                continue;
            };
            let message: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let text = |field: &str| message.get(field).and_then(|v| v.as_str()).unwrap_or("");
            let usage = scopes
                .entry(super::coordination::keys::message_usage(task))
                .or_default();
            *usage = usage.after_write(
                true,
                super::quota::message_bytes(text("kind"), text("body")),
                0,
            );
        }
    }
    for (scope, usage) in scopes {
        usage_row(&scope, usage)?;
    }
    Ok(())
}

/// Wall-clock milliseconds since the epoch: TTLs must mean the same in every process.
fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn purge(conn: &Connection) -> OpResult<usize> {
    let mut stmt = conn.prepare_cached("DELETE FROM strings WHERE expires_at_ms <= ?1")?;
    Ok(stmt.execute(params![now_ms()])?)
}

// Redis-shaped primitives. `now` is passed in so one operation uses one instant.

fn get(conn: &Connection, key: &str, now: i64) -> OpResult<Option<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT value FROM strings WHERE key = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
    )?;
    Ok(stmt
        .query_row(params![key, now], |row| row.get(0))
        .optional()?)
}

/// `SET key value [PX ttl]`: like Redis, a plain `SET` clears any TTL.
fn set(conn: &Connection, key: &str, value: &str, expires_at_ms: Option<i64>) -> OpResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO strings (key, value, expires_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms",
    )?;
    stmt.execute(params![key, value, expires_at_ms])?;
    Ok(())
}

fn hget(conn: &Connection, key: &str, field: &str) -> OpResult<Option<String>> {
    let mut stmt = conn.prepare_cached("SELECT value FROM hashes WHERE key = ?1 AND field = ?2")?;
    Ok(stmt
        .query_row(params![key, field], |row| row.get(0))
        .optional()?)
}

fn hset(conn: &Connection, key: &str, field: &str, value: &str) -> OpResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO hashes (key, field, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (key, field) DO UPDATE SET value = excluded.value",
    )?;
    stmt.execute(params![key, field, value])?;
    Ok(())
}

/// `HINCRBY key field 1`. Counters are stored as decimal text, as Redis stores them.
fn hincr(conn: &Connection, key: &str, field: &str) -> OpResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO hashes (key, field, value) VALUES (?1, ?2, '1')
         ON CONFLICT (key, field) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
    )?;
    stmt.execute(params![key, field])?;
    Ok(())
}

/// `HGETALL` restricted to fields starting with `prefix`, sorted by field. The range scan
/// uses the primary key; every prefix here is ASCII ending in `:`, whose successor is `;`.
fn hscan_prefix(conn: &Connection, key: &str, prefix: &str) -> OpResult<Vec<(String, String)>> {
    debug_assert!(prefix.ends_with(':'));
    let end = format!("{};", &prefix[..prefix.len() - 1]);
    let mut stmt = conn.prepare_cached(
        "SELECT field, value FROM hashes WHERE key = ?1 AND field >= ?2 AND field < ?3 ORDER BY field",
    )?;
    let rows = stmt.query_map(params![key, prefix, end], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn error_counts(conn: &Connection, key: &str) -> OpResult<ErrorCounts> {
    let mut stmt = conn.prepare_cached("SELECT field, value FROM hashes WHERE key = ?1")?;
    let rows = stmt
        .query_map(params![key], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ErrorCounts::from_fields(key, rows)?)
}

/// `RPUSH` (append) or `LPUSH` (prepend); indexes grow outwards from 0 so both are O(log n).
fn push(conn: &Connection, key: &str, value: &str, front: bool) -> OpResult<()> {
    let sql = if front {
        "INSERT INTO lists (key, idx, value)
         VALUES (?1, COALESCE((SELECT MIN(idx) FROM lists WHERE key = ?1), 1) - 1, ?2)"
    } else {
        "INSERT INTO lists (key, idx, value)
         VALUES (?1, COALESCE((SELECT MAX(idx) FROM lists WHERE key = ?1), -1) + 1, ?2)"
    };
    conn.prepare_cached(sql)?.execute(params![key, value])?;
    Ok(())
}

/// `LRANGE key 0 limit-1`; `limit` of -1 is the whole list.
fn range(conn: &Connection, key: &str, limit: i64) -> OpResult<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT value FROM lists WHERE key = ?1 ORDER BY idx LIMIT ?2")?;
    let rows = stmt.query_map(params![key, limit], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The usage a hash of the quotas holds; absent fields are 0.
fn usage(conn: &Connection, key: &str) -> OpResult<Usage> {
    let count = |field: &str| -> OpResult<u64> {
        match hget(conn, key, field)? {
            None => Ok(0),
            Some(value) => value.parse().map_err(|_| {
                OpError::State(StateError::Corrupt {
                    key: key.to_string(),
                    message: format!(
                        "field `{field}` holds `{value}`, expected a non-negative integer"
                    ),
                })
            }),
        }
    };
    Ok(Usage {
        entries: count(ENTRIES_FIELD)?,
        bytes: count(BYTES_FIELD)?,
    })
}

fn set_usage(conn: &Connection, key: &str, usage: Usage) -> OpResult<()> {
    hset(conn, key, ENTRIES_FIELD, &usage.entries.to_string())?;
    hset(conn, key, BYTES_FIELD, &usage.bytes.to_string())
}

/// Inside a write transaction: the usage of `scope` after a write of an entry of `bytes`
/// that replaces one of `old` bytes (`None`: a new entry), if `quota` admits it.
fn admit(
    conn: &Connection,
    scope: &str,
    quota: Quota,
    old: Option<u64>,
    bytes: u64,
) -> OpResult<Result<Usage, super::OverQuota>> {
    let before = usage(conn, scope)?;
    let after = before.after_write(old.is_none(), bytes, old.unwrap_or(0));
    Ok(quota.admit(before, after).map(|()| after))
}

#[async_trait]
impl StateStore for EmbeddedState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put_packet(&self, packet: &Packet) -> Result<(), StateError> {
        let key = keys::packet(&packet.agent_id);
        let value = encode(&key, packet)?;
        self.run(Access::Write, move |conn| set(conn, &key, &value, None))
            .await
    }

    async fn packet(&self, agent: &AgentId) -> Result<Option<Packet>, StateError> {
        let key = keys::packet(agent);
        self.run(Access::Read, move |conn| {
            Ok(decoded(&key, get(conn, &key, now_ms())?)?)
        })
        .await
    }

    async fn checkpoint(&self, agent: &AgentId) -> Result<Option<Checkpoint>, StateError> {
        let key = keys::state(agent);
        self.run(Access::Read, move |conn| {
            let value = hget(conn, &key, keys::CHECKPOINT_FIELD)?;
            Ok(decoded(
                &format!("{key}/{}", keys::CHECKPOINT_FIELD),
                value,
            )?)
        })
        .await
    }

    async fn kv_get(&self, agent: &AgentId, key: &str) -> Result<Option<String>, StateError> {
        let hash = keys::state(agent);
        let field = kv_field(key);
        self.run(Access::Read, move |conn| hget(conn, &hash, &field))
            .await
    }

    async fn kv_set(
        &self,
        agent: &AgentId,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let (hash, scope) = (keys::state(agent), keys::state_usage(agent));
        let (field, key, value) = (kv_field(key), key.to_string(), value.to_string());
        self.run_once(once, move |conn| {
            let old = hget(conn, &hash, &field)?.map(|old| entry_bytes(&key, &old));
            let after = match admit(conn, &scope, quota, old, entry_bytes(&key, &value))? {
                Ok(after) => after,
                Err(over) => return Ok(Admission::Refused(over)),
            };
            hset(conn, &hash, &field, &value)?;
            set_usage(conn, &scope, after)?;
            Ok(Admission::Stored(()))
        })
        .await
    }

    async fn kv_delete(
        &self,
        agent: &AgentId,
        key: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        let (hash, scope) = (keys::state(agent), keys::state_usage(agent));
        let (field, key) = (kv_field(key), key.to_string());
        self.run_once(once, move |conn| {
            let Some(old) = hget(conn, &hash, &field)? else {
                return Ok(false);
            };
            conn.prepare_cached("DELETE FROM hashes WHERE key = ?1 AND field = ?2")?
                .execute(params![hash, field])?;
            let after = usage(conn, &scope)?.after_delete(entry_bytes(&key, &old));
            set_usage(conn, &scope, after)?;
            Ok(true)
        })
        .await
    }

    async fn kv_keys(&self, agent: &AgentId) -> Result<Vec<String>, StateError> {
        let hash = keys::state(agent);
        self.run(Access::Read, move |conn| {
            let fields = hscan_prefix(conn, &hash, keys::KV_PREFIX)?;
            Ok(fields
                .into_iter()
                .map(|(field, _)| field[keys::KV_PREFIX.len()..].to_string())
                .collect())
        })
        .await
    }

    async fn record_error(
        &self,
        agent: &AgentId,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError> {
        let key = keys::errors(agent);
        let same = format!("{}{signature}", keys::SAME_PREFIX);
        self.run_tx(move |conn| {
            hincr(conn, &key, keys::TOTAL_FIELD)?;
            if procedure {
                hincr(conn, &key, keys::PROCEDURE_FIELD)?;
            }
            hincr(conn, &key, &same)?;
            error_counts(conn, &key)
        })
        .await
    }

    async fn error_counts(&self, agent: &AgentId) -> Result<ErrorCounts, StateError> {
        let key = keys::errors(agent);
        self.run(Access::Read, move |conn| error_counts(conn, &key))
            .await
    }

    async fn reset_errors(&self, agent: &AgentId) -> Result<(), StateError> {
        let key = keys::errors(agent);
        self.run(Access::Write, move |conn| {
            conn.prepare_cached("DELETE FROM hashes WHERE key = ?1")?
                .execute(params![key])?;
            Ok(())
        })
        .await
    }

    async fn heartbeat(&self, agent: &AgentId, ttl: Ttl) -> Result<(), StateError> {
        let key = keys::heartbeat(agent);
        let ttl = ttl.millis();
        self.run(Access::Write, move |conn| {
            let now = now_ms();
            set(conn, &key, &now.to_string(), Some(now.saturating_add(ttl)))
        })
        .await
    }

    async fn last_heartbeat(&self, agent: &AgentId) -> Result<Option<SystemTime>, StateError> {
        let key = keys::heartbeat(agent);
        self.run(Access::Read, move |conn| {
            let Some(value) = get(conn, &key, now_ms())? else {
                return Ok(None);
            };
            let ms: u64 = value.parse().map_err(|_| StateError::Corrupt {
                key: key.clone(),
                message: format!("holds `{value}`, expected milliseconds since the unix epoch"),
            })?;
            Ok(UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        })
        .await
    }

    async fn acquire_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<LockAttempt, StateError> {
        let key = keys::lock(agent);
        let ttl = ttl.millis();
        let owner = owner.as_str().to_string();
        self.run_tx(move |conn| {
            let now = now_ms();
            // `SET key owner NX PX ttl`, except that the owner may renew its own lock.
            let mut stmt = conn.prepare_cached(
                "INSERT INTO strings (key, value, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE
                 SET value = excluded.value, expires_at_ms = excluded.expires_at_ms
                 WHERE strings.value = excluded.value OR strings.expires_at_ms <= ?4",
            )?;
            if stmt.execute(params![key, owner, now.saturating_add(ttl), now])? > 0 {
                return Ok(LockAttempt::Acquired);
            }
            let mut stmt = conn.prepare_cached("SELECT value FROM strings WHERE key = ?1")?;
            let holder: String = stmt.query_row(params![key], |row| row.get(0))?;
            Ok(LockAttempt::Held { owner: holder })
        })
        .await
    }

    async fn refresh_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<bool, StateError> {
        let key = keys::lock(agent);
        let ttl = ttl.millis();
        let owner = owner.as_str().to_string();
        self.run(Access::Write, move |conn| {
            refresh(conn, &key, &owner, ttl, now_ms())
        })
        .await
    }

    async fn release_lock(&self, agent: &AgentId, owner: &LockOwner) -> Result<bool, StateError> {
        let key = keys::lock(agent);
        let owner = owner.as_str().to_string();
        self.run(Access::Write, move |conn| {
            let mut stmt = conn.prepare_cached(
                "DELETE FROM strings WHERE key = ?1 AND value = ?2
                 AND (expires_at_ms IS NULL OR expires_at_ms > ?3)",
            )?;
            Ok(stmt.execute(params![key, owner, now_ms()])? > 0)
        })
        .await
    }

    async fn lock_owner(&self, agent: &AgentId) -> Result<Option<String>, StateError> {
        let key = keys::lock(agent);
        self.run(Access::Read, move |conn| get(conn, &key, now_ms()))
            .await
    }

    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError> {
        let (lock_ttl, heartbeat_ttl) = (t.lock_ttl.millis(), t.heartbeat_ttl.millis());
        let (lock, heartbeat, state, errors) = (
            keys::lock(t.agent),
            keys::heartbeat(t.agent),
            keys::state(t.agent),
            keys::errors(t.agent),
        );
        let owner = t.owner.as_str().to_string();
        let checkpoint = encode(&state, t.checkpoint)?;
        self.run_tx(move |conn| {
            let now = now_ms();
            let lock_held = refresh(conn, &lock, &owner, lock_ttl, now)?;
            if lock_held {
                set(
                    conn,
                    &heartbeat,
                    &now.to_string(),
                    Some(now.saturating_add(heartbeat_ttl)),
                )?;
                hset(conn, &state, keys::CHECKPOINT_FIELD, &checkpoint)?;
            }
            let errors = error_counts(conn, &errors)?;
            Ok(TransitionResult { lock_held, errors })
        })
        .await
    }

    async fn set_active_agent(&self, task: &TaskId, agent: &AgentId) -> Result<(), StateError> {
        let key = keys::active_agent(task);
        let agent = agent.to_string();
        self.run(Access::Write, move |conn| set(conn, &key, &agent, None))
            .await
    }

    async fn active_agent(&self, task: &TaskId) -> Result<Option<AgentId>, StateError> {
        let key = keys::active_agent(task);
        self.run(Access::Read, move |conn| {
            Ok(get(conn, &key, now_ms())?
                .map(|id| stored_id(&key, &id))
                .transpose()?)
        })
        .await
    }

    async fn push_artifact(
        &self,
        task: &TaskId,
        artifact: &ArtifactRef,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let (list, index, scope) = (
            keys::artifacts(task),
            keys::artifact_index(task),
            keys::artifact_usage(task),
        );
        let value = encode(&list, artifact)?;
        let (name, size) = (artifact.name.clone(), artifact.size);
        self.run_once(once, move |conn| {
            // Versions are never deleted: a new one adds its bytes and frees none.
            let exists = hget(conn, &index, &name)?.map(|_| 0);
            let after = match admit(conn, &scope, quota, exists, size)? {
                Ok(after) => after,
                Err(over) => return Ok(Admission::Refused(over)),
            };
            push(conn, &list, &value, false)?;
            hset(conn, &index, &name, &value)?;
            set_usage(conn, &scope, after)?;
            Ok(Admission::Stored(()))
        })
        .await
    }

    async fn artifact(&self, task: &TaskId, name: &str) -> Result<Option<ArtifactRef>, StateError> {
        let (index, name) = (keys::artifact_index(task), name.to_string());
        self.run(Access::Read, move |conn| {
            let value = hget(conn, &index, &name)?;
            Ok(decoded(&format!("{index}/{name}"), value)?)
        })
        .await
    }

    async fn artifact_page(
        &self,
        task: &TaskId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ArtifactRef>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = keys::artifact_index(task);
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(Access::Read, move |conn| {
            // A range of the primary key (key, field): the page, not the task.
            let rows: Vec<(String, String)> = match &after {
                Some(after) => conn
                    .prepare_cached(
                        "SELECT field, value FROM hashes WHERE key = ?1 AND field > ?2
                         ORDER BY field LIMIT ?3",
                    )?
                    .query_map(params![index, after, limit], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?,
                None => conn
                    .prepare_cached(
                        "SELECT field, value FROM hashes WHERE key = ?1 ORDER BY field LIMIT ?2",
                    )?
                    .query_map(params![index, limit], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()?,
            };
            Ok(rows
                .iter()
                .map(|(name, json)| decode(&format!("{index}/{name}"), json))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn artifacts(&self, task: &TaskId) -> Result<Vec<ArtifactRef>, StateError> {
        let key = keys::artifacts(task);
        self.run(Access::Read, move |conn| {
            let rows = range(conn, &key, -1)?;
            Ok(decode_all(&key, &rows)?)
        })
        .await
    }

    async fn record_revocation(&self, revocation: &Revocation) -> Result<(), StateError> {
        let agent = revocation.agent_id.to_string();
        let value = encode(keys::REVOCATIONS_LEDGER, revocation)?;
        self.run_tx(move |conn| {
            push(conn, keys::REVOCATIONS_LEDGER, &value, true)?;
            hset(conn, keys::REVOCATIONS_BY_AGENT, &agent, &value)
        })
        .await
    }

    async fn revocation(&self, agent: &AgentId) -> Result<Option<Revocation>, StateError> {
        let agent = agent.to_string();
        self.run(Access::Read, move |conn| {
            let value = hget(conn, keys::REVOCATIONS_BY_AGENT, &agent)?;
            Ok(decoded(
                &format!("{}/{agent}", keys::REVOCATIONS_BY_AGENT),
                value,
            )?)
        })
        .await
    }

    async fn clear_revocation(&self, agent: &AgentId) -> Result<bool, StateError> {
        let agent = agent.to_string();
        self.run(Access::Write, move |conn| {
            let mut stmt =
                conn.prepare_cached("DELETE FROM hashes WHERE key = ?1 AND field = ?2")?;
            Ok(stmt.execute(params![keys::REVOCATIONS_BY_AGENT, agent])? > 0)
        })
        .await
    }

    async fn revocations(&self, limit: usize) -> Result<Vec<Revocation>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(-1);
        self.run(Access::Read, move |conn| {
            let rows = range(conn, keys::REVOCATIONS_LEDGER, limit)?;
            Ok(decode_all(keys::REVOCATIONS_LEDGER, &rows)?)
        })
        .await
    }

    async fn forget_receipt(&self, run: &RunId) -> Result<(), StateError> {
        let key = keys::receipt(run.as_str());
        self.run(Access::Write, move |conn| {
            conn.prepare_cached("DELETE FROM strings WHERE key = ?1")?
                .execute(params![key])?;
            Ok(())
        })
        .await
    }

    async fn put_handoff(&self, handoff: &Handoff) -> Result<(), StateError> {
        let key = keys::handoff(&handoff.task_id);
        let value = encode(&key, handoff)?;
        self.run(Access::Write, move |conn| set(conn, &key, &value, None))
            .await
    }

    async fn handoff(&self, task: &TaskId) -> Result<Option<Handoff>, StateError> {
        let key = keys::handoff(task);
        self.run(Access::Read, move |conn| {
            Ok(decoded(&key, get(conn, &key, now_ms())?)?)
        })
        .await
    }

    async fn put_approval(&self, approval: &Approval) -> Result<(), StateError> {
        let key = keys::approval(&approval.task_id);
        let value = encode(&key, approval)?;
        self.run(Access::Write, move |conn| set(conn, &key, &value, None))
            .await
    }

    async fn approval(&self, task: &TaskId) -> Result<Option<Approval>, StateError> {
        let key = keys::approval(task);
        self.run(Access::Read, move |conn| {
            Ok(decoded(&key, get(conn, &key, now_ms())?)?)
        })
        .await
    }

    async fn decide_gate(
        &self,
        decision: &GateDecision,
    ) -> Result<Option<GateDecision>, StateError> {
        let key = keys::gate(decision.run.as_str(), &decision.stage, decision.round);
        let value = encode(&key, decision)?;
        self.run_tx(move |conn| {
            if let Some(earlier) = get(conn, &key, now_ms())? {
                return Ok(Some(decode(&key, &earlier)?));
            }
            set(conn, &key, &value, None)?;
            Ok(None)
        })
        .await
    }

    async fn gate_decision(
        &self,
        run: &TaskId,
        stage: &str,
        round: u32,
    ) -> Result<Option<GateDecision>, StateError> {
        let key = keys::gate(run.as_str(), stage, round);
        self.run(Access::Read, move |conn| {
            Ok(decoded(&key, get(conn, &key, now_ms())?)?)
        })
        .await
    }

    async fn charge_tokens(&self, task: &TaskId, tokens: u64) -> Result<u64, StateError> {
        let key = keys::tokens(task);
        self.run_tx(move |conn| {
            let spent = counter(&key, get(conn, &key, now_ms())?)?.saturating_add(tokens);
            set(conn, &key, &spent.to_string(), None)?;
            Ok(spent)
        })
        .await
    }

    async fn tokens_spent(&self, task: &TaskId) -> Result<u64, StateError> {
        let key = keys::tokens(task);
        self.run(Access::Read, move |conn| {
            Ok(counter(&key, get(conn, &key, now_ms())?)?)
        })
        .await
    }
}

/// A stored counter (absent is 0).
fn counter(key: &str, value: Option<String>) -> Result<u64, StateError> {
    value.map_or(Ok(0), |value| {
        value.parse().map_err(|_| StateError::Corrupt {
            key: key.to_string(),
            message: format!("holds `{value}`, expected a non-negative integer"),
        })
    })
}

/// `PEXPIRE` the lock if `owner` holds it and it is live.
fn refresh(conn: &Connection, key: &str, owner: &str, ttl: i64, now: i64) -> OpResult<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE strings SET expires_at_ms = ?3
         WHERE key = ?1 AND value = ?2 AND (expires_at_ms IS NULL OR expires_at_ms > ?4)",
    )?;
    Ok(stmt.execute(params![key, owner, now.saturating_add(ttl), now])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_values::{agent, owner, task, ttl};
    use crate::state::{Coordination, Section, conformance};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_in_memory() {
        conformance::run_all(|| async {
            Arc::new(EmbeddedState::in_memory().unwrap()) as Arc<dyn StateStore>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // Every check reopens the same file, as a restarted host would.
        conformance::run_all(|| {
            let path = path.clone();
            async move { Arc::new(EmbeddedState::open(&path).unwrap()) as Arc<dyn StateStore> }
        })
        .await;
    }

    /// Two handles on one file stand in for two `warden` processes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn handles_on_one_file_share_locks_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let a = Arc::new(EmbeddedState::open(&path).unwrap());
        let b = Arc::new(EmbeddedState::open(&path).unwrap());
        let ttl = ttl(Duration::from_secs(30));
        let (agent, host_a, host_b) = (agent("agent-1"), owner("host-a"), owner("host-b"));

        assert_eq!(
            a.acquire_lock(&agent, &host_a, ttl).await.unwrap(),
            LockAttempt::Acquired
        );
        assert_eq!(
            b.acquire_lock(&agent, &host_b, ttl).await.unwrap(),
            LockAttempt::Held {
                owner: "host-a".into()
            }
        );
        assert!(!b.release_lock(&agent, &host_b).await.unwrap());
        assert!(a.release_lock(&agent, &host_a).await.unwrap());
        assert_eq!(
            b.acquire_lock(&agent, &host_b, ttl).await.unwrap(),
            LockAttempt::Acquired
        );
        assert_eq!(
            a.lock_owner(&agent).await.unwrap().as_deref(),
            Some("host-b")
        );

        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let agent = agent.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    store.record_error(&agent, "boom", false).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(a.error_counts(&agent).await.unwrap().total, 200);
        assert_eq!(b.error_counts(&agent).await.unwrap().max_same, 200);
    }

    #[tokio::test]
    async fn expired_entries_are_purged() {
        let store = EmbeddedState::in_memory().unwrap();
        let a = agent("a");
        store
            .heartbeat(&a, ttl(Duration::from_millis(1)))
            .await
            .unwrap();
        store
            .acquire_lock(&a, &owner("o"), ttl(Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.purge_expired().await.unwrap(), 1);
        assert_eq!(store.lock_owner(&a).await.unwrap().as_deref(), Some("o"));
    }

    /// A stored record that does not parse is an error naming its key, never a row skipped
    /// or a revocation forgotten.
    #[tokio::test]
    async fn a_record_that_does_not_parse_is_an_error_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = EmbeddedState::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO hashes (key, field, value) VALUES ('revocations:by_agent', 'a', '{not json')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO lists (key, idx, value) VALUES ('task:t:artifacts', 0, '[]')",
            [],
        )
        .unwrap();
        let err = store.revocation(&agent("a")).await.unwrap_err().to_string();
        assert!(
            err.starts_with("corrupt value in `revocations:by_agent/a`"),
            "{err}"
        );
        let err = store.artifacts(&task("t")).await.unwrap_err().to_string();
        assert!(
            err.starts_with("corrupt value in `task:t:artifacts[0]`"),
            "{err}"
        );
    }

    /// A version 1 file (from before the index and the quotas) is brought up to version 2
    /// when opened: its artifacts are indexed, and what it holds counts against the quotas.
    #[tokio::test]
    async fn a_version_1_file_is_indexed_and_counted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let reference = |name: &str, size: u64| ArtifactRef {
            name: name.into(),
            digest: format!("sha256:{size:064x}"),
            size,
            author: "a".into(),
            created_at: "2026-12-01T00:00:00.000Z".into(),
        };
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (idx, artifact) in [reference("b", 3), reference("a", 4), reference("a", 5)]
                .iter()
                .enumerate()
            {
                conn.execute(
                    "INSERT INTO lists (key, idx, value) VALUES ('task:t:artifacts', ?1, ?2)",
                    params![idx as i64, serde_json::to_string(artifact).unwrap()],
                )
                .unwrap();
            }
            conn.execute_batch(
                r#"INSERT INTO hashes (key, field, value) VALUES
                     ('agent:a:state', 'checkpoint', '{}'),
                     ('agent:a:state', 'kv:k', 'vvv'),
                     ('blackboard:t:problem', 'x', 'yy');
                   INSERT INTO lists (key, idx, value) VALUES
                     ('msg:t:log', 0, '{"id":1,"sender":"a","recipient":null,"kind":"K","body":"bb","sent_at_ms":0}');"#,
            )
            .unwrap();
        }
        let store = EmbeddedState::open(&path).unwrap();
        let (a, t) = (agent("a"), task("t"));
        assert_eq!(
            store.artifact(&t, "a").await.unwrap(),
            Some(reference("a", 5))
        );
        let names: Vec<String> = store
            .artifact_page(&t, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let over = |stored: Admission| match stored {
            Admission::Refused(over) => (over.used, over.requested),
            Admission::Stored(()) => panic!("admitted past the quota"),
        };
        let names_full = Quota {
            max_entries: 2,
            max_bytes: u64::MAX,
        };
        let bytes_full = Quota {
            max_entries: u64::MAX,
            max_bytes: 12,
        };
        let push = store
            .push_artifact(&t, &reference("c", 1), names_full, None)
            .await;
        assert_eq!(over(push.unwrap()), (2, 3), "names of the old history");
        let push = store
            .push_artifact(&t, &reference("a", 1), bytes_full, None)
            .await;
        assert_eq!(over(push.unwrap()), (12, 13), "bytes of every old version");
        let one = Quota {
            max_entries: 1,
            max_bytes: u64::MAX,
        };
        assert_eq!(
            over(store.kv_set(&a, "k2", "v", one, None).await.unwrap()),
            (1, 2)
        );
        let board = store
            .board_write(&t, Section::Solutions, "y", "", one, None)
            .await;
        assert_eq!(over(board.unwrap()), (1, 2));
        let sent = store
            .send_message(
                &t,
                &crate::state::NewMessage {
                    sender: &a,
                    recipient: None,
                    kind: "K",
                    body: "",
                    sent_at_ms: 0,
                },
                one,
                None,
            )
            .await
            .unwrap();
        assert!(matches!(sent, Admission::Refused(o) if (o.used, o.requested) == (1, 2)));
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = EmbeddedState::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("schema version 99 was written by a newer warden"),
            "{err}"
        );
    }
}
