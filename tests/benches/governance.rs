//! `cargo xtask bench`: what governance costs beside the sandbox, as ratios against baselines
//! measured in the same run on the same machine. Medians of several rounds (the machine is
//! small and noisy).
//!
//! 1. instantiate + `plan` of the same component: governed host vs bare wasmtime (same
//!    engine configuration, same WASI setup, `InstancePre` on both);
//! 2. a capability call (`state.get`, N per `execute`): governed vs a bare host function
//!    doing the same state-store read;
//! 3. ledger appends/s vs raw rusqlite batched inserts at the same durability;
//! 4. a full governed lifecycle of `hello`.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use warden::bare::{ArchitectPre, WitError, engine_config, warden as wit};
use warden::ledger::{ActionRecord, Entry, Ledger, Subject};
use warden::state::{Admission, Quota, StateStore};
use warden::{AgentId, Host, Tier};
use warden_tests::{agent, packet};

const ROUNDS: usize = 15;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

struct BareCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    state: Arc<dyn StateStore>,
    agent: AgentId,
}

impl WasiView for BareCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::agent::types::Host for BareCtx {}

impl wit::agent::state::Host for BareCtx {
    async fn get(&mut self, key: String) -> Result<Option<String>, WitError> {
        self.state
            .kv_get(&self.agent, &key)
            .await
            .map_err(|e| WitError::Unavailable(e.to_string()))
    }
    async fn set(&mut self, key: String, value: String) -> Result<(), WitError> {
        match self
            .state
            .kv_set(&self.agent, &key, &value, Quota::UNLIMITED, None)
            .await
        {
            Ok(Admission::Stored(())) => Ok(()),
            Ok(Admission::Refused(over)) => Err(WitError::BudgetExhausted(format!("{over:?}"))),
            Err(e) => Err(WitError::Unavailable(e.to_string())),
        }
    }
    async fn delete(&mut self, key: String) -> Result<bool, WitError> {
        self.state
            .kv_delete(&self.agent, &key, None)
            .await
            .map_err(|e| WitError::Unavailable(e.to_string()))
    }
    async fn keys(&mut self) -> Result<Vec<String>, WitError> {
        self.state
            .kv_keys(&self.agent)
            .await
            .map_err(|e| WitError::Unavailable(e.to_string()))
    }
}

struct Bare {
    engine: Engine,
    pre: ArchitectPre<BareCtx>,
    state: Arc<dyn StateStore>,
    workspace: tempfile::TempDir,
}

impl Bare {
    fn new(bytes: &[u8], state: Arc<dyn StateStore>) -> Bare {
        let engine = Engine::new(&engine_config()).unwrap();
        let component = Component::new(&engine, bytes).unwrap();
        let mut linker = Linker::<BareCtx>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wit::agent::types::add_to_linker::<_, HasSelf<BareCtx>>(&mut linker, |c| c).unwrap();
        wit::agent::state::add_to_linker::<_, HasSelf<BareCtx>>(&mut linker, |c| c).unwrap();
        let pre = ArchitectPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Bare {
            engine,
            pre,
            state,
            workspace: tempfile::tempdir().unwrap(),
        }
    }

