//! Backend health: one check per configured backend (state, secrets, llm), on demand
//! (`warden health`, [`Host::health`](crate::Host::health)) or periodically
//! ([`HostBuilder::health_interval`](crate::HostBuilder::health_interval),
//! [`Host::health_status`](crate::Host::health_status)). Each check reports the backend's
//! circuit breaker, when it has one; a check goes through that breaker like any call, so a
//! healthy check of a half-open circuit is the probe that closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::breaker::BreakerStatus;
use crate::llm::LlmProvider;
use crate::secrets::SecretBackend;
use crate::state::StateStore;

pub(crate) mod monitor;

/// How long one check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One backend's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `state`, `secrets` or `llm`.
    pub component: &'static str,
    /// The backend's name (`redis`, `vault`, `embedded`, `scripted`, …).
    pub backend: String,
    /// Whether the probe succeeded within the check timeout (5 s).
    pub healthy: bool,
    /// How long the probe took, in ms.
    pub latency_ms: f64,
    /// Why it is unhealthy; empty when healthy.
    pub detail: String,
    /// The backend's circuit breaker after the check; `None` for backends without one.
    pub breaker: Option<BreakerStatus>,
}

/// Every backend's answer.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// One check per configured backend: state, secrets, then llm if any.
    pub checks: Vec<Check>,
    /// When the checks ran (RFC 3339, UTC).
    pub checked_at: String,
}

impl HealthReport {
    /// Whether every check is healthy.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.healthy)
    }
}

async fn check<F, E>(
    component: &'static str,
    backend: String,
    probe: F,
    breaker: impl FnOnce() -> Option<BreakerStatus>,
) -> Check
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let (healthy, detail) = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(error)) => (false, error.to_string()),
        Err(_) => (
            false,
            format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        ),
    };
    Check {
        component,
        backend,
        healthy,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        detail,
        breaker: breaker(),
    }
}

/// Check each backend in turn.
pub(crate) async fn report_of(
    state: &Arc<dyn StateStore>,
    secrets: &Arc<dyn SecretBackend>,
    llm: Option<&Arc<dyn LlmProvider>>,
) -> HealthReport {
    let mut checks = vec![
        check("state", state.backend().to_string(), state.health(), || {
            state.breaker()
        })
        .await,
        check(
            "secrets",
            secrets.backend().to_string(),
            secrets.health(),
            || secrets.breaker(),
        )
        .await,
    ];
    if let Some(llm) = llm {
        checks.push(check("llm", llm.name().to_string(), llm.health(), || None).await);
    }
    HealthReport {
        checks,
        checked_at: crate::packet::now_rfc3339(),
    }
}
