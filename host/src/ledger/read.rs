//! Reading the ledger: registry and metrics lookups, `tail`/`query`, and
//! chain verification. Everything here takes a plain `&Connection` so the
//! writer can use the same lookups inside its transaction.

use std::fmt;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Row, params_from_iter};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::chain::{self, Field, GENESIS_HASH};
use super::error::LedgerError;
use super::record::{AgentRecord, MetricsSnapshot};
use super::schema::{self, Table};
use crate::tier::Tier;

fn tier_at(
    row: &Row<'_>,
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<Tier, LedgerError> {
    let raw: i64 = row.get(idx)?;
    u8::try_from(raw)
        .ok()
        .and_then(Tier::from_level)
        .ok_or_else(|| LedgerError::InvalidValue {
            table,
            column,
            value: raw.to_string(),
            expected: "a tier level 0..=4",
        })
}

fn count_at(row: &Row<'_>, idx: usize, column: &'static str) -> Result<u64, LedgerError> {
    let raw: i64 = row.get(idx)?;
    u64::try_from(raw).map_err(|_| LedgerError::InvalidValue {
        table: "agent_metrics",
        column,
        value: raw.to_string(),
        expected: "a non-negative count",
    })
}

const AGENT_COLUMNS: &str = "agent_id, tier, component_digest, registered_at, updated_at";

fn agent_from(row: &Row<'_>) -> Result<AgentRecord, LedgerError> {
    Ok(AgentRecord {
        agent_id: row.get(0)?,
        tier: tier_at(row, 1, "agents", "tier")?,
        component_digest: row.get(2)?,
        registered_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

pub(crate) fn agent(conn: &Connection, agent_id: &str) -> Result<Option<AgentRecord>, LedgerError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = ?1"
    ))?;
    let mut rows = stmt.query([agent_id])?;
    rows.next()?.map(agent_from).transpose()
}

/// What the chain says of an agent's registration: the tier of its latest `promotions` row
/// and the component digest of its latest `agent.register` or `agent.rebind` action. The
/// `agents` table is a working copy of this; [`verify`] and BOOTSTRAP compare the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainRegistration {
    /// The tier the chain last recorded.
    pub tier: Tier,
    /// The component the chain last bound; `None` when never bound.
    pub component_digest: Option<String>,
}

// The standing lookups below read every row of the agent's few registration, promotion and
// revocation rows through an index and pick the latest in Rust. `ORDER BY seq DESC LIMIT 1`
// would be one row, but SQLite re-prepares such a statement at every step once a parameter is
// bound (its plan depends on the value), which costs more than the rows: about 40 µs per
// lookup, three per BOOTSTRAP. These sets only grow by operator acts (register, rebind,
// promote, revoke, reinstate), not by runs or by anything a guest does.

pub(crate) fn chain_registration(
    conn: &Connection,
    agent_id: &str,
) -> Result<Option<ChainRegistration>, LedgerError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, to_tier FROM promotions WHERE agent_id = ?1")?;
    let mut rows = stmt.query([agent_id])?;
    let mut latest: Option<(i64, Tier)> = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if latest.as_ref().is_none_or(|(at, _)| seq > *at) {
            latest = Some((seq, tier_at(row, 1, "promotions", "to_tier")?));
        }
    }
    let Some((_, tier)) = latest else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, component_digest FROM agent_actions INDEXED BY agent_actions_standing \
         WHERE agent_id = ?1 AND {} AND action IN ('agent.register', 'agent.rebind')",
        schema::STANDING_ROWS
    ))?;
    let mut rows = stmt.query([agent_id])?;
    let mut bound: Option<(i64, Option<String>)> = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        if bound.as_ref().is_none_or(|(at, _)| seq > *at) {
            bound = Some((seq, row.get(1)?));
        }
    }
    Ok(Some(ChainRegistration {
        tier,
        component_digest: bound.and_then(|(_, digest)| digest),
    }))
}

/// An agent's revocation as the chain holds it: its latest `agent.revoke` row, unless an
/// `agent.reinstate` row came after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainRevocation {
    /// The row's sequence number in the chain.
    pub seq: u64,
    /// When it was revoked (RFC 3339).
    pub revoked_at: String,
    /// The task of the run it was revoked in, if any.
    pub task_id: Option<String>,
    /// The revocation kind as recorded (`PROCEDURE_VIOLATION`, `OPERATOR`, …).
    pub kind: String,
    /// Why.
    pub details: String,
}

