//! The Redis state backend against a real `redis-server`: the shared conformance suite, then
//! what only a networked, shared store has (several hosts, round trips, publish/subscribe,
//! dropped connections). Every test starts its own server, so they run in parallel.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use warden::packet::{Checkpoint, Revocation, RevocationKind, RevocationReason};
use warden::state::{
    Admission, Coordination, LockAttempt, LockOwner, NewMessage, NewProposal, Quota, RedisState,
    Section, StateError, StateStore, Transition, Ttl, Vote, VoteChoice, conformance, coordination,
    keys,
};
use warden::{AgentId, Packet, TaskId};
use warden_tests::redis_server::RedisServer;

const LONG: Duration = Duration::from_secs(60);

fn ttl(duration: Duration) -> Ttl {
    Ttl::new("test", duration).unwrap()
}

fn owner(token: &str) -> LockOwner {
    LockOwner::new(token).unwrap()
}

fn id(agent: &str) -> AgentId {
    AgentId::new(agent).unwrap()
}

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn unique(prefix: &str) -> AgentId {
    id(&format!("{prefix}-{}", uuid_like()))
}

fn unique_task(prefix: &str) -> TaskId {
    TaskId::new(&format!("{prefix}-{}", uuid_like())).unwrap()
}

/// A checkpoint whose `step` marks who wrote it.
fn checkpoint(mark: &str) -> Checkpoint {
    Checkpoint {
        phase: "PLAN".into(),
        step: mark.into(),
        task_id: TaskId::new("t").unwrap(),
        component_digest: "sha256:0".into(),
        at: "2026-12-01T00:00:00.000Z".into(),
    }
}

fn revocation(agent: &AgentId) -> Revocation {
    Revocation {
        agent_id: agent.clone(),
        task_id: None,
        reason: RevocationReason {
            kind: RevocationKind::Operator,
            details: "test".into(),
        },
        revoked_by: "test".into(),
        revoked_at: "2026-12-01T00:00:00.000Z".into(),
    }
}

/// Unique enough for ids within one server's lifetime.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn step<'a>(
    agent: &'a AgentId,
    owner: &'a LockOwner,
    checkpoint: &'a Checkpoint,
) -> Transition<'a> {
    Transition {
        agent,
        owner,
        lock_ttl: ttl(LONG),
        heartbeat_ttl: ttl(LONG),
        checkpoint,
    }
}

/// The mark of an agent's last checkpoint.
async fn mark(store: &RedisState, agent: &AgentId) -> Option<String> {
    store.checkpoint(agent).await.unwrap().map(|c| c.step)
}

