//! flock(2)-based file locks and who holds them.
//!
//! A lock is an open file with a `flock`; dropping the [`FileLock`] closes
//! the file and releases it, also when the process dies. Holders are read
//! from `/proc/locks` (matched by device and inode) so a waiting user is
//! told which process they wait for. Lock files can be deleted safely only
//! through [`prune`], because every lock taken here checks after the flock
//! that its path still names the file it locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{IoResultExt, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
    inherited: bool,
}

/// Fds of the locks every spawned command inherits (see the module doc).
static INHERITED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn inherited_registry() -> MutexGuard<'static, Vec<RawFd>> {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fds every command spawned now must inherit. Hold the guard until
/// the spawn returns, so no fd in it is closed (and its number reused)
/// between the snapshot and the fork.
pub fn inherited_fds() -> MutexGuard<'static, Vec<RawFd>> {
    inherited_registry()
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Let every command spawned (by the SDK's runners) while this lock is
    /// held inherit it: the lock is then released only when this handle is
    /// dropped *and* every such process (and its descendants) has exited.
    /// For locks that guard what a build's processes write.
    pub fn inherit_into_commands(mut self) -> Self {
        if !self.inherited {
            inherited_registry().push(self._file.as_raw_fd());
            self.inherited = true;
        }
        self
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if self.inherited {
            let fd = self._file.as_raw_fd();
            inherited_registry().retain(|f| *f != fd);
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at("create lock directory", parent)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open lock file", path)
}

/// Take the lock if it is free; `Ok(None)` when another holder has it.
pub fn try_lock(path: &Path, mode: LockMode) -> Result<Option<FileLock>> {
    acquire(path, mode, false)
}

/// Wait until the lock is granted.
pub fn lock(path: &Path, mode: LockMode) -> Result<FileLock> {
    Ok(acquire(path, mode, true)?.expect("a blocking lock is granted or fails"))
}

/// Open `path` and flock it, then check that `path` still names the inode
/// locked: a [`prune`] may have unlinked it between the open and the flock
/// (the lock is then on a file nobody else can find), so lock again on
/// whatever the path names now. See "Pruning lock files" in
/// docs/reservation.md.
fn acquire(path: &Path, mode: LockMode, blocking: bool) -> Result<Option<FileLock>> {
    loop {
        let file = open_lock_file(path)?;
        let res = match (mode, blocking) {
            (LockMode::Shared, false) => file.try_lock_shared(),
            (LockMode::Exclusive, false) => file.try_lock(),
            (LockMode::Shared, true) => file.lock_shared().map_err(TryLockError::Error),
            (LockMode::Exclusive, true) => file.lock().map_err(TryLockError::Error),
        };
        match res {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            // A signal (Ctrl-C) ended the wait.
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err(crate::StageError::cancelled());
            }
            Err(TryLockError::Error(e)) => return Err(e).at("lock", path),
        }
        if still_named(&file, path)? {
            return Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
                inherited: false,
            }));
        }
    }
}

/// Whether `path` names the file `file` has open (through a symlink too,
/// as the open followed it).
fn still_named(file: &File, path: &Path) -> Result<bool> {
    let held = file.metadata().at("stat lock file", path)?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at("stat lock file", path),
    }
}

/// Delete the lock file at `path` if nobody holds or waits to take it
/// (`Ok(false)` when it is held, or already gone). Safe against every
/// locker of this module: the file is unlinked while holding its exclusive
/// lock, and a locker that opened it before the unlink finds, once its
/// flock is granted, that the path no longer names what it locked, and
/// locks the path afresh (see [`acquire`]). A locker that does not check
/// (an old ktstr, `flock(1)`) could hold the unlinked file while another
/// holds the new one, so prune only files that only this module locks.
pub fn prune(path: &Path) -> Result<bool> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    let Some(held) = try_lock(path, LockMode::Exclusive)? else {
        return Ok(false);
    };
    let removed = match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).at("remove lock file", path),
    };
    drop(held);
    Ok(removed)
}

/// One process holding (or waiting for) a lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// `READ` (shared) or `WRITE` (exclusive).
    pub mode: String,
    /// True for a process blocked waiting, not holding.
    pub waiting: bool,
    /// The process's command line, space-joined; empty if unreadable.
    pub cmdline: String,
}

/// Holders and waiters of the lock file at `path`, from `/proc/locks`.
pub fn holders(path: &Path) -> Vec<Holder> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    parse_proc_locks(&proc_locks(), meta.dev(), meta.ino())
}

