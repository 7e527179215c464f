//! Circuit breakers for networked backends (Redis state, Vault secrets).
//!
//! A breaker counts consecutive calls that failed because the backend is unreachable or
//! overloaded (a refused connection, a timeout, an HTTP 5xx), not calls the backend answered
//! with an error of its own: a server that says "no" is up.
//!
//! ```text
//!            failure_threshold consecutive failures
//!   closed ───────────────────────────────────────────▶ open ◀───────┐
//!     ▲                                                  │           │ the probe fails
//!     │ the probe succeeds                open_for passed│           │
//!     └──────────────────────────── half-open ◀──────────┘───────────┘
//! ```
//!
//! While open, calls fail at once with [`CircuitOpen`], without touching the network. Once
//! `open_for` has passed, the next call (an agent's, or the periodic health check's) is let
//! through as the one probe; every other call fails fast until the probe's outcome closes the
//! circuit again or reopens it for another `open_for`.
//!
//! Defaults ([`BreakerConfig::default`]): 5 consecutive failures open the circuit for 5 s.

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Default consecutive failures that open a circuit.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default time an open circuit fails calls fast before it lets one probe through.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(5);
/// Longest accepted `open_for`: a circuit that stays open for a day is a misconfiguration.
pub const MAX_OPEN_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// Thresholds of a [`CircuitBreaker`]: `[breaker]` in `warden.toml`, or
/// [`RedisOptions::breaker`](crate::state::redis::RedisOptions::breaker) and
/// [`VaultConfig::breaker`](crate::secrets::VaultConfig::breaker) for embedders.
///
/// ```toml
/// [breaker]
/// failure_threshold = 5   # consecutive failed calls that open the circuit
/// open_for = "5s"         # how long it then fails calls fast before one probe
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawBreakerConfig")]
pub struct BreakerConfig {
    failure_threshold: u32,
    open_for: Duration,
}

/// Why a [`BreakerConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerConfigError {
    /// `failure_threshold` is 0.
    #[error("breaker `failure_threshold` is 0: expected at least 1 consecutive failure")]
    ZeroThreshold,
    /// `open_for` is outside 1 ms to 24 h; the duration as given.
    #[error("breaker `open_for` is `{0}`: expected from 1ms to 24h, e.g. `5s`")]
    OpenFor(String),
    /// `open_for` is not a duration; the text as written.
    #[error("breaker `open_for` is `{0}`, not a duration: expected e.g. `5s`, `500ms` or `1m`")]
    Unparsable(String),
}

impl BreakerConfig {
    /// `failure_threshold` consecutive failures (at least 1) open the circuit for
    /// `open_for` (1 ms to 24 h).
    pub fn new(failure_threshold: u32, open_for: Duration) -> Result<Self, BreakerConfigError> {
        if failure_threshold == 0 {
            return Err(BreakerConfigError::ZeroThreshold);
        }
        if open_for < Duration::from_millis(1) || open_for > MAX_OPEN_FOR {
            return Err(BreakerConfigError::OpenFor(
                humantime::format_duration(open_for).to_string(),
            ));
        }
        Ok(BreakerConfig {
            failure_threshold,
            open_for,
        })
    }

    /// Consecutive failures that open the circuit.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// How long an open circuit fails calls fast before it lets one probe through.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            open_for: DEFAULT_OPEN_FOR,
        }
    }
}

/// `[breaker]` as written: `open_for` is a humantime string (`"5s"`, `"1m 30s"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakerConfig {
    #[serde(default = "default_threshold")]
    failure_threshold: u32,
    #[serde(default)]
    open_for: Option<String>,
}

fn default_threshold() -> u32 {
    DEFAULT_FAILURE_THRESHOLD
}

impl TryFrom<RawBreakerConfig> for BreakerConfig {
    type Error = BreakerConfigError;

    fn try_from(raw: RawBreakerConfig) -> Result<Self, Self::Error> {
        let open_for = match raw.open_for {
            Some(text) => humantime::parse_duration(text.trim())
                .map_err(|_| BreakerConfigError::Unparsable(text))?,
            None => DEFAULT_OPEN_FOR,
        };
        BreakerConfig::new(raw.failure_threshold, open_for)
    }
}

/// Where a circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast until `open_for` has passed.
    Open,
    /// The next call (or the one in flight) is the probe that decides.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A breaker's state for health output, read without any I/O.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerStatus {
    /// Where the circuit is.
    pub state: BreakerState,
    /// Failed calls in a row (reset by any success).
    pub consecutive_failures: u32,
    /// The configured [`BreakerConfig::failure_threshold`].
    pub failure_threshold: u32,
    /// The configured [`BreakerConfig::open_for`], in ms.
    pub open_for_ms: u64,
    /// While open: how long until a probe is let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// The last failure, while the count is not zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl fmt::Display for BreakerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_in_ms) {
            (BreakerState::Open, Some(ms)) => write!(
                f,
                "open (retry in {})",
                short_duration(Duration::from_millis(ms))
            ),
            (BreakerState::Closed, _) if self.consecutive_failures > 0 => write!(
                f,
                "closed ({}/{} failures)",
                self.consecutive_failures, self.failure_threshold
            ),
            (state, _) => write!(f, "{state}"),
        }
    }
}