/// Calls per command since the server started, from `INFO commandstats`.
async fn command_calls(admin: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Commands run between two [`command_calls`] snapshots, without our own `INFO` and the
/// subscriber's keepalive `PING`. Commands a script runs are counted under their own names.
fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "ping"))
        .filter_map(|(name, &calls)| {
            let n = calls - before.get(name).copied().unwrap_or(0);
            (n > 0).then(|| (name.clone(), n))
        })
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// Ids of the server's clients whose `CLIENT LIST` line satisfies `pick`.
async fn client_ids(admin: &mut MultiplexedConnection, pick: impl Fn(&str) -> bool) -> Vec<u64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter(|line| pick(line))
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<String>, within: Duration) -> String {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no revocation event within {within:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_a_real_server() {
    // One server for the whole suite, fresh so `revocations_are_indexed` sees only its own
    // ledger entries; every check connects anew, as a restarted host would.
    let server = RedisServer::start();
    let url = server.url();
    conformance::run_all(|| {
        let url = url.clone();
        async move { Arc::new(RedisState::connect(&url).await.unwrap()) as Arc<dyn StateStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_contend_for_one_lock() {
    let server = RedisServer::start();
    let a = RedisState::connect(&server.url()).await.unwrap();
    let b = RedisState::connect(&server.url()).await.unwrap();
    let agent = unique("contended");
    let (host_a, host_b) = (owner("host-a"), owner("host-b"));
    let (by_a, by_b) = (checkpoint("by-a"), checkpoint("by-b"));

    assert_eq!(
        a.acquire_lock(&agent, &host_a, ttl(LONG)).await.unwrap(),
        LockAttempt::Acquired
    );
    assert_eq!(
        b.acquire_lock(&agent, &host_b, ttl(LONG)).await.unwrap(),
        LockAttempt::Held {
            owner: "host-a".into()
        }
    );
    assert!(!b.refresh_lock(&agent, &host_b, ttl(LONG)).await.unwrap());
    assert!(!b.release_lock(&agent, &host_b).await.unwrap());
    let lost = b.transition(&step(&agent, &host_b, &by_b)).await.unwrap();
    assert!(!lost.lock_held);
    assert_eq!(mark(&b, &agent).await, None);
    assert!(
        a.transition(&step(&agent, &host_a, &by_a))
            .await
            .unwrap()
            .lock_held
    );
    assert_eq!(mark(&b, &agent).await.as_deref(), Some("by-a"));

    // Both hosts race for a released lock: exactly one wins.
    assert!(a.release_lock(&agent, &host_a).await.unwrap());
    let (ra, rb) = tokio::join!(
        a.acquire_lock(&agent, &host_a, ttl(LONG)),
        b.acquire_lock(&agent, &host_b, ttl(LONG))
    );
    let winners = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|r| **r == LockAttempt::Acquired)
        .count();
    assert_eq!(winners, 1, "exactly one host must win the lock");

    // Error budgets are shared: no increment from either host is lost.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let agent = agent.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .record_error(&agent, "boom", i % 4 == 0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let counts = a.error_counts(&agent).await.unwrap();
    assert_eq!(
        (counts.total, counts.procedure, counts.max_same),
        (200, 50, 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lock_is_taken_over_by_another_host() {
    let server = RedisServer::start();
    let a = RedisState::connect(&server.url()).await.unwrap();
    let b = RedisState::connect(&server.url()).await.unwrap();
    let agent = unique("expiring");
    let (host_a, host_b) = (owner("host-a"), owner("host-b"));
    let (one, two) = (checkpoint("n1"), checkpoint("n2"));

    assert_eq!(
        a.acquire_lock(&agent, &host_a, ttl(Duration::from_millis(150)))
            .await
            .unwrap(),
        LockAttempt::Acquired
    );
    assert!(
        a.transition(&step(&agent, &host_a, &one))
            .await
            .map(|r| r.lock_held)
            .unwrap()
    );
    // The transition extended the lock to `LONG`; shorten it again and let it lapse.
    assert!(
        a.refresh_lock(&agent, &host_a, ttl(Duration::from_millis(150)))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.lock_owner(&agent).await.unwrap(), None);
    assert_eq!(
        b.acquire_lock(&agent, &host_b, ttl(LONG)).await.unwrap(),
        LockAttempt::Acquired
    );

    // The old holder can no longer refresh, release or write through the lock.
    assert!(!a.refresh_lock(&agent, &host_a, ttl(LONG)).await.unwrap());
    assert!(!a.release_lock(&agent, &host_a).await.unwrap());
    let stale = a.transition(&step(&agent, &host_a, &two)).await.unwrap();
    assert!(!stale.lock_held);
    assert_eq!(mark(&b, &agent).await.as_deref(), Some("n1"));
    assert_eq!(
        a.lock_owner(&agent).await.unwrap().as_deref(),
        Some("host-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transition_is_one_command() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let agent = unique("round-trips");
    store.record_error(&agent, "E", true).await.unwrap();
    let (run_1, run_2) = (owner("run-1"), owner("run-2"));
    let plan = checkpoint("PLAN");
    store.acquire_lock(&agent, &run_1, ttl(LONG)).await.unwrap();

    // Held: one `EVALSHA` from the client; the rest ran inside the script.
    let before = command_calls(&mut admin).await;
    let held = store
        .transition(&step(&agent, &run_1, &plan))
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert!(held.lock_held);
    assert_eq!(held.errors.total, 1);
    assert_eq!(
        delta(&before, &after),
        counts(&[
            ("evalsha", 1),
            ("get", 1),
            ("pexpire", 1),
            ("set", 1),
            ("hset", 1),
            ("hgetall", 1)
        ]),
        "a held transition must be a single EVALSHA"
    );

    // Not held: still one command, and it still reads the counts.
    let before = command_calls(&mut admin).await;
    let lost = store
        .transition(&step(&agent, &run_2, &plan))
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert!(!lost.lock_held);
    assert_eq!(lost.errors.procedure, 1);
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("get", 1), ("hgetall", 1)]),
        "a lost-lock transition must be a single EVALSHA that writes nothing"
    );

    // `record_error` is one command too.
    let before = command_calls(&mut admin).await;
    store.record_error(&agent, "E", true).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("hincrby", 3), ("hgetall", 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_reaches_other_hosts_at_once() {
    let server = RedisServer::start();
    let a = RedisState::connect(&server.url()).await.unwrap();
    let b = RedisState::connect(&server.url()).await.unwrap();
    let mut events = b.revocation_events().expect("redis pushes revocations");
    let agent = unique("revoked");

    let started = Instant::now();
    a.record_revocation(&revocation(&agent)).await.unwrap();
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await, agent);
    eprintln!("revocation event after {:?}", started.elapsed());
    assert!(b.revocation(&agent).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_subscription_ends_with_the_last_clone() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let clone = store.clone();
    let mut events = store.revocation_events().unwrap();
    drop(store);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.recv())
            .await
            .is_err(),
        "a live clone must keep the subscription"
    );
    drop(clone);
    let closed = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .expect("the subscriber task must end with the last clone");
    assert!(matches!(
        closed,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
    // Its connection is gone too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !client_ids(&mut admin, |l| l.contains(" sub=1 "))
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "subscriber connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_manager_reconnects_after_client_kill() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let agent = unique("reconnect");
    let packet = Packet::from_json(&format!(
        r#"{{"agent_id":"{agent}","task_id":"t","objective":"reconnect"}}"#
    ))
    .unwrap();
    store.put_packet(&packet).await.unwrap();

    let _: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut admin)
        .await
        .unwrap();
    // The call that finds the connection dead may fail (it is not retried: it might have
    // run); it must fail as a backend error, and the one after must succeed.
    match store.packet(&agent).await {
        Ok(found) => assert_eq!(found.as_ref(), Some(&packet)),
        Err(err) => {
            assert!(
                matches!(
                    err,
                    StateError::Backend {
                        backend: "redis",
                        ..
                    }
                ),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with("the redis state store failed: GET `agent:"),
                "{message}"
            );
            assert_eq!(
                store.packet(&agent).await.unwrap().as_ref(),
                Some(&packet),
                "the call after a dropped connection must succeed"
            );
        }
    }
    assert!(
        store
            .transition(&step(&agent, &owner("nobody"), &checkpoint("x")))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_missed_while_unsubscribed_are_replayed() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let mut events = store.revocation_events().unwrap();
    let subscribers = client_ids(&mut admin, |l| l.contains(" sub=1 ")).await;
    assert_eq!(subscribers.len(), 1, "one subscriber connection per store");

    // Kill the subscriber and record a revocation in one transaction, so its publish
    // certainly reaches nobody: only the replay after resubscribing can deliver it.
    let agent = unique("missed");
    let record = serde_json::to_string(&revocation(&agent)).unwrap();
    redis::pipe()
        .atomic()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(subscribers[0])
        .ignore()
        .lpush(keys::REVOCATIONS_LEDGER, &record)
        .ignore()
        .hset(keys::REVOCATIONS_BY_AGENT, agent.as_str(), &record)
        .ignore()
        .publish("warden:revocations", agent.as_str())
        .ignore()
        .exec_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(next_event(&mut events, Duration::from_secs(5)).await, agent);

    // And the new subscription is live.
    let later = unique("later");
    store.record_revocation(&revocation(&later)).await.unwrap();
    assert_eq!(next_event(&mut events, Duration::from_secs(1)).await, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_is_used_again() {
    let mut server = RedisServer::start();
    let store = RedisState::connect(&server.url()).await.unwrap();
    let mut events = store.revocation_events().unwrap();
    server.restart();

    // The restarted server is empty: no scripts, no data. Calls recover once the manager
    // has reconnected, and scripts are reloaded on demand.
    let agent = unique("restarted");
    let deadline = Instant::now() + Duration::from_secs(10);
    let run_1 = owner("run-1");
    while store.acquire_lock(&agent, &run_1, ttl(LONG)).await.is_err() {
        assert!(Instant::now() < deadline, "no reconnection after a restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store
            .transition(&step(&agent, &run_1, &checkpoint("x")))
            .await
            .unwrap()
            .lock_held
    );

    // The subscription comes back too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        store.record_revocation(&revocation(&agent)).await.unwrap();
        if let Ok(Ok(id)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            assert_eq!(id, agent);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resubscription after a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_never_appear_in_errors_or_debug() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "hunter2"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://:hunter2@127.0.0.1:{}/", server.port());
    let store = RedisState::connect(&url).await.unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains(&format!("127.0.0.1:{}", server.port())),
        "{debug}"
    );
    assert_eq!(store.backend(), "redis");

    let wrong = format!("redis://:wrong-secret@127.0.0.1:{}/", server.port());
    let err = RedisState::connect(&wrong).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            StateError::Open {
                backend: "redis",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        message.starts_with(&format!(
            "cannot open the redis state store at `redis://***@127.0.0.1:{}/`",
            server.port()
        )),
        "{message}"
    );
    assert!(!message.contains("wrong-secret"), "{message}");
    assert!(!format!("{err:?}").contains("wrong-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_share_one_message_log() {
    let server = RedisServer::start();
    let a = RedisState::connect(&server.url()).await.unwrap();
    let b = RedisState::connect(&server.url()).await.unwrap();
    let task = unique_task("shared-log");

    // Both hosts send at once: one sequence of ids, no gap, no duplicate.
    let senders: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(host, store)| {
            let task = task.clone();
            tokio::spawn(async move {
                let sender = id(&format!("sender-{host}"));
                let mut ids = Vec::new();
                for n in 0..100 {
                    let body = n.to_string();
                    let message = NewMessage {
                        sender: &sender,
                        recipient: None,
                        kind: "PROPOSAL",
                        body: &body,
                        sent_at_ms: 0,
                    };
                    ids.push(
                        store
                            .send_message(&task, &message, Quota::UNLIMITED, None)
                            .await
                            .unwrap()
                            .into_result()
                            .unwrap(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for sender in senders {
        ids.extend(sender.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<u64>>());

    // Both hosts receive for one agent at once: each message is delivered once.
    let receivers: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            let task = task.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .receive_messages(&task, &id("reader"), 7)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|m| m.id));
                }
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for receiver in receivers {
        delivered.extend(receiver.await.unwrap());
    }
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=200).collect::<Vec<u64>>());
}

/// The coordination keys hold what the keyspace table of `state::coordination` says, so
/// operators can read them with `redis-cli`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordination_keys_are_the_documented_ones() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let task = unique_task("keyspace");
    let (alpha, beta) = (id("alpha"), id("beta"));
    let message = NewMessage {
        sender: &alpha,
        recipient: Some(&beta),
        kind: "FEEDBACK",
        body: "looks good",
        sent_at_ms: 1_700_000_000_123,
    };
    assert_eq!(
        store
            .send_message(&task, &message, Quota::UNLIMITED, None)
            .await
            .unwrap()
            .into_result()
            .unwrap(),
        1
    );
    store.receive_messages(&task, &beta, 10).await.unwrap();
    let required = [beta.clone()];
    let proposal = NewProposal {
        proposer: &alpha,
        title: "plan",
        body: "do it",
        required: &required,
        voters: &required,
        quorum: 1,
        created_at_ms: 5,
    };
    assert_eq!(store.propose(&task, &proposal, None).await.unwrap(), "p1");
    let vote = Vote {
        agent: beta.clone(),
        choice: VoteChoice::Accept,
        reasoning: "fine".into(),
        at_ms: 6,
    };
    store.cast_vote(&task, "p1", &vote, None).await.unwrap();
    store
        .board_write(
            &task,
            Section::Problem,
            "objective",
            "ship",
            Quota::UNLIMITED,
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();

    let log: Vec<String> = admin
        .lrange(coordination::keys::message_log(&task), 0, -1)
        .await
        .unwrap();
    assert_eq!(log, [serde_json::to_string(&message.with_id(1)).unwrap()]);
    let cursor: String = admin
        .hget(coordination::keys::message_cursors(&task), "beta")
        .await
        .unwrap();
    assert_eq!(cursor, "1");
    let seq: String = admin
        .get(coordination::keys::proposal_seq(&task))
        .await
        .unwrap();
    assert_eq!(seq, "1");
    let record: String = admin
        .hget(coordination::keys::proposals(&task), "p1")
        .await
        .unwrap();
    assert_eq!(
        record,
        serde_json::to_string(&proposal.with_id("p1".into())).unwrap()
    );
    let stored_vote: String = admin
        .hget(coordination::keys::votes(&task, "p1"), "beta")
        .await
        .unwrap();
    assert_eq!(stored_vote, serde_json::to_string(&vote).unwrap());
    let objective: String = admin
        .hget(
            coordination::keys::section(&task, Section::Problem),
            "objective",
        )
        .await
        .unwrap();
    assert_eq!(objective, "ship");
}

/// Send, receive, propose and vote are one `EVALSHA` each (once the scripts are loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordination_writes_are_one_command() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let task = unique_task("round-trips");
    let (alpha, beta) = (id("alpha"), id("beta"));
    let message = NewMessage {
        sender: &alpha,
        recipient: None,
        kind: "PROPOSAL",
        body: "b",
        sent_at_ms: 0,
    };
    let required: [AgentId; 0] = [];
    let proposal = NewProposal {
        proposer: &alpha,
        title: "t",
        body: "b",
        required: &required,
        voters: &required,
        quorum: 1,
        created_at_ms: 0,
    };
    let vote = |agent: &str| Vote {
        agent: id(agent),
        choice: VoteChoice::Accept,
        reasoning: String::new(),
        at_ms: 0,
    };
    // Load the scripts.
    store
        .send_message(&task, &message, Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    store.receive_messages(&task, &beta, 10).await.unwrap();
    store.propose(&task, &proposal, None).await.unwrap();
    store
        .cast_vote(&task, "p1", &vote("alpha"), None)
        .await
        .unwrap();

    let before = command_calls(&mut admin).await;
    store
        .send_message(&task, &message, Quota::UNLIMITED, None)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(
        delta(&before, &after),
        counts(&[
            ("evalsha", 1),
            ("hmget", 1),
            ("llen", 1),
            ("rpush", 1),
            ("hset", 1)
        ])
    );

    let before = command_calls(&mut admin).await;
    let got = store.receive_messages(&task, &beta, 10).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        delta(&before, &after),
        counts(&[
            ("evalsha", 1),
            ("hget", 1),
            ("llen", 1),
            ("lrange", 1),
            ("hset", 1)
        ])
    );

    let before = command_calls(&mut admin).await;
    assert_eq!(store.propose(&task, &proposal, None).await.unwrap(), "p2");
    let after = command_calls(&mut admin).await;
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("incr", 1), ("hset", 1)])
    );

    let before = command_calls(&mut admin).await;
    store
        .cast_vote(&task, "p2", &vote("beta"), None)
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("hexists", 1), ("hsetnx", 1)])
    );
}

/// The quota-checked writes and the artifact page are one `EVALSHA` each, and the usage
/// hashes hold what the keyspace table says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_writes_are_one_command_and_keep_the_documented_keys() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let (agent, task) = (unique("quota"), unique_task("quota"));
    let artifact = warden::state::ArtifactRef {
        name: "out/a.txt".into(),
        digest: "sha256:00".into(),
        size: 5,
        author: agent.to_string(),
        created_at: "2026-12-01T00:00:00.000Z".into(),
    };
    let quota = Quota {
        max_entries: 10,
        max_bytes: 100,
    };

    let before = command_calls(&mut admin).await;
    let stored = store
        .kv_set(&agent, "k", "value", quota, None)
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(stored, Admission::Stored(()));
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("hget", 1), ("hmget", 1), ("hset", 2)]),
        "kv_set"
    );

    let before = command_calls(&mut admin).await;
    let stored = store
        .board_write(&task, Section::Progress, "k", "value", quota, None)
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(stored, Admission::Stored(()));
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("hget", 1), ("hmget", 1), ("hset", 2)]),
        "board_write"
    );

    let before = command_calls(&mut admin).await;
    let stored = store
        .push_artifact(&task, &artifact, quota, None)
        .await
        .unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(stored, Admission::Stored(()));
    assert_eq!(
        delta(&before, &after),
        counts(&[
            ("evalsha", 1),
            ("hexists", 1),
            ("hmget", 1),
            ("rpush", 1),
            ("hset", 2),
            ("zadd", 1)
        ]),
        "push_artifact"
    );

    let before = command_calls(&mut admin).await;
    let page = store.artifact_page(&task, None, 10).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert_eq!(page, std::slice::from_ref(&artifact));
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("zrangebylex", 1), ("hmget", 1)]),
        "artifact_page"
    );

    let usage = |key: String| {
        let mut admin = admin.clone();
        async move {
            let fields: HashMap<String, String> = admin.hgetall(key).await.unwrap();
            fields
        }
    };
    let expect = |entries: &str, bytes: &str| {
        HashMap::from([
            ("entries".to_string(), entries.to_string()),
            ("bytes".to_string(), bytes.to_string()),
        ])
    };
    assert_eq!(usage(keys::state_usage(&agent)).await, expect("1", "6"));
    assert_eq!(
        usage(coordination::keys::board_usage(&task)).await,
        expect("1", "6")
    );
    assert_eq!(usage(keys::artifact_usage(&task)).await, expect("1", "5"));
    let latest: String = admin
        .hget(keys::artifact_index(&task), "out/a.txt")
        .await
        .unwrap();
    assert_eq!(latest, serde_json::to_string(&artifact).unwrap());
    let names: Vec<String> = admin
        .zrangebylex(keys::artifact_names(&task), "-", "+")
        .await
        .unwrap();
    assert_eq!(names, ["out/a.txt"]);

    // A refusal writes nothing.
    let tight = Quota {
        max_entries: 1,
        max_bytes: 100,
    };
    let before = command_calls(&mut admin).await;
    let refused = store.kv_set(&agent, "k2", "v", tight, None).await.unwrap();
    let after = command_calls(&mut admin).await;
    assert!(matches!(refused, Admission::Refused(_)), "{refused:?}");
    assert_eq!(
        delta(&before, &after),
        counts(&[("evalsha", 1), ("hget", 1), ("hmget", 1)]),
        "a refused kv_set"
    );
}

/// A stored record that does not parse is an error naming its key: a revocation that cannot be
/// read is never mistaken for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_does_not_parse_is_an_error_naming_its_key() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let store = RedisState::connect(&server.url()).await.unwrap();
    let agent = unique("corrupt");
    let _: () = admin
        .hset(keys::REVOCATIONS_BY_AGENT, agent.as_str(), "{not json")
        .await
        .unwrap();
    let err = store.revocation(&agent).await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("corrupt value in `revocations:by_agent/{agent}`")),
        "{err}"
    );
    let task = unique_task("corrupt");
    let _: () = admin
        .rpush(format!("task:{task}:artifacts"), "[]")
        .await
        .unwrap();
    let err = store.artifacts(&task).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("corrupt value in `task:{task}:artifacts[0]`")),
        "{err}"
    );
}
