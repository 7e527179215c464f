//! Tables, column order, and opening/creating a ledger file.
//!
//! The content-column arrays below are the single source of the order in
//! which columns are inserted and hashed; the row structs return arrays of
//! the same length, so the two cannot drift apart silently.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::chain::{Field, GENESIS_HASH, Head};
use super::error::LedgerError;
use crate::tier::Tier;

/// Schema version written to `meta`; bump together with a migration.
pub const SCHEMA_VERSION: i64 = 3;

/// Identifies our files; a database without it is someone else's.
const FORMAT: &str = "warden-ledger";

/// One of the four hash-chained tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `agent_actions`: every capability call and host decision.
    Actions,
    /// `violations`: breaches of policy or procedure.
    Violations,
    /// `agent_metrics`: one row of run counters per finished run.
    Metrics,
    /// `promotions`: tier changes.
    Promotions,
}

impl Table {
    /// Every chained table.
    pub const ALL: [Table; 4] = [
        Table::Actions,
        Table::Violations,
        Table::Metrics,
        Table::Promotions,
    ];

    /// Columns added in schema 2, last in [`Table::content_columns`]. A row whose added
    /// columns are all NULL (every row written before them) hashes without them, so rows
    /// chained at schema 1 still verify; a row with any of them set hashes them all.
    fn added_in_v2(self) -> usize {
        match self {
            Table::Actions => 3,
            Table::Violations | Table::Metrics => 1,
            Table::Promotions => 0,
        }
    }

    /// The fields of a row that its `row_hash` covers (see [`Table::added_in_v2`]).
    pub(crate) fn hashed<'f, 'a>(self, fields: &'f [Field<'a>]) -> &'f [Field<'a>] {
        let base = fields.len().saturating_sub(self.added_in_v2());
        if fields[base..].iter().all(|f| *f == Field::Null) {
            &fields[..base]
        } else {
            fields
        }
    }

    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Actions => "agent_actions",
            Table::Violations => "violations",
            Table::Metrics => "agent_metrics",
            Table::Promotions => "promotions",
        }
    }

    /// Columns covered by `row_hash`, in hashing order (all but `id`, `seq`,
    /// `prev_hash`, `row_hash`).
    pub fn content_columns(self) -> &'static [&'static str] {
        match self {
            Table::Actions => &ACTION_COLUMNS,
            Table::Violations => &VIOLATION_COLUMNS,
            Table::Metrics => &METRICS_COLUMNS,
            Table::Promotions => &PROMOTION_COLUMNS,
        }
    }

    /// Column holding the row's time.
    pub(crate) fn time_column(self) -> &'static str {
        match self {
            Table::Metrics => "last_active_at",
            _ => "timestamp",
        }
    }

    /// Column matched by [`LedgerQuery::kind`](super::LedgerQuery::kind).
    pub(crate) fn kind_column(self) -> Option<&'static str> {
        match self {
            Table::Actions => Some("action"),
            Table::Violations => Some("violation_type"),
            Table::Metrics | Table::Promotions => None,
        }
    }

    pub(crate) fn has_task(self) -> bool {
        matches!(self, Table::Actions | Table::Violations)
    }

    pub(crate) fn insert_sql(self) -> String {
        let cols = self.content_columns();
        let placeholders: Vec<String> = (1..=cols.len() + 3).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO {} (seq, {}, prev_hash, row_hash) VALUES ({})",
            self.name(),
            cols.join(", "),
            placeholders.join(", ")
        )
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for Table {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "agent_actions" | "actions" => Ok(Table::Actions),
            "violations" => Ok(Table::Violations),
            "agent_metrics" | "metrics" => Ok(Table::Metrics),
            "promotions" => Ok(Table::Promotions),
            _ => Err(LedgerError::UnknownTable(s.to_string())),
        }
    }
}

const ACTION_COLUMNS: [&str; 18] = [
    "timestamp",
    "agent_id",
    "agent_version",
    "tier",
    "action",
    "decision",
    "confidence",
    "success",
    "error_type",
    "error_message",
    "details",
    "task_id",
    "phase",
    "component_digest",
    "policy_revision",
    "run_id",
    "call_seq",
    "result_digest",
];