/// A call refused by an open (or probing) circuit: it was not attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CircuitOpen {
    /// Consecutive failures behind the open circuit.
    pub failures: u32,
    /// Until a probe is let through; zero while a probe is in flight.
    pub retry_in: Duration,
    /// A half-open circuit whose one probe is in flight.
    pub probing: bool,
}

impl CircuitOpen {
    fn describe(&self) -> String {
        let failures = match self.failures {
            1 => "1 consecutive failure".to_string(),
            n => format!("{n} consecutive failures"),
        };
        if self.probing {
            format!("circuit half-open after {failures}; a probe call is testing the backend")
        } else {
            format!(
                "circuit open after {failures}; retrying in {}",
                short_duration(self.retry_in)
            )
        }
    }
}

/// `3s` (rounded up) from a second on, `250ms` below.
fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 {
        format!("{}s", ms.div_ceil(1000))
    } else {
        format!("{ms}ms")
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive_failures: u32,
    last_failure: Option<String>,
}

/// One backend's circuit breaker; see the module docs. Cheap to query, safe to share.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// What the breaker guards, for logs: `redis state store at redis://…`.
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker; `name` says what it guards, in logs.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive_failures: 0,
                last_failure: None,
            }),
        }
    }

    /// The thresholds it was made with.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Permission for one call, or why the call must not be attempted. The permit's
    /// [`Permit::succeeded`] or [`Permit::failed`] reports the outcome; a permit dropped
    /// without either (a cancelled call) reports nothing.
    pub fn permit(&self) -> Result<Permit<'_>, CircuitOpen> {
        let mut inner = self.inner.lock();
        let failures = inner.consecutive_failures;
        let probe = match inner.phase {
            Phase::Closed => false,
            Phase::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(CircuitOpen {
                        failures,
                        retry_in: until - now,
                        probing: false,
                    });
                }
                inner.phase = Phase::HalfOpen { probing: true };
                true
            }
            Phase::HalfOpen { probing: false } => {
                inner.phase = Phase::HalfOpen { probing: true };
                true
            }
            Phase::HalfOpen { probing: true } => {
                return Err(CircuitOpen {
                    failures,
                    retry_in: Duration::ZERO,
                    probing: true,
                });
            }
        };
        if probe {
            tracing::info!(backend = %self.name, "circuit half-open: probing the backend");
        }
        Ok(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// The current state, without I/O. An open circuit whose `open_for` has passed reads
    /// as half-open: the next call is the probe.
    pub fn status(&self) -> BreakerStatus {
        let inner = self.inner.lock();
        let (state, retry_in) = match inner.phase {
            Phase::Closed => (BreakerState::Closed, None),
            Phase::Open { until } => {
                let now = Instant::now();
                if now < until {
                    (BreakerState::Open, Some(until - now))
                } else {
                    (BreakerState::HalfOpen, None)
                }
            }
            Phase::HalfOpen { .. } => (BreakerState::HalfOpen, None),
        };
        BreakerStatus {
            state,
            consecutive_failures: inner.consecutive_failures,
            failure_threshold: self.config.failure_threshold,
            open_for_ms: millis(self.config.open_for),
            retry_in_ms: retry_in.map(|d| millis(d).max(1)),
            last_failure: inner.last_failure.clone(),
        }
    }

    fn succeeded(&self) {
        let mut inner = self.inner.lock();
        let was_open = !matches!(inner.phase, Phase::Closed);
        inner.phase = Phase::Closed;
        inner.consecutive_failures = 0;
        inner.last_failure = None;
        if was_open {
            tracing::info!(backend = %self.name, "circuit closed: the backend answers again");
        }
    }

    fn failed(&self, probe: bool, reason: String) {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let open = match inner.phase {
            Phase::Closed => inner.consecutive_failures >= self.config.failure_threshold,
            // Only the probe decides a half-open circuit; a call admitted before the
            // circuit opened that fails now adds to the count and nothing else.
            Phase::HalfOpen { .. } => probe,
            Phase::Open { .. } => false,
        };
        if open {
            inner.phase = Phase::Open {
                until: Instant::now() + self.config.open_for,
            };
            tracing::warn!(
                backend = %self.name,
                failures = inner.consecutive_failures,
                open_for = ?self.config.open_for,
                error = %reason,
                "circuit open: failing calls fast"
            );
        }
        inner.last_failure = Some(reason);
    }

    fn abandoned(&self, probe: bool) {
        if !probe {
            return;
        }
        let mut inner = self.inner.lock();
        if let Phase::HalfOpen { probing: true } = inner.phase {
            inner.phase = Phase::HalfOpen { probing: false };
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Permission for one call through a [`CircuitBreaker`].
#[derive(Debug)]
#[must_use = "report the call's outcome with `succeeded` or `failed`"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Whether this call is the half-open circuit's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The backend answered (even with an error of its own): closes the circuit.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.succeeded();
    }

    /// The backend could not be reached or did not answer in time.
    pub fn failed(mut self, reason: impl fmt::Display) {
        self.reported = true;
        self.breaker.failed(self.probe, reason.to_string());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_for_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test backend",
            BreakerConfig::new(threshold, Duration::from_millis(open_for_ms)).unwrap(),
        )
    }

    fn fail(b: &CircuitBreaker, n: u32) {
        for _ in 0..n {
            b.permit().unwrap().failed("connection refused");
        }
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_success_resets_the_count() {
        let b = breaker(3, 60_000);
        fail(&b, 2);
        assert_eq!(b.status().state, BreakerState::Closed);
        assert_eq!(b.status().consecutive_failures, 2);
        b.permit().unwrap().succeeded();
        assert_eq!(b.status().consecutive_failures, 0);
        assert_eq!(b.status().last_failure, None);

        fail(&b, 3);
        let status = b.status();
        assert_eq!(status.state, BreakerState::Open);
        assert_eq!(status.last_failure.as_deref(), Some("connection refused"));
        assert!(status.retry_in_ms.unwrap() > 59_000, "{status:?}");
        let refused = b.permit().unwrap_err();
        assert_eq!(refused.failures, 3);
        assert!(!refused.probing);
        assert_eq!(
            refused.to_string(),
            "circuit open after 3 consecutive failures; retrying in 60s"
        );
    }

    #[test]
    fn after_open_for_one_probe_decides() {
        let b = breaker(1, 30);
        fail(&b, 1);
        assert!(b.permit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.status().state, BreakerState::HalfOpen);

        // One probe at a time; the others fail fast.
        let probe = b.permit().unwrap();
        assert!(probe.is_probe());
        let busy = b.permit().unwrap_err();
        assert!(busy.probing);
        assert!(
            busy.to_string()
                .starts_with("circuit half-open after 1 consecutive failure;")
        );

        // A failed probe reopens for another `open_for`.
        probe.failed("still down");
        assert_eq!(b.status().state, BreakerState::Open);
        assert_eq!(b.status().consecutive_failures, 2);
        assert!(b.permit().is_err());

        std::thread::sleep(Duration::from_millis(40));
        b.permit().unwrap().succeeded();
        let status = b.status();
        assert_eq!(status.state, BreakerState::Closed);
        assert_eq!(status.consecutive_failures, 0);
        assert!(!b.permit().unwrap().is_probe());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let b = breaker(1, 1);
        fail(&b, 1);
        std::thread::sleep(Duration::from_millis(5));
        drop(b.permit().unwrap());
        assert_eq!(b.status().state, BreakerState::HalfOpen);
        assert!(b.permit().unwrap().is_probe());
    }

    #[test]
    fn a_late_failure_of_a_call_admitted_while_closed_does_not_decide_a_half_open_circuit() {
        let b = breaker(1, 1);
        let early = b.permit().unwrap();
        fail(&b, 1);
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.permit().unwrap();
        early.failed("late");
        assert_eq!(b.status().state, BreakerState::HalfOpen);
        probe.succeeded();
        assert_eq!(b.status().state, BreakerState::Closed);
    }

    #[test]
    fn configs_are_validated_and_read_from_toml() {
        assert_eq!(
            BreakerConfig::new(0, DEFAULT_OPEN_FOR)
                .unwrap_err()
                .to_string(),
            "breaker `failure_threshold` is 0: expected at least 1 consecutive failure"
        );
        assert_eq!(
            BreakerConfig::new(1, Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "breaker `open_for` is `0s`: expected from 1ms to 24h, e.g. `5s`"
        );
        let parsed: BreakerConfig =
            toml::from_str("failure_threshold = 3\nopen_for = \"1m 30s\"").unwrap();
        assert_eq!(
            parsed,
            BreakerConfig::new(3, Duration::from_secs(90)).unwrap()
        );
        let defaults: BreakerConfig = toml::from_str("").unwrap();
        assert_eq!(defaults, BreakerConfig::default());
        assert_eq!(defaults.failure_threshold(), 5);
        assert_eq!(defaults.open_for(), Duration::from_secs(5));
        let err = toml::from_str::<BreakerConfig>("open_for = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("breaker `open_for` is `soon`, not a duration"),
            "{err}"
        );
        let err = toml::from_str::<BreakerConfig>("threshold = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `threshold`"), "{err}");
    }

    #[test]
    fn status_reads_for_people() {
        let b = breaker(5, 3_000);
        assert_eq!(b.status().to_string(), "closed");
        fail(&b, 2);
        assert_eq!(b.status().to_string(), "closed (2/5 failures)");
        fail(&b, 3);
        assert_eq!(b.status().to_string(), "open (retry in 3s)");
        assert_eq!(short_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(short_duration(Duration::from_millis(2001)), "3s");
    }
}
