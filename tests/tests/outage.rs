//! Real backends going away in the middle of runs: `redis-server` and `bao` are killed and
//! restarted on the same port, and the host must fail fast and clearly (circuit breakers),
//! never run a phase without its lock, lose no ledger row, and recover on its own.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warden::breaker::{BreakerConfig, BreakerState};
use warden::ledger::{LedgerQuery, LedgerRow, Table};
use warden::secrets::{SecretBackend, SecretsError, VaultConfig, VaultSecrets};
use warden::state::redis::RedisOptions;
use warden::state::{RedisState, StateStore};
use warden::{Error, Host, Phase, Refusal, RunOutcome, Tier, TierTable};
use warden_tests::bao_server::BaoServer;
use warden_tests::redis_server::RedisServer;
use warden_tests::{agent, builder_with, packet, run};

fn breaker(threshold: u32, open_for: Duration) -> BreakerConfig {
    BreakerConfig::new(threshold, open_for).unwrap()
}

async fn redis_state(server: &RedisServer, config: BreakerConfig) -> Arc<RedisState> {
    let options = RedisOptions::default().breaker(config);
    Arc::new(
        RedisState::connect_with(&server.url(), options)
            .await
            .unwrap(),
    )
}

/// Every ledger row, oldest first, after a flush.
fn all_rows(host: &Host) -> Vec<LedgerRow> {
    host.ledger().flush().unwrap();
    host.ledger()
        .query(&LedgerQuery {
            limit: Some(1_000_000),
            ..LedgerQuery::default()
        })
        .unwrap()
}

