//! [`StateStore`] on Redis or DragonflyDB: the keyspace of the module docs, verbatim.
//!
//! Commands go through one [`ConnectionManager`], a multiplexed connection that reconnects
//! after the server drops it. A request in flight when the connection drops fails rather
//! than being retried: most writes here (counters, list pushes) are not idempotent, and only
//! the caller knows whether repeating one is safe. The next call uses the new connection.
//!
//! Every read-modify-write is a Lua script, so it is atomic on the server and costs one round
//! trip; scripts are loaded at connect, so even the first call is a single `EVALSHA`. Lock
//! checks compare the owner on the server, never read-then-write from the client.
//!
//! Revocations are also published on [`REVOCATIONS_CHANNEL`]; a task per store holds a
//! subscribed connection and forwards them to [`StateStore::revocation_events`]. That
//! connection speaks RESP3 (Redis 6 or later, DragonflyDB), which is how the client library
//! reports its disconnection; after one the task resubscribes with backoff and replays the
//! revocations pushed onto `revocations:ledger` meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind};
use redis::{RedisError, Script};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    ErrorCounts, LockAttempt, StateError, StateStore, Transition, TransitionResult, agent_key,
    keys, kv_field, task_key, ttl_millis, validate_id, validate_owner,
};

mod coordination;

const BACKEND: &str = "redis";

/// Channel on which [`RedisState::record_revocation`] publishes the revoked agent's id.
pub const REVOCATIONS_CHANNEL: &str = "warden:revocations";

/// Connecting to an unreachable server fails after this, per attempt.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// A command without an answer fails after this. Nothing here blocks on the server, so a
/// slower answer means the server or the network is in trouble.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts of the command connection before a call fails (the next call
/// starts over); the delays double from 100 ms up to [`MAX_RECONNECT_DELAY`].
const RECONNECT_ATTEMPTS: usize = 6;
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Resubscription backoff: doubles from the first delay up to the last, for as long as the
/// store lives.
const RESUBSCRIBE_FIRST_DELAY: Duration = Duration::from_millis(50);
const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(5);
/// How often the subscriber pings its connection, so a half-open connection (a peer that
/// vanished without closing it) is noticed and replaced.
const SUBSCRIBER_KEEPALIVE: Duration = Duration::from_secs(15);
/// Most revocations replayed after a resubscription: the newest ones, which include those
/// missed while disconnected unless more than this many happened meanwhile.
const MAX_REPLAY: u64 = 1024;
/// Capacity of the revocation broadcast; larger than [`MAX_REPLAY`] so a replay alone never
/// makes a receiver lag.
const EVENTS_CAPACITY: usize = 4096;

/// `KEYS[1]` lock. `ARGV`: owner, ttl ms. Returns nil when the caller now holds the lock,
/// otherwise the holder. The owner's own live lock is renewed.
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return holder
";

/// `KEYS[1]` lock. `ARGV`: owner, ttl ms. Returns 1 if the owner held it and it was extended.
const REFRESH_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `KEYS[1]` lock. `ARGV`: owner. Returns 1 if the owner held it and it was deleted.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `KEYS`: lock, heartbeat, state, errors. `ARGV`: owner, lock ttl ms, now ms, heartbeat
/// ttl ms, checkpoint field, checkpoint. Returns `{held, HGETALL errors}`; writes nothing
/// unless the owner holds the lock. The clock is the caller's, as for [`RedisState::heartbeat`].
const TRANSITION_LUA: &str = r"
local held = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  held = 1
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
end
return {held, redis.call('HGETALL', KEYS[4])}
";

/// `KEYS[1]` errors. `ARGV`: total field, signature field, procedure field or empty.
/// Returns `HGETALL` after the increments.
const RECORD_ERROR_LUA: &str = r"
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
end
return redis.call('HGETALL', KEYS[1])
";

struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
    transition: Script,
    record_error: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            acquire: Script::new(ACQUIRE_LUA),
            refresh: Script::new(REFRESH_LUA),
            release: Script::new(RELEASE_LUA),
            transition: Script::new(TRANSITION_LUA),
            record_error: Script::new(RECORD_ERROR_LUA),
        }
    }
}

