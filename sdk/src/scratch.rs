//! Scratch kernel trees (extracted tarballs, git checkouts): where they go,
//! how they are named, and how the ones a killed ktstr left are found.
//!
//! A source plugin unpacks or checks out into `<root>/scratch/<kind>-<pid>-<n>.part`
//! and renames it to `<kind>-<pid>-<n>` only once the tree is complete, so a
//! name without the suffix is always a whole tree. Any error or cancellation
//! before that removes the staging directory (drop). The host removes the
//! finished tree after the build; the pid in the name lets [`sweep_dead`]
//! remove what a `kill -9` left behind (liveness as [`crate::owned::pid_alive`]
//! says).
//!
//! Two markers beside an entry change that: `<name>.kept` (`--keep-source`:
//! the user asked for it, so no sweep ever removes it) and `<name>.failed`
//! (the tree or build log of a failed build, kept so the reproduce hint
//! works: a sweep removes it once the marker is [`FAILED_KEPT_FOR`] old).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{IoResultExt, Result, StageError};
use crate::paths;

const PART: &str = ".part";
const KEPT: &str = ".kept";
const FAILED: &str = ".failed";

/// How long the scratch tree or log of a failed build survives sweeps.
pub const FAILED_KEPT_FOR: Duration = Duration::from_secs(24 * 60 * 60);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A staging directory, removed on drop unless [`Scratch::install`] ran.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    dest: PathBuf,
    armed: bool,
}

impl Scratch {
    /// Create a new, empty `<root>/scratch/<kind>-<pid>-<n>.part`.
    pub fn stage(root: &Path, kind: &str) -> Result<Scratch> {
        let parent = paths::scratch_dir(root);
        std::fs::create_dir_all(&parent).map_err(|e| {
            StageError::io("create directory", &parent, e).with_hint(format!(
                "set {} to a writable directory",
                paths::CACHE_DIR_ENV
            ))
        })?;
        loop {
            let name = entry_name(kind);
            let dest = parent.join(&name);
            let path = parent.join(format!("{name}{PART}"));
            if std::fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Scratch {
                        path,
                        dest,
                        armed: true,
                    });
                }
                // Left by an earlier process with the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StageError::io("create directory", &path, e)),
            }
        }
    }

    /// The staging directory to fill.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move `tree` (the staging directory or a directory inside it) to the
    /// final `<kind>-<pid>-<n>` name; what else is left of the staging
    /// directory goes. Returns the tree's final path.
    pub fn install(mut self, tree: &Path) -> Result<PathBuf> {
        std::fs::rename(tree, &self.dest).at("rename into place", tree)?;
        if tree != self.path {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        self.armed = false;
        Ok(self.dest.clone())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A fresh scratch entry name of this process, `<kind>-<pid>-<n>`: what
/// [`sweep_dead`] removes once the process is gone. Whoever creates the
/// entry must still cope with one left by an earlier process of that pid.
pub fn entry_name(kind: &str) -> String {
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The kind and pid in a scratch entry name `<kind>-<pid>-<n>[.part]`.
pub fn owner(name: &str) -> Option<(&str, u32)> {
    let base = name.strip_suffix(PART).unwrap_or(name);
    let mut parts = base.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let kind = parts.next()?;
    if kind.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind, pid.parse().ok()?))
}

fn marker(entry: &Path, suffix: &str) -> PathBuf {
    let mut name = entry.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    entry.with_file_name(name)
}

fn write_marker(entry: &Path, suffix: &str) {
    if let Err(e) = std::fs::write(marker(entry, suffix), b"") {
        tracing::warn!("cannot mark {} as kept: {e}", entry.display());
    }
}

/// Keep the scratch entry `entry` (a tree's top directory or a log file)
/// from every sweep: the user asked for it (`--keep-source`).
pub fn mark_kept(entry: &Path) {
    write_marker(entry, KEPT);
}

/// Keep the scratch entry `entry` of a failed build from sweeps for
/// [`FAILED_KEPT_FOR`].
pub fn mark_failed(entry: &Path) {
    write_marker(entry, FAILED);
}

/// Whether `entry` carries a marker that protects it from sweeps now.
pub fn is_marked(entry: &Path) -> bool {
    if marker(entry, KEPT).exists() {
        return true;
    }
    std::fs::metadata(marker(entry, FAILED))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < FAILED_KEPT_FOR)
}