const VIOLATION_COLUMNS: [&str; 12] = [
    "timestamp",
    "agent_id",
    "tier",
    "task_id",
    "phase",
    "violation_type",
    "procedure",
    "resource",
    "details",
    "component_digest",
    "policy_revision",
    "run_id",
];

const METRICS_COLUMNS: [&str; 7] = [
    "agent_id",
    "current_tier",
    "total_runs",
    "compliant_runs",
    "consecutive_compliant",
    "last_active_at",
    "run_id",
];

const PROMOTION_COLUMNS: [&str; 6] = [
    "timestamp",
    "agent_id",
    "from_tier",
    "to_tier",
    "reason",
    "actor",
];

fn tier_field(tier: Tier) -> Field<'static> {
    Field::Int(i64::from(tier.level()))
}

fn count_field(n: u64) -> Field<'static> {
    Field::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// An `agent_actions` row, borrowed.
pub(crate) struct ActionRow<'a> {
    pub timestamp: &'a str,
    pub agent_id: &'a str,
    /// `None` for registry events, which are not tied to a build.
    pub agent_version: Option<&'a str>,
    pub tier: Tier,
    pub action: &'a str,
    pub decision: &'a str,
    pub confidence: Option<f64>,
    pub success: bool,
    pub error_type: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub details: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub phase: Option<&'a str>,
    pub component_digest: Option<&'a str>,
    pub policy_revision: Option<&'a str>,
    /// The run the row belongs to; `None` outside a run.
    pub run_id: Option<&'a str>,
    /// The call's position in the run's journal, for a capability call.
    pub call_seq: Option<u64>,
    /// The journal head after the call's answer (`sha256:<hex>`), for a capability call.
    pub result_digest: Option<&'a str>,
}

impl<'a> ActionRow<'a> {
    pub(crate) fn fields(&self) -> [Field<'a>; ACTION_COLUMNS.len()] {
        [
            Field::text(self.timestamp),
            Field::text(self.agent_id),
            Field::opt_text(self.agent_version),
            tier_field(self.tier),
            Field::text(self.action),
            Field::text(self.decision),
            Field::real(self.confidence),
            Field::Int(i64::from(self.success)),
            Field::opt_text(self.error_type),
            Field::opt_text(self.error_message),
            Field::opt_text(self.details),
            Field::opt_text(self.task_id),
            Field::opt_text(self.phase),
            Field::opt_text(self.component_digest),
            Field::opt_text(self.policy_revision),
            Field::opt_text(self.run_id),
            self.call_seq.map_or(Field::Null, count_field),
            Field::opt_text(self.result_digest),
        ]
    }
}

/// A `violations` row, borrowed.
pub(crate) struct ViolationRow<'a> {
    pub timestamp: &'a str,
    pub agent_id: &'a str,
    pub tier: Tier,
    pub task_id: Option<&'a str>,
    pub phase: Option<&'a str>,
    pub violation_type: &'a str,
    pub procedure: bool,
    pub resource: Option<&'a str>,
    pub details: &'a str,
    pub component_digest: Option<&'a str>,
    pub policy_revision: Option<&'a str>,
    pub run_id: Option<&'a str>,
}

impl<'a> ViolationRow<'a> {
    pub(crate) fn fields(&self) -> [Field<'a>; VIOLATION_COLUMNS.len()] {
        [
            Field::text(self.timestamp),
            Field::text(self.agent_id),
            tier_field(self.tier),
            Field::opt_text(self.task_id),
            Field::opt_text(self.phase),
            Field::text(self.violation_type),
            Field::Int(i64::from(self.procedure)),
            Field::opt_text(self.resource),
            Field::text(self.details),
            Field::opt_text(self.component_digest),
            Field::opt_text(self.policy_revision),
            Field::opt_text(self.run_id),
        ]
    }
}