/// The text of `/proc/locks`, empty when unreadable.
///
/// The kernel renders the table at most a page per `read()`, and no more
/// than the caller's buffer asks for (a 32-byte read renders one line).
/// Between reads it finds its place in the lock list again by position, so
/// while other processes take and release locks, a table read in small
/// pieces can skip a lock that is held all along. Reading with a buffer of
/// many pages makes a table of up to a page one walk; a longer one is read
/// several times and all kept ([`parse_proc_locks`] drops repeats), which makes a
/// miss unlikely. Callers treat the table as a hint either way.
pub fn proc_locks() -> String {
    use std::io::Read;
    fn read_once() -> Option<String> {
        let mut f = File::open("/proc/locks").ok()?;
        let mut chunk = vec![0u8; 1 << 16];
        let mut text = Vec::new();
        loop {
            match f.read(&mut chunk) {
                Ok(0) => return String::from_utf8(text).ok(),
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
    let Some(first) = read_once() else {
        return String::new();
    };
    if first.len() < 4096 {
        return first;
    }
    let mut table = first;
    for _ in 1..READS_OF_A_LONG_TABLE {
        table.push('\n');
        table.push_str(&read_once().unwrap_or_default());
    }
    table
}

/// See [`proc_locks`]: how often a table longer than a page is read.
const READS_OF_A_LONG_TABLE: usize = 4;

fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Parse `/proc/locks` lines such as
/// `3: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF` and
/// `3: -> FLOCK  ADVISORY  WRITE 4343 00:2a:1234 0 EOF`.
pub fn parse_proc_locks(table: &str, dev: u64, ino: u64) -> Vec<Holder> {
    let want = format!("{:02x}:{:02x}:{ino}", dev_major(dev), dev_minor(dev));
    let mut out = Vec::new();
    for line in table.lines() {
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        fields.remove(0); // "N:"
        let waiting = fields.first() == Some(&"->");
        if waiting {
            fields.remove(0);
        }
        // FLOCK ADVISORY WRITE PID DEV:INODE START END
        if fields.len() < 5 || fields[4] != want {
            continue;
        }
        let Ok(pid) = fields[3].parse::<u32>() else {
            continue;
        };
        let mode = fields[2];
        if out
            .iter()
            .any(|h: &Holder| h.pid == pid && h.mode == mode && h.waiting == waiting)
        {
            continue;
        }
        out.push(Holder {
            pid,
            mode: mode.to_string(),
            waiting,
            cmdline: cmdline_of(pid),
        });
    }
    out
}

/// `/proc/<pid>/cmdline`, NULs turned into spaces.
pub fn cmdline_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// "pid 4242 (ktstr build --kernel ./linux)" lines for messages.
pub fn describe_holders(holders: &[Holder]) -> String {
    let held: Vec<String> = holders
        .iter()
        .filter(|h| !h.waiting)
        .map(|h| {
            if h.cmdline.is_empty() {
                format!("pid {}", h.pid)
            } else {
                format!("pid {} ({})", h.pid, h.cmdline)
            }
        })
        .collect();
    if held.is_empty() {
        "holder unknown (not visible in /proc/locks)".to_string()
    } else {
        format!("held by {}", held.join(", "))
    }
}

/// Try the lock; if it is taken, call `on_wait` with the holders, then
/// block until it is granted. Returns the lock and whether it waited.
pub fn lock_reporting(
    path: &Path,
    mode: LockMode,
    on_wait: impl FnOnce(&[Holder]),
) -> Result<(FileLock, bool)> {
    if let Some(l) = try_lock(path, mode)? {
        return Ok((l, false));
    }
    on_wait(&holders(path));
    Ok((lock(path, mode)?, true))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether `ok` comes true within 30 s, polled every 5 ms. Another
    /// test thread may fork while a lock file is open: the child holds a
    /// copy of the fd, and so the flock, until it execs. A lock dropped
    /// here is therefore asserted to become free, not to be free at once.
    pub(crate) fn settles(mut ok: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ok() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn exclusive_excludes_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.lock");
        let a = try_lock(&p, LockMode::Exclusive).unwrap().unwrap();
        assert!(try_lock(&p, LockMode::Exclusive).unwrap().is_none());
        assert!(try_lock(&p, LockMode::Shared).unwrap().is_none());
        drop(a);
        // Blocking takes from here on: a test spawning a process at this
        // moment briefly shares the fd (fork before exec), so "released"
        // means "grantable soon", not "this instant".
        let s1 = lock(&p, LockMode::Shared).unwrap();
        let s2 = try_lock(&p, LockMode::Shared).unwrap().unwrap();
        assert!(try_lock(&p, LockMode::Exclusive).unwrap().is_none());
        drop((s1, s2));
        lock(&p, LockMode::Exclusive).unwrap();
    }

    #[test]
    fn prune_removes_a_free_file_and_keeps_a_held_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.lock");
        assert!(!prune(&p).unwrap(), "nothing to prune");
        assert!(!p.exists(), "prune must not create the file");
        let held = try_lock(&p, LockMode::Shared).unwrap().unwrap();
        assert!(!prune(&p).unwrap());
        assert!(p.exists(), "a held lock file is kept");
        drop(held);
        assert!(settles(|| prune(&p).unwrap()), "a free lock file is pruned");
        assert!(!p.exists());
    }

    /// Lockers (each its own open file, as separate processes are) and a
    /// pruner race on one path: the lock is never held twice at once,
    /// which it would be if a locker kept a lock on an unlinked file.
    #[test]
    fn pruning_never_lets_two_holders_in() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let p = std::sync::Arc::new(dir.path().join("race.lock"));
        let inside = std::sync::Arc::new(AtomicUsize::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let pruner = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut pruned = 0;
                while !stop.load(Ordering::Relaxed) {
                    pruned += usize::from(prune(&p).unwrap());
                }
                pruned
            })
        };
        let lockers: Vec<_> = (0..4)
            .map(|_| {
                let (p, inside) = (p.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let held = lock(&p, LockMode::Exclusive).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(held);
                    }
                })
            })
            .collect();
        for l in lockers {
            l.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let pruned = pruner.join().unwrap();
        assert!(
            pruned > 0,
            "the pruner never won a race; the test tested nothing"
        );
    }

    #[test]
    fn a_symlinked_lock_file_locks_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.lock");
        let link = dir.path().join("link.lock");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let held = lock(&link, LockMode::Exclusive).unwrap();
        assert!(try_lock(&target, LockMode::Shared).unwrap().is_none());
        drop(held);
    }

    #[test]
    fn holders_names_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.lock");
        let _held = try_lock(&p, LockMode::Exclusive).unwrap().unwrap();
        let hs = holders(&p);
        let me = std::process::id();
        assert!(
            hs.iter()
                .any(|h| h.pid == me && h.mode == "WRITE" && !h.waiting),
            "{hs:?}"
        );
        assert!(describe_holders(&hs).contains(&format!("pid {me}")));
    }

    /// Another process holds the lock: the waiter is told who (pid and
    /// command line from /proc/locks), blocks, and proceeds once released.
    #[test]
    fn contention_reports_the_holder_then_proceeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.lock");
        let release = dir.path().join("release");
        std::fs::write(&p, b"").unwrap();
        // flock(1) --close: only flock itself holds the lock, until the
        // waiter creates `release` (or a minute passes, if this test dies).
        let mut holder = std::process::Command::new("flock")
            .args(["--exclusive", "--close"])
            .arg(&p)
            .args([
                "sh",
                "-c",
                "i=0; while [ ! -e \"$0\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
            ])
            .arg(&release)
            .spawn()
            .expect("flock(1) from util-linux");
        let pid = holder.id();
        assert!(
            settles(|| holders(&p).iter().any(|h| h.pid == pid)),
            "holder {pid} never locked"
        );
        let mut reported = Vec::new();
        let (_lock, waited) = lock_reporting(&p, LockMode::Exclusive, |h| {
            reported = h.to_vec();
            std::fs::write(&release, b"").unwrap();
        })
        .unwrap();
        assert!(waited, "the lock was free although flock held it");
        assert!(
            reported
                .iter()
                .any(|h| h.pid == pid && !h.waiting && h.cmdline.starts_with("flock")),
            "holder {pid} not reported: {reported:?}"
        );
        assert!(holder.wait().unwrap().success());
    }

    #[test]
    fn parses_waiters_and_ignores_other_inodes() {
        let dev = (0x08u64 << 8) | 0x01;
        let table = "1: FLOCK  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 11 08:01:77 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 12 08:01:78 0 EOF\n\
                     3: POSIX  ADVISORY  READ 13 08:01:77 0 EOF\n";
        let hs = parse_proc_locks(table, dev, 77);
        assert_eq!(hs.len(), 3);
        assert!(!hs[0].waiting && hs[0].pid == 10);
        assert!(hs[1].waiting && hs[1].pid == 11);
        assert_eq!(hs[2].pid, 13);
    }

    /// A table read twice lists a lock twice, under other line numbers.
    #[test]
    fn repeated_lines_give_one_holder() {
        let dev = (0x08u64 << 8) | 0x01;
        let table = "1: FLOCK  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 11 08:01:77 0 EOF\n\n\
                     4: FLOCK  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                     4: -> FLOCK  ADVISORY  WRITE 11 08:01:77 0 EOF\n";
        let hs = parse_proc_locks(table, dev, 77);
        assert_eq!(hs.len(), 2, "{hs:?}");
    }

    /// Other threads take and release locks all the while: a lock held
    /// throughout is in every reading of a table shorter than a page.
    #[test]
    fn a_held_lock_is_seen_while_others_churn() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("held.lock");
        let _held = try_lock(&p, LockMode::Exclusive).unwrap().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn: Vec<_> = (0..2)
            .map(|t| {
                let dir = dir.path().to_path_buf();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let many: Vec<_> = (0..8)
                            .filter_map(|i| {
                                try_lock(&dir.join(format!("c{t}-{i}.lock")), LockMode::Shared)
                                    .unwrap()
                            })
                            .collect();
                        drop(many);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let me = std::process::id();
        for _ in 0..300 {
            let hs = holders(&p);
            assert!(hs.iter().any(|h| h.pid == me), "held lock missed: {hs:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in churn {
            assert!(t.join().unwrap() > 0);
        }
    }
}
