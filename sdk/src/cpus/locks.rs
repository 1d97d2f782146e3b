//! The CPU lock protocol: how ktstr processes (and test runners) on one
//! host tell each other which CPUs are taken.
//!
//! Three kinds of file in the CPU lock directory, all `flock`ed:
//!
//! - `llc-<id>.lock`, one per last-level cache. Shared means "I run on some
//!   CPUs of this cache and tolerate neighbours on the others"; exclusive
//!   means "the whole cache is mine".
//! - `cpu-<n>.lock`, one per CPU: "this CPU is mine" (exclusive) or "mine,
//!   shared with my kind" (shared).
//! - `llc-<id>.intent`: held exclusively by whoever takes (or waits to
//!   take) the LLC exclusively. Shared takers look at it first and stay
//!   off, so a perf run waiting for the builds on its LLC to finish is not
//!   starved by new builds joining it (flock has no writer preference).
//!
//! Which mode each kind of holder takes on which file is
//! [`HolderKind::mode`] (docs/reservation.md has the table and the flock(1)
//! command a test runner uses). The kernel drops a flock when its process
//! dies, so a crash never leaves a stale reservation.
//!
//! flock over NFS is emulated with byte-range locks on the server and over
//! FUSE depends on the daemon; neither gives the crash-safe, host-local
//! semantics above, so such lock directories are refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::lock::{self, FileLock, Holder, LockMode};
use crate::lock_list::{self, LockInfo};
use crate::paths;
use crate::prelude::*;

use super::topology::{CpuSet, Topology};

/// Overrides where CPU (LLC) locks live, so several cache roots on one host
/// still coordinate their CPU use.
pub const LOCK_DIR_ENV: &str = "KTSTR_LOCK_DIR";

/// File name prefix of an LLC lock, `llc-<id>.lock`.
const PREFIX: &str = "llc-";
/// File name prefix of a CPU lock, `cpu-<n>.lock`.
const CPU_PREFIX: &str = "cpu-";
/// File name suffix of an LLC's intent lock, `llc-<id>.intent`.
const INTENT_SUFFIX: &str = ".intent";

/// Who takes a CPU lock, which decides its mode on each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderKind {
    /// A kernel build that shares its LLCs with other builds (the `llc`
    /// reserver's default mode, and `Host::confine`): the LLCs shared, its
    /// CPUs exclusive. Keeps other builds off its CPUs and perf runs off
    /// its LLCs.
    Build,
    /// A kernel build that owns whole LLCs (`llc` in `exclusive-llc`
    /// mode): its LLCs exclusive. Nobody else schedules on them.
    ExclusiveBuild,
    /// A test run whose numbers are measured: its LLCs exclusive, announced
    /// on their intent files first so new builds stay off while it waits
    /// for the running ones to leave.
    PerfTest,
    /// A functional test run: its LLCs and CPUs shared. Keeps builds off
    /// its CPUs and perf runs off its LLCs; other functional runs may share
    /// the CPUs, builds may use the LLC's other CPUs.
    FunctionalTest,
}

impl HolderKind {
    /// The `flock` mode this kind of holder takes on `lock`.
    pub fn mode(self, lock: CpuLock) -> LockMode {
        match (self, lock) {
            (HolderKind::Build, CpuLock::Llc(_)) => LockMode::Shared,
            (HolderKind::Build, CpuLock::Cpu(_)) => LockMode::Exclusive,
            (HolderKind::ExclusiveBuild | HolderKind::PerfTest, _) => LockMode::Exclusive,
            (HolderKind::FunctionalTest, _) => LockMode::Shared,
        }
    }

    /// Whether this holder takes an LLC's intent lock (exclusively) before
    /// the LLC and keeps it while it waits and runs. Every other holder
    /// only checks the intent before it takes an LLC, and stays off it
    /// while someone holds it.
    pub fn announces_intent(self) -> bool {
        self == HolderKind::PerfTest
    }
}

/// One lock file of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuLock {
    /// A last-level cache, by its topology id.
    Llc(usize),
    /// A single CPU.
    Cpu(usize),
}

impl CpuLock {
    /// The lock file in `dir`.
    pub fn path(self, dir: &Path) -> PathBuf {
        match self {
            CpuLock::Llc(id) => llc_lock(dir, id),
            CpuLock::Cpu(n) => cpu_lock(dir, n),
        }
    }
}