/// An `agent_metrics` snapshot row, borrowed.
pub(crate) struct MetricsRow<'a> {
    pub agent_id: &'a str,
    pub current_tier: Tier,
    pub total_runs: u64,
    pub compliant_runs: u64,
    pub consecutive_compliant: u64,
    pub last_active_at: &'a str,
    pub run_id: Option<&'a str>,
}

impl<'a> MetricsRow<'a> {
    pub(crate) fn fields(&self) -> [Field<'a>; METRICS_COLUMNS.len()] {
        [
            Field::text(self.agent_id),
            tier_field(self.current_tier),
            count_field(self.total_runs),
            count_field(self.compliant_runs),
            count_field(self.consecutive_compliant),
            Field::text(self.last_active_at),
            Field::opt_text(self.run_id),
        ]
    }
}

/// A `promotions` row, borrowed.
pub(crate) struct PromotionRow<'a> {
    pub timestamp: &'a str,
    pub agent_id: &'a str,
    pub from_tier: Option<Tier>,
    pub to_tier: Tier,
    pub reason: &'a str,
    pub actor: &'a str,
}

impl<'a> PromotionRow<'a> {
    pub(crate) fn fields(&self) -> [Field<'a>; PROMOTION_COLUMNS.len()] {
        [
            Field::text(self.timestamp),
            Field::text(self.agent_id),
            self.from_tier.map_or(Field::Null, tier_field),
            tier_field(self.to_tier),
            Field::text(self.reason),
            Field::text(self.actor),
        ]
    }
}

/// The rows that decide an agent's registration and standing, as the partial index over
/// them names them: a query through the index repeats this term.
macro_rules! standing_rows {
    () => {
        "action IN ('agent.register', 'agent.rebind', 'agent.revoke', 'agent.reinstate')"
    };
}
pub(crate) const STANDING_ROWS: &str = standing_rows!();

/// Index of the rows that decide an agent's registration and standing (register, rebind,
/// revoke, reinstate), so BOOTSTRAP finds the latest of each without scanning the agent's
/// history. Partial ([`STANDING_ROWS`]): every other row (a capability call's, on the hot
/// path) costs it nothing.
const STANDING_INDEX: &str = concat!(
    "CREATE INDEX IF NOT EXISTS agent_actions_standing ON agent_actions (agent_id, action, seq) \
     WHERE ",
    standing_rows!(),
    ";"
);

const CHAIN_COLUMNS: &str = "seq INTEGER NOT NULL UNIQUE,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL";

fn ddl() -> String {
    format!(
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value NOT NULL) WITHOUT ROWID;
CREATE TABLE agent_actions (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    agent_version TEXT,
    tier INTEGER NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    confidence REAL,
    success INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    details TEXT,
    task_id TEXT,
    phase TEXT,
    component_digest TEXT,
    policy_revision TEXT,
    run_id TEXT,
    call_seq INTEGER,
    result_digest TEXT,
    {CHAIN_COLUMNS}
);
CREATE INDEX agent_actions_agent ON agent_actions (agent_id);
{STANDING_INDEX}
CREATE INDEX agent_actions_task ON agent_actions (task_id);
CREATE TABLE violations (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    task_id TEXT,
    phase TEXT,
    violation_type TEXT NOT NULL,
    procedure INTEGER NOT NULL,
    resource TEXT,
    details TEXT NOT NULL,
    component_digest TEXT,
    policy_revision TEXT,
    run_id TEXT,
    {CHAIN_COLUMNS}
);
CREATE INDEX violations_agent ON violations (agent_id);
CREATE TABLE agent_metrics (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    current_tier INTEGER NOT NULL,
    total_runs INTEGER NOT NULL,
    compliant_runs INTEGER NOT NULL,
    consecutive_compliant INTEGER NOT NULL,
    last_active_at TEXT NOT NULL,
    run_id TEXT,
    {CHAIN_COLUMNS}
);
CREATE INDEX agent_metrics_agent ON agent_metrics (agent_id, seq);
CREATE VIEW agent_metrics_current AS
    SELECT agent_id, current_tier, total_runs, compliant_runs, consecutive_compliant, last_active_at
    FROM agent_metrics AS m
    WHERE seq = (SELECT MAX(seq) FROM agent_metrics WHERE agent_id = m.agent_id);
CREATE TABLE promotions (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    from_tier INTEGER,
    to_tier INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    {CHAIN_COLUMNS}
);
CREATE INDEX promotions_agent ON promotions (agent_id);
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY NOT NULL,
    tier INTEGER NOT NULL,
    component_digest TEXT,
    registered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
{RUN_TABLES}
INSERT INTO meta (key, value) VALUES
    ('format', '{FORMAT}'),
    ('schema_version', {SCHEMA_VERSION}),
    ('head_seq', 0),
    ('head_hash', '{GENESIS_HASH}');"
    )
}