fn identity(row: &LedgerRow) -> (Table, i64, String) {
    (
        row.table,
        row.id,
        row.fields["row_hash"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_going_away_stops_a_run_at_its_next_transition_and_loses_no_ledger_row() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let state = redis_state(&redis, breaker(3, Duration::from_millis(700))).await;
    let host = builder_with("[]")
        .data_dir(data.path())
        .state(state.clone())
        .build()
        .unwrap();
    let hello = packet("hello", "t-1", "greet", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &hello)
        .await
        .unwrap();
    assert!(report.outcome.is_success(), "{:?}", report.outcome);

    // A run that sleeps in PLAN while Redis dies under it.
    let probe = agent("probe");
    host.register_agent("sleeper", Tier::Operator, Some(&probe), "test")
        .unwrap();
    host.submit_packet(&packet(
        "sleeper",
        "t-2",
        "probe: state.set running 1; sleep 1500",
        &[],
        json!({}),
    ))
    .await
    .unwrap();
    let running = tokio::spawn({
        let host = host.clone();
        let probe = probe.clone();
        async move { host.run("sleeper", &probe).await }
    });
    let client = redis::Client::open(redis.url()).unwrap();
    let admin = client.get_multiplexed_async_connection().await.unwrap();
    eventually(
        "the agent to start sleeping",
        Duration::from_secs(20),
        || {
            let mut admin = admin.clone();
            async move {
                let running: Option<String> = redis::cmd("HGET")
                    .arg("agent:sleeper:state")
                    .arg("kv:running")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                running.is_some()
            }
        },
    )
    .await;
    let before = all_rows(&host);
    assert!(host.ledger().verify().unwrap().is_intact());
    redis.stop();

    let report = running.await.unwrap().unwrap();
    let RunOutcome::Failed { code, message } = &report.outcome else {
        panic!(
            "the run must fail when its state store is gone: {:?}",
            report.outcome
        );
    };
    assert_eq!(code, "STATE_UNAVAILABLE");
    assert!(
        message.starts_with("transition to EXECUTE failed: the redis state store"),
        "{message}"
    );
    let entered: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert!(
        !entered.contains(&Phase::Execute),
        "no phase runs without its lock: {entered:?}"
    );

    // Nothing the ledger held is lost, and the run's end is in it.
    let after = all_rows(&host);
    let verify = host.ledger().verify().unwrap();
    assert!(verify.is_intact(), "{verify:?}");
    assert!(after.len() > before.len());
    assert_eq!(
        after[..before.len()]
            .iter()
            .map(identity)
            .collect::<Vec<_>>(),
        before.iter().map(identity).collect::<Vec<_>>()
    );
    let end = after
        .iter()
        .rev()
        .find(|row| row.agent_id == "sleeper" && row.kind == "run.end")
        .expect("the failed run's end is recorded");
    assert_eq!(end.fields["decision"], "failed: STATE_UNAVAILABLE");

    // New bootstraps are refused; once the circuit is open, at once and without the network.
    let hello_bytes = agent("hello");
    let refusal = loop {
        match host.run("hello", &hello_bytes).await {
            Err(Error::Refused(refusal @ Refusal::StateUnavailable { .. })) => {
                if state.breaker().unwrap().state == BreakerState::Open {
                    break refusal;
                }
            }
            other => panic!("bootstrap must be refused while redis is down: {other:?}"),
        }
    };
    let message = refusal.to_string();
    let location = format!("redis://127.0.0.1:{}/", redis.port());
    // At least the threshold: calls admitted before the circuit opened may fail after it.
    let failures = state.breaker().unwrap().consecutive_failures;
    assert!(failures >= 3, "{failures}");
    assert!(
        message.starts_with(&format!(
            "STATE_UNAVAILABLE: agent `hello` cannot bootstrap: the redis state store at `{location}` is unavailable (circuit open after {failures} consecutive failures; retrying in "
        )) && message.ends_with(
            "); no phase runs without the agent's lock, so run it again once the state store answers"
        ),
        "{message}"
    );
    let started = Instant::now();
    assert!(matches!(
        host.run("hello", &hello_bytes).await,
        Err(Error::Refused(Refusal::StateUnavailable { .. }))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "an open circuit fails fast, took {:?}",
        started.elapsed()
    );
    let refused = all_rows(&host)
        .into_iter()
        .filter(|row| row.agent_id == "hello" && row.kind == "bootstrap")
        .filter(|row| row.fields["error_type"] == "STATE_UNAVAILABLE")
        .count();
    assert!(refused >= 2, "each refusal is recorded, found {refused}");

    // Back on the same port (empty: nothing was persisted): the circuit half-opens, the
    // first call probes and closes it, and runs work again.
    redis.restart();
    eventually(
        "the circuit to half-open",
        Duration::from_secs(5),
        || async { state.breaker().unwrap().state == BreakerState::HalfOpen },
    )
    .await;
    let again = packet("hello", "t-3", "greet again", &["hello.txt"], json!({}));
    let report = run(&host, "hello", "hello", Tier::Operator, &again)
        .await
        .unwrap();
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    let status = state.breaker().unwrap();
    assert_eq!(status.state, BreakerState::Closed);
    assert_eq!(status.consecutive_failures, 0);
    assert!(host.ledger().verify().unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_to_a_stalled_server_fails_at_the_command_timeout() {
    let server = RedisServer::start();
    let options = RedisOptions::default().command_timeout(Duration::from_millis(300));
    let store = RedisState::connect_with(&server.url(), options)
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // The server holds every client's commands for 3 s: a server that stopped answering.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "3000", "ALL"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .packet(&warden::AgentId::new("stalled").unwrap())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("the redis state store failed: GET `agent:stalled:packet`")
            && message.contains("no answer within 300ms"),
        "{message}"
    );
    assert_eq!(store.breaker().unwrap().consecutive_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_health_manager_records_only_changes_and_its_probe_closes_the_circuit() {
    let mut redis = RedisServer::start();
    let state = redis_state(&redis, breaker(2, Duration::from_millis(300))).await;
    let host = Host::builder()
        .state(state.clone())
        .health_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    eventually("a first healthy round", Duration::from_secs(5), || async {
        host.health_status().is_some_and(|r| r.healthy())
    })
    .await;
    let first = host.health_status().unwrap();
    assert_eq!(first.checks[0].component, "state");
    assert_eq!(
        first.checks[0].breaker.as_ref().unwrap().state,
        BreakerState::Closed
    );

    redis.stop();
    eventually(
        "the state store to be reported down",
        Duration::from_secs(10),
        || async { host.health_status().is_some_and(|r| !r.checks[0].healthy) },
    )
    .await;
    eventually("the circuit to open", Duration::from_secs(10), || async {
        host.health_status()
            .is_some_and(|r| r.checks[0].breaker.as_ref().unwrap().state == BreakerState::Open)
    })
    .await;
    // Many rounds while down: still one row.
    tokio::time::sleep(Duration::from_millis(800)).await;

    redis.restart();
    eventually(
        "the state store to be healthy again",
        Duration::from_secs(10),
        || async { host.health_status().is_some_and(|r| r.healthy()) },
    )
    .await;
    // Nothing but the health checks touched the store: their probe closed the circuit.
    assert_eq!(state.breaker().unwrap().state, BreakerState::Closed);

    host.ledger().flush().unwrap();
    let rows = host
        .ledger()
        .query(&LedgerQuery {
            agent_id: Some("warden-host".into()),
            kind: Some("backend.health".into()),
            ..LedgerQuery::default()
        })
        .unwrap();
    let decisions: Vec<&str> = rows
        .iter()
        .map(|row| row.fields["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["unhealthy", "healthy"]);
    assert_eq!(rows[0].fields["error_type"], "BACKEND_UNHEALTHY");
    assert!(
        rows[0].fields["error_message"]
            .as_str()
            .unwrap()
            .contains("the redis state store"),
        "{:?}",
        rows[0].fields
    );
    assert!(host.ledger().verify().unwrap().is_intact());

    // The manager stops with the host: once both are dropped, nothing holds the store, so
    // its revocation subscription is closed.
    let client = redis::Client::open(redis.url()).unwrap();
    let admin = client.get_multiplexed_async_connection().await.unwrap();
    drop(host);
    drop(state);
    eventually("the store to be released", Duration::from_secs(5), || {
        let mut admin = admin.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut admin)
                .await
                .unwrap();
            !list.lines().any(|line| line.contains(" sub=1 "))
        }
    })
    .await;
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/vault")
}

fn tier_ttl(tier: Tier) -> Duration {
    TierTable::builtin().unwrap().policy(tier).secrets_ttl
}

/// Mounts, policies, roles and the secrets the test reads: what a fresh dev server lacks.
async fn set_up(vault: &VaultSecrets) -> Result<(), SecretsError> {
    let agents = [("exec-1".to_string(), Tier::Executor)];
    vault.setup(&policies_dir(), &agents, tier_ttl).await?;
    vault.put("t3/db-password", "hunter2").await?;
    vault.put("agents/exec-1/key", "mine").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_going_away_keeps_cached_reads_refuses_logins_and_recovers_after_a_restart() {
    let mut bao = BaoServer::start();
    let mut config = VaultConfig::new(bao.addr(), bao.root_token());
    config.breaker = breaker(2, Duration::from_millis(500));
    let vault = VaultSecrets::connect(config).await.unwrap();
    set_up(&vault).await.unwrap();
    let session = vault
        .login("exec-1", Tier::Executor, tier_ttl(Tier::Executor))
        .await
        .unwrap();
    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );

    bao.stop();
    // The cached read is served with Vault gone.
    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );
    // A new login fails, naming Vault and what went wrong.
    let Err(err) = vault
        .login("exec-2", Tier::Executor, tier_ttl(Tier::Executor))
        .await
    else {
        panic!("a login must fail while vault is down");
    };
    assert!(
        err.to_string().starts_with(&format!(
            "the vault secret backend failed: cannot reach vault at `{}`",
            bao.addr()
        )),
        "{err}"
    );
    let _ = vault.health().await.unwrap_err();
    // Two failures in a row: the circuit is open, and calls fail at once.
    let status = vault.breaker().unwrap();
    assert_eq!(status.state, BreakerState::Open, "{status:?}");
    let started = Instant::now();
    let Err(err) = vault
        .login("exec-2", Tier::Executor, tier_ttl(Tier::Executor))
        .await
    else {
        panic!("a login must fail while vault is down");
    };
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(
        matches!(
            err,
            SecretsError::Unavailable {
                backend: "vault",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "the vault secret backend at `{}` is unavailable (circuit open after 2 consecutive failures; retrying in ",
            bao.addr()
        )),
        "{err}"
    );
    // An uncached read cannot be served; the cached one still is.
    assert!(matches!(
        session.read("agents/exec-1/key").await,
        Err(SecretsError::Unavailable { .. })
    ));
    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );

    // A restarted dev server is empty: once the circuit lets a probe through, set it up
    // again, and logins work.
    bao.restart();
    eventually(
        "the circuit to half-open",
        Duration::from_secs(5),
        || async { vault.breaker().unwrap().state == BreakerState::HalfOpen },
    )
    .await;
    set_up(&vault).await.unwrap();
    assert_eq!(vault.breaker().unwrap().state, BreakerState::Closed);
    let fresh = vault
        .login("exec-1", Tier::Executor, tier_ttl(Tier::Executor))
        .await
        .unwrap();
    assert_eq!(
        fresh.read("agents/exec-1/key").await.unwrap().as_deref(),
        Some("mine")
    );
}

fn warden(data: &std::path::Path, redis: &RedisServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(warden_tests::warden_bin())
        .arg("--data-dir")
        .arg(data)
        .arg("--state")
        .arg(redis.url())
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .current_dir(data)
        .output()
        .unwrap()
}

#[test]
fn the_cli_reports_a_stopped_redis_in_health_and_refuses_runs() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let out = warden(data.path(), &redis, &["--json", "health"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["component"], "state");
    assert_eq!(report["checks"][0]["backend"], "redis");
    assert_eq!(report["checks"][0]["breaker"]["state"], "closed");
    assert_eq!(report["checks"][0]["breaker"]["failure_threshold"], 5);
    // The embedded secrets store has no breaker.
    assert_eq!(report["checks"][1]["breaker"], serde_json::Value::Null);

    redis.stop();
    let location = format!("redis://127.0.0.1:{}/", redis.port());
    let out = warden(data.path(), &redis, &["--json", "health"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = &report["checks"][0];
    assert_eq!(state["healthy"], false);
    assert!(
        state["detail"]
            .as_str()
            .unwrap()
            .starts_with("the redis state store failed: PING"),
        "{state}"
    );
    assert_eq!(state["breaker"]["consecutive_failures"], 1);
    let human = warden(data.path(), &redis, &["health"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("state")
            && l.contains("DOWN")
            && l.contains("breaker closed (1/5 failures)")),
        "{text}"
    );

    let packet = data.path().join("packet.json");
    std::fs::write(
        &packet,
        json!({"agent_id": "hello", "task_id": "t", "objective": "greet"}).to_string(),
    )
    .unwrap();
    let hello = warden_tests::agents_dir().join("hello.wasm");
    let out = warden(
        data.path(),
        &redis,
        &[
            "run",
            hello.to_str().unwrap(),
            "--packet",
            packet.to_str().unwrap(),
        ],
    );
    // Refused, not failed: exit 3, the backend named, recorded in the ledger.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("error: STATE_UNAVAILABLE: agent `hello`")
            && stderr.contains(&format!("`{location}`")),
        "{stderr}"
    );
}
