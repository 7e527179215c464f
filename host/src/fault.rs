//! Fault points: where the exactly-once tests kill the host (cargo feature `fault-points`,
//! for tests only; without it every point compiles to nothing).
//!
//! `WARDEN_FAULT_KILL=before:<n>` sends the process SIGKILL just before the body of its
//! `n`th live capability call runs (every record before an effect is committed by then);
//! `after:<n>` just after that call's records were handed to the ledger (committed, for an
//! effect), before the guest sees its answer. Calls are counted per process, from 1.
//!
//! The kill lands at a boundary of every call in flight: with several agents in one process
//! (an orchestrated task) it waits until no other agent is inside a host effect, between the
//! state store's commit and the ledger's. That window is a known gap (the effect and its
//! record are in two stores), not what these points prove.

/// Where in a call a fault point sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Before the call's body runs.
    Before,
    /// After its records were handed to the ledger.
    After,
}

#[cfg(feature = "fault-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::When;

    static CALLS: AtomicU64 = AtomicU64::new(0);
    static IN_EFFECT: AtomicU64 = AtomicU64::new(0);

    /// A host effect in flight, from its body to its record.
    pub(crate) struct Effect(());

    impl Effect {
        /// Call `op`'s, if it is an effect.
        pub(crate) fn begin(op: &str) -> Option<Effect> {
            crate::journal::is_effect(op).then(Effect::host_step)
        }

        /// One of the host's own effects (an artifact it writes).
        pub(crate) fn host_step() -> Effect {
            IN_EFFECT.fetch_add(1, Ordering::SeqCst);
            Effect(())
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
                "after" => When::After,
                _ => return None,
            };
            Some((when, n.parse().ok()?))
        })
    }

    pub(crate) async fn point(when: When) {
        let Some((kill_when, at)) = plan() else {
            return;
        };
        let call = match when {
            When::Before => CALLS.fetch_add(1, Ordering::SeqCst) + 1,
            When::After => CALLS.load(Ordering::SeqCst),
        };
        if when == kill_when && call == at {
            // Every other call in flight at a boundary too (bounded: a stuck effect does not
            // keep the process alive).
            for _ in 0..5_000 {
                if IN_EFFECT.load(Ordering::SeqCst) == 0 {
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
pub(crate) use armed::{Effect, point};

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) async fn point(_when: When) {}

/// A host effect in flight, from its body to its record: a kill waits for its end. Without
/// the feature, nothing.
#[cfg(not(feature = "fault-points"))]
pub(crate) struct Effect;

#[cfg(not(feature = "fault-points"))]
impl Effect {
    #[inline(always)]
    pub(crate) fn begin(_op: &str) -> Option<Effect> {
        None
    }

    #[inline(always)]
    pub(crate) fn host_step() -> Effect {
        Effect
    }

    #[inline(always)]
    pub(crate) fn end(_effect: Option<Effect>) {}
}