pub(crate) fn chain_revocation(
    conn: &Connection,
    agent_id: &str,
) -> Result<Option<ChainRevocation>, LedgerError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT action, seq, timestamp, task_id, decision, error_message \
         FROM agent_actions INDEXED BY agent_actions_standing \
         WHERE agent_id = ?1 AND {} AND action IN ('agent.revoke', 'agent.reinstate')",
        schema::STANDING_ROWS
    ))?;
    let mut rows = stmt.query([agent_id])?;
    let mut latest: Option<(String, ChainRevocation)> = None;
    while let Some(row) = rows.next()? {
        let seq = u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        if latest.as_ref().is_some_and(|(_, at)| at.seq >= seq) {
            continue;
        }
        latest = Some((
            row.get(0)?,
            ChainRevocation {
                seq,
                revoked_at: row.get(2)?,
                task_id: row.get(3)?,
                kind: row.get(4)?,
                details: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            },
        ));
    }
    Ok(latest.and_then(|(action, revocation)| (action == "agent.revoke").then_some(revocation)))
}

/// A registry row that disagrees with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryMismatch {
    /// The agent.
    pub agent_id: String,
    /// What the `agents` table holds, `None` when the row is missing.
    pub registry: Option<ChainRegistration>,
    /// What the chain says, `None` when it never registered the agent.
    pub chain: Option<ChainRegistration>,
}

impl fmt::Display for RegistryMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |r: &Option<ChainRegistration>| match r {
            Some(r) => format!(
                "tier {}, component {}",
                r.tier.code(),
                r.component_digest.as_deref().unwrap_or("none")
            ),
            None => "nothing".to_string(),
        };
        write!(
            f,
            "agent `{}`: the registry holds {} but the chain records {}",
            self.agent_id,
            show(&self.registry),
            show(&self.chain)
        )
    }
}

/// Every disagreement between the `agents` table and the chain.
/// The registry row against what the chain recorded of the agent; `None` when they agree.
pub(crate) fn registry_mismatch(
    conn: &Connection,
    agent: &AgentRecord,
) -> Result<Option<RegistryMismatch>, LedgerError> {
    let registry = ChainRegistration {
        tier: agent.tier,
        component_digest: agent.component_digest.clone(),
    };
    let chain = chain_registration(conn, &agent.agent_id)?;
    Ok(
        (chain.as_ref() != Some(&registry)).then(|| RegistryMismatch {
            agent_id: agent.agent_id.clone(),
            registry: Some(registry),
            chain,
        }),
    )
}

pub(crate) fn registry_mismatches(conn: &Connection) -> Result<Vec<RegistryMismatch>, LedgerError> {
    let mut out = Vec::new();
    for agent in agents(conn)? {
        out.extend(registry_mismatch(conn, &agent)?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT agent_id FROM agent_actions WHERE action = 'agent.register' \
         AND agent_id NOT IN (SELECT agent_id FROM agents) ORDER BY agent_id",
    )?;
    let missing: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for agent_id in missing {
        // Only a registration the chain holds can be missing; an id whose every
        // `agent.register` row was refused was never registered.
        if let Some(chain) = chain_registration(conn, &agent_id)? {
            out.push(RegistryMismatch {
                agent_id,
                registry: None,
                chain: Some(chain),
            });
        }
    }
    Ok(out)
}

pub(crate) fn agents(conn: &Connection) -> Result<Vec<AgentRecord>, LedgerError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents ORDER BY agent_id"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(agent_from(row)?);
    }
    Ok(out)
}

pub(crate) fn metrics(
    conn: &Connection,
    agent_id: &str,
) -> Result<Option<MetricsSnapshot>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, agent_id, current_tier, total_runs, compliant_runs, consecutive_compliant, last_active_at \
         FROM agent_metrics WHERE agent_id = ?1 ORDER BY seq DESC LIMIT 1",
    )?;
    let mut rows = stmt.query([agent_id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(MetricsSnapshot {
        seq: count_at(row, 0, "seq")?,
        agent_id: row.get(1)?,
        current_tier: tier_at(row, 2, "agent_metrics", "current_tier")?,
        total_runs: count_at(row, 3, "total_runs")?,
        compliant_runs: count_at(row, 4, "compliant_runs")?,
        consecutive_compliant: count_at(row, 5, "consecutive_compliant")?,
        last_active_at: row.get(6)?,
    }))
}