impl std::fmt::Display for CpuLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuLock::Llc(id) => write!(f, "LLC {id}"),
            CpuLock::Cpu(n) => write!(f, "CPU {n}"),
        }
    }
}

/// The locks a holder on `cpus` takes: the LLC of each CPU the topology
/// knows, then every CPU. Without a topology, only the CPUs.
pub fn locks_for(cpus: &CpuSet, topology: Option<&Topology>) -> Vec<CpuLock> {
    let mut out = BTreeSet::new();
    for &c in cpus {
        if let Some(l) = topology.and_then(|t| t.llcs.iter().find(|l| l.cpus.contains(&c))) {
            out.insert(CpuLock::Llc(l.id));
        }
        out.insert(CpuLock::Cpu(c));
    }
    out.into_iter().collect()
}

/// Where CPU reservation (per-LLC) locks live: `$KTSTR_LOCK_DIR`, else the
/// reserver's configured directory, else `<root>/.locks`.
pub fn cpu_lock_dir(root: &Path, configured: Option<&Path>) -> PathBuf {
    paths::env_nonempty(LOCK_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| configured.map(Path::to_path_buf))
        .unwrap_or_else(|| paths::lock_dir(root))
}

/// Lock of one last-level cache, `llc-<id>.lock` in [`cpu_lock_dir`].
pub fn llc_lock(cpu_lock_dir: &Path, llc_id: usize) -> PathBuf {
    cpu_lock_dir.join(format!("{PREFIX}{llc_id}.lock"))
}

/// Intent lock of one last-level cache, `llc-<id>.intent`: held by whoever
/// takes or waits for the LLC exclusively.
pub fn intent_lock(cpu_lock_dir: &Path, llc_id: usize) -> PathBuf {
    cpu_lock_dir.join(format!("{PREFIX}{llc_id}{INTENT_SUFFIX}"))
}

/// Lock of one CPU, `cpu-<n>.lock`.
pub fn cpu_lock(cpu_lock_dir: &Path, cpu: usize) -> PathBuf {
    cpu_lock_dir.join(format!("{CPU_PREFIX}{cpu}.lock"))
}

/// Refuse lock directories on network or userspace filesystems.
///
/// Creates the directory first so the check sees the filesystem the lock
/// files will live on.
pub fn check_lock_dir(dir: &Path) -> Result<()> {
    use nix::sys::statfs::{FUSE_SUPER_MAGIC, FsType, NFS_SUPER_MAGIC, SMB_SUPER_MAGIC, statfs};
    std::fs::create_dir_all(dir)
        .at("create lock directory", dir)
        .map_err(|e| e.with_hint(lock_dir_hint()))?;
    let st = statfs(dir).map_err(|e| {
        StageError::io("inspect lock directory", dir, std::io::Error::from(e))
            .with_hint(lock_dir_hint())
    })?;
    let ty = st.filesystem_type();
    // CIFS and SMB2 are not in nix's table.
    let cifs = FsType(0xFF53_4D42u32 as _);
    let smb2 = FsType(0xFE53_4D42u32 as _);
    let name = if ty == NFS_SUPER_MAGIC {
        "NFS"
    } else if ty == FUSE_SUPER_MAGIC {
        "FUSE"
    } else if ty == SMB_SUPER_MAGIC || ty == cifs || ty == smb2 {
        "SMB/CIFS"
    } else {
        return Ok(());
    };
    Err(StageError::new(
        ErrorKind::Unsupported,
        format!(
            "CPU lock directory {} is on {name}, where flock does not reliably \
             coordinate processes on this host",
            dir.display()
        ),
    )
    .with_hint(lock_dir_hint()))
}

fn lock_dir_hint() -> String {
    format!(
        "set {}=/var/tmp/ktstr-locks (or another directory on a local filesystem \
         shared by every ktstr on this host)",
        LOCK_DIR_ENV
    )
}

/// Who is on a host's LLCs and CPUs right now, from one read of
/// `/proc/locks`.
///
/// Only a hint for a planner (nothing is locked by looking): the real test
/// is [`try_lock_set`], which may still lose a race. Locks held by this
/// same process count too: they belong to another reservation (a planner
/// holds none of its own while planning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// LLCs nobody may join: held exclusively, or announced on their intent
    /// file by a holder that takes or waits for them exclusively.
    pub closed: BTreeSet<usize>,
    /// LLCs held shared (builds sharing them, functional runs).
    pub shared: BTreeSet<usize>,
    /// CPUs whose lock someone holds, in either mode.
    pub cpus: CpuSet,
}

