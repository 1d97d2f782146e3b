//! CPU reservation: how many CPUs a build may use, and which.
//!
//! This is the stage's contract; the building blocks that keep it (the
//! host's topology, the CPU lock protocol, the cpuset sandbox and the
//! [`crate::cpus::Confined`] guard) are in [`crate::cpus`], and
//! [`crate::conformance::reserver`] checks a reserver against it.

use std::path::PathBuf;

use crate::context::StageContext;
use crate::error::Result;

/// What the host asks a reserver for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReserveRequest {
    /// Requested CPU count. `Some` is a contract the reserver must enforce
    /// or fail; `None` lets the reserver pick its default budget.
    pub cpu_cap: Option<usize>,
}

/// Keeps a reservation alive; dropping it releases it.
///
/// Implementations that hold both a sandbox and CPU locks must release the
/// sandbox first: a peer that sees the locks free must never find this
/// build's processes still pinned to those CPUs. [`crate::cpus::Confined`]
/// does so.
pub trait ReservationGuard: Send {}

impl<T: Send> ReservationGuard for T {}

/// A granted reservation. Held until the build finishes.
pub struct Reservation {
    /// CPUs the build may use (empty: no pinning).
    pub cpus: Vec<usize>,
    /// Memory nodes the build may use (empty: no binding).
    pub mems: Vec<usize>,
    /// `make -j` value.
    pub make_jobs: usize,
    /// `cgroup.procs` of the sandbox the build's processes must join (the
    /// host's runner writes each build process into it before exec).
    pub sandbox_procs: Option<PathBuf>,
    /// Released on drop.
    pub guard: Option<Box<dyn ReservationGuard>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("cpus", &self.cpus)
            .field("mems", &self.mems)
            .field("make_jobs", &self.make_jobs)
            .field("sandbox_procs", &self.sandbox_procs)
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

/// Stage 2: decide the build's CPU budget and hold it.
pub trait Reserver: Send + Sync {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation>;

    /// The lock files this reserver takes, for `ktstr locks` (see
    /// [`crate::lock_list`]). None by default.
    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        Ok(Vec::new())
    }
}

/// CPUs this process may run on (sched_getaffinity), at least 1.
pub fn allowed_cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