/// Schema 2's tables of runs: the `runs` index (a working copy, like `agents`: the chained
/// rows carrying `run_id` are the record) and the `journal` of every answer a run's guest saw,
/// whose digests the chained rows hold.
const RUN_TABLES: &str = "CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY NOT NULL,
    agent_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    component_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    lock_owner TEXT NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    outcome TEXT,
    calls INTEGER NOT NULL DEFAULT 0,
    packet TEXT NOT NULL,
    from_row INTEGER,
    to_row INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_agent ON runs (agent_id, started_at);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task_id, started_at);
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    op TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    payload BLOB NOT NULL,
    head TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;";

/// Schema 1 → 2: the run columns (NULL in every old row, which hashes as it did) and the
/// run tables.
const MIGRATE_V1: &str = "ALTER TABLE agent_actions ADD COLUMN run_id TEXT;
ALTER TABLE agent_actions ADD COLUMN call_seq INTEGER;
ALTER TABLE agent_actions ADD COLUMN result_digest TEXT;
ALTER TABLE violations ADD COLUMN run_id TEXT;
ALTER TABLE agent_metrics ADD COLUMN run_id TEXT;";

/// Schema 2 → 3: each run's row range (NULL for older runs, read back through the agent's
/// index as before), and the standing index made partial (dropped here, created after).
const MIGRATE_V2: &str = "ALTER TABLE runs ADD COLUMN from_row INTEGER;
ALTER TABLE runs ADD COLUMN to_row INTEGER;
DROP INDEX IF EXISTS agent_actions_standing;";

/// What an opened database turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// No tables at all: ours to initialise.
    Empty,
    /// A ledger at the current schema version.
    Ledger,
    /// A ledger at schema 1, migrated when opened for writing.
    V1,
    /// A ledger at schema 2, migrated when opened for writing.
    V2,
}

/// Rejects files that are not SQLite databases before SQLite sees them,
/// so a stray path never gets journal files created next to it.
pub(crate) fn check_header(path: &Path) -> Result<(), LedgerError> {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    let io_err = |source| LedgerError::Io {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(source),
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    let mut head = Vec::with_capacity(MAGIC.len());
    file.by_ref()
        .take(MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    if head.is_empty() || head == MAGIC {
        Ok(())
    } else {
        Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "it is not an SQLite database".into(),
        })
    }
}

/// Maps SQLite's "this is not a database / is damaged" codes to our errors.
pub(crate) fn classify(path: &Path, err: rusqlite::Error) -> LedgerError {
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "SQLite does not recognise it as a database".into(),
        },
        Some(ErrorCode::DatabaseCorrupt) => LedgerError::Corrupt {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(err),
        },
        _ => LedgerError::Open {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(err),
        },
    }
}

/// Reads only; never writes to a database that turns out not to be ours.
/// Whether `conn` holds a ledger at the current schema (what a read-only open can read).
pub(crate) fn check_current(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    match inspect(conn, path)? {
        Found::Ledger => Ok(()),
        Found::Empty => Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "it is empty".into(),
        }),
        Found::V1 | Found::V2 => Err(LedgerError::NeedsMigration {
            path: path.to_path_buf(),
        }),
    }
}