/// Remove the scratch entries under `root` whose process is gone. Returns
/// what was removed; an entry that cannot be removed is logged and skipped.
pub fn sweep_dead(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(paths::scratch_dir(root)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A marker whose entry is gone is removed with it.
        if let Some(base) = name
            .strip_suffix(KEPT)
            .or_else(|| name.strip_suffix(FAILED))
        {
            let target = entry.path().with_file_name(base);
            if owner(base).is_some() && std::fs::symlink_metadata(&target).is_err() {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let Some((_, pid)) = owner(name) else {
            continue;
        };
        if crate::owned::pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        if is_marked(&path) {
            continue;
        }
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {
                let _ = std::fs::remove_file(marker(&path, FAILED));
                removed.push(path)
            }
            Err(e) => tracing::warn!("cannot remove stale scratch {}: {e}", path.display()),
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_kind_and_pid() {
        assert_eq!(owner("tarball-123-0"), Some(("tarball", 123)));
        assert_eq!(owner("tarball-123-7.part"), Some(("tarball", 123)));
        assert_eq!(owner("git-remote-77-4"), Some(("git-remote", 77)));
        assert_eq!(owner("linux-6.12"), None);
        assert_eq!(owner("notes"), None);
        let fresh = entry_name("git-remote");
        assert_eq!(owner(&fresh), Some(("git-remote", std::process::id())));
        assert_ne!(entry_name("git-remote"), fresh);
    }

    #[test]
    fn staging_is_removed_unless_installed() {
        let root = tempfile::tempdir().unwrap();
        let s = Scratch::stage(root.path(), "test").unwrap();
        let staged = s.path().to_path_buf();
        assert!(staged.is_dir() && staged.to_string_lossy().ends_with(".part"));
        drop(s);
        assert!(!staged.exists());

        let s = Scratch::stage(root.path(), "test").unwrap();
        let inner = s.path().join("linux-6.12");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("Makefile"), "").unwrap();
        let staged = s.path().to_path_buf();
        let tree = s.install(&inner).unwrap();
        assert!(tree.join("Makefile").is_file());
        assert!(!staged.exists());
        assert_eq!(
            owner(tree.file_name().unwrap().to_str().unwrap())
                .unwrap()
                .0,
            "test"
        );
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let scratch = paths::scratch_dir(root.path());
        let mine = scratch.join(format!("git-{}-0", std::process::id()));
        // Pid numbers wrap well below this, so no such process runs.
        let dead = scratch.join(format!("tarball-{}-0.part", i32::MAX - 1));
        let other = scratch.join("notes");
        for d in [&mine, &dead, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(sweep_dead(root.path()), vec![dead.clone()]);
        assert!(mine.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn kept_and_recently_failed_entries_survive_sweeps() {
        let root = tempfile::tempdir().unwrap();
        let scratch = paths::scratch_dir(root.path());
        let dead_pid = i32::MAX - 1;
        let kept = scratch.join(format!("tarball-{dead_pid}-0"));
        let failed = scratch.join(format!("git-{dead_pid}-1"));
        let old_failed = scratch.join(format!("buildlog-{dead_pid}-2"));
        for d in [&kept, &failed] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&old_failed, "log").unwrap();
        mark_kept(&kept);
        mark_failed(&failed);
        mark_failed(&old_failed);
        // A day and a bit ago.
        let stale = std::time::SystemTime::now() - FAILED_KEPT_FOR - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(marker(&old_failed, FAILED))
            .unwrap()
            .set_modified(stale)
            .unwrap();
        assert!(is_marked(&kept) && is_marked(&failed) && !is_marked(&old_failed));

        assert_eq!(sweep_dead(root.path()), vec![old_failed.clone()]);
        assert!(kept.exists() && failed.exists() && !old_failed.exists());
        assert!(!marker(&old_failed, FAILED).exists(), "its marker goes too");

        // A marker left without its entry is tidied away.
        std::fs::remove_dir_all(&failed).unwrap();
        sweep_dead(root.path());
        assert!(!marker(&failed, FAILED).exists());
        assert!(marker(&kept, KEPT).exists());
    }
}
