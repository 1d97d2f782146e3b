//! Reservation building blocks: everything a reserver needs except the
//! decision of *which* CPUs to take.
//!
//! - [`topology`]: the host's CPUs as sysfs describes them (LLCs, SMT
//!   cores, NUMA nodes, online), and [`allowed_cpus`], the affinity mask.
//! - [`locks`]: the lock protocol every ktstr (and test runner) on a host
//!   shares, per-LLC and per-CPU lock files with a mode per kind of holder.
//! - [`sandbox`]: the cpuset cgroup (v2 or v1) the build's processes join
//!   through the runner ([`Reservation::sandbox_procs`]), and the sweep of
//!   sandboxes whose ktstr died.
//! - [`Confined`]: the guard a reserver returns, which removes the sandbox
//!   before it releases the locks.
//!
//! A policy that has chosen its CPUs calls [`Host::confine`] and is done;
//! one that plans around busy LLCs (the built-in `llc`) uses the pieces.
//! The model is described in docs/reservation.md.

pub mod locks;
pub mod sandbox;
pub mod topology;

use std::path::PathBuf;

use crate::lock::FileLock;
use crate::paths;
use crate::prelude::*;

pub use locks::{CpuLock, HolderKind};
pub use sandbox::{Hierarchy, Sandbox};
pub use topology::{CpuSet, Llc, Topology, format_cpulist, parse_cpulist};

/// What to tell the user when the CPUs cannot be confined.
pub const REMEDIES: &str = "run ktstr as root; or in a cgroup delegated to you, e.g. \
    `systemd-run --user --scope -p Delegate=yes ktstr build ...`; or build without a CPU \
    reservation: `--reserver none`, or KTSTR_BYPASS_LLC_LOCKS=1 (not with --cpu-cap); or \
    leave out --cpu-cap to build best-effort";