fn inspect(conn: &Connection, path: &Path) -> Result<Found, LedgerError> {
    let not_ledger = |reason: &str| LedgerError::NotALedger {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let objects: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| classify(path, e))?;
    if objects == 0 {
        return Ok(Found::Empty);
    }
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| classify(path, e))?;
    if !has_meta {
        return Err(not_ledger(
            "it is an SQLite database without a warden `meta` table",
        ));
    }
    let meta = |key: &str| -> Result<Option<rusqlite::types::Value>, LedgerError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| classify(path, e))
    };
    use rusqlite::types::Value;
    match meta("format")? {
        Some(Value::Text(f)) if f == FORMAT => {}
        _ => {
            return Err(not_ledger(
                "its `meta` table does not name the warden-ledger format",
            ));
        }
    }
    let Some(Value::Integer(version)) = meta("schema_version")? else {
        return Err(not_ledger(
            "its `meta` table has no integer `schema_version`",
        ));
    };
    if version > SCHEMA_VERSION {
        return Err(LedgerError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 1 {
        return Ok(Found::V1);
    }
    if version == 2 {
        return Ok(Found::V2);
    }
    if version < SCHEMA_VERSION {
        return Err(LedgerError::UnsupportedSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Found::Ledger)
}

/// Validates `conn`'s database and creates the schema if it is empty.
/// `wal` is false for in-memory databases, which cannot use WAL.
pub(crate) fn prepare(conn: &mut Connection, path: &Path, wal: bool) -> Result<(), LedgerError> {
    let found = inspect(conn, path)?;
    // Only now that the file is known to be ours (or empty) may we write.
    if wal {
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
    }
    let to_current =
        format!("UPDATE meta SET value = {SCHEMA_VERSION} WHERE key = 'schema_version';");
    match found {
        Found::Ledger => {
            // Added after schema 1 shipped; harmless to repeat.
            conn.execute_batch(STANDING_INDEX)
                .map_err(|e| classify(path, e))?;
        }
        Found::V2 => upgrade(
            conn,
            path,
            Found::V2,
            &format!("{MIGRATE_V2}\n{STANDING_INDEX}\n{to_current}"),
        )?,
        Found::V1 => upgrade(
            conn,
            path,
            Found::V1,
            &format!("{STANDING_INDEX}\n{MIGRATE_V1}\n{RUN_TABLES}\n{to_current}"),
        )?,
        Found::Empty => upgrade(conn, path, Found::Empty, &ddl())?,
    }
    Ok(())
}

/// Runs `batch` in one immediate transaction if the file is still `from` once the
/// transaction holds the lock: another process may have migrated or initialised it while we
/// were looking.
fn upgrade(
    conn: &mut Connection,
    path: &Path,
    from: Found,
    batch: &str,
) -> Result<(), LedgerError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(path, e))?;
    if inspect(&tx, path)? == from {
        tx.execute_batch(batch).map_err(|e| classify(path, e))?;
    }
    tx.commit().map_err(|e| classify(path, e))
}

/// The head recorded in `meta` by the last committed batch.
pub(crate) fn meta_head(conn: &Connection) -> Result<Head, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT (SELECT value FROM meta WHERE key = 'head_seq'), \
                (SELECT value FROM meta WHERE key = 'head_hash')",
    )?;
    Ok(stmt.query_row([], |r| {
        Ok(Head {
            seq: r.get(0)?,
            hash: r.get(1)?,
        })
    })?)
}

/// Where the writer resumes: the newest row, or the `meta` head if that is
/// newer. Resuming from `meta` when trailing rows were deleted keeps the
/// deletion visible to `verify` instead of papering over it.
pub(crate) fn load_head(conn: &Connection) -> Result<Head, LedgerError> {
    let mut head = meta_head(conn)?;
    for table in Table::ALL {
        let sql = format!(
            "SELECT seq, row_hash FROM {} ORDER BY seq DESC LIMIT 1",
            table.name()
        );
        let last: Option<(i64, String)> = conn
            .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((seq, hash)) = last
            && seq > head.seq
        {
            head = Head { seq, hash };
        }
    }
    Ok(head)
}
