//! The CPU lock protocol: how ktstr processes (and test runners) on one
//! host tell each other which CPUs are taken.
//!
//! One file per last-level cache, `llc-<id>.lock`, and one per CPU,
//! `cpu-<n>.lock`, in the CPU lock directory. A build holds an exclusive
//! `flock` on every LLC its CPUs touch for as long as it runs (a CPU lock
//! only when the host's topology is unknown); the kernel drops the lock when
//! the process dies, so a crash never leaves a stale reservation. Which
//! mode each kind of holder takes is [`HolderKind::mode`] (docs/reservation.md
//! has the table), so a perf test runner can take an LLC exclusively and a
//! functional one shared.
//!
//! flock over NFS is emulated with byte-range locks on the server and over
//! FUSE depends on the daemon; neither gives the crash-safe, host-local
//! semantics above, so such lock directories are refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::lock::{self, FileLock, LockMode};
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

/// Who takes a CPU lock, which decides its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderKind {
    /// A kernel build: its compilers pollute the cache, nobody else may
    /// schedule there.
    Build,
    /// A test run whose numbers are measured: no build and no other
    /// measured run may share its LLCs.
    PerfTest,
    /// A functional test run: keeps builds and perf runs off, but other
    /// functional runs may share.
    FunctionalTest,
}

impl HolderKind {
    /// The `flock` mode this kind of holder takes.
    pub fn mode(self) -> LockMode {
        match self {
            HolderKind::Build | HolderKind::PerfTest => LockMode::Exclusive,
            HolderKind::FunctionalTest => LockMode::Shared,
        }
    }
}

/// One lock file of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuLock {
    /// A last-level cache, by its topology id.
    Llc(usize),
    /// A single CPU (used when the topology is unknown).
    Cpu(usize),
}