/// [`StateStore`] on a Redis-protocol server shared by every host of a deployment.
///
/// Cheap to clone; clones share the connection and the revocation subscription, which ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct RedisState {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    scripts: Scripts,
    /// `host:port/db`, without credentials.
    location: String,
    events: broadcast::Sender<String>,
    /// Dropped with the last clone, which stops the subscriber task.
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// A failed command, with what it was doing; the `source` of [`StateError::Backend`].
#[derive(Debug)]
struct CommandError {
    op: &'static str,
    key: String,
    source: RedisError,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`: {}", self.op, self.key, self.source)
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Maps a redis error to [`StateError::Backend`], naming the operation and key.
fn failed(op: &'static str, key: &str) -> impl FnOnce(RedisError) -> StateError {
    let key = key.to_string();
    move |source| StateError::Backend {
        backend: BACKEND,
        source: Box::new(CommandError { op, key, source }),
    }
}

/// `url` with any user name and password replaced by `***`, for errors and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "***".into()
        } else {
            url.into()
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.into(),
    }
}

/// Wall-clock milliseconds since the epoch: heartbeats must mean the same on every host.
fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl RedisState {
    /// Connect to `url` (`redis://[[user]:password@]host[:port][/db]`, or `unix://` for a
    /// socket) and subscribe to revocations. Fails at once if the server is unreachable,
    /// refuses the credentials, or cannot speak RESP3 for the subscription.
    pub async fn connect(url: &str) -> Result<RedisState, StateError> {
        let open_error = |source: RedisError| StateError::Open {
            backend: BACKEND,
            location: redact(url),
            source: Box::new(source),
        };
        let client = Client::open(url).map_err(open_error)?;
        let info = client.get_connection_info();
        let location = format!("{}/{}", info.addr(), info.redis_settings().db());
        let subscriber = Client::open(
            info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            ),
        )
        .map_err(open_error)?;

        // One plain connection first: a wrong password or an unreachable server fails `connect`
        // at once, where the manager would retry with backoff for seconds.
        let mut probe = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            )
            .await
            .map_err(open_error)?;
        // `Script` loads on `NOSCRIPT` (a restarted or flushed server) at the cost of two more
        // round trips; loading up front keeps even the first call to one.
        let scripts = Scripts::new();
        let mut load = redis::pipe();
        for code in [
            ACQUIRE_LUA,
            REFRESH_LUA,
            RELEASE_LUA,
            TRANSITION_LUA,
            RECORD_ERROR_LUA,
        ] {
            load.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
        }
        load.exec_async(&mut probe).await.map_err(open_error)?;
        drop(probe);

        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_ATTEMPTS)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(open_error)?;

        // Subscribe before returning, so a revocation recorded once `connect` returns reaches
        // this store's receivers.
        let subscription = Subscription::open(&subscriber, &mut conn)
            .await
            .map_err(open_error)?;
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(
            Subscriber {
                client: subscriber,
                conn: conn.clone(),
                events: events.clone(),
                location: location.clone(),
            }
            .run(subscription, stop_rx),
        );
        Ok(RedisState {
            inner: Arc::new(Inner {
                conn,
                scripts,
                location,
                events,
                _stop: stop_tx,
            }),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn().get(key).await.map_err(failed("GET", key))
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn()
            .set::<_, _, ()>(key, value)
            .await
            .map_err(failed("SET", key))
    }

    async fn hgetall_counts(&self, key: &str) -> Result<ErrorCounts, StateError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(key)
            .await
            .map_err(failed("HGETALL", key))?;
        ErrorCounts::from_fields(key, fields)
    }
}

