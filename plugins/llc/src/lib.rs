//! Built-in reserver `llc`: CPU budgets planned by last-level cache, with
//! the host's CPU locks and a cpuset sandbox.
//!
//! A kernel build next to a performance test ruins the test's numbers, and
//! two builds thrash each other's L3, but most hosts have one LLC: a build
//! that owned it whole would make every other build on the host queue
//! behind it with CPUs idle. This reserver
//!
//! 1. sizes the budget: `--cpu-cap N` (an explicit contract), else
//!    `budget_percent` (30%) of the CPUs this process may run on;
//! 2. plans that many CPUs on one NUMA node ([`plan`]) from the sysfs
//!    topology, on LLCs nobody uses when there are enough;
//! 3. locks them, all or nothing, re-planning when it loses a race and
//!    waiting (saying for whom) when the CPUs are not free. In the default
//!    mode, `shared-llc`, a build locks its CPUs and shares their LLCs
//!    with other builds (not with perf runs, which take LLCs exclusively);
//!    in `exclusive-llc` it owns every LLC it touches, as a host that
//!    measures performance next to its builds wants;
//! 4. creates a cpuset cgroup for the build's processes.
//!
//! Only the policy (budget, plan, mode, waiting) lives here: topology,
//! locks and sandbox are the SDK's reservation blocks
//! ([`ktstr_sdk::cpus`]), shared with every other reserver.
//!
//! When the CPUs cannot be confined (no topology, no cpuset controller, no
//! permission) an explicit cap fails with the remedies; the default budget
//! warns once and builds with `make -jN` only. The model is described in
//! docs/reservation.md.

pub mod plan;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr_sdk::config::ConfigReader;
use ktstr_sdk::cpus::locks::{CpuLock, HolderKind, Occupancy};
use ktstr_sdk::cpus::{self, Confined, CpuSet, Host, Sandbox, Topology, degrade, locks};
use ktstr_sdk::lock::FileLock;
use ktstr_sdk::prelude::*;

use crate::plan::{NoPlan, Plan};

pub use ktstr_sdk::cpus::{REMEDIES, allowed_cpus};

/// The plugin's registered name.
pub const NAME: &str = "llc";

/// Lost races re-planned at once before falling back to waiting.
const RACE_RETRIES: usize = 8;
/// How often a waiting reservation looks again (and checks for Ctrl-C).
const POLL: Duration = Duration::from_millis(100);
/// Default `announce_after_secs`: long enough that a short wait for a few
/// CPUs never idles the others, short against a kernel build.
pub const DEFAULT_ANNOUNCE_AFTER_SECS: u64 = 30;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "reserve --cpu-cap N (default 30%) CPUs planned by last-level cache: builds share an LLC on disjoint CPUs (or own it whole, mode = \"exclusive-llc\"), locks shared by every ktstr and test runner on the host, make confined by a cpuset cgroup",
        constructor: Constructor::Reserver(|cfg| Ok(Box::new(LlcReserver::from_config(cfg)?))),
    }
}

/// How a build holds the LLCs its CPUs are in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Lock the CPUs, share their LLCs with other builds: builds run side
    /// by side on one LLC and queue only for CPUs. Perf runs still get
    /// LLCs to themselves.
    #[default]
    SharedLlc,
    /// Own every LLC the CPUs touch: no other build shares its cache, at
    /// the price of queueing on hosts with few LLCs.
    ExclusiveLlc,
}

impl Mode {
    /// The lock-protocol holder kind of a build in this mode.
    pub fn holder(self) -> HolderKind {
        match self {
            Mode::SharedLlc => HolderKind::Build,
            Mode::ExclusiveLlc => HolderKind::ExclusiveBuild,
        }
    }
}

/// Options from the config file's `[plugin.llc]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlcConfig {
    /// Where sysfs is mounted (topology is read below it).
    pub sysfs_root: PathBuf,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// CPU lock directory; `KTSTR_LOCK_DIR` wins over it, the cache root's
    /// `.locks/` is the default.
    pub lock_dir: Option<PathBuf>,
    /// Default budget as a percentage of the allowed CPUs (1-100).
    pub budget_percent: u32,
    /// `shared-llc` (default) or `exclusive-llc`.
    pub mode: Mode,
    /// A build that has waited this long announces itself on the LLCs it
    /// waits for, so builds that came later stop overtaking it.
    pub announce_after_secs: u64,
}

