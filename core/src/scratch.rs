//! Scratch kernel trees (extracted tarballs, git checkouts): removed after
//! the build whatever happens, and swept when their process died.
//!
//! Acquirers put each scratch tree in `<root>/scratch/<kind>-<pid>-<n>/`.
//! The host owns its removal, so a plugin cannot forget it and `--keep-source`
//! works the same for every source. A `kill -9` leaves the directory behind;
//! the next build removes directories whose pid is no longer alive.

use std::path::{Path, PathBuf};

use ktstr_sdk::context::StageContext;
use ktstr_sdk::paths;
use ktstr_sdk::source::AcquiredSource;

/// Removes a scratch tree when dropped, unless it is kept.
pub struct ScratchGuard<'a> {
    dir: Option<PathBuf>,
    keep: bool,
    cx: &'a StageContext,
}

impl<'a> ScratchGuard<'a> {
    /// Guard `source` if it is a scratch tree. Only a directory directly
    /// under `<root>/scratch` is ever removed: a plugin that marks some
    /// other path temporary gets a warning, never a deleted user directory.
    pub fn new(root: &Path, source: &AcquiredSource, keep: bool, cx: &'a StageContext) -> Self {
        let dir = if source.is_temp {
            let top = scratch_top(root, &source.source_dir);
            if top.is_none() {
                cx.progress.warn(&format!(
                    "the source plugin marked {} temporary, but it is not under {}; \
                     leaving it in place",
                    source.source_dir.display(),
                    paths::scratch_dir(root).display()
                ));
            }
            top
        } else {
            None
        };
        Self { dir, keep, cx }
    }
}

impl Drop for ScratchGuard<'_> {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if self.keep {
            self.cx
                .progress
                .note(&format!("kept the source tree in {}", dir.display()));
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.cx
                .progress
                .warn(&format!("could not remove {}: {e}", dir.display()));
        }
    }
}

/// The `<root>/scratch/<entry>` directory that contains `tree`.
fn scratch_top(root: &Path, tree: &Path) -> Option<PathBuf> {
    let scratch = paths::scratch_dir(root);
    let scratch = scratch.canonicalize().unwrap_or(scratch);
    let tree = tree.canonicalize().unwrap_or_else(|_| tree.to_path_buf());
    let rest = tree.strip_prefix(&scratch).ok()?;
    let first = rest.components().next()?;
    Some(scratch.join(first))
}

/// The pid in a `<kind>-<pid>-<n>` scratch name.
fn owner_pid(name: &str) -> Option<i32> {
    let mut parts = name.rsplitn(3, '-');
    let _n: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

fn alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove scratch trees whose process is gone. Returns what was removed.
pub fn sweep(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(paths::scratch_dir(root)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if !alive(pid) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::source::SourceIdentity;

    fn source(dir: PathBuf, is_temp: bool) -> AcquiredSource {
        AcquiredSource {
            source_dir: dir,
            identity: SourceIdentity {
                kind: "tarball".into(),
                id: "x".into(),
                short: None,
            },
            version: None,
            is_temp,
            is_dirty: false,
            is_git: false,
            is_local: false,
        }
    }

    #[test]
    fn names_carry_the_owner_pid() {
        assert_eq!(owner_pid("tarball-123-0"), Some(123));
        assert_eq!(owner_pid("git-remote-77-4"), Some(77));
        assert_eq!(owner_pid("linux-6.12"), None);
        assert_eq!(owner_pid("notes"), None);
    }

    #[test]
    fn removes_the_whole_scratch_entry_unless_kept() {
        let root = tempfile::tempdir().unwrap();
        let top = paths::scratch_dir(root.path()).join("tarball-1-0");
        let tree = top.join("linux-6.12.3");
        std::fs::create_dir_all(&tree).unwrap();
        let cx = StageContext::quiet();
        drop(ScratchGuard::new(
            root.path(),
            &source(tree.clone(), true),
            true,
            &cx,
        ));
        assert!(tree.exists(), "--keep-source keeps it");
        drop(ScratchGuard::new(
            root.path(),
            &source(tree.clone(), true),
            false,
            &cx,
        ));
        assert!(!top.exists());
    }

    #[test]
    fn never_removes_a_tree_outside_scratch() {
        let root = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        let cx = StageContext::quiet();
        drop(ScratchGuard::new(
            root.path(),
            &source(user.path().to_path_buf(), true),
            false,
            &cx,
        ));
        assert!(user.path().exists());
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let scratch = paths::scratch_dir(root.path());
        let mine = scratch.join(format!("git-{}-0", std::process::id()));
        // Pid numbers wrap well below i32::MAX, so this one is not running.
        let dead = scratch.join(format!("tarball-{}-0", i32::MAX - 1));
        let other = scratch.join("notes");
        for d in [&mine, &dead, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(sweep(root.path()), vec![dead.clone()]);
        assert!(mine.exists() && other.exists() && !dead.exists());
    }
}