/// A row of any chained table, for display and export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    /// The table the row is in.
    pub table: Table,
    /// The row's `id` within its table.
    pub id: i64,
    /// The row's position in the ledger's single chain, shared by all four tables.
    pub seq: u64,
    /// When it was written, RFC 3339 (`last_active_at` for metrics rows).
    pub timestamp: String,
    /// The agent it is about.
    pub agent_id: String,
    /// The task; `None` for metrics and promotions, and rows outside a task.
    pub task_id: Option<String>,
    /// The lifecycle phase (`EXECUTE`); `None` for metrics and promotions, and rows outside
    /// the lifecycle.
    pub phase: Option<String>,
    /// `action` for actions, `violation_type` for violations, else the
    /// table's kind (`promotion`, `metrics`).
    pub kind: String,
    /// One human-readable line.
    pub summary: String,
    /// Every column, raw, so nothing is hidden from an auditor.
    pub fields: Map<String, Json>,
}

/// Filters for [`Ledger::query`](super::Ledger::query); all optional and
/// combined with AND. Filters on columns a table lacks (`task_id`, `kind` on
/// promotions or metrics) exclude that table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only rows of this table.
    pub table: Option<Table>,
    /// Only rows about this agent.
    pub agent_id: Option<String>,
    /// Only rows of this task.
    pub task_id: Option<String>,
    /// Matches `action` (actions) or `violation_type` (violations).
    pub kind: Option<String>,
    /// Only rows with `seq` greater than this, for incremental readers.
    pub after_seq: Option<u64>,
    /// Only rows written at or after this time (RFC 3339, as rows stamp it:
    /// `2026-12-03T12:00:00.000Z`).
    pub since: Option<String>,
    /// Newest first instead of oldest first.
    pub descending: bool,
    /// Skip this many rows (in the order asked for) before the first returned.
    pub offset: usize,
    /// At most this many.
    pub limit: Option<usize>,
}

fn json_of(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) => Json::from(i),
        ValueRef::Real(r) => serde_json::Number::from_f64(r).map_or(Json::Null, Json::Number),
        ValueRef::Text(t) => Json::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Json::String(hex::encode(b)),
    }
}

fn str_of<'a>(fields: &'a Map<String, Json>, key: &str) -> Option<&'a str> {
    fields.get(key).and_then(Json::as_str)
}

fn int_of(fields: &Map<String, Json>, key: &str) -> Option<i64> {
    fields.get(key).and_then(Json::as_i64)
}

fn tier_code(fields: &Map<String, Json>, key: &str) -> String {
    int_of(fields, key)
        .and_then(|l| u8::try_from(l).ok())
        .and_then(Tier::from_level)
        .map_or_else(|| "-".to_string(), |t| t.code().to_string())
}

fn ledger_row(table: Table, names: &[String], row: &Row<'_>) -> Result<LedgerRow, LedgerError> {
    let mut fields = Map::new();
    for (i, name) in names.iter().enumerate() {
        fields.insert(name.clone(), json_of(row.get_ref(i)?));
    }
    let text = |key: &str| str_of(&fields, key).unwrap_or_default().to_string();
    let (kind, summary) = match table {
        Table::Actions => {
            let mut summary = format!("{} -> {}", text("action"), text("decision"));
            if int_of(&fields, "success") == Some(0) {
                summary.push_str(&format!(" (failed: {})", text("error_type")));
            }
            (text("action"), summary)
        }
        Table::Violations => {
            let mut summary = text("violation_type");
            if let Some(resource) = str_of(&fields, "resource") {
                summary.push_str(&format!(" on {resource}"));
            }
            summary.push_str(&format!(": {}", text("details")));
            (text("violation_type"), summary)
        }
        Table::Promotions => (
            "promotion".to_string(),
            format!(
                "{} -> {}: {} (by {})",
                tier_code(&fields, "from_tier"),
                tier_code(&fields, "to_tier"),
                text("reason"),
                text("actor")
            ),
        ),
        Table::Metrics => (
            "metrics".to_string(),
            format!(
                "{}: runs {}, compliant {}, streak {}",
                tier_code(&fields, "current_tier"),
                int_of(&fields, "total_runs").unwrap_or_default(),
                int_of(&fields, "compliant_runs").unwrap_or_default(),
                int_of(&fields, "consecutive_compliant").unwrap_or_default()
            ),
        ),
    };
    Ok(LedgerRow {
        table,
        id: row.get("id")?,
        seq: u64::try_from(row.get::<_, i64>("seq")?).map_err(|_| LedgerError::InvalidValue {
            table: table.name(),
            column: "seq",
            value: format!("{:?}", row.get_ref("seq")),
            expected: "a positive integer",
        })?,
        timestamp: text(table.time_column()),
        agent_id: text("agent_id"),
        task_id: str_of(&fields, "task_id").map(str::to_string),
        phase: str_of(&fields, "phase").map(str::to_string),
        kind,
        summary,
        fields,
    })
}