#[async_trait]
impl StateStore for RedisState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put_packet(&self, agent: &str, packet_json: &str) -> Result<(), StateError> {
        self.set(&agent_key(agent, keys::packet)?, packet_json)
            .await
    }

    async fn packet(&self, agent: &str) -> Result<Option<String>, StateError> {
        self.get(&agent_key(agent, keys::packet)?).await
    }

    async fn checkpoint(&self, agent: &str) -> Result<Option<String>, StateError> {
        let key = agent_key(agent, keys::state)?;
        self.conn()
            .hget(&key, keys::CHECKPOINT_FIELD)
            .await
            .map_err(failed("HGET", &key))
    }

    async fn kv_get(&self, agent: &str, key: &str) -> Result<Option<String>, StateError> {
        let hash = agent_key(agent, keys::state)?;
        self.conn()
            .hget(&hash, kv_field(key))
            .await
            .map_err(failed("HGET", &hash))
    }

    async fn kv_set(&self, agent: &str, key: &str, value: &str) -> Result<(), StateError> {
        let hash = agent_key(agent, keys::state)?;
        self.conn()
            .hset::<_, _, _, ()>(&hash, kv_field(key), value)
            .await
            .map_err(failed("HSET", &hash))
    }

    async fn kv_delete(&self, agent: &str, key: &str) -> Result<bool, StateError> {
        let hash = agent_key(agent, keys::state)?;
        let removed: u64 = self
            .conn()
            .hdel(&hash, kv_field(key))
            .await
            .map_err(failed("HDEL", &hash))?;
        Ok(removed > 0)
    }

    async fn kv_keys(&self, agent: &str) -> Result<Vec<String>, StateError> {
        let hash = agent_key(agent, keys::state)?;
        let fields: Vec<String> = self
            .conn()
            .hkeys(&hash)
            .await
            .map_err(failed("HKEYS", &hash))?;
        let mut keys: Vec<String> = fields
            .into_iter()
            .filter_map(|field| field.strip_prefix(keys::KV_PREFIX).map(str::to_string))
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    async fn record_error(
        &self,
        agent: &str,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError> {
        let key = agent_key(agent, keys::errors)?;
        let fields: HashMap<String, String> = self
            .inner
            .scripts
            .record_error
            .key(&key)
            .arg(keys::TOTAL_FIELD)
            .arg(format!("{}{signature}", keys::SAME_PREFIX))
            .arg(if procedure { keys::PROCEDURE_FIELD } else { "" })
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("record_error script on", &key))?;
        ErrorCounts::from_fields(&key, fields)
    }

    async fn error_counts(&self, agent: &str) -> Result<ErrorCounts, StateError> {
        self.hgetall_counts(&agent_key(agent, keys::errors)?).await
    }

    async fn reset_errors(&self, agent: &str) -> Result<(), StateError> {
        let key = agent_key(agent, keys::errors)?;
        self.conn()
            .del::<_, ()>(&key)
            .await
            .map_err(failed("DEL", &key))
    }

    async fn heartbeat(&self, agent: &str, ttl: Duration) -> Result<(), StateError> {
        let key = agent_key(agent, keys::heartbeat)?;
        let ttl = ttl_millis("heartbeat", ttl)?;
        redis::cmd("SET")
            .arg(&key)
            .arg(now_ms())
            .arg("PX")
            .arg(ttl)
            .exec_async(&mut self.conn())
            .await
            .map_err(failed("SET", &key))
    }

    async fn last_heartbeat(&self, agent: &str) -> Result<Option<SystemTime>, StateError> {
        let key = agent_key(agent, keys::heartbeat)?;
        let Some(value) = self.get(&key).await? else {
            return Ok(None);
        };
        let ms: u64 = value.parse().map_err(|_| StateError::Corrupt {
            key: key.clone(),
            message: format!("holds `{value}`, expected milliseconds since the unix epoch"),
        })?;
        Ok(UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
    }

    async fn acquire_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LockAttempt, StateError> {
        let key = agent_key(agent, keys::lock)?;
        validate_owner(owner)?;
        let ttl = ttl_millis("lock", ttl)?;
        let holder: Option<String> = self
            .inner
            .scripts
            .acquire
            .key(&key)
            .arg(owner)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("acquire script on", &key))?;
        Ok(match holder {
            None => LockAttempt::Acquired,
            Some(owner) => LockAttempt::Held { owner },
        })
    }

    async fn refresh_lock(
        &self,
        agent: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let key = agent_key(agent, keys::lock)?;
        validate_owner(owner)?;
        let ttl = ttl_millis("lock", ttl)?;
        let refreshed: i64 = self
            .inner
            .scripts
            .refresh
            .key(&key)
            .arg(owner)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("refresh script on", &key))?;
        Ok(refreshed == 1)
    }

    async fn release_lock(&self, agent: &str, owner: &str) -> Result<bool, StateError> {
        let key = agent_key(agent, keys::lock)?;
        validate_owner(owner)?;
        let released: i64 = self
            .inner
            .scripts
            .release
            .key(&key)
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("release script on", &key))?;
        Ok(released == 1)
    }

    async fn lock_owner(&self, agent: &str) -> Result<Option<String>, StateError> {
        self.get(&agent_key(agent, keys::lock)?).await
    }

    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError> {
        validate_id("agent", t.agent)?;
        validate_owner(t.owner)?;
        let lock_ttl = ttl_millis("lock", t.lock_ttl)?;
        let heartbeat_ttl = ttl_millis("heartbeat", t.heartbeat_ttl)?;
        let lock = keys::lock(t.agent);
        let errors = keys::errors(t.agent);
        let (held, fields): (i64, HashMap<String, String>) = self
            .inner
            .scripts
            .transition
            .key(&lock)
            .key(keys::heartbeat(t.agent))
            .key(keys::state(t.agent))
            .key(&errors)
            .arg(t.owner)
            .arg(lock_ttl)
            .arg(now_ms())
            .arg(heartbeat_ttl)
            .arg(keys::CHECKPOINT_FIELD)
            .arg(t.checkpoint_json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("transition script on", &lock))?;
        Ok(TransitionResult {
            lock_held: held == 1,
            errors: ErrorCounts::from_fields(&errors, fields)?,
        })
    }

    async fn set_active_agent(&self, task: &str, agent: &str) -> Result<(), StateError> {
        let key = task_key(task, keys::active_agent)?;
        validate_id("agent", agent)?;
        self.set(&key, agent).await
    }

    async fn active_agent(&self, task: &str) -> Result<Option<String>, StateError> {
        self.get(&task_key(task, keys::active_agent)?).await
    }

    async fn push_artifact(&self, task: &str, artifact_json: &str) -> Result<(), StateError> {
        let key = task_key(task, keys::artifacts)?;
        self.conn()
            .rpush::<_, _, ()>(&key, artifact_json)
            .await
            .map_err(failed("RPUSH", &key))
    }

    async fn artifacts(&self, task: &str) -> Result<Vec<String>, StateError> {
        let key = task_key(task, keys::artifacts)?;
        self.conn()
            .lrange(&key, 0, -1)
            .await
            .map_err(failed("LRANGE", &key))
    }

    /// One `MULTI`: `LPUSH` to the ledger, `HSET` of the index, then `PUBLISH` of the agent
    /// id. Publishing inside the transaction means subscribers hear of a revocation exactly
    /// when it is stored: never before (they would find nothing), never lost to a crash
    /// between the write and the publish.
    async fn record_revocation(
        &self,
        agent: &str,
        revocation_json: &str,
    ) -> Result<(), StateError> {
        validate_id("agent", agent)?;
        redis::pipe()
            .atomic()
            .lpush(keys::REVOCATIONS_LEDGER, revocation_json)
            .ignore()
            .hset(keys::REVOCATIONS_BY_AGENT, agent, revocation_json)
            .ignore()
            .publish(REVOCATIONS_CHANNEL, agent)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(failed("MULTI revocation of", agent))
    }

    async fn revocation(&self, agent: &str) -> Result<Option<String>, StateError> {
        validate_id("agent", agent)?;
        self.conn()
            .hget(keys::REVOCATIONS_BY_AGENT, agent)
            .await
            .map_err(failed("HGET", keys::REVOCATIONS_BY_AGENT))
    }

    async fn revocations(&self, limit: usize) -> Result<Vec<String>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // `LRANGE` takes a signed end index; -1 is the end of the list.
        let end = isize::try_from(limit).map_or(-1, |limit| limit - 1);
        self.conn()
            .lrange(keys::REVOCATIONS_LEDGER, 0, end)
            .await
            .map_err(failed("LRANGE", keys::REVOCATIONS_LEDGER))
    }

    async fn put_handoff(&self, task: &str, handoff_json: &str) -> Result<(), StateError> {
        self.set(&task_key(task, keys::handoff)?, handoff_json)
            .await
    }

    async fn handoff(&self, task: &str) -> Result<Option<String>, StateError> {
        self.get(&task_key(task, keys::handoff)?).await
    }

    async fn put_approval(&self, task: &str, approval_json: &str) -> Result<(), StateError> {
        self.set(&task_key(task, keys::approval)?, approval_json)
            .await
    }

    async fn approval(&self, task: &str) -> Result<Option<String>, StateError> {
        self.get(&task_key(task, keys::approval)?).await
    }

    fn revocation_events(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.inner.events.subscribe())
    }

    async fn health(&self) -> Result<(), StateError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
            .map_err(failed("PING", ""))
    }
}

