//! The probe's fast path: is every tracked file exactly as the index
//! recorded it?
//!
//! On a clean kernel tree nearly all of the probe's time is one `lstat` per
//! tracked file (~90k). Stat'ing by absolute path makes the kernel resolve
//! every component of every path again; here each directory is opened once
//! (component by component, never following a symlink, as git would not)
//! and its files are stat'ed relative to it with `fstatat`.
//!
//! Only a *yes* is trusted. Any entry that is special (a conflict, `git add
//! -N`, skip-worktree, assume-unchanged, a sparse directory), missing, of
//! another type, with stat data that differs in any field git may compare,
//! or racy (modified in the same instant the index was written, so its stat
//! data cannot vouch for its content) makes the answer "cannot tell", and
//! the full gix status walk in [`crate::changes`] decides, applying the
//! repository's own stat rules and comparing content where needed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::bstr::{BStr, ByteSlice};
use gix::index::Entry;
use gix::index::entry::{Flags, Mode, Stat, stat};
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode as FileMode, SFlag, fstatat};

/// Stricter than any git configuration: a mismatch only costs the slow
/// path. The device number is left out, as git leaves it out by default
/// (it is not stable across some file systems and reboots).
const STRICT: stat::Options = stat::Options {
    trust_ctime: true,
    check_stat: true,
    use_nsec: true,
    use_stdev: false,
};

/// A directory opened only to stat relative to it.
const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Below this many entries one thread is faster than starting more.
const ENTRIES_PER_THREAD: usize = 8192;

/// `true` only when every tracked file under `prefix` (all of them when
/// `None`) has exactly the type, mode and stat data the index recorded and
/// none is racy. Submodules are skipped (the probe ignores them). Large
/// indexes are checked in a few threads, each over a contiguous run of
/// entries, like git's preloaded index.
pub(crate) fn all_tracked_files_match(
    workdir: &Path,
    index: &gix::index::State,
    prefix: Option<&BStr>,
) -> bool {
    let Ok(root) = nix::fcntl::open(workdir, DIR_FLAGS, FileMode::empty()) else {
        return false;
    };
    let entries = index.entries();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(entries.len().div_ceil(ENTRIES_PER_THREAD))
        .max(1);
    let changed = AtomicBool::new(false);
    let check = |run: &[Entry]| {
        if !run_matches(root.as_fd(), index, run, prefix, &changed) {
            changed.store(true, Ordering::Relaxed);
        }
    };
    if threads == 1 {
        check(entries);
    } else {
        std::thread::scope(|scope| {
            for run in entries.chunks(entries.len().div_ceil(threads)) {
                scope.spawn(move || check(run));
            }
        });
    }
    !changed.load(Ordering::Relaxed)
}

/// One run of entries; gives up early once another run found a change.
fn run_matches(
    root: BorrowedFd<'_>,
    index: &gix::index::State,
    run: &[Entry],
    prefix: Option<&BStr>,
    changed: &AtomicBool,
) -> bool {
    let mut dirs = DirStack::new(root);
    let written = index.timestamp();
    let special = Flags::ASSUME_VALID | Flags::SKIP_WORKTREE | Flags::INTENT_TO_ADD;
    for (n, entry) in run.iter().enumerate() {
        if n % 1024 == 0 && changed.load(Ordering::Relaxed) {
            return false;
        }
        let path = entry.path(index);
        if prefix.is_some_and(|p| !path.starts_with(p.as_bytes())) {
            continue;
        }
        if entry.mode.is_submodule() {
            continue;
        }
        if entry.stage_raw() != 0 || entry.flags.intersects(special) {
            return false;
        }
        let (dir, name) = match path.rfind_byte(b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (&path[..0], path),
        };
        let Some(dirfd) = dirs.enter(dir.as_bstr()) else {
            return false;
        };
        let Ok(found) = fstatat(dirfd, name.as_bytes(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return false;
        };
        if !same_type(entry.mode, &found)
            || !entry.stat.matches(&as_index_stat(&found), STRICT)
            || entry.stat.is_racy(written, STRICT)
        {
            return false;
        }
    }
    true
}

/// Open directories along the current entry's path, reused while entries
/// stay in the same directory (the index is sorted by path).
struct DirStack<'r> {
    root: BorrowedFd<'r>,
    /// `(component, fd)` from the top of the work tree down.
    open: Vec<(Vec<u8>, OwnedFd)>,
}

impl<'r> DirStack<'r> {
    fn new(root: BorrowedFd<'r>) -> Self {
        Self {
            root,
            open: Vec::new(),
        }
    }

    /// The directory `dir` (relative to the work tree, `""` for its top),
    /// or `None` when it cannot be opened without following a symlink.
    fn enter(&mut self, dir: &BStr) -> Option<std::os::fd::BorrowedFd<'_>> {
        let wanted: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split_str("/").collect()
        };
        let common = self
            .open
            .iter()
            .zip(&wanted)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.open.truncate(common);
        for component in &wanted[common..] {
            let parent = self.open.last().map_or(self.root, |(_, fd)| fd.as_fd());
            let fd = openat(
                parent,
                *component,
                DIR_FLAGS | OFlag::O_NOFOLLOW,
                FileMode::empty(),
            )
            .ok()?;
            self.open.push((component.to_vec(), fd));
        }
        Some(self.open.last().map_or(self.root, |(_, fd)| fd.as_fd()))
    }
}

/// The index records regular files as 644 or 755 and symlinks as such;
/// anything else on disk (a directory where a file was) is a change.
fn same_type(mode: Mode, found: &FileStat) -> bool {
    let kind = SFlag::from_bits_truncate(found.st_mode & SFlag::S_IFMT.bits());
    let executable = found.st_mode & 0o100 != 0;
    if mode == Mode::FILE {
        kind == SFlag::S_IFREG && !executable
    } else if mode == Mode::FILE_EXECUTABLE {
        kind == SFlag::S_IFREG && executable
    } else if mode == Mode::SYMLINK {
        kind == SFlag::S_IFLNK
    } else {
        false
    }
}

/// Stat data as git stores it: every field truncated to 32 bits.
fn as_index_stat(found: &FileStat) -> Stat {
    Stat {
        mtime: stat::Time {
            secs: found.st_mtime as u32,
            nsecs: found.st_mtime_nsec as u32,
        },
        ctime: stat::Time {
            secs: found.st_ctime as u32,
            nsecs: found.st_ctime_nsec as u32,
        },
        dev: found.st_dev as u32,
        ino: found.st_ino as u32,
        uid: found.st_uid,
        gid: found.st_gid,
        size: found.st_size as u32,
    }
}