fn select_rows(
    conn: &Connection,
    table: Table,
    filters: &[(&str, Value)],
    descending: bool,
    limit: Option<usize>,
) -> Result<Vec<LedgerRow>, LedgerError> {
    let mut sql = format!("SELECT * FROM {}", table.name());
    for (i, (clause, _)) in filters.iter().enumerate() {
        sql.push_str(if i == 0 { " WHERE " } else { " AND " });
        sql.push_str(&clause.replace('?', &format!("?{}", i + 1)));
    }
    sql.push_str(if descending {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq"
    });
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    sql.push_str(&format!(" LIMIT {limit}"));
    let mut stmt = conn.prepare(&sql)?;
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let mut rows = stmt.query(params_from_iter(filters.iter().map(|(_, v)| v)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(ledger_row(table, &names, row)?);
    }
    Ok(out)
}

/// Allowed, successful `agent_actions` of a task, counted per action name.
pub(crate) fn action_counts(
    conn: &Connection,
    task_id: &str,
) -> Result<std::collections::BTreeMap<String, u64>, LedgerError> {
    let mut statement = conn.prepare_cached(
        "SELECT action, COUNT(*) FROM agent_actions
         WHERE task_id = ?1 AND decision = 'allowed' AND success = 1
         GROUP BY action",
    )?;
    let rows = statement.query_map([task_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut counts = std::collections::BTreeMap::new();
    for row in rows {
        let (action, n) = row?;
        counts.insert(action, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

pub(crate) fn tail(conn: &mut Connection, limit: usize) -> Result<Vec<LedgerRow>, LedgerError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // One read transaction: the four tables from the same snapshot.
    let tx = conn.transaction()?;
    let mut out = Vec::new();
    for table in Table::ALL {
        out.extend(select_rows(&tx, table, &[], true, Some(limit))?);
    }
    out.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
    out.truncate(limit);
    out.reverse();
    Ok(out)
}

pub(crate) fn query(conn: &mut Connection, q: &LedgerQuery) -> Result<Vec<LedgerRow>, LedgerError> {
    let tx = conn.transaction()?;
    let mut out = Vec::new();
    for table in Table::ALL {
        if q.table.is_some_and(|t| t != table) {
            continue;
        }
        let mut filters: Vec<(&str, Value)> = Vec::new();
        if let Some(agent) = &q.agent_id {
            filters.push(("agent_id = ?", Value::Text(agent.clone())));
        }
        if let Some(task) = &q.task_id {
            if !table.has_task() {
                continue;
            }
            filters.push(("task_id = ?", Value::Text(task.clone())));
        }
        let kind_clause;
        if let Some(kind) = &q.kind {
            let Some(column) = table.kind_column() else {
                continue;
            };
            kind_clause = format!("{column} = ?");
            filters.push((&kind_clause, Value::Text(kind.clone())));
        }
        if let Some(after) = q.after_seq {
            filters.push((
                "seq > ?",
                Value::Integer(i64::try_from(after).unwrap_or(i64::MAX)),
            ));
        }
        let since_clause;
        if let Some(since) = &q.since {
            since_clause = format!("{} >= ?", table.time_column());
            filters.push((&since_clause, Value::Text(since.clone())));
        }
        // The first `offset + limit` rows overall are among each table's first as many.
        let per_table = q.limit.map(|l| l.saturating_add(q.offset));
        out.extend(select_rows(&tx, table, &filters, q.descending, per_table)?);
    }
    if q.descending {
        out.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
    } else {
        out.sort_unstable_by_key(|r| r.seq);
    }
    let out = out.into_iter().skip(q.offset);
    Ok(match q.limit {
        Some(limit) => out.take(limit).collect(),
        None => out.collect(),
    })
}

/// The outcome of [`Ledger::verify`](super::Ledger::verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Rows that verified before the first break (all rows if intact).
    pub rows: u64,
    /// `row_hash` of the last verified row; publish it to anchor the chain
    /// outside the file.
    pub head: String,
    /// The first break; `None` when the whole chain verifies.
    pub broken: Option<ChainBreak>,
    /// Registry rows (`agents`) that disagree with what the chain recorded; an agent's
    /// registration is the chain's.
    pub registry: Vec<RegistryMismatch>,
}

impl VerifyReport {
    /// Whether the whole chain verified and the registry agrees with it.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none() && self.registry.is_empty()
    }
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// `None` when the break is rows missing at the end.
    pub table: Option<Table>,
    /// The offending row's `id` within its table; `None` when the break is rows missing at
    /// the end.
    pub id: Option<i64>,
    /// The offending row's seq, or the first missing seq.
    pub seq: u64,
    /// What does not hold there.
    pub reason: BreakReason,
}

/// Why the chain breaks at a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BreakReason {
    /// The row's content does not hash to its `row_hash`: it was edited.
    HashMismatch {
        /// The row's stored `row_hash`.
        stored: String,
        /// The hash of its content as read.
        computed: String,
    },
    /// The row does not link to its predecessor: rows were reordered,
    /// replaced or re-hashed.
    PrevMismatch {
        /// The previous row's `row_hash`.
        expected: String,
        /// The row's `prev_hash`.
        found: String,
    },
    /// Seqs before this row are absent: rows were deleted.
    Gap {
        /// The first missing seq.
        expected_seq: u64,
    },
    /// Another row already has this seq.
    DuplicateSeq,
    /// The chain ends before the head recorded at the last commit: trailing
    /// rows were deleted.
    Missing {
        /// The head seq recorded at the last commit.
        recorded_head_seq: u64,
    },
    /// The last row differs from the head recorded at the last commit.
    HeadMismatch {
        /// The head hash recorded at the last commit.
        recorded: String,
        /// The last row's `row_hash`.
        found: String,
    },
    /// A chain column has the wrong type.
    Malformed {
        /// The column (`seq`, `prev_hash`, `row_hash`).
        column: &'static str,
    },
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.table, self.id) {
            (Some(t), Some(id)) => write!(f, "{t} row id {id} (seq {}): ", self.seq)?,
            _ => write!(f, "seq {}: ", self.seq)?,
        }
        match &self.reason {
            BreakReason::HashMismatch { stored, computed } => {
                write!(
                    f,
                    "content was modified (stored hash {stored}, computed {computed})"
                )
            }
            BreakReason::PrevMismatch { expected, found } => write!(
                f,
                "does not link to the previous row (expected prev_hash {expected}, found {found})"
            ),
            BreakReason::Gap { expected_seq } => {
                write!(f, "rows from seq {expected_seq} are missing (deleted)")
            }
            BreakReason::DuplicateSeq => write!(f, "seq is used by more than one row"),
            BreakReason::Missing { recorded_head_seq } => write!(
                f,
                "chain ends early; the last commit recorded head seq {recorded_head_seq}"
            ),
            BreakReason::HeadMismatch { recorded, found } => write!(
                f,
                "last row hash {found} differs from the recorded head {recorded}"
            ),
            BreakReason::Malformed { column } => write!(f, "`{column}` has the wrong type"),
        }
    }
}