impl Occupancy {
    /// LLCs with anyone on them: closed, shared, or holding one of their
    /// CPUs. An exclusive taker must avoid all of these.
    pub fn touched(&self, topo: &Topology) -> BTreeSet<usize> {
        let mut out: BTreeSet<usize> = self.closed.union(&self.shared).copied().collect();
        for l in &topo.llcs {
            if !l.cpus.is_disjoint(&self.cpus) {
                out.insert(l.id);
            }
        }
        out
    }

    /// CPUs a sharing build may not take: those held, and every CPU of a
    /// closed LLC.
    pub fn unavailable_cpus(&self, topo: &Topology) -> CpuSet {
        let mut out = self.cpus.clone();
        for l in topo.llcs.iter().filter(|l| self.closed.contains(&l.id)) {
            out.extend(l.cpus.iter().copied());
        }
        out
    }

    /// LLCs in `mine` are announced by the caller itself (a build that
    /// waited too long, see [`announce`]): they are closed only if someone
    /// holds the LLC exclusively.
    pub fn reopen_announced_by_me(&mut self, dir: &Path, mine: &BTreeSet<usize>) {
        for &id in mine {
            if !self.closed.remove(&id) {
                continue;
            }
            let holders = lock::holders(&llc_lock(dir, id));
            let holding = holders.iter().filter(|h| !h.waiting);
            if holding.clone().any(|h| h.mode == "WRITE") {
                self.closed.insert(id);
            } else if holding.count() > 0 {
                self.shared.insert(id);
            }
        }
    }

    /// Record a lock lost in a race (someone took it between the look and
    /// the lock): an LLC counts as closed, a CPU as held.
    pub fn lost(&mut self, lock: CpuLock) {
        match lock {
            CpuLock::Llc(id) => {
                self.closed.insert(id);
            }
            CpuLock::Cpu(n) => {
                self.cpus.insert(n);
            }
        }
    }
}

