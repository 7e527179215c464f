//! Backend health: one check per configured backend (state, secrets, llm), on demand
//! (`warden health`, [`Host::health`](crate::Host::health)).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::Services;

/// How long one check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One backend's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `state`, `secrets` or `llm`.
    pub component: &'static str,
    /// The backend's name (`redis`, `vault`, `embedded`, `scripted`, …).
    pub backend: String,
    pub healthy: bool,
    pub latency_ms: f64,
    /// Why it is unhealthy; empty when healthy.
    pub detail: String,
}

/// Every backend's answer.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub checks: Vec<Check>,
}

impl HealthReport {
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.healthy)
    }
}

async fn check<F, E>(component: &'static str, backend: String, probe: F) -> Check
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
    }
}

pub(crate) async fn report(services: &Services) -> HealthReport {
    let mut checks = vec![
        check(
            "state",
            services.state.backend().to_string(),
            services.state.health(),
        )
        .await,
        check(
            "secrets",
            services.secrets.backend().to_string(),
            services.secrets.health(),
        )
        .await,
    ];
    if let Some(llm) = &services.llm {
        checks.push(check("llm", llm.name().to_string(), llm.health()).await);
    }
    HealthReport { checks }
}
