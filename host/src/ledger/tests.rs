use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use rusqlite::Connection;

use super::*;

fn subject(agent: &str, task: &str) -> Arc<Subject> {
    Arc::new(
        Subject::new(agent, "1.2.0", Tier::Builder)
            .with_task_id(task)
            .with_component_digest("sha256:aaaa")
            .with_policy_revision("rev-7"),
    )
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    (dir, path)
}

/// Appends a mix of every entry kind; returns how many rows were written.
fn populate(ledger: &Ledger) -> u64 {
    let s = subject("planner", "task-1");
    for i in 0..5 {
        ledger.append(
            ActionRecord::new(s.clone(), "tool.call", "allow")
                .phase("EXECUTE")
                .confidence(0.25 * f64::from(i)),
        );
    }
    ledger
        .append(ActionRecord::new(s.clone(), "fs.write", "deny").failed("TIER_DENIED", "needs T3"));
    ledger.append(
        ViolationRecord::new(s.clone(), "PATH_ESCAPE", "../etc/passwd")
            .phase("EXECUTE")
            .resource("/etc/passwd"),
    );
    ledger.append(PromotionRecord {
        agent_id: "planner".into(),
        from_tier: Some(Tier::Operator),
        to_tier: Tier::Builder,
        reason: "streak".into(),
        actor: "policy".into(),
    });
    ledger.flush().unwrap();
    ledger.record_run("planner", Tier::Builder, true).unwrap();
    ledger.append(ActionRecord::new(s, "tool.call", "allow"));
    ledger.flush().unwrap();
    10
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn row_at(ledger: &Ledger, table: Table, nth: usize) -> LedgerRow {
    let rows = ledger
        .query(&LedgerQuery {
            table: Some(table),
            ..LedgerQuery::default()
        })
        .unwrap();
    rows[nth].clone()
}

#[test]
fn appends_are_chained_and_verify() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    let n = populate(&ledger);
    let report = ledger.verify().unwrap();
    assert_eq!(report.broken, None);
    assert_eq!(report.rows, n);
    let tail = ledger.tail(100).unwrap();
    assert_eq!(tail.len() as u64, n);
    assert!(tail.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(tail[0].fields["prev_hash"], GENESIS_HASH);
    assert_eq!(
        tail.last().unwrap().fields["row_hash"],
        report.head.as_str()
    );
    let ts = &tail[0].timestamp;
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "not RFC 3339 millis: {ts}"
    );
}

#[test]
fn edited_row_is_reported_exactly() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    populate(&ledger);
    let target = row_at(&ledger, Table::Actions, 2);
    raw(&path)
        .execute(
            "UPDATE agent_actions SET decision = 'deny' WHERE id = ?1",
            [target.id],
        )
        .unwrap();
    let broken = ledger.verify().unwrap().broken.unwrap();
    assert_eq!(broken.table, Some(Table::Actions));
    assert_eq!(broken.id, Some(target.id));
    assert_eq!(broken.seq, target.seq);
    assert!(
        matches!(broken.reason, BreakReason::HashMismatch { .. }),
        "{broken}"
    );
}

#[test]
fn changed_storage_type_is_detected() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    populate(&ledger);
    let target = row_at(&ledger, Table::Actions, 1);
    // Same bytes, stored as a blob: a value-only hash would miss this.
    raw(&path)
        .execute(
            "UPDATE agent_actions SET action = CAST(action AS BLOB) WHERE id = ?1",
            [target.id],
        )
        .unwrap();
    let broken = ledger.verify().unwrap().broken.unwrap();
    assert_eq!(
        (broken.table, broken.id),
        (Some(Table::Actions), Some(target.id))
    );
}

#[test]
fn deleted_rows_are_detected() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    populate(&ledger);
    let victim = row_at(&ledger, Table::Violations, 0);
    raw(&path)
        .execute("DELETE FROM violations WHERE id = ?1", [victim.id])
        .unwrap();
    let broken = ledger.verify().unwrap().broken.unwrap();
    assert_eq!(broken.seq, victim.seq + 1);
    assert_eq!(
        broken.reason,
        BreakReason::Gap {
            expected_seq: victim.seq
        }
    );

    // Deleting the newest row leaves no gap, but the recorded head knows.
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    let n = populate(&ledger);
    raw(&path)
        .execute("DELETE FROM agent_actions WHERE seq = ?1", [n as i64])
        .unwrap();
    let report = ledger.verify().unwrap();
    assert_eq!(report.rows, n - 1);
    assert_eq!(
        report.broken.unwrap().reason,
        BreakReason::Missing {
            recorded_head_seq: n
        }
    );
}

