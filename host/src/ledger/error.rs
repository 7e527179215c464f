//! The ledger's error type.
//!
//! Errors are `Clone` because one failed group commit has to be reported to
//! every caller waiting on that batch; SQLite and I/O causes are shared
//! behind `Arc` for that reason.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a ledger operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file could not be opened or created.
    #[error("cannot open ledger `{path}`: {source}")]
    Open {
        /// The ledger file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The file could not be read while checking what it is.
    #[error("cannot read ledger `{path}`: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file exists but is not a Warden ledger; it was left untouched.
    #[error(
        "`{path}` is not a warden ledger ({reason}); expected a ledger created by warden or a path to a new or empty file"
    )]
    NotALedger {
        /// The file.
        path: PathBuf,
        /// What gave it away (no `meta` table, another format tag, …).
        reason: String,
    },
    /// The file looks like a ledger but SQLite reports it as damaged.
    #[error("ledger `{path}` is corrupt: {source}; restore it from a backup")]
    Corrupt {
        /// The ledger file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The ledger was written by a newer Warden; opening it could corrupt it.
    #[error(
        "ledger `{path}` has schema version {found}, newer than the supported version {supported}; upgrade warden to open it"
    )]
    NewerSchema {
        /// The ledger file.
        path: PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The version this build writes ([`SCHEMA_VERSION`](super::SCHEMA_VERSION)).
        supported: i64,
    },
    /// The ledger's schema version is older than any this build can read.
    #[error(
        "ledger `{path}` has schema version {found}, which this build cannot read; expected version {supported}"
    )]
    UnsupportedSchema {
        /// The ledger file.
        path: PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The version this build writes ([`SCHEMA_VERSION`](super::SCHEMA_VERSION)).
        supported: i64,
    },
    /// A database operation failed after the ledger was opened.
    #[error("ledger database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// A stored value is outside what the schema allows (e.g. tier `9`).
    #[error("ledger table `{table}` has invalid `{column}` value `{value}`: {expected}")]
    InvalidValue {
        /// The SQL table (`agent_actions`, `agents`, …).
        table: &'static str,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
        /// What the schema allows there.
        expected: &'static str,
    },
    /// An agent id was empty.
    #[error("agent id is empty; expected a non-empty id such as `planner`")]
    EmptyAgentId,
    /// The agent has never been registered.
    #[error("agent `{0}` is not registered; register it with `register_agent` first")]
    UnknownAgent(String),
    /// A table name given by the user is not one of the ledger's tables.
    #[error(
        "unknown ledger table `{0}`: expected one of agent_actions, violations, agent_metrics, promotions (or actions, metrics)"
    )]
    UnknownTable(String),
    /// Fire-and-forget entries whose batch failed to commit; reported by the
    /// next `flush`.
    #[error("{count} appended ledger entries were lost: {cause}")]
    AppendsLost {
        /// How many entries were lost.
        count: u64,
        /// Why their batch failed.
        #[source]
        cause: Box<LedgerError>,
    },
    /// The ledger was opened for reading only ([`Ledger::open_read_only`](super::Ledger::open_read_only)).
    #[error(
        "the ledger `{path}` is open for reading only: nothing can be recorded through this handle"
    )]
    ReadOnly {
        /// The ledger file.
        path: PathBuf,
    },
    /// A ledger at an older schema, which only a writable open migrates.
    #[error(
        "the ledger `{path}` is at an older schema: a command that records (or `Ledger::open`) migrates it; a read-only open changes nothing"
    )]
    NeedsMigration {
        /// The ledger file.
        path: PathBuf,
    },
    /// The writer thread is gone (it panicked); nothing more can be recorded.
    #[error("the ledger writer thread has stopped; entries can no longer be recorded")]
    WriterStopped,
}

impl From<rusqlite::Error> for LedgerError {
    fn from(err: rusqlite::Error) -> Self {
        LedgerError::Sqlite(Arc::new(err))
    }
}