/// The chain fields of one row plus its recomputed hash.
struct Link {
    table: Table,
    id: i64,
    seq: Result<i64, &'static str>,
    prev_hash: Result<String, &'static str>,
    row_hash: Result<String, &'static str>,
    computed: String,
}

fn text_col(v: ValueRef<'_>, column: &'static str) -> Result<String, &'static str> {
    match v {
        ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
        _ => Err(column),
    }
}

fn link(table: Table, row: &Row<'_>) -> Result<Link, LedgerError> {
    let seq = match row.get_ref(1)? {
        ValueRef::Integer(s) => Ok(s),
        _ => Err("seq"),
    };
    let prev_ref = row.get_ref(2)?;
    let prev_hash = text_col(prev_ref, "prev_hash");
    let row_hash = text_col(row.get_ref(3)?, "row_hash");
    // Hash the values exactly as stored, whatever their type now is.
    let n = table.content_columns().len();
    let mut content = Vec::with_capacity(n);
    for i in 0..n {
        content.push(Field::from(row.get_ref(4 + i)?));
    }
    let prev_bytes = match prev_ref {
        ValueRef::Text(t) | ValueRef::Blob(t) => t,
        _ => &[],
    };
    let computed = chain::row_hash(
        prev_bytes,
        table.name(),
        seq.unwrap_or(0),
        table.hashed(&content),
    );
    Ok(Link {
        table,
        id: row.get(0)?,
        seq,
        prev_hash,
        row_hash,
        computed,
    })
}