    async fn instantiate_and_call(&self, packet: &wit::agent::types::Packet, execute: bool) {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(65536))
            .stderr(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(65536))
            .allow_tcp(false)
            .allow_udp(false);
        wasi.preopened_dir(self.workspace.path(), "/workspace", FsPerms::ReadOnly)
            .unwrap();
        let ctx = BareCtx {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            state: self.state.clone(),
            agent: AgentId::new("bench").unwrap(),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.set_epoch_deadline(u64::MAX / 2);
        let guest = self.pre.instantiate_async(&mut store).await.unwrap();
        let agent = guest.warden_agent_agent();
        let plan = agent.call_plan(&mut store, packet).await.unwrap().unwrap();
        if execute {
            agent
                .call_execute(&mut store, packet, &plan)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

fn wit_packet(objective: &str) -> wit::agent::types::Packet {
    use wit::agent::types::{Constraints, ErrorBudget, Packet};
    Packet {
        agent_id: "bench".into(),
        task_id: "bench".into(),
        created_for: String::new(),
        objective: objective.into(),
        deliverables: vec![],
        constraints: Constraints {
            scope: vec![],
            forbidden: vec![],
            required_steps: vec![],
        },
        success_criteria: vec![],
        error_budget: ErrorBudget {
            max_total_errors: 8,
            max_same_error_repeats: 2,
            max_procedure_violations: 1,
        },
        escalation_rules: vec![],
        created_at: String::new(),
    }
}

async fn time<F, Fut>(iterations: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..iterations {
            f().await;
        }
        samples.push(start.elapsed() / iterations as u32);
    }
    median(samples)
}

fn row(name: &str, governed: Duration, baseline: Duration, target: &str) {
    println!(
        "{name:<44} {:>12.2?} {:>12.2?} {:>8.2}x   {target}",
        governed,
        baseline,
        governed.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async_main());
}

async fn async_main() {
    let bench_guest = agent("bench-guest");
    let hello = agent("hello");
    println!("warden benchmarks — medians of {ROUNDS} rounds\n");
    println!(
        "{:<44} {:>12} {:>12} {:>9}   target",
        "measure", "governed", "baseline", "ratio"
    );

    // 1. Instantiate + plan.
    let host = Host::builder().build().unwrap();
    let governed = host
        .bench_instance(
            "bench",
            Tier::Operator,
            &bench_guest,
            packet("bench", "bench", "calls:0", &[], json!({})),
        )
        .unwrap();
    // The bare host reads the same state store instance: only governance differs.
    let bare = Bare::new(&bench_guest, host.state().clone());
    let plain = wit_packet("calls:0");
    for _ in 0..20 {
        governed.instantiate_and_call(false).await.unwrap();
        bare.instantiate_and_call(&plain, false).await;
    }
    let g = time(200, || async {
        governed.instantiate_and_call(false).await.unwrap()
    })
    .await;
    let b = time(200, || async {
        bare.instantiate_and_call(&plain, false).await
    })
    .await;
    row("instantiate + plan (bench-guest)", g, b, "≤ 1.2x");

    // 2. Capability call overhead: N state.get per execute, minus the same with zero calls.
    const CALLS: usize = 10_000;
    let many = host
        .bench_instance(
            "bench",
            Tier::Operator,
            &bench_guest,
            packet("bench", "bench", &format!("calls:{CALLS}"), &[], json!({})),
        )
        .unwrap();
    let bare_many = wit_packet(&format!("calls:{CALLS}"));
    // Interleaved rounds, so both sides see the same machine; the overhead is the median of
    // the per-round differences.
    let (mut gs, mut bs, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        many.instantiate_and_call(true).await.unwrap();
        let g = start.elapsed() / CALLS as u32;
        let start = Instant::now();
        bare.instantiate_and_call(&bare_many, true).await;
        let b = start.elapsed() / CALLS as u32;
        gs.push(g);
        bs.push(b);
        diffs.push(g.as_nanos() as i128 - b.as_nanos() as i128);
        host.ledger().flush().unwrap();
    }
    diffs.sort();
    row(
        "capability call state.get (per call)",
        median(gs),
        median(bs),
        "",
    );
    println!(
        "{:<44} {:>10}ns                             < 1 µs",
        "  governance overhead per call (median diff)",
        diffs[diffs.len() / 2]
    );

    // 2a. The same call's latency, 100 per execute: the ledger's queue never fills, so this
    // is the guest thread's own cost; 10,000 back to back (above) is bounded by how fast the
    // writer thread commits, two rows (the call's and its journal record) per call.
    {
        const FEW: usize = 100;
        let few = host
            .bench_instance(
                "bench",
                Tier::Operator,
                &bench_guest,
                packet("bench", "bench", &format!("calls:{FEW}"), &[], json!({})),
            )
            .unwrap();
        let zero = host
            .bench_instance(
                "bench",
                Tier::Operator,
                &bench_guest,
                packet("bench", "bench", "calls:0", &[], json!({})),
            )
            .unwrap();
        let bare_few = wit_packet(&format!("calls:{FEW}"));
        let bare_zero = wit_packet("calls:0");
        let mut diffs = Vec::new();
        for _ in 0..(ROUNDS * 10) {
            let start = Instant::now();
            few.instantiate_and_call(true).await.unwrap();
            let with_calls = start.elapsed();
            let start = Instant::now();
            zero.instantiate_and_call(true).await.unwrap();
            let without = start.elapsed();
            let start = Instant::now();
            bare.instantiate_and_call(&bare_few, true).await;
            let bare_with = start.elapsed();
            let start = Instant::now();
            bare.instantiate_and_call(&bare_zero, true).await;
            let bare_without = start.elapsed();
            host.ledger().flush().unwrap();
            let governed = with_calls.saturating_sub(without).as_nanos() as i128;
            let plain = bare_with.saturating_sub(bare_without).as_nanos() as i128;
            diffs.push((governed - plain) / FEW as i128);
        }
        diffs.sort();
        println!(
            "{:<44} {:>10}ns                             < 1 µs",
            "  overhead per call, 100 per phase (latency)",
            diffs[diffs.len() / 2]
        );
    }

    // 2b. The journal's cost per call, in each durability mode: the same governed state.get
    // with the journal recording, and with it off, interleaved on the same host.
    for (label, durability) in [
        ("batched", warden::CallDurability::Batched),
        ("every-call", warden::CallDurability::EveryCall),
    ] {
        let calls = if durability == warden::CallDurability::Batched {
            CALLS
        } else {
            1_000
        };
        let dir = tempfile::tempdir().unwrap();
        let host = Host::builder()
            .data_dir(dir.path())
            .call_durability(durability)
            .build()
            .unwrap();
        let objective = format!("calls:{calls}");
        let on = host
            .bench_instance(
                "bench",
                Tier::Operator,
                &bench_guest,
                packet("bench", "bench", &objective, &[], json!({})),
            )
            .unwrap();
        let off = host
            .bench_instance_unjournaled(
                "bench",
                Tier::Operator,
                &bench_guest,
                packet("bench", "bench", &objective, &[], json!({})),
            )
            .unwrap();
        on.instantiate_and_call(true).await.unwrap();
        off.instantiate_and_call(true).await.unwrap();
        let (mut ons, mut offs, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let start = Instant::now();
            on.instantiate_and_call(true).await.unwrap();
            host.ledger().flush().unwrap();
            let a = start.elapsed() / calls as u32;
            let start = Instant::now();
            off.instantiate_and_call(true).await.unwrap();
            host.ledger().flush().unwrap();
            let b = start.elapsed() / calls as u32;
            ons.push(a);
            offs.push(b);
            diffs.push(a.as_nanos() as i128 - b.as_nanos() as i128);
        }
        diffs.sort();
        row(
            &format!("journal, state.get, {label} (file ledger)"),
            median(ons),
            median(offs),
            "",
        );
        println!(
            "{:<44} {:>10}ns",
            format!("  journal cost per call ({label}, median diff)"),
            diffs[diffs.len() / 2]
        );
    }

    // 3. Ledger appends vs raw rusqlite batched inserts (WAL, synchronous=NORMAL).
    const ROWS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut ledger_samples = Vec::new();
    let mut raw_samples = Vec::new();
    for round in 0..5 {
        let ledger = Ledger::open(&dir.path().join(format!("ledger-{round}.db"))).unwrap();
        let subject =
            Arc::new(Subject::new("bench-agent", "v1", Tier::Operator).with_task_id("bench-task"));
        let start = Instant::now();
        for i in 0..ROWS {
            let record = ActionRecord::new(
                subject.clone(),
                "state.get",
                if i % 2 == 0 { "allowed" } else { "denied" },
            )
            .phase("EXECUTE");
            ledger.append(Entry::Action(record));
        }
        ledger.flush().unwrap();
        ledger_samples.push(start.elapsed());
        drop(ledger);
        raw_samples.push(raw_inserts(
            &dir.path().join(format!("raw-{round}.db")),
            ROWS,
        ));
    }
    let l = median(ledger_samples);
    let r = median(raw_samples);
    println!(
        "{:<44} {:>10.0}/s {:>10.0}/s {:>8.2}x   ≥ 100k/s and ≥ 0.5x of raw",
        "ledger appends (hash-chained, group commit)",
        ROWS as f64 / l.as_secs_f64(),
        ROWS as f64 / r.as_secs_f64(),
        r.as_secs_f64() / l.as_secs_f64()
    );

    // 3b. What a write's receipt costs: the same `kv_set` on the embedded file store, with
    // its `Once` (receipt read and written in the write's transaction) and without.
    const WRITES: usize = 2_000;
    let store = warden::state::EmbeddedState::open(dir.path().join("state.db")).unwrap();
    let writer = AgentId::new("bench-writer").unwrap();
    let run = warden::state::RunId::generate();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..5 {
        for receipted in [false, true] {
            let start = Instant::now();
            for i in 0..WRITES {
                let key = format!("k{round}-{i}-{receipted}");
                let once = receipted.then(|| {
                    warden::state::Once::new(
                        &run,
                        (round * WRITES + i) as u64,
                        "state.set",
                        "sha256:x",
                    )
                });
                let stored = store
                    .kv_set(&writer, &key, "value", Quota::UNLIMITED, once.as_ref())
                    .await
                    .unwrap();
                assert_eq!(stored, Admission::Stored(()));
            }
            let per_write = start.elapsed() / WRITES as u32;
            if receipted {
                with.push(per_write);
            } else {
                without.push(per_write);
            }
        }
    }
    row(
        "state write with its receipt (embedded file)",
        median(with),
        median(without),
        "",
    );

    // 4. Full hello lifecycle, in memory and on disk.
    for (label, host) in [
        (
            "hello lifecycle (in-memory host)",
            Host::builder().build().unwrap(),
        ),
        (
            "hello lifecycle (data-dir host)",
            Host::builder()
                .data_dir(dir.path().join("data"))
                .build()
                .unwrap(),
        ),
    ] {
        host.register_agent("hello", Tier::Operator, Some(&hello), "bench")
            .unwrap();
        for i in 0..10 {
            let warm = packet(
                "hello",
                &format!("warm-{i}"),
                "greet",
                &["hello.txt"],
                json!({}),
            );
            host.submit_packet(&warm).await.unwrap();
            host.run("hello", &hello).await.unwrap();
        }
        let mut samples = Vec::new();
        let mut phases: Vec<(warden::Phase, Vec<f64>)> = Vec::new();
        for i in 0..(ROUNDS * 10) {
            // Each run is a new task, as in production.
            let task = packet(
                "hello",
                &format!("task-{i}"),
                "greet",
                &["hello.txt"],
                json!({}),
            );
            host.submit_packet(&task).await.unwrap();
            let start = Instant::now();
            let report = host.run("hello", &hello).await.unwrap();
            samples.push(start.elapsed());
            assert!(report.outcome.is_success());
            for record in &report.phases {
                match phases.iter_mut().find(|(p, _)| *p == record.phase) {
                    Some((_, times)) => times.push(record.elapsed_ms),
                    None => phases.push((record.phase, vec![record.elapsed_ms])),
                }
            }
        }
        let m = median(samples);
        println!("{label:<44} {:>12.2?} {:>12} {:>9}   < 1 ms", m, "-", "-");
        let breakdown: Vec<String> = phases
            .into_iter()
            .map(|(phase, mut times)| {
                times.sort_by(f64::total_cmp);
                format!("{} {:.0}µs", phase.as_str(), times[times.len() / 2] * 1e3)
            })
            .collect();
        println!("  by phase (medians): {}", breakdown.join(", "));
    }

    // 5. Replay of the planner's recorded run (LLM, tools, artifacts, state, ledger) against
    // the run itself: the same host, the same component.
    let planner = agent("planner");
    let host = warden_tests::builder_with(r#"["ls"]"#)
        .data_dir(dir.path().join("replay"))
        .build()
        .unwrap();
    host.register_agent("planner", Tier::Operator, Some(&planner), "bench")
        .unwrap();
    let (mut runs, mut replays) = (Vec::new(), Vec::new());
    for i in 0..(ROUNDS + 2) {
        let p = packet(
            "planner",
            &format!("plan-{i}"),
            "plan the work",
            &[],
            json!({}),
        );
        host.submit_packet(&p).await.unwrap();
        let start = Instant::now();
        let report = host.run("planner", &planner).await.unwrap();
        let ran = start.elapsed();
        let id = warden::RunId::new(&report.run_id).unwrap();
        host.ledger().flush().unwrap();
        let start = Instant::now();
        let replay = host
            .replay(&id, warden::replay::ReplayOptions::default())
            .await
            .unwrap();
        let replayed = start.elapsed();
        assert_eq!(replay.verdict, "identical");
        if i >= 2 {
            runs.push(ran);
            replays.push(replayed);
        }
    }
    let (r, p) = (median(runs), median(replays));
    println!(
        "{:<44} {:>12.2?} {:>12.2?} {:>8.2}x   ≥ 10x faster",
        "replay of the planner's run vs the run",
        p,
        r,
        r.as_secs_f64() / p.as_secs_f64()
    );

    // 6. A signed component's first load: its signature verified against the trusted keys
    // (wasmsign2: one SHA-256 over the component, one ed25519 check), against the SHA-256 of
    // the same bytes every load computes anyway for the component's digest.
    {
        use sha2::Digest as _;
        let keys = tempfile::tempdir().unwrap();
        let made = warden::signing::generate(keys.path(), "release").unwrap();
        let signed = warden::signing::sign(&planner, &made.secret).unwrap();
        let keyring = warden::signing::Keyring::from_dir(keys.path()).unwrap();
        let verify = time(20, || async {
            let verdict = warden::signing::verify(&signed, &keyring);
            assert!(matches!(verdict, warden::signing::Verdict::Signed(_)));
        })
        .await;
        let digest = time(20, || async {
            std::hint::black_box(sha2::Sha256::digest(&signed));
        })
        .await;
        row(
            &format!(
                "signature verification ({} KiB planner)",
                signed.len() / 1024
            ),
            verify,
            digest,
            "≤ 5 ms",
        );
    }
}

/// The baseline: the same rows into the same table (the ledger's own schema and indexes,
/// created by opening a ledger), batched 4,096 per transaction, WAL, synchronous=NORMAL, with
/// placeholder chain columns: everything but the hashing and the group-commit machinery.
fn raw_inserts(path: &std::path::Path, rows: usize) -> Duration {
    drop(Ledger::open(path).unwrap());
    let mut db = rusqlite::Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let start = Instant::now();
    let mut done = 0;
    while done < rows {
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO agent_actions (timestamp, agent_id, agent_version, tier, action, decision, confidence, success, error_type, error_message, task_id, phase, seq, prev_hash, row_hash) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 1, NULL, NULL, ?7, ?8, ?9, ?10, ?11)",
                )
                .unwrap();
            for i in done..(done + 4096).min(rows) {
                insert
                    .execute(rusqlite::params![
                        "2026-11-25T00:00:00.000Z",
                        "bench-agent",
                        "v1",
                        1,
                        "state.get",
                        if i % 2 == 0 { "allowed" } else { "denied" },
                        "bench-task",
                        "EXECUTE",
                        i as i64 + 1_000_000,
                        "0000000000000000000000000000000000000000000000000000000000000000",
                        "1111111111111111111111111111111111111111111111111111111111111111",
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        done = (done + 4096).min(rows);
    }
    start.elapsed()
}
