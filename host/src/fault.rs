//! Fault points: where the exactly-once tests kill the host (cargo feature `fault-points`,
//! for tests only; without it every point compiles to nothing).
//!
//! `WARDEN_FAULT_KILL=before:<n>` sends the process SIGKILL just before the body of its
//! `n`th live capability call runs (every record before an effect is committed by then);
//! `inside:<n>` just after the body ran (a write is committed in the state store, a tool has
//! run) and before its record is handed to the ledger — the window a write's receipt
//! ([`Once`](crate::state::Once)) closes and a tool's intent marks; `after:<n>` just after
//! that call's records were handed to the ledger (committed, for an effect), before the guest
//! sees its answer. Calls are counted per process, from 1.
//!
//! `pipeline:<n>` kills the host just after the `n`th pipeline event it records (a stage's
//! start, a run's end, a gate opening …) is committed, before the next step.
//!
//! With several agents in one process (an orchestrated task) the kill lands wherever the
//! others are, except inside a tool run: it waits (at most 5 s) until none is running, since
//! an interrupted tool needs an operator's decision to resume, which a task test does not
//! make.

#[cfg(feature = "fault-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Where in a call a fault point sits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum When {
        /// Before the call's body runs.
        Before,
        /// After its body ran, before its records were handed to the ledger.
        Inside,
        /// After its records were handed to the ledger.
        After,
        /// After a pipeline event was recorded.
        Pipeline,
    }

    static CALLS: AtomicU64 = AtomicU64::new(0);
    static PIPELINE_EVENTS: AtomicU64 = AtomicU64::new(0);
    static IN_EFFECT: AtomicU64 = AtomicU64::new(0);

    /// An external effect in flight (a tool run), from its body to its record.
    pub(crate) struct Effect(());

    impl Effect {
        /// Call `op`'s, if it is an external effect.
        pub(crate) fn begin(op: &str) -> Option<Effect> {
            crate::journal::intent_of(op).map(|_| {
                IN_EFFECT.fetch_add(1, Ordering::SeqCst);
                Effect(())
            })
        }

        /// The effect's record was handed to the ledger (a cancelled call ends it by drop).
        pub(crate) fn end(effect: Option<Effect>) {
            drop(effect);
        }
    }

    impl Drop for Effect {
        fn drop(&mut self) {
            IN_EFFECT.fetch_sub(1, Ordering::SeqCst);
        }
    }
    static PLAN: OnceLock<Option<(When, u64)>> = OnceLock::new();

    fn plan() -> Option<(When, u64)> {
        *PLAN.get_or_init(|| {
            let value = std::env::var("WARDEN_FAULT_KILL").ok()?;
            let (when, n) = value.split_once(':')?;
            let when = match when {
                "before" => When::Before,
                "inside" => When::Inside,
                "after" => When::After,
                "pipeline" => When::Pipeline,
                _ => return None,
            };
            Some((when, n.parse().ok()?))
        })
    }

    /// Before a live call's body: its number (from 1, per process), after a kill at
    /// `before:<n>`.
    pub(crate) async fn before() -> u64 {
        if plan().is_none() {
            return 0;
        }
        let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        kill_at(When::Before, call, 0).await;
        call
    }

    /// After call `call`'s body, before its records (`inside:<n>`); `effect` is its own tool
    /// run, if it is one (not waited for).
    pub(crate) async fn inside(call: u64, effect: &Option<Effect>) {
        kill_at(When::Inside, call, u64::from(effect.is_some())).await;
    }

    /// After call `call`'s records were handed to the ledger (`after:<n>`).
    pub(crate) async fn after(call: u64) {
        kill_at(When::After, call, 0).await;
    }

    /// After a pipeline event was recorded (`pipeline:<n>`).
    pub(crate) async fn pipeline_event() {
        if plan().is_some_and(|(when, _)| when == When::Pipeline) {
            let n = PIPELINE_EVENTS.fetch_add(1, Ordering::SeqCst) + 1;
            kill_at(When::Pipeline, n, 0).await;
        }
    }

    /// SIGKILL if the plan names `when` of `call`, once no tool run but `own` is in flight.
    async fn kill_at(when: When, call: u64, own: u64) {
        let Some((kill_when, at)) = plan() else {
            return;
        };
        if when == kill_when && call == at {
            // No other agent's tool mid-run (bounded: a stuck tool does not keep the process
            // alive).
            for _ in 0..5_000 {
                if IN_EFFECT.load(Ordering::SeqCst) <= own {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // A real SIGKILL: no destructor, no flush, no exit handler runs.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        }
    }
}

#[cfg(feature = "fault-points")]
pub(crate) use armed::{Effect, after, before, inside, pipeline_event};

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) async fn before() -> u64 {
    0
}

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) async fn inside(_call: u64, _effect: &Option<Effect>) {}

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) async fn after(_call: u64) {}

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) async fn pipeline_event() {}

/// An external effect in flight, from its body to its record: a kill waits for its end.
/// Without the feature, nothing.
#[cfg(not(feature = "fault-points"))]
pub(crate) struct Effect;

#[cfg(not(feature = "fault-points"))]
impl Effect {
    #[inline(always)]
    pub(crate) fn begin(_op: &str) -> Option<Effect> {
        None
    }

    #[inline(always)]
    pub(crate) fn end(_effect: Option<Effect>) {}
}