pub(crate) fn verify(conn: &mut Connection) -> Result<VerifyReport, LedgerError> {
    let tx = conn.transaction()?;
    let recorded = schema::meta_head(&tx)?;
    let mut stmts = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        let sql = format!(
            "SELECT id, seq, prev_hash, row_hash, {} FROM {} ORDER BY seq",
            table.content_columns().join(", "),
            table.name()
        );
        stmts.push((table, tx.prepare(&sql)?));
    }
    let mut cursors = Vec::with_capacity(stmts.len());
    for (table, stmt) in &mut stmts {
        cursors.push((*table, stmt.query([])?));
    }
    let mut peeked: Vec<Option<Link>> = Vec::with_capacity(cursors.len());
    for (table, rows) in &mut cursors {
        peeked.push(rows.next()?.map(|r| link(*table, r)).transpose()?);
    }

    let mut report = VerifyReport {
        rows: 0,
        head: GENESIS_HASH.to_string(),
        broken: None,
        registry: registry_mismatches(&tx)?,
    };
    let mut expected_seq: i64 = 1;
    let mut last: Option<(Table, i64)> = None;
    loop {
        // Malformed seqs sort after integers in SQLite, so picking the
        // smallest integer first and then any malformed row is correct.
        let next = peeked
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, l.seq.unwrap_or(i64::MAX))))
            .min_by_key(|&(_, seq)| seq)
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        let Some(l) = peeked[i].take() else { break };
        let at = |reason| ChainBreak {
            table: Some(l.table),
            id: Some(l.id),
            seq: l.seq.map_or(0, i64::unsigned_abs),
            reason,
        };
        let checked = (|| {
            let seq = l.seq.map_err(|column| BreakReason::Malformed { column })?;
            let prev = l
                .prev_hash
                .as_ref()
                .map_err(|&column| BreakReason::Malformed { column })?;
            let hash = l
                .row_hash
                .as_ref()
                .map_err(|&column| BreakReason::Malformed { column })?;
            if seq < expected_seq {
                return Err(BreakReason::DuplicateSeq);
            }
            if seq > expected_seq {
                return Err(BreakReason::Gap {
                    expected_seq: expected_seq.unsigned_abs(),
                });
            }
            if *prev != report.head {
                return Err(BreakReason::PrevMismatch {
                    expected: report.head.clone(),
                    found: prev.clone(),
                });
            }
            if *hash != l.computed {
                return Err(BreakReason::HashMismatch {
                    stored: hash.clone(),
                    computed: l.computed.clone(),
                });
            }
            Ok(hash.clone())
        })();
        match checked {
            Ok(hash) => {
                report.rows += 1;
                report.head = hash;
                expected_seq += 1;
                last = Some((l.table, l.id));
            }
            Err(reason) => {
                report.broken = Some(at(reason));
                return Ok(report);
            }
        }
        let (table, rows) = &mut cursors[i];
        peeked[i] = rows.next()?.map(|r| link(*table, r)).transpose()?;
    }
    let last_seq = expected_seq - 1;
    if recorded.seq > last_seq {
        report.broken = Some(ChainBreak {
            table: None,
            id: None,
            seq: expected_seq.unsigned_abs(),
            reason: BreakReason::Missing {
                recorded_head_seq: recorded.seq.unsigned_abs(),
            },
        });
    } else if recorded.seq == last_seq && recorded.hash != report.head {
        report.broken = Some(ChainBreak {
            table: last.map(|(t, _)| t),
            id: last.map(|(_, id)| id),
            seq: last_seq.unsigned_abs(),
            reason: BreakReason::HeadMismatch {
                recorded: recorded.hash,
                found: report.head.clone(),
            },
        });
    }
    Ok(report)
}

impl LedgerRow {
    /// The action name, for `agent_actions` rows.
    pub fn action_name(&self) -> Option<&str> {
        (self.table == Table::Actions).then_some(self.kind.as_str())
    }

    /// The violation type, for `violations` rows.
    pub fn violation_type(&self) -> Option<&str> {
        (self.table == Table::Violations).then_some(self.kind.as_str())
    }

    /// A text column (`decision`, `error_type`, `details`, …), if the row has it and it is
    /// not NULL.
    pub fn text(&self, column: &str) -> Option<&str> {
        self.fields.get(column).and_then(Json::as_str)
    }

    /// The lifecycle phase the row was written in, if any.
    pub fn phase(&self) -> Option<&str> {
        self.phase.as_deref()
    }