impl Default for LlcConfig {
    fn default() -> Self {
        Self {
            sysfs_root: PathBuf::from("/sys"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            lock_dir: None,
            budget_percent: plan::DEFAULT_BUDGET_PERCENT,
            mode: Mode::default(),
            announce_after_secs: DEFAULT_ANNOUNCE_AFTER_SECS,
        }
    }
}

impl LlcConfig {
    /// Parse a `[plugin.llc]` table (`Null` when absent).
    pub fn from_value(cfg: &PluginConfig) -> Result<Self> {
        let parsed: Self = ConfigReader::new(NAME, cfg)
            .and_then(|r| r.deserialize())
            .map_err(|e| {
                e.with_hint(
                    "known keys: sysfs_root, cgroup_root, lock_dir, budget_percent, \
                     mode = \"shared-llc\" | \"exclusive-llc\", announce_after_secs \
                     (see `ktstr docs reservation`)",
                )
            })?;
        if !(1..=100).contains(&parsed.budget_percent) {
            return Err(StageError::invalid_input(format!(
                "[plugin.llc] budget_percent = {}: must be between 1 and 100",
                parsed.budget_percent
            )));
        }
        Ok(parsed)
    }
}

/// The `llc` reserver.
#[derive(Debug, Clone, Default)]
pub struct LlcReserver {
    pub config: LlcConfig,
}

fn unreserved(make_jobs: usize) -> Reservation {
    Reservation {
        cpus: Vec::new(),
        mems: Vec::new(),
        make_jobs,
        sandbox_procs: None,
        guard: None,
    }
}

impl LlcReserver {
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        Ok(Self {
            config: LlcConfig::from_value(cfg)?,
        })
    }

    /// `KTSTR_LOCK_DIR`, else the configured `lock_dir`, else
    /// `<cache root>/.locks`.
    pub fn lock_dir(&self) -> Result<PathBuf> {
        self.host().lock_dir()
    }

    /// Where this reserver reads the host's CPU facts.
    pub fn host(&self) -> Host {
        Host {
            sysfs_root: self.config.sysfs_root.clone(),
            cgroup_root: self.config.cgroup_root.clone(),
            lock_dir: self.config.lock_dir.clone(),
        }
    }

    /// Reserve for a process allowed to run on `allowed`.
    pub fn reserve_on(
        &self,
        request: &ReserveRequest,
        cx: &StageContext,
        allowed: &CpuSet,
    ) -> Result<Reservation> {
        cx.cancel.check()?;
        let pct = self.config.budget_percent;
        let mut want = plan::budget(request.cpu_cap, allowed.len(), pct)?;
        let explicit = request.cpu_cap.is_some();
        let soften = |problem: StageError, want: usize, what_happens: &str| {
            degrade(explicit, want, cx, problem, what_happens)
        };

        let topo = match Topology::read(&self.config.sysfs_root) {
            Ok(t) => t,
            Err(e) => {
                let e = e.context(format!(
                    "cannot read the CPU topology from {}",
                    self.config.sysfs_root.display()
                ));
                soften(
                    e,
                    want,
                    &format!("building with make -j{want}, no CPUs locked"),
                )?;
                return Ok(unreserved(want));
            }
        };
        let usable = topo
            .llcs
            .iter()
            .flat_map(|l| l.cpus.iter())
            .filter(|c| allowed.contains(c))
            .count();
        if usable == 0 {
            let e = StageError::not_found(format!(
                "none of this process's CPUs ({}) appear in the topology under {}",
                cpus::format_cpulist(allowed),
                self.config.sysfs_root.display()
            ));
            soften(
                e,
                want,
                &format!("building with make -j{want}, no CPUs locked"),
            )?;
            return Ok(unreserved(want));
        }
        if want > usable {
            if explicit {
                return Err(StageError::invalid_input(format!(
                    "--cpu-cap {want}: only {usable} of this process's CPUs are online \
                     and in a known last-level cache"
                ))
                .with_hint(format!("pass --cpu-cap {usable} or less")));
            }
            want = plan::budget(None, usable, pct)?;
        }

        let lock_dir = self.lock_dir()?;
        locks::check_lock_dir(&lock_dir)?;

        // Before waiting for anyone: a contract that cannot be kept fails now.
        let hierarchy = match self.host().cpuset_hierarchy() {
            Ok(h) => Some(h),
            Err(e) => {
                soften(
                    e,
                    want,
                    &format!("building with make -j{want} without a CPU sandbox"),
                )?;
                None
            }
        };

        let (plan, shared, held) = acquire(&self.config, &topo, allowed, want, &lock_dir, cx)?;

        let sandbox = match &hierarchy {
            Some(h) => match Sandbox::create_joinable(h, &plan.cpus, &plan.mems, cx) {
                Ok(sb) => Some(sb),
                Err(e) => {
                    // On error `held` drops here and releases the LLCs.
                    soften(
                        e,
                        want,
                        &format!("building with make -j{want} without a CPU sandbox"),
                    )?;
                    None
                }
            },
            None => None,
        };
        let sharing = if shared.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = shared.iter().map(usize::to_string).collect();
            format!(
                ", sharing LLC{} {} with other builds",
                if ids.len() == 1 { "" } else { "s" },
                ids.join(",")
            )
        };
        cx.progress.note(&format!(
            "reserved {}{sharing}{}",
            plan.describe(),
            if sandbox.is_some() {
                ""
            } else {
                " (not enforced)"
            }
        ));
        Ok(Confined::new(sandbox, held).into_reservation(plan.cpus, plan.mems))
    }
}

impl Reserver for LlcReserver {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        cx.cancel.check()?;
        self.reserve_on(request, cx, &allowed_cpus()?)
    }

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        Ok(locks::list(&self.lock_dir()?))
    }
}