/// A subscribed RESP3 connection: the library pushes messages, and a
/// [`PushKind::Disconnection`] when the connection is gone, into `pushes`.
struct Subscription {
    conn: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    /// `LLEN revocations:ledger` once subscribed: revocations past it were published while
    /// this subscription was listening, or are replayed by the next one.
    ledger_len: u64,
}

impl Subscription {
    async fn open(client: &Client, commands: &mut ConnectionManager) -> redis::RedisResult<Self> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(tx);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        conn.subscribe(REVOCATIONS_CHANNEL).await?;
        // Read after subscribing: a revocation stored before this is counted, one stored
        // after it is published to this subscription.
        let ledger_len = commands.llen(keys::REVOCATIONS_LEDGER).await?;
        Ok(Subscription {
            conn,
            pushes,
            ledger_len,
        })
    }
}

/// The task behind [`StateStore::revocation_events`].
struct Subscriber {
    client: Client,
    /// For the replay after a resubscription.
    conn: ConnectionManager,
    events: broadcast::Sender<String>,
    location: String,
}

/// Why [`Subscriber::listen`] returned.
enum Ended {
    Stopped,
    Disconnected,
}

impl Subscriber {
    async fn run(mut self, mut subscription: Subscription, mut stop: oneshot::Receiver<()>) {
        loop {
            if let Ended::Stopped = self.listen(&mut subscription, &mut stop).await {
                return;
            }
            tracing::warn!(
                location = %self.location,
                "lost the redis revocation subscription; resubscribing"
            );
            let mut delay = RESUBSCRIBE_FIRST_DELAY;
            let next = loop {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(delay) => {}
                }
                match Subscription::open(&self.client, &mut self.conn).await {
                    Ok(next) => break next,
                    Err(error) => {
                        tracing::warn!(
                            location = %self.location,
                            %error,
                            retry_in = ?delay,
                            "cannot resubscribe to redis revocations"
                        );
                        delay = (delay * 2).min(RESUBSCRIBE_MAX_DELAY);
                    }
                }
            };
            self.replay(subscription.ledger_len, next.ledger_len).await;
            subscription = next;
            tracing::info!(location = %self.location, "resubscribed to redis revocations");
        }
    }

    /// Forward published agent ids until the connection is lost or the store dropped.
    async fn listen(
        &self,
        subscription: &mut Subscription,
        stop: &mut oneshot::Receiver<()>,
    ) -> Ended {
        let mut keepalive = tokio::time::interval(SUBSCRIBER_KEEPALIVE);
        keepalive.tick().await;
        loop {
            tokio::select! {
                _ = &mut *stop => return Ended::Stopped,
                push = subscription.pushes.recv() => match push {
                    None => return Ended::Disconnected,
                    Some(push) if push.kind == PushKind::Disconnection => {
                        return Ended::Disconnected;
                    }
                    Some(push) if push.kind == PushKind::Message => {
                        // `data` is `[channel, payload]`.
                        let agent = push.data.get(1).and_then(|payload| {
                            redis::from_redis_value_ref::<String>(payload).ok()
                        });
                        match agent {
                            Some(agent) => self.forward(agent),
                            None => tracing::warn!("ignoring a malformed revocation message"),
                        }
                    }
                    // Subscription confirmations and other pushes.
                    Some(_) => {}
                },
                _ = keepalive.tick() => {
                    if let Err(error) = redis::cmd("PING")
                        .query_async::<redis::Value>(&mut subscription.conn)
                        .await
                    {
                        tracing::warn!(%error, "redis revocation subscription does not answer");
                        return Ended::Disconnected;
                    }
                }
            }
        }
    }

    fn forward(&self, agent: String) {
        // No receiver is not an error: the host may not be listening yet.
        let _ = self.events.send(agent);
    }

    /// Forward the agents of revocations stored since the previous subscription, newest
    /// first, so none published while disconnected is missed. Some were already forwarded;
    /// receivers treat ids as idempotent "check this agent" signals. The records are the
    /// host's JSON with an `agent_id` field; others are skipped with a warning.
    async fn replay(&mut self, before: u64, now: u64) {
        let missed = now.saturating_sub(before).min(MAX_REPLAY);
        if missed == 0 {
            return;
        }
        let end = isize::try_from(missed).map_or(-1, |n| n - 1);
        let records: Vec<String> = match self.conn.lrange(keys::REVOCATIONS_LEDGER, 0, end).await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "cannot replay revocations missed while unsubscribed");
                return;
            }
        };
        for record in records {
            let agent = serde_json::from_str::<serde_json::Value>(&record)
                .ok()
                .and_then(|value| value.get("agent_id")?.as_str().map(str::to_string))
                .filter(|agent| validate_id("agent", agent).is_ok());
            match agent {
                Some(agent) => self.forward(agent),
                None => tracing::warn!("skipping a revocation record without an `agent_id`"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@db.internal:6380/2"),
            "redis://***@db.internal:6380/2"
        );
        assert_eq!(redact("rediss://user:p@ss@db:6379"), "rediss://***@db:6379");
        assert_eq!(redact("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(
            redact("redis://127.0.0.1/?note=a@b"),
            "redis://127.0.0.1/?note=a@b"
        );
        assert_eq!(redact("user:secret@host"), "***");
    }
}