/// The [`Occupancy`] of `topo`'s LLCs and CPUs in `dir`.
pub fn occupancy(dir: &Path, topo: &Topology) -> Occupancy {
    // One read of /proc/locks for every file: this runs every poll interval.
    let table = lock::proc_locks();
    let holding = |path: &Path| -> Vec<Holder> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| {
                lock::parse_proc_locks(&table, m.dev(), m.ino())
                    .into_iter()
                    .filter(|h| !h.waiting)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut occ = Occupancy::default();
    for l in &topo.llcs {
        let on_llc = holding(&llc_lock(dir, l.id));
        // Takers hold an intent shared only for the moment they take the
        // LLC; an exclusive holder announced the LLC.
        let announced = holding(&intent_lock(dir, l.id))
            .iter()
            .any(|h| h.mode == "WRITE");
        if announced || on_llc.iter().any(|h| h.mode == "WRITE") {
            occ.closed.insert(l.id);
        } else if !on_llc.is_empty() {
            occ.shared.insert(l.id);
        }
        for &c in &l.cpus {
            if !holding(&cpu_lock(dir, c)).is_empty() {
                occ.cpus.insert(c);
            }
        }
    }
    occ
}

/// Take every lock in `locks` in `holder`'s mode without waiting, all or
/// nothing, in one global order (so two takers never deadlock).
/// `Ok(Err(lock))` names the first lock someone else holds.
///
/// Before an LLC, a holder that does not announce intent checks the LLC's
/// intent file (taking it shared for the moment it takes the LLC) and
/// counts the LLC as held when someone announced it; one that does (a perf
/// run) takes the intent exclusively and keeps it.
pub fn try_lock_set(
    dir: &Path,
    locks: &[CpuLock],
    holder: HolderKind,
) -> Result<std::result::Result<Vec<FileLock>, CpuLock>> {
    try_lock_set_announced(dir, locks, holder, &BTreeSet::new())
}

/// [`try_lock_set`] for a caller that already holds the intents of the
/// LLCs in `announced` (see [`announce`]; a second flock on them would
/// conflict with its own): their intents are neither checked nor taken.
pub fn try_lock_set_announced(
    dir: &Path,
    locks: &[CpuLock],
    holder: HolderKind,
    announced: &BTreeSet<usize>,
) -> Result<std::result::Result<Vec<FileLock>, CpuLock>> {
    let mut sorted = locks.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut held = Vec::with_capacity(sorted.len());
    for l in sorted {
        // Dropping `held` on a return releases what we took.
        let _gate = match l {
            CpuLock::Llc(id) if !announced.contains(&id) => {
                let mode = if holder.announces_intent() {
                    LockMode::Exclusive
                } else {
                    LockMode::Shared
                };
                match lock::try_lock(&intent_lock(dir, id), mode)? {
                    Some(gate) if holder.announces_intent() => {
                        held.push(gate);
                        None
                    }
                    Some(gate) => Some(gate),
                    None => return Ok(Err(l)),
                }
            }
            _ => None,
        };
        match lock::try_lock(&l.path(dir), holder.mode(l))? {
            Some(f) => held.push(f),
            None => return Ok(Err(l)),
        }
    }
    Ok(Ok(held))
}

/// Take the intent files of the LLCs `ids` exclusively without waiting,
/// all or nothing, in ascending order: from then on no new holder joins
/// those LLCs (they count as closed) until the intents are dropped. `None`
/// when someone else holds one (a perf run, or another build that waited
/// longer). A build that has waited too long announces itself so; it then
/// locks with [`try_lock_set_announced`].
pub fn announce(dir: &Path, ids: &BTreeSet<usize>) -> Result<Option<Vec<FileLock>>> {
    let mut held = Vec::with_capacity(ids.len());
    for &id in ids {
        match lock::try_lock(&intent_lock(dir, id), LockMode::Exclusive)? {
            Some(f) => held.push(f),
            None => return Ok(None),
        }
    }
    Ok(Some(held))
}

/// Take every lock in `locks` (see [`try_lock_set`]), waiting while any is
/// held by someone else: one note naming the holders (again when they
/// change), a look every 100 ms, and Ctrl-C (the cancellation flag) ends
/// the wait.
///
/// Nothing is held while waiting, except by a holder that announces intent
/// (a perf run): it takes its LLCs' intent files first, in order, and keeps
/// them while it waits for the LLCs, so builds stop joining them and the
/// wait ends when the builds already there have finished.
pub fn lock_set(
    dir: &Path,
    locks: &[CpuLock],
    holder: HolderKind,
    cx: &StageContext,
) -> Result<Vec<FileLock>> {
    let mut last_note = String::new();
    let mut note = |what: String, path: &Path| {
        let note = format!(
            "waiting for {what} {} (lock directory {})",
            lock::describe_holders(&lock::holders(path)),
            dir.display()
        );
        if note != last_note {
            cx.progress.note(&note);
            last_note = note;
        }
    };
    let mut intents = Vec::new();
    let mut announced = BTreeSet::new();
    if holder.announces_intent() {
        announced = locks
            .iter()
            .filter_map(|l| match l {
                CpuLock::Llc(id) => Some(*id),
                CpuLock::Cpu(_) => None,
            })
            .collect();
        for &id in &announced {
            let path = intent_lock(dir, id);
            loop {
                cx.cancel.check()?;
                if let Some(f) = lock::try_lock(&path, LockMode::Exclusive)? {
                    intents.push(f);
                    break;
                }
                note(format!("the intent file of LLC {id}"), &path);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    loop {
        cx.cancel.check()?;
        match try_lock_set_announced(dir, locks, holder, &announced)? {
            Ok(mut held) => {
                held.append(&mut intents);
                return Ok(held);
            }
            Err(busy) => {
                let path = match busy {
                    CpuLock::Llc(id) if !holder.announces_intent() && llc_announced(dir, id) => {
                        intent_lock(dir, id)
                    }
                    _ => busy.path(dir),
                };
                note(busy.to_string(), &path);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether someone announced LLC `id` (holds its intent exclusively).
fn llc_announced(dir: &Path, id: usize) -> bool {
    lock::holders(&intent_lock(dir, id))
        .iter()
        .any(|h| !h.waiting && h.mode == "WRITE")
}

/// "LLC 2 held by pid 4242 (ktstr build ...)" for each id: the holders of
/// the LLC's lock, its intent and its CPUs' locks, each pid once.
pub fn describe_busy(dir: &Path, topo: &Topology, ids: &[usize]) -> String {
    ids.iter()
        .map(|&id| {
            let mut files = vec![llc_lock(dir, id), intent_lock(dir, id)];
            if let Some(l) = topo.llcs.iter().find(|l| l.id == id) {
                files.extend(l.cpus.iter().map(|&c| cpu_lock(dir, c)));
            }
            let mut seen = BTreeSet::new();
            let holders: Vec<Holder> = files
                .iter()
                .flat_map(|f| lock::holders(f))
                .filter(|h| !h.waiting && seen.insert(h.pid))
                .collect();
            format!("LLC {id} {}", lock::describe_holders(&holders))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every `llc-<id>.lock` and `cpu-<n>.lock` in `dir`, and every
/// `llc-<id>.intent` someone holds or waits for (kind `llc-intent`), with
/// holders and waiters, LLCs first, numeric ids in order (for `ktstr
/// locks`). A missing directory lists nothing.
pub fn list(dir: &Path) -> Vec<LockInfo> {
    let mut out = lock_list::list_dir(dir, "llc", PREFIX);
    out.extend(lock_list::list_dir(dir, "cpu", CPU_PREFIX));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(INTENT_SUFFIX))
            else {
                continue;
            };
            // Every LLC taker touches its intent file; it says something
            // only while a perf run holds or waits for it.
            let path = entry.path();
            let holders = lock::holders(&path);
            if holders.is_empty() {
                continue;
            }
            out.push(LockInfo {
                kind: "llc-intent".to_string(),
                id: id.to_string(),
                guards: String::new(),
                holders,
                path,
            });
        }
    }
    let rank = |kind: &str| match kind {
        "llc" => 0,
        "llc-intent" => 1,
        _ => 2,
    };
    out.sort_by_key(|l| {
        (
            rank(&l.kind),
            l.id.parse::<usize>().unwrap_or(usize::MAX),
            l.id.clone(),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::Llc;
    use crate::lock::tests::settles;

    /// LLC 0 = CPUs 0-1, LLC 1 = CPUs 2-3.
    fn two_llcs() -> Topology {
        Topology {
            llcs: vec![
                Llc {
                    id: 0,
                    cpus: CpuSet::from([0, 1]),
                    node: 0,
                },
                Llc {
                    id: 1,
                    cpus: CpuSet::from([2, 3]),
                    node: 0,
                },
            ],
            online: CpuSet::from([0, 1, 2, 3]),
            ..Topology::default()
        }
    }

    fn take(d: &Path, locks: &[CpuLock], holder: HolderKind) -> Option<Vec<FileLock>> {
        try_lock_set(d, locks, holder).unwrap().ok()
    }

    #[test]
    fn all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t = two_llcs();
        let x = HolderKind::ExclusiveBuild;
        let other = take(d, &[CpuLock::Llc(1)], x).unwrap();
        assert!(settles(|| occupancy(d, &t).closed == BTreeSet::from([1])));
        assert_eq!(
            try_lock_set(d, &[CpuLock::Llc(0), CpuLock::Llc(1)], x)
                .unwrap()
                .unwrap_err(),
            CpuLock::Llc(1)
        );
        // LLC 0 was released again.
        let mut got = None;
        assert!(settles(|| {
            got = take(d, &[CpuLock::Llc(0)], x);
            got.is_some()
        }));
        assert!(settles(|| occupancy(d, &t).closed == BTreeSet::from([0, 1])));
        drop(other);
        drop(got);
        assert!(settles(|| occupancy(d, &t) == Occupancy::default()));
    }

    #[test]
    fn builds_share_an_llc_on_disjoint_cpus() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t = two_llcs();
        let b = HolderKind::Build;
        let a = take(d, &locks_for(&CpuSet::from([0]), Some(&t)), b).unwrap();
        let second = take(d, &locks_for(&CpuSet::from([1]), Some(&t)), b).unwrap();
        assert_eq!(
            try_lock_set(d, &locks_for(&CpuSet::from([1]), Some(&t)), b)
                .unwrap()
                .unwrap_err(),
            CpuLock::Cpu(1),
            "a CPU is one build's"
        );
        let occ = occupancy(d, &t);
        assert_eq!(occ.shared, BTreeSet::from([0]));
        assert_eq!(occ.cpus, CpuSet::from([0, 1]));
        assert_eq!(occ.touched(&t), BTreeSet::from([0]));
        // Neither an LLC-exclusive build nor a perf run gets LLC 0.
        for h in [HolderKind::ExclusiveBuild, HolderKind::PerfTest] {
            assert_eq!(
                try_lock_set(d, &[CpuLock::Llc(0)], h).unwrap().unwrap_err(),
                CpuLock::Llc(0),
                "{h:?}"
            );
        }
        drop((a, second));
    }

    #[test]
    fn a_perf_runs_intent_keeps_new_builds_off_while_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t = two_llcs();
        let running = take(
            d,
            &locks_for(&CpuSet::from([0]), Some(&t)),
            HolderKind::Build,
        )
        .unwrap();
        let d2 = d.to_path_buf();
        let (cx, progress) =
            crate::testing::context_with(std::sync::Arc::new(crate::runner::SystemRunner));
        let perf = std::thread::spawn(move || {
            lock_set(&d2, &[CpuLock::Llc(0)], HolderKind::PerfTest, &cx).map(|h| h.len())
        });
        // The perf run announces itself: LLC 0 is closed to newcomers,
        // although CPU 1 is free.
        assert!(settles(|| occupancy(d, &t).closed.contains(&0)));
        assert_eq!(
            try_lock_set(
                d,
                &locks_for(&CpuSet::from([1]), Some(&t)),
                HolderKind::Build
            )
            .unwrap()
            .unwrap_err(),
            CpuLock::Llc(0)
        );
        // It waits for the build, saying so, until the build leaves.
        assert!(
            settles(|| progress
                .notes()
                .iter()
                .any(|n| n.starts_with("waiting for LLC 0 held by pid"))),
            "{:?}",
            progress.notes()
        );
        assert!(!perf.is_finished(), "the build on CPU 0 still runs");
        drop(running);
        assert_eq!(perf.join().unwrap().unwrap(), 2, "intent and LLC held");
    }

    #[test]
    fn a_second_perf_run_queues_on_the_intent() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first = take(d, &[CpuLock::Llc(0)], HolderKind::PerfTest).unwrap();
        let (cx, progress) =
            crate::testing::context_with(std::sync::Arc::new(crate::runner::SystemRunner));
        let cancel = cx.cancel.clone();
        let d2 = d.to_path_buf();
        let second = std::thread::spawn(move || {
            lock_set(&d2, &[CpuLock::Llc(0)], HolderKind::PerfTest, &cx)
        });
        // It queues on the intent, naming the first (this process), until
        // cancelled.
        let me = format!("held by pid {}", std::process::id());
        assert!(
            settles(|| progress
                .notes()
                .iter()
                .any(|n| n.starts_with("waiting for the intent file of LLC 0") && n.contains(&me))),
            "{:?}",
            progress.notes()
        );
        cancel.cancel();
        let e = second.join().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        drop(first);
    }

    #[test]
    fn lists_locks_with_holders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(list(&d.join("missing")).is_empty());
        let held = take(
            d,
            &[CpuLock::Llc(10), CpuLock::Llc(2)],
            HolderKind::PerfTest,
        )
        .unwrap();
        std::fs::write(d.join("source-abc.lock"), b"").unwrap();
        let list = list(d);
        assert_eq!(
            list.iter()
                .map(|l| (l.kind.as_str(), l.id.as_str()))
                .collect::<Vec<_>>(),
            [
                ("llc", "2"),
                ("llc", "10"),
                ("llc-intent", "2"),
                ("llc-intent", "10")
            ]
        );
        let me = std::process::id();
        assert!(
            list[0]
                .holders
                .iter()
                .any(|h| h.pid == me && h.mode == "WRITE")
        );
        drop(held);
        assert!(settles(|| super::list(d)
            .iter()
            .all(|l| l.holders.is_empty())));
    }

    #[test]
    fn local_lock_dir_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        check_lock_dir(&dir.path().join("a/b")).unwrap();
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn unwritable_lock_dir_names_the_fix() {
        let e = check_lock_dir(Path::new("/proc/ktstr-no-such/locks")).unwrap_err();
        assert!(e.to_string().contains("/proc/ktstr-no-such/locks"), "{e}");
        assert!(e.hint.unwrap().contains(LOCK_DIR_ENV));
    }
}