impl CpuLock {
    /// The lock file in `dir`.
    pub fn path(self, dir: &Path) -> PathBuf {
        match self {
            CpuLock::Llc(id) => llc_lock(dir, id),
            CpuLock::Cpu(n) => dir.join(format!("{CPU_PREFIX}{n}.lock")),
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

/// The locks a build on `cpus` takes: the LLC of each CPU, or (CPUs the
/// topology does not know, or no topology at all) the CPU itself.
pub fn locks_for(cpus: &CpuSet, topology: Option<&Topology>) -> Vec<CpuLock> {
    let mut out = BTreeSet::new();
    for &c in cpus {
        let llc = topology.and_then(|t| t.llcs.iter().find(|l| l.cpus.contains(&c)));
        out.insert(llc.map_or(CpuLock::Cpu(c), |l| CpuLock::Llc(l.id)));
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

/// LLC ids in `ids` that some process holds right now, from `/proc/locks`.
///
/// Only a hint for the planner (nothing is locked by looking): the real
/// test is [`try_lock_all`], which may still lose a race. Locks held by
/// this same process count too: they belong to another reservation (we
/// hold none of our own while planning).
pub fn busy(dir: &Path, ids: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
    use std::os::unix::fs::MetadataExt;
    // One read of /proc/locks for all LLCs: this runs every poll interval.
    let table = lock::proc_locks();
    ids.into_iter()
        .filter(|&id| {
            std::fs::metadata(llc_lock(dir, id)).is_ok_and(|m| {
                lock::parse_proc_locks(&table, m.dev(), m.ino())
                    .iter()
                    .any(|h| !h.waiting)
            })
        })
        .collect()
}

/// Take every LLC in `ids` exclusively without waiting: all or nothing.
/// `Ok(Err(id))` names the first LLC someone else holds.
pub fn try_lock_all(
    dir: &Path,
    ids: &[usize],
) -> Result<std::result::Result<Vec<FileLock>, usize>> {
    let locks: Vec<CpuLock> = ids.iter().map(|&id| CpuLock::Llc(id)).collect();
    Ok(
        try_lock_set(dir, &locks, HolderKind::Build)?.map_err(|l| match l {
            CpuLock::Llc(id) | CpuLock::Cpu(id) => id,
        }),
    )
}

/// Take every lock in `locks` in `holder`'s mode without waiting, all or
/// nothing, in one global order (so two takers never deadlock).
/// `Ok(Err(lock))` names the first lock someone else holds.
pub fn try_lock_set(
    dir: &Path,
    locks: &[CpuLock],
    holder: HolderKind,
) -> Result<std::result::Result<Vec<FileLock>, CpuLock>> {
    let mut sorted = locks.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut held = Vec::with_capacity(sorted.len());
    for l in sorted {
        match lock::try_lock(&l.path(dir), holder.mode())? {
            Some(f) => held.push(f),
            // Dropping `held` releases what we took.
            None => return Ok(Err(l)),
        }
    }
    Ok(Ok(held))
}

/// Take every lock in `locks` (see [`try_lock_set`]), waiting while any is
/// held by someone else: one note naming the holders (again when they
/// change), a look every 100 ms, and Ctrl-C (the cancellation flag) ends
/// the wait. Nothing is held while waiting.
pub fn lock_set(
    dir: &Path,
    locks: &[CpuLock],
    holder: HolderKind,
    cx: &StageContext,
) -> Result<Vec<FileLock>> {
    let mut last_note = String::new();
    loop {
        cx.cancel.check()?;
        match try_lock_set(dir, locks, holder)? {
            Ok(held) => return Ok(held),
            Err(busy) => {
                let note = format!(
                    "waiting for {busy} {} (lock directory {})",
                    lock::describe_holders(&lock::holders(&busy.path(dir))),
                    dir.display()
                );
                if note != last_note {
                    cx.progress.note(&note);
                    last_note = note;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// "LLC 2 held by pid 4242 (ktstr build ...)" for each id.
pub fn describe_busy(dir: &Path, ids: &[usize]) -> String {
    ids.iter()
        .map(|&id| {
            format!(
                "LLC {id} {}",
                lock::describe_holders(&lock::holders(&llc_lock(dir, id)))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every `llc-<id>.lock` and `cpu-<n>.lock` in `dir` with holders and
/// waiters, LLCs first, numeric ids in order (for `ktstr locks`). A missing
/// directory lists nothing.
pub fn list(dir: &Path) -> Vec<LockInfo> {
    let mut out = lock_list::list_dir(dir, "llc", PREFIX);
    out.extend(lock_list::list_dir(dir, "cpu", CPU_PREFIX));
    out.sort_by_key(|l| {
        (
            l.kind != "llc",
            l.id.parse::<usize>().unwrap_or(usize::MAX),
            l.id.clone(),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another test thread may fork while these lock files are open: the
    /// child holds copies of their fds, and so the flocks, until it execs.
    /// A lock state is therefore asserted to settle, not to hold at once.
    fn settles(mut ok: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ok() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let other = lock::try_lock(&llc_lock(d, 2), LockMode::Exclusive)
            .unwrap()
            .unwrap();
        assert!(settles(|| busy(d, [0, 1, 2, 3]) == BTreeSet::from([2])));
        assert_eq!(try_lock_all(d, &[0, 1, 2]).unwrap().unwrap_err(), 2);
        // 0 and 1 were released again.
        let mut got = None;
        assert!(settles(|| {
            got = try_lock_all(d, &[0, 1]).unwrap().ok();
            got.is_some()
        }));
        assert_eq!(got.as_ref().unwrap().len(), 2);
        assert!(settles(
            || busy(d, [0, 1, 2, 3]) == BTreeSet::from([0, 1, 2])
        ));
        drop(other);
        drop(got);
        assert!(settles(|| busy(d, [0, 1, 2, 3]).is_empty()));
        assert_eq!(try_lock_all(d, &[0, 1, 2]).unwrap().unwrap().len(), 3);
    }

    #[test]
    fn lists_locks_with_holders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(list(&d.join("missing")).is_empty());
        let held = try_lock_all(d, &[10, 2]).unwrap().unwrap();
        std::fs::write(d.join("source-abc.lock"), b"").unwrap();
        let list = list(d);
        assert_eq!(
            list.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["2", "10"]
        );
        assert!(list.iter().all(|l| l.kind == "llc"));
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
