//! The periodic health manager: a task that runs the backend checks every `interval`, keeps
//! the latest report for [`Host::health_status`](crate::Host::health_status) (read without
//! I/O), and reports a backend only when its health changes (healthy → unhealthy and back),
//! never per tick. Backends are assumed healthy until a check says otherwise.
//!
//! The task stops when its [`HealthMonitor`] is dropped, which happens with the host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::HealthReport;
use crate::ledger::{ActionRecord, Entry, Ledger, Subject};
use crate::llm::LlmProvider;
use crate::secrets::SecretBackend;
use crate::state::StateStore;
use crate::tier::Tier;

/// The agent id of the ledger rows the health manager writes.
pub const HEALTH_AGENT: &str = "warden-host";

/// One backend whose health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub component: &'static str,
    pub backend: String,
    pub healthy: bool,
    /// Why it is unhealthy; empty when it recovered.
    pub detail: String,
}

/// What the manager checks and where it reports changes.
#[async_trait]
pub(crate) trait Probe: Send + Sync + 'static {
    /// One round of checks.
    async fn check(&self) -> HealthReport;
    /// Called once per change of one backend's health.
    async fn changed(&self, change: &Change);
}

/// The running manager. Dropping it stops the task.
pub(crate) struct HealthMonitor {
    latest: Arc<Mutex<Option<HealthReport>>>,
    task: JoinHandle<()>,
    /// Dropped with the monitor: the task sees the channel close and returns.
    _stop: oneshot::Sender<()>,
}

impl HealthMonitor {
    /// Start checking every `interval` (the first round at once) on the current tokio
    /// runtime. `interval` must not be zero.
    pub fn spawn(interval: Duration, probe: impl Probe) -> HealthMonitor {
        let latest = Arc::new(Mutex::new(None));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(interval, probe, latest.clone(), stop_rx));
        HealthMonitor {
            latest,
            task,
            _stop: stop_tx,
        }
    }

    /// The latest complete round of checks, if one has finished.
    pub fn latest(&self) -> Option<HealthReport> {
        self.latest.lock().clone()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        // The closed stop channel ends the task at its next await; aborting also ends a
        // check in flight, so nothing outlives the host.
        self.task.abort();
    }
}

async fn run(
    interval: Duration,
    probe: impl Probe,
    latest: Arc<Mutex<Option<HealthReport>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    // After a slow round, wait a whole interval rather than checking in a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy: HashMap<(&'static str, String), bool> = HashMap::new();
    loop {
        let report = tokio::select! {
            _ = &mut stop => return,
            report = async {
                ticker.tick().await;
                probe.check().await
            } => report,
        };
        for check in &report.checks {
            let was = healthy
                .insert((check.component, check.backend.clone()), check.healthy)
                .unwrap_or(true);
            if was != check.healthy {
                let change = Change {
                    component: check.component,
                    backend: check.backend.clone(),
                    healthy: check.healthy,
                    detail: check.detail.clone(),
                };
                probe.changed(&change).await;
            }
        }
        *latest.lock() = Some(report);
    }
}

/// The host's probe: its backends, and its ledger for the change rows.
pub(crate) struct Backends {
    pub state: Arc<dyn StateStore>,
    pub secrets: Arc<dyn SecretBackend>,
    pub llm: Option<Arc<dyn LlmProvider>>,
    pub ledger: Ledger,
    pub host_id: String,
}

#[async_trait]
impl Probe for Backends {
    async fn check(&self) -> HealthReport {
        super::report_of(&self.state, &self.secrets, self.llm.as_ref()).await
    }

    /// One durable `backend.health` row: decision `unhealthy` (with the check's detail as
    /// the error) or `healthy`.
    async fn changed(&self, change: &Change) {
        let subject = Arc::new(Subject::new(
            HEALTH_AGENT,
            self.host_id.as_str(),
            Tier::Observer,
        ));
        let mut record = ActionRecord::new(
            subject,
            "backend.health",
            if change.healthy {
                "healthy"
            } else {
                "unhealthy"
            },
        )
        .details(format!("{} {}", change.component, change.backend));
        if change.healthy {
            tracing::info!(component = change.component, backend = %change.backend, "backend healthy again");
        } else {
            tracing::warn!(component = change.component, backend = %change.backend, detail = %change.detail, "backend unhealthy");
            record = record.failed("BACKEND_UNHEALTHY", change.detail.clone());
        }
        if let Err(error) = self
            .ledger
            .append_durable_async(Entry::Action(record))
            .await
        {
            tracing::error!(%error, "cannot record a backend health change");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::health::Check;

    /// A fake backend whose health follows a script, one entry per round (the last repeats).
    struct Scripted {
        script: Vec<bool>,
        rounds: AtomicUsize,
        changes: Mutex<Vec<Change>>,
    }

    impl Scripted {
        fn new(script: &[bool]) -> Arc<Scripted> {
            Arc::new(Scripted {
                script: script.to_vec(),
                rounds: AtomicUsize::new(0),
                changes: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl Probe for Arc<Scripted> {
        async fn check(&self) -> HealthReport {
            let round = self.rounds.fetch_add(1, Ordering::SeqCst);
            let healthy = self.script[round.min(self.script.len() - 1)];
            HealthReport {
                checks: vec![Check {
                    component: "state",
                    backend: "fake".into(),
                    healthy,
                    latency_ms: 0.0,
                    detail: if healthy {
                        String::new()
                    } else {
                        format!("down at round {round}")
                    },
                    breaker: None,
                }],
                checked_at: round.to_string(),
            }
        }

        async fn changed(&self, change: &Change) {
            self.changes.lock().push(change.clone());
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn only_changes_are_reported_and_the_latest_round_is_kept() {
        let probe = Scripted::new(&[true, true, false, false, false, true, true]);
        let monitor = HealthMonitor::spawn(Duration::from_millis(5), probe.clone());
        until("8 rounds", || probe.rounds.load(Ordering::SeqCst) >= 8).await;

        let changes = probe.changes.lock().clone();
        let summary: Vec<(bool, &str)> = changes
            .iter()
            .map(|c| (c.healthy, c.detail.as_str()))
            .collect();
        assert_eq!(summary, [(false, "down at round 2"), (true, "")]);
        assert_eq!(changes[0].component, "state");
        assert_eq!(changes[0].backend, "fake");

        let latest = monitor.latest().unwrap();
        assert!(latest.healthy());
        assert!(latest.checked_at.parse::<usize>().unwrap() >= 6);
    }

    #[tokio::test]
    async fn a_backend_down_from_the_start_is_reported_once() {
        let probe = Scripted::new(&[false]);
        let monitor = HealthMonitor::spawn(Duration::from_millis(5), probe.clone());
        until("5 rounds", || probe.rounds.load(Ordering::SeqCst) >= 5).await;
        assert_eq!(probe.changes.lock().len(), 1);
        assert!(!monitor.latest().unwrap().healthy());
    }

    #[tokio::test]
    async fn dropping_the_monitor_stops_the_task() {
        let probe = Scripted::new(&[true]);
        let monitor = HealthMonitor::spawn(Duration::from_millis(5), probe.clone());
        until("a round", || probe.rounds.load(Ordering::SeqCst) >= 2).await;
        drop(monitor);
        // The task owned the other reference to the probe; it is released once it ended.
        until("the task to end", || Arc::strong_count(&probe) == 1).await;
        let rounds = probe.rounds.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            probe.rounds.load(Ordering::SeqCst),
            rounds,
            "no round after the drop"
        );
    }
}
