//! Memory, table and instance limits for one agent's store, and how a trap at the cap of its
//! resource table is told apart.

use wasmtime::ResourceLimiter;

/// Which limit a guest ran into first, kept so a trap can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Memory { limit: u64, desired: u64 },
    Table { limit: u64, desired: u64 },
}

/// Caps from the tier table (tightened by the packet). Growth past a cap is refused, not
/// trapped: the guest sees `memory.grow` fail, exactly as on a machine out of memory.
#[derive(Debug)]
pub struct GuestLimits {
    pub memory_bytes: u64,
    pub table_elements: u64,
    pub instances: usize,
    /// The first refusal, if any.
    pub hit: Option<LimitHit>,
}

impl GuestLimits {
    pub fn new(memory_bytes: u64, table_elements: u64, instances: u32) -> GuestLimits {
        GuestLimits {
            memory_bytes,
            table_elements,
            instances: instances as usize,
            hit: None,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_bytes {
            self.hit.get_or_insert(LimitHit::Memory {
                limit: self.memory_bytes,
                desired,
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.table_elements {
            self.hit.get_or_insert(LimitHit::Table {
                limit: self.table_elements,
                desired,
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances.saturating_mul(4)
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

/// Why the guest stopped running inside a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The agent was revoked while it ran.
    Revoked,
    /// The phase's cpu time ran out.
    CpuDeadline,
    /// The phase's (or the run's) wall-clock deadline passed.
    WallDeadline,
    /// The run's journal halted it: a replay diverged or reached the end of its record, or
    /// the journal is full.
    Halted,
}

/// Per-phase deadlines, checked on every epoch tick while the guest executes and by host
/// calls that wait (a `receive` never waits past `deadline`).
#[derive(Debug)]
pub struct Meter {
    /// Epoch ticks the guest has run in this phase.
    pub cpu_ticks: u64,
    /// Ticks it may run.
    pub cpu_limit_ticks: u64,
    /// When the phase's wall-clock time is up.
    pub deadline: std::time::Instant,
    /// Why the guest was interrupted, once it was.
    pub interrupt: Option<Interrupt>,
}

impl Meter {
    /// A meter with no cpu limit yet and the given wall-clock deadline.
    pub fn new(deadline: std::time::Instant) -> Meter {
        Meter {
            cpu_ticks: 0,
            cpu_limit_ticks: u64::MAX,
            deadline,
            interrupt: None,
        }
    }
}

/// Whether a trap is a host call refused because the store's resource table is at its cap
/// (`wasi_resources`): wasmtime-wasi traps when it cannot push a new resource.
pub fn resource_table_full(trap: &wasmtime::Error) -> bool {
    use wasmtime::component::ResourceTableError;
    let full = |e: &ResourceTableError| matches!(e, ResourceTableError::Full);
    trap.downcast_ref().is_some_and(full)
        || trap
            .chain()
            .any(|cause| cause.downcast_ref().is_some_and(full))
}
