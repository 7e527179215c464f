//! [`StateStore`] on Redis or DragonflyDB: the keyspace of the module docs, verbatim.
//!
//! Commands go through one [`ConnectionManager`], a multiplexed connection that reconnects
//! after the server drops it. A request in flight when the connection drops fails rather
//! than being retried: most writes here (counters, list pushes) are not idempotent, and only
//! the caller knows whether repeating one is safe. The next call uses the new connection.
//! The one retry is of a command that was never sent: when the connection could not even be
//! established (refused), the command is tried once more on the reconnection that refusal
//! started.
//!
//! Every command passes a [`CircuitBreaker`] and a deadline ([`RedisOptions`]): a command
//! fails after `command_timeout` at the latest, whatever the network does, and once
//! `failure_threshold` commands in a row found the server unreachable, commands fail at once
//! with [`StateError::Unavailable`] until a probe after `open_for` finds it back. The
//! revocation subscriber below reconnects on its own schedule and does not pass the breaker.
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
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind};
use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::breaker::{BreakerConfig, BreakerStatus, CircuitBreaker};

use super::quota::{Bound, OverQuota};
use super::{
    Admission, AgentId, Approval, ArtifactRef, Checkpoint, ErrorCounts, GateDecision, Handoff,
    LockAttempt, LockOwner, Once, Packet, Quota, Revocation, RunId, StateError, StateStore, TaskId,
    Transition, TransitionResult, Ttl, decode, decode_all, decoded, encode, keys, kv_field,
    stored_id,
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
/// starts over); the delays double from 100 ms up to [`MAX_RECONNECT_DELAY`]. Few, because
/// the circuit breaker, not the client, paces calls to a server that is gone.
const RECONNECT_ATTEMPTS: usize = 2;
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Default [`RedisOptions::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Functions the quota scripts share, put in front of each: the usage hash `KEYS[n]` (fields
/// `entries` and `bytes`, absent as 0), the admission rule of
/// [`Quota::admit`](super::Quota::admit), and the reply of a refusal:
/// `{'entries'|'bytes', used, requested}` (strings, so no count is cut to a Lua float's
/// integer reply). An admitted write replies `{'stored', …}`.
pub(super) const QUOTA_LUA: &str = r"
local function usage(n)
  local u = redis.call('HMGET', KEYS[n], 'entries', 'bytes')
  return tonumber(u[1]) or 0, tonumber(u[2]) or 0
end
local function set_usage(n, entries, bytes)
  redis.call('HSET', KEYS[n], 'entries', string.format('%d', entries), 'bytes', string.format('%d', bytes))
end
local function refused(used_e, used_b, new_e, new_b, max_e, max_b)
  if new_e > used_e and new_e > max_e then
    return {'entries', string.format('%d', used_e), string.format('%d', new_e)}
  end
  if new_b > used_b and new_b > max_b then
    return {'bytes', string.format('%d', used_b), string.format('%d', new_b)}
  end
  return false
end
";

/// `KEYS`: hash, usage. `ARGV`: field, value, bytes the entry's key counts, max entries, max
/// bytes. Sets the field unless the quota refuses; an entry counts its key and its value.
/// Shared by the agent's own state (`kv:` fields) and the blackboard.
const KEYED_WRITE_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and ARGV[6] == 'nx' then return {'exists'} end
local entries, bytes = usage(2)
local klen = tonumber(ARGV[3])
local new_e, new_b = entries, bytes
if old then
  new_b = math.max(bytes - klen - string.len(old), 0)
else
  new_e = entries + 1
end
new_b = new_b + klen + string.len(ARGV[2])
local no = refused(entries, bytes, new_e, new_b, tonumber(ARGV[4]), tonumber(ARGV[5]))
if no then return no end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
set_usage(2, new_e, new_b)
return {'stored'}
";

/// `KEYS`: state, usage. `ARGV`: field, bytes the key counts. Deletes the field and gives
/// its bytes back; returns 1 if it existed.
const KV_DELETE_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local entries, bytes = usage(2)
set_usage(2, math.max(entries - 1, 0), math.max(bytes - tonumber(ARGV[2]) - string.len(old), 0))
return 1
";

/// `KEYS`: history, index, names, usage. `ARGV`: name, reference, size, max entries (names),
/// max bytes. Appends to the history, makes it the name's latest and counts it, unless the
/// quota refuses.
const PUSH_ARTIFACT_LUA: &str = r"
local exists = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
local entries, bytes = usage(4)
local new_e, new_b = entries, bytes + tonumber(ARGV[3])
if not exists then new_e = entries + 1 end
local no = refused(entries, bytes, new_e, new_b, tonumber(ARGV[4]), tonumber(ARGV[5]))
if no then return no end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
set_usage(4, new_e, new_b)
return {'stored'}
";

/// `KEYS`: names, index. `ARGV`: the `ZRANGEBYLEX` start (`-` or `(<after>`), count. Returns
/// `{names, references}` of one page, in name order.
const ARTIFACT_PAGE_LUA: &str = r"
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
local refs = {}
for i = 1, #names, 512 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(names, i, math.min(i + 511, #names)))
  for j = 1, #chunk do refs[#refs + 1] = chunk[j] end
end
return {names, refs}
";

/// The [`Once`] variant of a write script: `prelude`, then `body` (which `return`s its reply)
/// run only unless the run's receipt `KEYS[#KEYS]` names the call `ARGV[#ARGV]`; the receipt
/// then holds the token and the reply, written in the same script as the write. A call whose
/// receipt is found is answered the reply it had, and writes nothing.
fn once_script(prelude: &str, body: &str) -> String {
    format!(
        r"{prelude}
local function write()
{body}
end
local held = redis.call('GET', KEYS[#KEYS])
if held then
  local receipt = cjson.decode(held)
  if receipt[1] == ARGV[#ARGV] then return receipt[2] end
end
local reply = write()
redis.call('SET', KEYS[#KEYS], cjson.encode({{ARGV[#ARGV], reply}}))
return reply
"
    )
}

/// A write script and its [`Once`] variant ([`once_script`]).
pub(super) struct Write {
    plain: Script,
    once: Script,
}

impl Write {
    /// The write `body`, after `prelude` (the quota functions, or nothing).
    pub(super) fn new(prelude: &str, body: &str) -> Write {
        Write {
            plain: Script::new(&format!("{prelude}{body}")),
            once: Script::new(&once_script(prelude, body)),
        }
    }

    /// The code of both variants, for `SCRIPT LOAD` and the declared-keys test.
    pub(super) fn code(prelude: &str, body: &str) -> [String; 2] {
        [format!("{prelude}{body}"), once_script(prelude, body)]
    }

    /// The script to invoke for a write given `once` or not; its keys and arguments, then
    /// [`with_receipt`].
    pub(super) fn pick(&self, once: Option<&Once>) -> &Script {
        if once.is_some() {
            &self.once
        } else {
            &self.plain
        }
    }
}

/// After a write script's own keys and arguments: the run's receipt key and the call's
/// token, for the [`Once`] variant.
pub(super) fn with_receipt(call: &mut redis::ScriptInvocation<'_>, once: Option<&Once>) {
    if let Some(once) = once {
        call.key(keys::receipt(once.run().as_str()))
            .arg(once.token());
    }
}

/// The reply of a quota script, as an [`Admission`] under `quota`: `{'stored', …rest}` is
/// handed to `stored`; a refusal names the bound and the counts.
pub(super) fn admission<T>(
    key: &str,
    quota: Quota,
    reply: &[String],
    stored: impl FnOnce(&[String]) -> Result<T, StateError>,
) -> Result<Admission<T>, StateError> {
    let count = |value: Option<&String>| -> Result<u64, StateError> {
        value
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StateError::Corrupt {
                key: key.to_string(),
                message: format!("the quota script answered {reply:?}"),
            })
    };
    let bound = match reply.first().map(String::as_str) {
        Some("stored") => return Ok(Admission::Stored(stored(&reply[1..])?)),
        Some("entries") => Bound::Entries,
        Some("bytes") => Bound::Bytes,
        _ => {
            return Err(StateError::Corrupt {
                key: key.to_string(),
                message: format!("the quota script answered {reply:?}"),
            });
        }
    };
    Ok(Admission::Refused(OverQuota {
        bound,
        limit: match bound {
            Bound::Entries => quota.max_entries,
            Bound::Bytes => quota.max_bytes,
        },
        used: count(reply.get(1))?,
        requested: count(reply.get(2))?,
    }))
}

pub(super) struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
    transition: Script,
    record_error: Script,
    pub(super) keyed_write: Write,
    kv_delete: Write,
    push_artifact: Write,
    artifact_page: Script,
}

impl Scripts {
    /// The code of every script of [`Scripts`] with its name, in field order (a write's
    /// [`Once`] variant after it), for `SCRIPT LOAD`.
    fn code() -> Vec<(&'static str, String)> {
        let [keyed_write, keyed_write_once] = Write::code(QUOTA_LUA, KEYED_WRITE_LUA);
        let [kv_delete, kv_delete_once] = Write::code(QUOTA_LUA, KV_DELETE_LUA);
        let [push_artifact, push_artifact_once] = Write::code(QUOTA_LUA, PUSH_ARTIFACT_LUA);
        vec![
            ("acquire", ACQUIRE_LUA.to_string()),
            ("refresh", REFRESH_LUA.to_string()),
            ("release", RELEASE_LUA.to_string()),
            ("transition", TRANSITION_LUA.to_string()),
            ("record_error", RECORD_ERROR_LUA.to_string()),
            ("keyed_write", keyed_write),
            ("keyed_write once", keyed_write_once),
            ("kv_delete", kv_delete),
            ("kv_delete once", kv_delete_once),
            ("push_artifact", push_artifact),
            ("push_artifact once", push_artifact_once),
            ("artifact_page", ARTIFACT_PAGE_LUA.to_string()),
        ]
    }

    fn new() -> Scripts {
        Scripts {
            acquire: Script::new(ACQUIRE_LUA),
            refresh: Script::new(REFRESH_LUA),
            release: Script::new(RELEASE_LUA),
            transition: Script::new(TRANSITION_LUA),
            record_error: Script::new(RECORD_ERROR_LUA),
            keyed_write: Write::new(QUOTA_LUA, KEYED_WRITE_LUA),
            kv_delete: Write::new(QUOTA_LUA, KV_DELETE_LUA),
            push_artifact: Write::new(QUOTA_LUA, PUSH_ARTIFACT_LUA),
            artifact_page: Script::new(ARTIFACT_PAGE_LUA),
        }
    }
}

/// How [`RedisState::connect_with`] guards commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// When the circuit opens and for how long. Default: [`BreakerConfig::default`]
    /// (5 consecutive failures, 5 s).
    pub breaker: BreakerConfig,
    /// The longest a command may take, reconnection included, before it fails. Default 5 s.
    pub command_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            breaker: BreakerConfig::default(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl RedisOptions {
    /// Set the circuit breaker's thresholds.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// At least 1 ms; shorter values are raised to 1 ms.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout.max(Duration::from_millis(1));
        self
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
    pub(super) scripts: Scripts,
    /// `host:port/db`, without credentials.
    location: String,
    /// The URL without credentials, for errors.
    url: String,
    breaker: CircuitBreaker,
    command_timeout: Duration,
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
    /// The server, credentials masked.
    at: String,
    source: RedisError,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` at `{}`: {}",
            self.op, self.key, self.at, self.source
        )
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Maps a redis error to [`StateError::Backend`], naming the operation and key.
fn failed(op: &'static str, key: &str, at: &str) -> impl FnOnce(RedisError) -> StateError {
    let (key, at) = (key.to_string(), at.to_string());
    move |source| StateError::Backend {
        backend: BACKEND,
        source: Box::new(CommandError {
            op,
            key,
            at,
            source,
        }),
    }
}

/// Whether the error says the server is unreachable or cannot serve (what the breaker
/// counts), rather than the server's answer to this command.
fn is_outage(error: &RedisError) -> bool {
    error.is_io_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
            )
        )
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
        RedisState::connect_with(url, RedisOptions::default()).await
    }

    /// [`RedisState::connect`] with a circuit breaker and command deadline of your own.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisState, StateError> {
        RedisState::open(url, options, false).await
    }

    /// A store that has not talked to the server yet and never waits for it here: commands
    /// connect on first use (through the breaker, like any command) and the revocation
    /// subscription is established in the background. For tools that must report an
    /// unreachable server rather than fail (`warden health`). Revocations published before
    /// the subscription is up are not pushed; [`StateStore::revocation`] still finds them.
    pub async fn connect_lazily(
        url: &str,
        options: RedisOptions,
    ) -> Result<RedisState, StateError> {
        RedisState::open(url, options, true).await
    }

    async fn open(url: &str, options: RedisOptions, lazy: bool) -> Result<RedisState, StateError> {
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_ATTEMPTS)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let scripts = Scripts::new();

        let (conn, subscription) = if lazy {
            // `Script` loads itself on `NOSCRIPT`, at two more round trips the first time.
            let conn =
                ConnectionManager::new_lazy_with_config(client, config).map_err(open_error)?;
            (conn, None)
        } else {
            // One plain connection first: a wrong password or an unreachable server fails
            // `connect` at once, where the manager would retry with backoff.
            let mut probe = client
                .get_multiplexed_async_connection_with_config(
                    &AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                        .set_response_timeout(Some(RESPONSE_TIMEOUT)),
                )
                .await
                .map_err(open_error)?;
            // `Script` loads on `NOSCRIPT` (a restarted or flushed server) at the cost of two
            // more round trips; loading up front keeps even the first call to one.
            let mut load = redis::pipe();
            for (_, code) in Scripts::code().into_iter().chain(coordination::scripts()) {
                load.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
            }
            load.exec_async(&mut probe).await.map_err(open_error)?;
            drop(probe);
            let mut conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(open_error)?;
            // Subscribe before returning, so a revocation recorded once `connect` returns
            // reaches this store's receivers.
            let subscription = Subscription::open(&subscriber, &mut conn)
                .await
                .map_err(open_error)?;
            (conn, Some(subscription))
        };

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
        let url = redact(url);
        Ok(RedisState {
            inner: Arc::new(Inner {
                conn,
                scripts,
                location,
                breaker: CircuitBreaker::new(
                    format!("redis state store at {url}"),
                    options.breaker,
                ),
                url,
                command_timeout: options.command_timeout,
                events,
                _stop: stop_tx,
            }),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Run one command through the circuit breaker, under the command deadline. `command`
    /// builds the request on a connection; it runs a second time only when the first could
    /// not connect at all (the request was never sent), to use the reconnection that refusal
    /// started.
    async fn guarded<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut command: F,
    ) -> Result<T, StateError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let permit = self
            .inner
            .breaker
            .permit()
            .map_err(|reason| StateError::Unavailable {
                backend: BACKEND,
                location: self.inner.url.clone(),
                reason,
            })?;
        let attempts = async {
            match command(self.conn()).await {
                Err(error) if error.is_connection_refusal() => command(self.conn()).await,
                other => other,
            }
        };
        let timeout = self.inner.command_timeout;
        let result = match tokio::time::timeout(timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}", humantime::format_duration(timeout)),
            ))),
        };
        match &result {
            Err(error) if is_outage(error) => permit.failed(format!("{op}: {error}")),
            _ => permit.succeeded(),
        }
        result.map_err(failed(op, key, &self.inner.url))
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.guarded("GET", key, |mut c| async move { c.get(key).await })
            .await
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.guarded("SET", key, |mut c| async move {
            c.set::<_, _, ()>(key, value).await
        })
        .await
    }

    /// [`KEYED_WRITE_LUA`]: set `field` of `hash` to `value` under `quota`, counted in the
    /// usage hash `usage` as `key_bytes` + the value's bytes.
    #[expect(
        clippy::too_many_arguments,
        reason = "the script's keys and arguments, in order"
    )]
    pub(super) async fn keyed_write(
        &self,
        hash: &str,
        usage: &str,
        field: &str,
        key_bytes: usize,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let reply = self
            .keyed_script(hash, usage, field, key_bytes, value, quota, false, once)
            .await?;
        admission(usage, quota, &reply, |_| Ok(()))
    }

    /// [`KEYED_WRITE_LUA`] for a field that is written once (the host's own records): stored
    /// and counted only if absent; whether it was.
    pub(super) async fn keyed_insert(
        &self,
        hash: &str,
        usage: &str,
        field: &str,
        value: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        let reply = self
            .keyed_script(
                hash,
                usage,
                field,
                field.len(),
                value,
                Quota::UNLIMITED,
                true,
                once,
            )
            .await?;
        Ok(reply.first().map(String::as_str) == Some("stored"))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the script's keys and arguments, in order"
    )]
    async fn keyed_script(
        &self,
        hash: &str,
        usage: &str,
        field: &str,
        key_bytes: usize,
        value: &str,
        quota: Quota,
        only_new: bool,
        once: Option<&Once>,
    ) -> Result<Vec<String>, StateError> {
        let script = self.inner.scripts.keyed_write.pick(once);
        self.guarded("quota write script on", hash, |mut c| {
            let mut call = script.key(hash);
            call.key(usage)
                .arg(field)
                .arg(value)
                .arg(key_bytes)
                .arg(quota.max_entries)
                .arg(quota.max_bytes)
                .arg(if only_new { "nx" } else { "" });
            with_receipt(&mut call, once);
            async move { call.invoke_async(&mut c).await }
        })
        .await
    }

    async fn hgetall_counts(&self, key: &str) -> Result<ErrorCounts, StateError> {
        let fields: HashMap<String, String> = self
            .guarded("HGETALL", key, |mut c| async move { c.hgetall(key).await })
            .await?;
        ErrorCounts::from_fields(key, fields)
    }
}

#[async_trait]
impl StateStore for RedisState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put_packet(&self, packet: &Packet) -> Result<(), StateError> {
        let key = keys::packet(&packet.agent_id);
        self.set(&key, &encode(&key, packet)?).await
    }

    async fn packet(&self, agent: &AgentId) -> Result<Option<Packet>, StateError> {
        let key = keys::packet(agent);
        decoded(&key, self.get(&key).await?)
    }

    async fn checkpoint(&self, agent: &AgentId) -> Result<Option<Checkpoint>, StateError> {
        let key = keys::state(agent);
        let hash = key.as_str();
        let value: Option<String> = self
            .guarded("HGET", hash, |mut c| async move {
                c.hget(hash, keys::CHECKPOINT_FIELD).await
            })
            .await?;
        decoded(&format!("{key}/{}", keys::CHECKPOINT_FIELD), value)
    }

    async fn kv_get(&self, agent: &AgentId, key: &str) -> Result<Option<String>, StateError> {
        let hash = keys::state(agent);
        let (hash, field) = (hash.as_str(), kv_field(key));
        let field = field.as_str();
        self.guarded(
            "HGET",
            hash,
            |mut c| async move { c.hget(hash, field).await },
        )
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
        let (hash, usage) = (keys::state(agent), keys::state_usage(agent));
        self.keyed_write(&hash, &usage, &kv_field(key), key.len(), value, quota, once)
            .await
    }

    async fn kv_delete(
        &self,
        agent: &AgentId,
        key: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        let (hash, usage, field) = (keys::state(agent), keys::state_usage(agent), kv_field(key));
        let script = self.inner.scripts.kv_delete.pick(once);
        let removed: i64 = self
            .guarded("kv_delete script on", &hash, |mut c| {
                let mut call = script.key(&hash);
                call.key(&usage).arg(&field).arg(key.len());
                with_receipt(&mut call, once);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(removed == 1)
    }

    async fn kv_keys(&self, agent: &AgentId) -> Result<Vec<String>, StateError> {
        let hash = keys::state(agent);
        let hash = hash.as_str();
        let fields: Vec<String> = self
            .guarded("HKEYS", hash, |mut c| async move { c.hkeys(hash).await })
            .await?;
        let mut keys: Vec<String> = fields
            .into_iter()
            .filter_map(|field| field.strip_prefix(keys::KV_PREFIX).map(str::to_string))
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    async fn record_error(
        &self,
        agent: &AgentId,
        signature: &str,
        procedure: bool,
    ) -> Result<ErrorCounts, StateError> {
        let key = keys::errors(agent);
        let same = format!("{}{signature}", keys::SAME_PREFIX);
        let script = &self.inner.scripts.record_error;
        let fields: HashMap<String, String> = self
            .guarded("record_error script on", &key, |mut c| {
                let mut call = script.key(&key);
                call.arg(keys::TOTAL_FIELD).arg(&same).arg(if procedure {
                    keys::PROCEDURE_FIELD
                } else {
                    ""
                });
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        ErrorCounts::from_fields(&key, fields)
    }

    async fn error_counts(&self, agent: &AgentId) -> Result<ErrorCounts, StateError> {
        self.hgetall_counts(&keys::errors(agent)).await
    }

    async fn reset_errors(&self, agent: &AgentId) -> Result<(), StateError> {
        let key = keys::errors(agent);
        let key = key.as_str();
        self.guarded("DEL", key, |mut c| async move { c.del::<_, ()>(key).await })
            .await
    }

    async fn heartbeat(&self, agent: &AgentId, ttl: Ttl) -> Result<(), StateError> {
        let key = keys::heartbeat(agent);
        let ttl = ttl.millis();
        self.guarded("SET", &key, |mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(now_ms()).arg("PX").arg(ttl);
            async move { cmd.exec_async(&mut c).await }
        })
        .await
    }

    async fn last_heartbeat(&self, agent: &AgentId) -> Result<Option<SystemTime>, StateError> {
        let key = keys::heartbeat(agent);
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
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<LockAttempt, StateError> {
        let key = keys::lock(agent);
        let ttl = ttl.millis();
        let script = &self.inner.scripts.acquire;
        let holder: Option<String> = self
            .guarded("acquire script on", &key, |mut c| {
                let mut call = script.key(&key);
                call.arg(owner.as_str()).arg(ttl);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(match holder {
            None => LockAttempt::Acquired,
            Some(owner) => LockAttempt::Held { owner },
        })
    }

    async fn refresh_lock(
        &self,
        agent: &AgentId,
        owner: &LockOwner,
        ttl: Ttl,
    ) -> Result<bool, StateError> {
        let key = keys::lock(agent);
        let ttl = ttl.millis();
        let script = &self.inner.scripts.refresh;
        let refreshed: i64 = self
            .guarded("refresh script on", &key, |mut c| {
                let mut call = script.key(&key);
                call.arg(owner.as_str()).arg(ttl);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(refreshed == 1)
    }

    async fn release_lock(&self, agent: &AgentId, owner: &LockOwner) -> Result<bool, StateError> {
        let key = keys::lock(agent);
        let script = &self.inner.scripts.release;
        let released: i64 = self
            .guarded("release script on", &key, |mut c| {
                let mut call = script.key(&key);
                call.arg(owner.as_str());
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(released == 1)
    }

    async fn lock_owner(&self, agent: &AgentId) -> Result<Option<String>, StateError> {
        self.get(&keys::lock(agent)).await
    }

    async fn transition(&self, t: &Transition<'_>) -> Result<TransitionResult, StateError> {
        let (lock_ttl, heartbeat_ttl) = (t.lock_ttl.millis(), t.heartbeat_ttl.millis());
        let lock = keys::lock(t.agent);
        let errors = keys::errors(t.agent);
        let (heartbeat, state) = (keys::heartbeat(t.agent), keys::state(t.agent));
        let checkpoint = encode(&state, t.checkpoint)?;
        let script = &self.inner.scripts.transition;
        let (held, fields): (i64, HashMap<String, String>) = self
            .guarded("transition script on", &lock, |mut c| {
                let mut call = script.key(&lock);
                call.key(&heartbeat)
                    .key(&state)
                    .key(&errors)
                    .arg(t.owner.as_str())
                    .arg(lock_ttl)
                    .arg(now_ms())
                    .arg(heartbeat_ttl)
                    .arg(keys::CHECKPOINT_FIELD)
                    .arg(&checkpoint);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(TransitionResult {
            lock_held: held == 1,
            errors: ErrorCounts::from_fields(&errors, fields)?,
        })
    }

    async fn set_active_agent(&self, task: &TaskId, agent: &AgentId) -> Result<(), StateError> {
        self.set(&keys::active_agent(task), agent).await
    }

    async fn active_agent(&self, task: &TaskId) -> Result<Option<AgentId>, StateError> {
        let key = keys::active_agent(task);
        self.get(&key)
            .await?
            .map(|id| stored_id(&key, &id))
            .transpose()
    }

    async fn push_artifact(
        &self,
        task: &TaskId,
        artifact: &ArtifactRef,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let (list, index, names, usage) = (
            keys::artifacts(task),
            keys::artifact_index(task),
            keys::artifact_names(task),
            keys::artifact_usage(task),
        );
        let value = encode(&list, artifact)?;
        let script = self.inner.scripts.push_artifact.pick(once);
        let reply: Vec<String> = self
            .guarded("push_artifact script on", &list, |mut c| {
                let mut call = script.key(&list);
                call.key(&index)
                    .key(&names)
                    .key(&usage)
                    .arg(&artifact.name)
                    .arg(&value)
                    .arg(artifact.size)
                    .arg(quota.max_entries)
                    .arg(quota.max_bytes);
                with_receipt(&mut call, once);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        admission(&usage, quota, &reply, |_| Ok(()))
    }

    async fn artifact(&self, task: &TaskId, name: &str) -> Result<Option<ArtifactRef>, StateError> {
        let index = keys::artifact_index(task);
        let hash = index.as_str();
        let value: Option<String> = self
            .guarded(
                "HGET",
                hash,
                |mut c| async move { c.hget(hash, name).await },
            )
            .await?;
        decoded(&format!("{index}/{name}"), value)
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
        let (names, index) = (keys::artifact_names(task), keys::artifact_index(task));
        let start = after.map_or_else(|| "-".to_string(), |after| format!("({after}"));
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        let script = &self.inner.scripts.artifact_page;
        let (listed, refs): (Vec<String>, Vec<Option<String>>) = self
            .guarded("artifact_page script on", &names, |mut c| {
                let mut call = script.key(&names);
                call.key(&index).arg(&start).arg(count);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        listed
            .iter()
            .zip(refs.into_iter().chain(std::iter::repeat(None)))
            .map(|(name, json)| {
                let key = format!("{index}/{name}");
                match json {
                    Some(json) => decode(&key, &json),
                    None => Err(StateError::Corrupt {
                        key,
                        message: format!("`{names}` lists the name but the index has no reference"),
                    }),
                }
            })
            .collect()
    }

    async fn artifacts(&self, task: &TaskId) -> Result<Vec<ArtifactRef>, StateError> {
        let key = keys::artifacts(task);
        let list = key.as_str();
        let rows: Vec<String> = self
            .guarded("LRANGE", list, |mut c| async move {
                c.lrange(list, 0, -1).await
            })
            .await?;
        decode_all(&key, &rows)
    }

    /// One `MULTI`: `LPUSH` to the ledger, `HSET` of the index, then `PUBLISH` of the agent
    /// id. Publishing inside the transaction means subscribers hear of a revocation exactly
    /// when it is stored: never before (they would find nothing), never lost to a crash
    /// between the write and the publish.
    async fn record_revocation(&self, revocation: &Revocation) -> Result<(), StateError> {
        let agent = revocation.agent_id.as_str();
        let value = encode(keys::REVOCATIONS_LEDGER, revocation)?;
        let revocation_json = value.as_str();
        self.guarded("MULTI revocation of", agent, |mut c| {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .lpush(keys::REVOCATIONS_LEDGER, revocation_json)
                .ignore()
                .hset(keys::REVOCATIONS_BY_AGENT, agent, revocation_json)
                .ignore()
                .publish(REVOCATIONS_CHANNEL, agent)
                .ignore();
            async move { pipe.exec_async(&mut c).await }
        })
        .await
    }

    async fn revocation(&self, agent: &AgentId) -> Result<Option<Revocation>, StateError> {
        let field = agent.as_str();
        let value: Option<String> = self
            .guarded("HGET", keys::REVOCATIONS_BY_AGENT, |mut c| async move {
                c.hget(keys::REVOCATIONS_BY_AGENT, field).await
            })
            .await?;
        decoded(&format!("{}/{agent}", keys::REVOCATIONS_BY_AGENT), value)
    }

    async fn clear_revocation(&self, agent: &AgentId) -> Result<bool, StateError> {
        let field = agent.as_str();
        let removed: u64 = self
            .guarded("HDEL", keys::REVOCATIONS_BY_AGENT, |mut c| async move {
                c.hdel(keys::REVOCATIONS_BY_AGENT, field).await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn revocations(&self, limit: usize) -> Result<Vec<Revocation>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // `LRANGE` takes a signed end index; -1 is the end of the list.
        let end = isize::try_from(limit).map_or(-1, |limit| limit - 1);
        let rows: Vec<String> = self
            .guarded("LRANGE", keys::REVOCATIONS_LEDGER, |mut c| async move {
                c.lrange(keys::REVOCATIONS_LEDGER, 0, end).await
            })
            .await?;
        decode_all(keys::REVOCATIONS_LEDGER, &rows)
    }

    async fn forget_receipt(&self, run: &RunId) -> Result<(), StateError> {
        let key = keys::receipt(run.as_str());
        self.guarded("DEL", &key, |mut c| {
            let key = &key;
            async move { c.del::<_, ()>(key).await }
        })
        .await
    }

    async fn put_handoff(&self, handoff: &Handoff) -> Result<(), StateError> {
        let key = keys::handoff(&handoff.task_id);
        self.set(&key, &encode(&key, handoff)?).await
    }

    async fn handoff(&self, task: &TaskId) -> Result<Option<Handoff>, StateError> {
        let key = keys::handoff(task);
        decoded(&key, self.get(&key).await?)
    }

    async fn put_approval(&self, approval: &Approval) -> Result<(), StateError> {
        let key = keys::approval(&approval.task_id);
        self.set(&key, &encode(&key, approval)?).await
    }

    async fn approval(&self, task: &TaskId) -> Result<Option<Approval>, StateError> {
        let key = keys::approval(task);
        decoded(&key, self.get(&key).await?)
    }

    async fn decide_gate(
        &self,
        decision: &GateDecision,
    ) -> Result<Option<GateDecision>, StateError> {
        let key = keys::gate(decision.run.as_str(), &decision.stage, decision.round);
        let value = encode(&key, decision)?;
        let (k, v) = (key.as_str(), value.as_str());
        // `SET NX` is the one atomic step: the first decision wins on every host.
        let stored: Option<String> = self
            .guarded("SET", k, |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if stored.is_some() {
            return Ok(None);
        }
        decoded(&key, self.get(&key).await?)
    }

    async fn gate_decision(
        &self,
        run: &TaskId,
        stage: &str,
        round: u32,
    ) -> Result<Option<GateDecision>, StateError> {
        let key = keys::gate(run.as_str(), stage, round);
        decoded(&key, self.get(&key).await?)
    }

    async fn charge_tokens(&self, task: &TaskId, tokens: u64) -> Result<u64, StateError> {
        let key = keys::tokens(task);
        let by = i64::try_from(tokens).unwrap_or(i64::MAX);
        let counter = key.as_str();
        let spent: i64 = self
            .guarded("INCRBY", counter, |mut c| async move {
                c.incr(counter, by).await
            })
            .await?;
        Ok(u64::try_from(spent).unwrap_or(0))
    }

    async fn tokens_spent(&self, task: &TaskId) -> Result<u64, StateError> {
        let key = keys::tokens(task);
        match self.get(&key).await? {
            None => Ok(0),
            Some(value) => value.parse().map_err(|_| StateError::Corrupt {
                key,
                message: format!("holds `{value}`, expected a non-negative integer"),
            }),
        }
    }

    fn revocation_events(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.inner.events.subscribe())
    }

    async fn health(&self) -> Result<(), StateError> {
        self.guarded("PING", "", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    fn breaker(&self) -> Option<BreakerStatus> {
        Some(self.inner.breaker.status())
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
    /// `first` is the subscription `connect` established; a lazily opened store has none
    /// yet and subscribes here.
    async fn run(mut self, first: Option<Subscription>, mut stop: oneshot::Receiver<()>) {
        let mut subscription = match first {
            Some(subscription) => subscription,
            None => match self.subscribe(&mut stop).await {
                Some(subscription) => subscription,
                None => return,
            },
        };
        loop {
            if let Ended::Stopped = self.listen(&mut subscription, &mut stop).await {
                return;
            }
            tracing::warn!(
                location = %self.location,
                "lost the redis revocation subscription; resubscribing"
            );
            let Some(next) = self.subscribe(&mut stop).await else {
                return;
            };
            self.replay(subscription.ledger_len, next.ledger_len).await;
            subscription = next;
            tracing::info!(location = %self.location, "resubscribed to redis revocations");
        }
    }

    /// Subscribe with backoff until it works; `None` once the store is dropped.
    async fn subscribe(&mut self, stop: &mut oneshot::Receiver<()>) -> Option<Subscription> {
        let mut delay = RESUBSCRIBE_FIRST_DELAY;
        loop {
            tokio::select! {
                _ = &mut *stop => return None,
                () = tokio::time::sleep(delay) => {}
            }
            match Subscription::open(&self.client, &mut self.conn).await {
                Ok(next) => return Some(next),
                Err(error) => {
                    tracing::warn!(
                        location = %self.location,
                        %error,
                        retry_in = ?delay,
                        "cannot subscribe to redis revocations"
                    );
                    delay = (delay * 2).min(RESUBSCRIBE_MAX_DELAY);
                }
            }
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
                .filter(|agent| AgentId::new(agent).is_ok());
            match agent {
                Some(agent) => self.forward(agent),
                None => tracing::warn!("skipping a revocation record without an `agent_id`"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DragonflyDB runs a script only on the keys it declares: one that touches a key not
    /// passed in `KEYS` fails with "script tried accessing undeclared key" (unless the
    /// server runs with `--default_lua_flags=allow-undeclared-keys`). So the key of every
    /// `redis.call` in every script must be a `KEYS[n]`.
    #[test]
    fn scripts_touch_only_declared_keys() {
        let mut scripts = Scripts::code();
        scripts.extend(coordination::scripts());
        for (name, code) in &scripts {
            let (name, code) = (*name, code.as_str());
            let calls: Vec<&str> = code.split("redis.call(").skip(1).collect();
            assert!(!calls.is_empty(), "{name}");
            for call in calls {
                let args: Vec<&str> = call
                    .split(')')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .collect();
                assert!(
                    args.len() >= 2 && args[1].starts_with("KEYS[") && args[1].ends_with(']'),
                    "{name}: the key of `redis.call({call}` is not declared in KEYS"
                );
            }
        }
    }

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