    /// One line for people: `#seq time table agent task phase summary`.
    pub fn one_line(&self) -> String {
        format!(
            "#{:<6} {} {:<13} {:<20} {:<16} {:<9} {}",
            self.seq,
            self.timestamp,
            self.table.name(),
            self.agent_id,
            self.task_id.as_deref().unwrap_or("-"),
            self.phase.as_deref().unwrap_or("-"),
            self.summary
        )
    }

    /// What this row says the agent tried, for handoff objects: its own capability calls,
    /// notes and decisions (allowed or refused), not the host's bookkeeping.
    pub fn tried(&self) -> Option<String> {
        const AGENT_ACTIONS: [&str; 11] = [
            "state.",
            "artifacts.",
            "llm.",
            "secrets.",
            "tools.",
            "ledger.",
            "blackboard.",
            "messaging.",
            "consensus.",
            "agent.note",
            "agent.decision",
        ];
        let by_agent = self.table == Table::Actions
            && AGENT_ACTIONS
                .iter()
                .any(|prefix| self.kind.starts_with(prefix));
        by_agent.then(|| self.summary.clone())
    }
}

/// A `runs` row: where a run is and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRow {
    /// The run.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// Its task.
    pub task_id: String,
    /// The agent's tier when it ran.
    pub tier: Tier,
    /// The component that ran.
    pub component_digest: String,
    /// `running` (or interrupted: its process is gone), `completed`, `failed`, `revoked`.
    pub status: String,
    /// The last phase entered.
    pub phase: String,
    /// Times it was started.
    pub attempts: u32,
    /// The machine that ran it (its host name).
    pub host: String,
    /// The process that ran it.
    pub pid: u32,
    /// The token its agent's lock held while it ran.
    pub lock_owner: String,
    /// When it began, RFC 3339.
    pub started_at: String,
    /// When its row was last written, RFC 3339.
    pub updated_at: String,
    /// Its outcome code once ended.
    pub outcome: Option<String>,
    /// Journal records written.
    pub calls: u64,
    /// The packet it ran, JSON.
    #[serde(skip)]
    pub packet: String,
    /// Rows of its phases come after this ledger row (`None` for a run of an older ledger).
    #[serde(skip)]
    pub from_row: Option<u64>,
    /// The ledger's last row when its `runs` row was last written: once it ended, no row of
    /// it comes after.
    #[serde(skip)]
    pub to_row: Option<u64>,
}

impl RunRow {
    /// The ledger rows that can be this run's: after [`RunRow::from_row`], and, once it
    /// ended, up to [`RunRow::to_row`]. `None` for a run of an older ledger.
    fn rows(&self) -> Option<(i64, i64)> {
        let from = i64::try_from(self.from_row?).ok()?;
        let to = match self.status.as_str() {
            "running" => None,
            _ => self.to_row.and_then(|to| i64::try_from(to).ok()),
        };
        Some((from, to.unwrap_or(i64::MAX)))
    }
}

/// Which runs [`runs`] lists; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Runs of this agent.
    pub agent: Option<String>,
    /// Runs of this task.
    pub task: Option<String>,
    /// Runs with this status.
    pub status: Option<String>,
    /// At most this many, newest first (0: 100).
    pub limit: usize,
}

const RUN_COLUMNS: &str = "run_id, agent_id, task_id, tier, component_digest, status, phase, \
     attempts, host, pid, started_at, updated_at, outcome, calls, packet, lock_owner, from_row, \
     to_row";

fn run_from(row: &Row<'_>) -> Result<RunRow, LedgerError> {
    let small = |idx: usize, column: &'static str| -> Result<u32, LedgerError> {
        let raw: i64 = row.get(idx)?;
        u32::try_from(raw).map_err(|_| LedgerError::InvalidValue {
            table: "runs",
            column,
            value: raw.to_string(),
            expected: "a non-negative count",
        })
    };
    Ok(RunRow {
        run_id: row.get(0)?,
        agent_id: row.get(1)?,
        task_id: row.get(2)?,
        tier: tier_at(row, 3, "runs", "tier")?,
        component_digest: row.get(4)?,
        status: row.get(5)?,
        phase: row.get(6)?,
        attempts: small(7, "attempts")?,
        host: row.get(8)?,
        pid: small(9, "pid")?,
        started_at: row.get(10)?,
        updated_at: row.get(11)?,
        outcome: row.get(12)?,
        calls: count_at(row, 13, "calls")?,
        packet: row.get(14)?,
        lock_owner: row.get(15)?,
        from_row: row
            .get::<_, Option<i64>>(16)?
            .and_then(|v| u64::try_from(v).ok()),
        to_row: row
            .get::<_, Option<i64>>(17)?
            .and_then(|v| u64::try_from(v).ok()),
    })
}