#[test]
fn reordered_rows_are_detected() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    populate(&ledger);
    let a = row_at(&ledger, Table::Actions, 1);
    let b = row_at(&ledger, Table::Actions, 3);
    let conn = raw(&path);
    conn.execute_batch(&format!(
        "UPDATE agent_actions SET seq = -1 WHERE id = {a};
         UPDATE agent_actions SET seq = {sa} WHERE id = {b};
         UPDATE agent_actions SET seq = {sb} WHERE id = {a};",
        a = a.id,
        b = b.id,
        sa = a.seq,
        sb = b.seq
    ))
    .unwrap();
    let broken = ledger.verify().unwrap().broken.unwrap();
    assert_eq!(broken.seq, a.seq);
    assert_eq!(broken.id, Some(b.id));
}

#[test]
fn concurrent_appends_are_all_chained() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 2_000;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let s = subject(&format!("agent-{t}"), "task");
                for i in 0..PER_THREAD {
                    if i % 10 == 0 {
                        ledger.append(ViolationRecord::new(s.clone(), "OUT_OF_SCOPE", "x"));
                    } else {
                        ledger.append(ActionRecord::new(s.clone(), "tool.call", "allow"));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    ledger.flush().unwrap();
    let rows = ledger.query(&LedgerQuery::default()).unwrap();
    assert_eq!(rows.len(), THREADS * PER_THREAD);
    assert!(rows.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
    for t in 0..THREADS {
        let mine = ledger
            .query(&LedgerQuery {
                agent_id: Some(format!("agent-{t}")),
                ..LedgerQuery::default()
            })
            .unwrap();
        assert_eq!(mine.len(), PER_THREAD);
    }
    let report = ledger.verify().unwrap();
    assert_eq!(
        (report.rows, report.broken),
        ((THREADS * PER_THREAD) as u64, None)
    );
}

#[test]
fn clean_drop_persists_and_reopen_continues_chain() {
    let (_dir, path) = temp();
    let n = 5_000;
    {
        let ledger = Ledger::open(&path).unwrap();
        let s = subject("a", "t");
        for _ in 0..n {
            ledger.append(ActionRecord::new(s.clone(), "tool.call", "allow"));
        }
        // No flush: dropping the last handle must commit the queue.
    }
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.verify().unwrap().rows, n);
    let seq = ledger
        .append_durable(ActionRecord::new(subject("a", "t"), "after", "allow"))
        .unwrap();
    assert_eq!(seq, n + 1);
    let report = ledger.verify().unwrap();
    assert_eq!((report.rows, report.broken), (n + 1, None));
}

#[test]
fn durable_calls_are_visible_to_a_fresh_connection() {
    let (_dir, path) = temp();
    let ledger = Ledger::open_with(&path, Durability::Full).unwrap();
    let s = subject("a", "t");
    let seq = ledger
        .append_durable(ActionRecord::new(s.clone(), "first", "allow"))
        .unwrap();
    let seen: String = raw(&path)
        .query_row(
            "SELECT action FROM agent_actions WHERE seq = ?1",
            [seq as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seen, "first");

    for _ in 0..100 {
        ledger.append(ActionRecord::new(s.clone(), "bulk", "allow"));
    }
    ledger.flush().unwrap();
    let count: i64 = raw(&path)
        .query_row(
            "SELECT COUNT(*) FROM agent_actions WHERE action = 'bulk'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 100);
}

#[test]
fn registry_records_every_change() {
    let ledger = Ledger::in_memory().unwrap();
    let reg = ledger
        .register_agent("coder", Tier::Operator, Some("sha256:one"), "admin")
        .unwrap();
    assert!(reg.created());
    let kinds = |ledger: &Ledger| -> Vec<String> {
        ledger
            .tail(100)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect()
    };
    assert_eq!(kinds(&ledger), ["agent.register", "promotion"]);
    let promo = row_at(&ledger, Table::Promotions, 0);
    assert_eq!(promo.fields["from_tier"], serde_json::Value::Null);
    assert_eq!(promo.fields["reason"], "registered");

    // Same tier and digest: nothing to record.
    let again = ledger
        .register_agent("coder", Tier::Operator, Some("sha256:one"), "admin")
        .unwrap();
    assert!(!again.created() && !again.tier_changed() && !again.rebound());
    assert_eq!(kinds(&ledger).len(), 2);

    let moved = ledger
        .register_agent("coder", Tier::Builder, Some("sha256:one"), "admin")
        .unwrap();
    assert!(moved.tier_changed() && !moved.rebound());
    let promo = row_at(&ledger, Table::Promotions, 1);
    assert_eq!(promo.fields["reason"], "re-registered");
    assert_eq!(promo.fields["from_tier"], 1);
    assert_eq!(promo.fields["to_tier"], 2);

    let rebound = ledger
        .register_agent("coder", Tier::Builder, Some("sha256:two"), "admin")
        .unwrap();
    assert!(rebound.rebound() && !rebound.tier_changed());
    let rebind = ledger.tail(1).unwrap().remove(0);
    assert_eq!(rebind.kind, "agent.rebind");
    let details: serde_json::Value =
        serde_json::from_str(rebind.fields["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["from"], "sha256:one");
    assert_eq!(details["to"], "sha256:two");

    ledger
        .set_tier("coder", Tier::Executor, "promoted", "alice")
        .unwrap();
    let agent = ledger.agent("coder").unwrap().unwrap();
    assert_eq!(agent.tier, Tier::Executor);
    assert_eq!(agent.component_digest.as_deref(), Some("sha256:two"));
    let last = ledger.tail(1).unwrap().remove(0);
    assert_eq!(last.table, Table::Promotions);
    assert_eq!(last.fields["actor"], "alice");

    assert!(matches!(
        ledger.set_tier("ghost", Tier::Observer, "x", "y"),
        Err(LedgerError::UnknownAgent(id)) if id == "ghost"
    ));
    assert!(matches!(
        ledger.register_agent("", Tier::Observer, None, "y"),
        Err(LedgerError::EmptyAgentId)
    ));
    assert_eq!(ledger.agents().unwrap().len(), 1);
    assert_eq!(ledger.verify().unwrap().broken, None);
}

#[test]
fn record_run_tracks_streaks() {
    let ledger = Ledger::in_memory().unwrap();
    assert_eq!(ledger.metrics("a").unwrap(), None);
    let streaks: Vec<u64> = [true, true, false, true]
        .into_iter()
        .map(|ok| {
            ledger
                .record_run("a", Tier::Operator, ok)
                .unwrap()
                .consecutive_compliant
        })
        .collect();
    assert_eq!(streaks, [1, 2, 0, 1]);
    let m = ledger.metrics("a").unwrap().unwrap();
    assert_eq!(
        (m.total_runs, m.compliant_runs, m.consecutive_compliant),
        (4, 3, 1)
    );
    let view: (i64, i64, i64) = ledger
        .inner
        .reader
        .lock()
        .query_row(
            "SELECT total_runs, compliant_runs, consecutive_compliant FROM agent_metrics_current WHERE agent_id = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(view, (4, 3, 1));
}

#[test]
fn concurrent_record_run_loses_no_update() {
    let ledger = Ledger::in_memory().unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let ledger = ledger.clone();
            thread::spawn(move || {
                for _ in 0..25 {
                    ledger.record_run("shared", Tier::Builder, true).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let m = ledger.metrics("shared").unwrap().unwrap();
    assert_eq!((m.total_runs, m.consecutive_compliant), (200, 200));
}

#[test]
fn query_filters() {
    let ledger = Ledger::in_memory().unwrap();
    populate(&ledger);
    ledger.append(ActionRecord::new(
        subject("other", "task-2"),
        "tool.call",
        "allow",
    ));
    ledger.flush().unwrap();
    let q = |q: LedgerQuery| ledger.query(&q).unwrap();
    assert_eq!(
        q(LedgerQuery {
            kind: Some("tool.call".into()),
            ..Default::default()
        })
        .len(),
        7
    );
    assert_eq!(
        q(LedgerQuery {
            kind: Some("PATH_ESCAPE".into()),
            ..Default::default()
        })[0]
            .table,
        Table::Violations
    );
    assert_eq!(
        q(LedgerQuery {
            task_id: Some("task-2".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    let after = q(LedgerQuery {
        agent_id: Some("planner".into()),
        after_seq: Some(7),
        limit: Some(2),
        ..Default::default()
    });
    assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), [8, 9]);
    let json = serde_json::to_value(&after[0]).unwrap();
    assert_eq!(json["table"], "promotions");
    assert_eq!("metrics".parse::<Table>().unwrap(), Table::Metrics);
    assert!("bogus".parse::<Table>().is_err());
}

#[test]
fn two_handles_on_one_file_keep_one_chain() {
    let (_dir, path) = temp();
    let a = Ledger::open(&path).unwrap();
    let b = Ledger::open(&path).unwrap();
    let s = subject("a", "t");
    for i in 0..20 {
        let ledger = if i % 3 == 0 { &a } else { &b };
        ledger
            .append_durable(ActionRecord::new(s.clone(), "x", "allow"))
            .unwrap();
    }
    let report = b.verify().unwrap();
    assert_eq!((report.rows, report.broken), (20, None));
}

#[test]
fn failed_commit_reports_and_keeps_head() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    let s = subject("a", "t");
    ledger
        .append_durable(ActionRecord::new(s.clone(), "before", "allow"))
        .unwrap();
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON agent_actions WHEN NEW.action = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();
    let err = ledger
        .append_durable(ActionRecord::new(s.clone(), "poison", "allow"))
        .unwrap_err();
    assert!(err.to_string().contains("poisoned"), "{err}");

    ledger.append(ActionRecord::new(s.clone(), "poison", "allow"));
    let err = ledger.flush().unwrap_err();
    assert!(
        matches!(err, LedgerError::AppendsLost { count: 1, .. }),
        "{err}"
    );
    ledger.flush().unwrap(); // a loss is reported once

    let seq = ledger
        .append_durable(ActionRecord::new(s, "after", "allow"))
        .unwrap();
    assert_eq!(seq, 2, "failed batches must not advance the head");
    let report = ledger.verify().unwrap();
    assert_eq!((report.rows, report.broken), (2, None));
}

#[test]
fn garbage_file_is_rejected_untouched() {
    let (dir, path) = temp();
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");
    assert!(err.to_string().contains("not a warden ledger"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // A valid SQLite header over garbage: SQLite itself must reject it.
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend_from_slice(&bytes);
    std::fs::write(&path, &fake).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::NotALedger { .. } | LedgerError::Corrupt { .. }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), fake);

    // Someone else's database.
    let other = dir.path().join("other.db");
    raw(&other)
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hi');")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    let err = Ledger::open(&other).unwrap_err();
    assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");
    assert_eq!(std::fs::read(&other).unwrap(), before);
    assert!(!dir.path().join("other.db-wal").exists());
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path) = temp();
    drop(Ledger::open(&path).unwrap());
    raw(&path)
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(
        matches!(err, LedgerError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade warden"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn nan_and_negative_zero_confidence_verify() {
    let ledger = Ledger::in_memory().unwrap();
    let s = subject("a", "t");
    ledger.append(ActionRecord::new(s.clone(), "x", "allow").confidence(f64::NAN));
    ledger.append(ActionRecord::new(s, "x", "allow").confidence(-0.0));
    ledger.flush().unwrap();
    assert_eq!(ledger.verify().unwrap().broken, None);
    assert_eq!(ledger.path(), None);
}

/// A writer that cannot commit (another connection holds the write lock) makes appenders
/// wait once the queue is full, sync and async alike, instead of the queue growing; once it
/// can commit again every entry is written, none dropped.
#[test]
fn a_full_queue_makes_appenders_wait_and_loses_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    let blocker = raw(&path);
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let attempts = 3 * QUEUE_CAPACITY;
    let sync_done = Arc::new(AtomicUsize::new(0));
    let async_done = Arc::new(AtomicUsize::new(0));
    let s = subject("flood", "t");
    let sync_appender = {
        let (ledger, done, s) = (ledger.clone(), Arc::clone(&sync_done), s.clone());
        thread::spawn(move || {
            for _ in 0..attempts {
                ledger.append(ActionRecord::new(s.clone(), "sync", "allow"));
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_appender = {
        let (ledger, done) = (ledger.clone(), Arc::clone(&async_done));
        thread::spawn(move || {
            runtime.block_on(async {
                for _ in 0..attempts {
                    ledger
                        .append_async(ActionRecord::new(s.clone(), "async", "allow"))
                        .await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        })
    };
    thread::sleep(Duration::from_millis(600));
    let queued = sync_done.load(Ordering::SeqCst) + async_done.load(Ordering::SeqCst);
    // The queue, plus the one batch the writer took before it blocked.
    let bound = QUEUE_CAPACITY + writer::MAX_BATCH;
    assert!(
        queued <= bound,
        "{queued} appends returned while the writer could not commit; the queue must hold at most {bound}"
    );
    assert!(
        queued >= QUEUE_CAPACITY,
        "the queue should have filled: {queued}"
    );

    blocker.execute_batch("ROLLBACK").unwrap();
    sync_appender.join().unwrap();
    async_appender.join().unwrap();
    ledger.flush().unwrap();
    let report = ledger.verify().unwrap();
    assert_eq!(
        (report.rows, report.broken),
        (2 * attempts as u64, None),
        "every entry was written"
    );
}

fn run_record(run_id: &str, status: &'static str, from_row: u64) -> RunRecord {
    RunRecord {
        run_id: Arc::from(run_id),
        agent_id: Arc::from("planner"),
        task_id: Arc::from("task-1"),
        tier: Tier::Builder,
        component_digest: Arc::from("sha256:aaaa"),
        status,
        phase: "EXECUTE",
        attempts: 1,
        host: Arc::from("here"),
        pid: 1,
        lock_owner: Arc::from("owner"),
        outcome: None,
        calls: 1,
        packet: Arc::from("{}"),
        from_row,
    }
}

/// An action row of run `run` that anchors journal call `call_seq`.
fn anchor(run: &str, call_seq: u64) -> ActionRecord {
    let s = Arc::new(
        Subject::new("planner", "1.2.0", Tier::Builder)
            .with_task_id("task-1")
            .with_run_id(run),
    );
    let mut record = ActionRecord::new(s, "state.get", "answered");
    record.call_seq = Some(call_seq);
    record.result_digest = Some(format!("sha256:{call_seq}").into());
    record
}

const RUN: &str = "run-0123456789abcdef0123456789abcdef";

#[test]
fn a_runs_rows_are_read_through_its_row_range_not_its_agents_history() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    populate(&ledger);
    ledger.flush().unwrap();
    let from = ledger.committed_seq();
    assert!(from > 0);
    ledger.append(anchor(RUN, 1));
    ledger.append(anchor(RUN, 2));
    ledger.append(Entry::Run(run_record(RUN, "completed", from)));
    // A later row of the same agent and run id (impossible in a real ledger) is past the
    // ended run's range: the range is what the lookup reads.
    ledger.append(anchor(RUN, 3));
    ledger.flush().unwrap();
    let run = ledger
        .run(&crate::id::RunId::new(RUN).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(run.from_row, Some(from));
    let anchors = ledger.journal_anchors(&run).unwrap();
    let calls: Vec<u64> = anchors.iter().map(|a| a.call_seq).collect();
    assert_eq!(calls, [1, 2]);
    // The plan: the `seq` index over the range, not a walk of the agent's rows.
    let plan: Vec<String> = raw(&path)
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            read::of_run(
                "SELECT seq FROM agent_actions",
                "call_seq IS NOT NULL",
                &run
            )
        ))
        .unwrap()
        .query_map(read::run_params(&run), |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|p| p.contains("(seq>? AND seq<?)")),
        "{plan:?}"
    );
}

#[test]
fn a_schema_2_ledger_is_migrated_and_its_runs_read_as_before() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    ledger.append(anchor(RUN, 1));
    ledger.append(Entry::Run(run_record(RUN, "completed", 0)));
    ledger.flush().unwrap();
    drop(ledger);
    // As schema 2 wrote it: no row range.
    raw(&path)
        .execute_batch(
            "ALTER TABLE runs DROP COLUMN from_row; ALTER TABLE runs DROP COLUMN to_row; \
             DROP INDEX agent_actions_standing; \
             CREATE INDEX agent_actions_standing ON agent_actions (agent_id, action, seq); \
             UPDATE meta SET value = 2 WHERE key = 'schema_version';",
        )
        .unwrap();
    let ledger = Ledger::open(&path).unwrap();
    let version: i64 = raw(&path)
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // The standing index is partial now: a capability call's row does not enter it.
    let standing: String = raw(&path)
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'agent_actions_standing'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(standing.contains("WHERE action IN"), "{standing}");
    // Registration and standing are still read through it (`INDEXED BY` fails otherwise).
    ledger
        .register_agent("planner", Tier::Builder, None, "test")
        .unwrap();
    let record = ledger.agent("planner").unwrap().unwrap();
    assert_eq!(ledger.registry_mismatch(&record).unwrap(), None);
    assert_eq!(ledger.revocation("planner").unwrap(), None);
    let run = ledger
        .run(&crate::id::RunId::new(RUN).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((run.from_row, run.to_row), (None, None));
    let anchors = ledger.journal_anchors(&run).unwrap();
    assert_eq!(anchors.len(), 1);
    assert!(ledger.verify().unwrap().broken.is_none());
}

#[test]
fn a_query_pages_newest_first_and_from_a_time() {
    let (_dir, path) = temp();
    let ledger = Ledger::open(&path).unwrap();
    let total = populate(&ledger);
    let seqs =
        |q: LedgerQuery| -> Vec<u64> { ledger.query(&q).unwrap().iter().map(|r| r.seq).collect() };
    let all = seqs(LedgerQuery::default());
    assert_eq!(all.len() as u64, total);
    // Newest first, across the four tables.
    let newest = seqs(LedgerQuery {
        descending: true,
        limit: Some(3),
        ..LedgerQuery::default()
    });
    let mut expected: Vec<u64> = all.iter().rev().take(3).copied().collect();
    assert_eq!(newest, expected);
    // The next page.
    let next = seqs(LedgerQuery {
        descending: true,
        offset: 3,
        limit: Some(3),
        ..LedgerQuery::default()
    });
    expected = all.iter().rev().skip(3).take(3).copied().collect();
    assert_eq!(next, expected);
    let oldest_page = seqs(LedgerQuery {
        offset: 2,
        limit: Some(2),
        ..LedgerQuery::default()
    });
    assert_eq!(oldest_page, all[2..4]);
    // From a time: everything since the epoch, nothing from the far future.
    let since = |at: &str| {
        seqs(LedgerQuery {
            since: Some(at.to_string()),
            ..LedgerQuery::default()
        })
        .len() as u64
    };
    assert_eq!(since("1970-01-01T00:00:00.000Z"), total);
    assert_eq!(since("9999-01-01T00:00:00.000Z"), 0);
}

#[test]
fn a_read_only_open_reads_and_verifies_and_refuses_to_record() {
    let (_dir, path) = temp();
    {
        let ledger = Ledger::open(&path).unwrap();
        populate(&ledger);
    }
    let ledger = Ledger::open_read_only(&path).unwrap();
    assert!(ledger.verify().unwrap().is_intact());
    assert_eq!(ledger.query(&LedgerQuery::default()).unwrap().len(), 10);
    assert!(matches!(
        ledger.append_durable(ActionRecord::new(subject("a", "t"), "x", "allow")),
        Err(LedgerError::ReadOnly { .. })
    ));
    // A file that does not exist is not created.
    let missing = path.with_file_name("missing.db");
    assert!(Ledger::open_read_only(&missing).is_err());
    assert!(!missing.exists());
}