/// CPUs this process may run on (sched_getaffinity).
pub fn allowed_cpus() -> Result<CpuSet> {
    use nix::sched::{CpuSet as NixSet, sched_getaffinity};
    let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(|e| {
        StageError::new(ErrorKind::Io, "read this process's CPU affinity")
            .caused_by(std::io::Error::from(e))
    })?;
    Ok((0..NixSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// The CPUs cannot be confined: fatal for an explicit cap (a contract,
/// `explicit`), one warning for a default budget of `want` CPUs, saying
/// `what_happens` instead.
pub fn degrade(
    explicit: bool,
    want: usize,
    cx: &StageContext,
    problem: StageError,
    what_happens: &str,
) -> Result<()> {
    if explicit {
        let kind = match problem.kind {
            ErrorKind::Io => ErrorKind::Io,
            _ => ErrorKind::Unsupported,
        };
        let mut e = StageError::new(
            kind,
            format!("--cpu-cap {want} cannot be enforced: {}", problem.message),
        );
        e.causes = problem.causes;
        Err(e.with_hint(REMEDIES))
    } else {
        cx.progress.warn(&format!(
            "CPU reservation is best-effort: {problem}; {what_happens}. To enforce it: {REMEDIES}"
        ));
        Ok(())
    }
}

/// Keeps a reservation: the sandbox is removed before the locks are
/// released, so a peer that sees the CPUs free never finds this build's
/// processes still confined to them.
#[derive(Debug)]
pub struct Confined {
    sandbox: Option<Sandbox>,
    locks: Vec<FileLock>,
}

impl Confined {
    /// Hold `locks` and (when the host could confine) `sandbox`.
    pub fn new(sandbox: Option<Sandbox>, locks: Vec<FileLock>) -> Self {
        Self { sandbox, locks }
    }

    /// The sandbox's `cgroup.procs`, for [`Reservation::sandbox_procs`].
    pub fn sandbox_procs(&self) -> Option<PathBuf> {
        self.sandbox.as_ref().map(Sandbox::procs)
    }

    /// The reservation this guard keeps: `make -jN` with N = `cpus.len()`.
    pub fn into_reservation(self, cpus: Vec<usize>, mems: Vec<usize>) -> Reservation {
        Reservation {
            make_jobs: cpus.len().max(1),
            cpus,
            mems,
            sandbox_procs: self.sandbox_procs(),
            guard: Some(Box::new(self)),
        }
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        drop(self.sandbox.take());
        self.locks.clear();
    }
}

/// Where this host's CPU facts live; the defaults are the real ones.
/// Reservers take these three as config keys so tests can point them at
/// synthetic trees ([`topology::fake`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Where sysfs is mounted (topology is read below it).
    pub sysfs_root: PathBuf,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// CPU lock directory; `KTSTR_LOCK_DIR` wins over it, the cache
    /// root's `.locks/` is the default.
    pub lock_dir: Option<PathBuf>,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            sysfs_root: PathBuf::from("/sys"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            lock_dir: None,
        }
    }
}

impl Host {
    /// The CPU lock directory: `KTSTR_LOCK_DIR`, else [`Host::lock_dir`],
    /// else `<cache root>/.locks`.
    pub fn lock_dir(&self) -> Result<PathBuf> {
        Ok(locks::cpu_lock_dir(
            &paths::cache_root()?,
            self.lock_dir.as_deref(),
        ))
    }

    /// The topology below [`Host::sysfs_root`].
    pub fn topology(&self) -> Result<Topology> {
        Topology::read(&self.sysfs_root)
    }

    /// The cpuset hierarchy this process's sandboxes go in, after sweeping
    /// the sandboxes of dead ktstr processes from it.
    pub fn cpuset_hierarchy(&self) -> Result<Hierarchy> {
        let h = sandbox::detect_for_self(&self.cgroup_root)?;
        for dir in sandbox::sweep(&h) {
            tracing::info!("removed orphaned sandbox {}", dir.display());
        }
        Ok(h)
    }

    /// Lock, confine and return the reservation of exactly `cpus`, for a
    /// policy that has chosen them. `explicit` (a `--cpu-cap`) makes
    /// confinement a contract: when the host cannot confine, it fails with
    /// the remedies instead of warning once. Waits, cancellably, while
    /// another holder has the CPUs' locks. The CPUs are locked as a
    /// sharing build's ([`HolderKind::Build`]): other builds may use the
    /// rest of their LLCs, perf runs may not.
    pub fn confine(&self, cpus: &CpuSet, explicit: bool, cx: &StageContext) -> Result<Reservation> {
        cx.cancel.check()?;
        let want = cpus.len();
        if want == 0 {
            return Err(StageError::invalid_input("no CPUs to reserve")
                .with_hint("the reserver must choose at least one CPU"));
        }
        let allowed = allowed_cpus()?;
        let outside: CpuSet = cpus.difference(&allowed).copied().collect();
        if !outside.is_empty() {
            return Err(StageError::invalid_input(format!(
                "CPUs {} are not available to this process (it may run on {})",
                format_cpulist(&outside),
                format_cpulist(&allowed)
            ))
            .with_hint(
                "choose CPUs within the affinity mask (taskset, a container cpuset or \
                 systemd AllowedCPUs= narrow it)",
            ));
        }
        let topo = match self.topology() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::info!("locking CPUs without their LLCs: {e}");
                None
            }
        };
        if let Some(t) = &topo {
            let offline: CpuSet = cpus.difference(&t.online).copied().collect();
            if !offline.is_empty() {
                return Err(StageError::invalid_input(format!(
                    "CPUs {} are offline",
                    format_cpulist(&offline)
                ))
                .with_hint(format!(
                    "choose online CPUs ({})",
                    format_cpulist(&t.online)
                )));
            }
        }
        let mems = match &topo {
            Some(t) => t.mems_for(cpus),
            None => vec![0],
        };

        let lock_dir = self.lock_dir()?;
        locks::check_lock_dir(&lock_dir)?;
        let unconfined = format!("building with make -j{want} without a CPU sandbox");
        // Before waiting for anyone: a contract that cannot be kept fails now.
        let hierarchy = match self.cpuset_hierarchy() {
            Ok(h) => Some(h),
            Err(e) => {
                degrade(explicit, want, cx, e, &unconfined)?;
                None
            }
        };
        let held = locks::lock_set(
            &lock_dir,
            &locks::locks_for(cpus, topo.as_ref()),
            HolderKind::Build,
            cx,
        )?;
        let cpus: Vec<usize> = cpus.iter().copied().collect();
        let sandbox = match &hierarchy {
            Some(h) => match Sandbox::create_joinable(h, &cpus, &mems, cx) {
                Ok(sb) => Some(sb),
                Err(e) => {
                    // On error `held` drops here and releases the locks.
                    degrade(explicit, want, cx, e, &unconfined)?;
                    None
                }
            },
            None => None,
        };
        cx.progress.note(&format!(
            "reserved CPU{} {}{}",
            if want == 1 { "" } else { "s" },
            format_cpulist(&cpus),
            if sandbox.is_some() {
                ""
            } else {
                " (not enforced)"
            }
        ));
        Ok(Confined::new(sandbox, held).into_reservation(cpus, mems))
    }
}

#[cfg(test)]
mod tests;