pub(crate) fn run(conn: &Connection, run_id: &str) -> Result<Option<RunRow>, LedgerError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"))?;
    let mut rows = stmt.query([run_id])?;
    rows.next()?.map(run_from).transpose()
}

pub(crate) fn runs(conn: &Connection, filter: &RunFilter) -> Result<Vec<RunRow>, LedgerError> {
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    for (column, value) in [
        ("agent_id", &filter.agent),
        ("task_id", &filter.task),
        ("status", &filter.status),
    ] {
        if let Some(value) = value {
            args.push(Value::Text(value.clone()));
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    }
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    sql.push_str(&format!(" ORDER BY run_id DESC LIMIT {limit}"));
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(run_from(row)?);
    }
    Ok(out)
}

/// The latest run of `agent_id`.
pub(crate) fn last_run(conn: &Connection, agent_id: &str) -> Result<Option<RunRow>, LedgerError> {
    let filter = RunFilter {
        agent: Some(agent_id.to_string()),
        limit: 1,
        ..RunFilter::default()
    };
    Ok(runs(conn, &filter)?.into_iter().next())
}

/// The journal of `run_id`, in order.
pub(crate) fn journal(
    conn: &Connection,
    run_id: &str,
) -> Result<Vec<super::record::Recorded>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, phase, op, args_digest, payload, head FROM journal WHERE run_id = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([run_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(super::record::Recorded {
            seq: count_at(row, 0, "seq")?,
            phase: row.get(1)?,
            op: row.get(2)?,
            args_digest: row.get(3)?,
            payload: row.get(4)?,
            head: row.get(5)?,
        });
    }
    Ok(out)
}

/// One chained row of a run that vouches for its journal: the row's position in the chain,
/// the call it records and the journal head it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalAnchor {
    /// The row's `seq` in the chain.
    pub row: u64,
    /// The action (`state.get`, `phase.result`).
    pub action: String,
    /// The journal position it vouches up to.
    pub call_seq: u64,
    /// The journal head at that position.
    pub head: String,
}

/// The chained rows of `run_id` that name a journal head, in order.
pub(crate) fn anchors(conn: &Connection, run: &RunRow) -> Result<Vec<JournalAnchor>, LedgerError> {
    let mut stmt = conn.prepare_cached(&of_run(
        "SELECT seq, action, call_seq, result_digest FROM agent_actions",
        "call_seq IS NOT NULL",
        run,
    ))?;
    let mut rows = stmt.query(run_params(run))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(JournalAnchor {
            row: count_at(row, 0, "seq")?,
            action: row.get(1)?,
            call_seq: count_at(row, 2, "call_seq")?,
            head: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// `select` of run `run`'s rows that match `filter`, in order. Through the run's row range
/// (the `seq` index) when its `runs` row has one, so the cost is the rows written while it
/// ran, not its agent's whole history; else through the agent's index. An index on `run_id`
/// would cost every row's insert, on the hot path, for a lookup made once per replay or
/// resume.
pub(super) fn of_run(select: &str, filter: &str, run: &RunRow) -> String {
    match run.rows() {
        // `+agent_id`: not through the agent's index, which SQLite would otherwise prefer.
        Some(_) => format!(
            "{select} WHERE seq > ?3 AND seq <= ?4 AND +agent_id = ?1 AND run_id = ?2 \
             AND {filter} ORDER BY seq"
        ),
        // The whole range, through the agent's index.
        None => format!(
            "{select} WHERE agent_id = ?1 AND run_id = ?2 AND seq > ?3 AND seq <= ?4 \
             AND {filter} ORDER BY seq"
        ),
    }
}

/// The parameters of [`of_run`]'s statement.
pub(super) fn run_params(run: &RunRow) -> (&str, &str, i64, i64) {
    let (from, to) = run.rows().unwrap_or((0, i64::MAX));
    (&run.agent_id, &run.run_id, from, to)
}

/// The phases a run entered (its `phase.enter` rows): phase and time, in order.
pub(crate) fn run_phases(
    conn: &Connection,
    run: &RunRow,
) -> Result<Vec<(String, String)>, LedgerError> {
    let mut stmt = conn.prepare_cached(&of_run(
        "SELECT decision, timestamp FROM agent_actions",
        "action = 'phase.enter'",
        run,
    ))?;
    let mut rows = stmt.query(run_params(run))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((row.get(0)?, row.get(1)?));
    }
    Ok(out)
}
