//! Fault points: where the exactly-once tests kill the host (cargo feature `fault-points`,
//! for tests only; without it every point compiles to nothing).
//!
//! `WARDEN_FAULT_KILL=before:<n>` sends the process SIGKILL just before the body of its
//! `n`th live capability call runs (every record before an effect is committed by then);
//! `after:<n>` just after that call's records were handed to the ledger (committed, for an
//! effect), before the guest sees its answer. Calls are counted per process, from 1.

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

    pub(crate) fn point(when: When) {
        let Some((kill_when, at)) = plan() else {
            return;
        };
        let call = match when {
            When::Before => CALLS.fetch_add(1, Ordering::SeqCst) + 1,
            When::After => CALLS.load(Ordering::SeqCst),
        };
        if when == kill_when && call == at {
            // A real SIGKILL: no destructor, no flush, no exit handler runs.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        }
    }
}

#[cfg(feature = "fault-points")]
pub(crate) use armed::point;

/// Without the feature there is no fault point.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn point(_when: When) {}