/// Plan and lock: take the plan's locks all or nothing (in the configured
/// mode); on a lost race re-plan at once (up to [`RACE_RETRIES`] times),
/// otherwise wait, noting whom for, until the CPUs are free or the user
/// cancels. After `announce_after_secs` of waiting, announce the LLCs it
/// waits for (their intent files), so later builds stop overtaking it.
/// Returns the plan, the LLCs in it other holders were on, and the locks.
fn acquire(
    cfg: &LlcConfig,
    topo: &Topology,
    allowed: &CpuSet,
    want: usize,
    lock_dir: &Path,
    cx: &StageContext,
) -> Result<(Plan, BTreeSet<usize>, Vec<FileLock>)> {
    let mode = cfg.mode;
    let planner = match mode {
        Mode::SharedLlc => plan::plan_shared,
        Mode::ExclusiveLlc => plan::plan_exclusive,
    };
    let announce_at = std::time::Instant::now() + Duration::from_secs(cfg.announce_after_secs);
    // The LLCs this build announced, and their intent locks (dropped on
    // return, once the build holds its CPUs or gives up).
    let mut announced: BTreeSet<usize> = BTreeSet::new();
    let mut _intents: Vec<FileLock> = Vec::new();
    let mut lost: Vec<CpuLock> = Vec::new();
    let mut last_note = String::new();
    loop {
        cx.cancel.check()?;
        let mut occ = locks::occupancy(lock_dir, topo);
        occ.reopen_announced_by_me(lock_dir, &announced);
        for &l in &lost {
            occ.lost(l);
        }
        match planner(topo, allowed, want, &occ) {
            Ok(p) => {
                let cpus: CpuSet = p.cpus.iter().copied().collect();
                let wanted = locks::locks_for(&cpus, Some(topo));
                match locks::try_lock_set_announced(lock_dir, &wanted, mode.holder(), &announced)? {
                    Ok(held) => {
                        let shared = p
                            .llc_ids()
                            .into_iter()
                            .filter(|id| occ.touched(topo).contains(id))
                            .collect();
                        return Ok((p, shared, held));
                    }
                    Err(l) => {
                        lost.push(l);
                        if lost.len() < RACE_RETRIES {
                            continue;
                        }
                    }
                }
            }
            Err(e @ NoPlan::TooFew { .. }) => {
                return Err(StageError::invalid_input(e.to_string()));
            }
            Err(NoPlan::Busy { .. }) => {}
        }
        let waiting_for = waiting_for(topo, allowed, want, &occ)?;
        let note = waiting_note(mode, topo, want, &waiting_for, lock_dir);
        // Once announced, the holders' list would name this build too; the
        // announcement said what happens next.
        if announced.is_empty() && note != last_note {
            cx.progress.note(&note);
            last_note = note;
        }
        if announced.is_empty() && std::time::Instant::now() >= announce_at {
            let ids: BTreeSet<usize> = waiting_for.iter().copied().collect();
            if let Some(intents) = locks::announce(lock_dir, &ids)? {
                let list: Vec<String> = ids.iter().map(usize::to_string).collect();
                cx.progress.note(&format!(
                    "waited {}s: announced LLC{} {}; builds that come later wait until this one runs",
                    cfg.announce_after_secs,
                    if ids.len() == 1 { "" } else { "s" },
                    list.join(",")
                ));
                announced = ids;
                _intents = intents;
            }
        }
        std::thread::sleep(POLL);
        lost.clear();
    }
}

/// The LLCs the build would use if everything were free and someone is on
/// (else every LLC someone is on): what it waits for.
fn waiting_for(
    topo: &Topology,
    allowed: &CpuSet,
    want: usize,
    occ: &Occupancy,
) -> Result<Vec<usize>> {
    let ideal = plan::plan(topo, allowed, want, &BTreeSet::new())
        .map_err(|e| StageError::internal(e.to_string()))?;
    let touched = occ.touched(topo);
    let mut waiting_for: Vec<usize> = ideal
        .llc_ids()
        .into_iter()
        .filter(|id| touched.contains(id))
        .collect();
    if waiting_for.is_empty() {
        waiting_for = touched.into_iter().collect();
    }
    Ok(waiting_for)
}

/// "waiting for 4 CPUs ...: LLC 0 held by pid 4242 (...)": the LLCs the
/// build waits for, and who is on them.
fn waiting_note(
    mode: Mode,
    topo: &Topology,
    want: usize,
    waiting_for: &[usize],
    lock_dir: &Path,
) -> String {
    let s = if want == 1 { "" } else { "s" };
    let what = match mode {
        Mode::SharedLlc => format!("{want} CPU{s} free in last-level caches open to builds"),
        Mode::ExclusiveLlc => {
            format!("{want} CPU{s} in last-level caches held by other ktstr runs")
        }
    };
    format!(
        "waiting for {what}: {} (lock directory {})",
        locks::describe_busy(lock_dir, topo, waiting_for),
        lock_dir.display()
    )
}
