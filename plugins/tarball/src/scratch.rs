//! Scratch trees under `<cache root>/scratch`: naming, staging and the
//! sweep of trees whose process died.
//!
//! A tree is unpacked into `tarball-<pid>-<n>.part` and renamed to
//! `tarball-<pid>-<n>` only once it is complete and verified, so a tree
//! without the suffix is always whole. The pid in the name is what lets
//! [`sweep_dead`] remove what a killed ktstr left behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ktstr_sdk::prelude::*;

/// The prefix of this plugin's scratch entries.
pub const KIND: &str = "tarball";
const PART: &str = ".part";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A staging directory removed on drop unless [`Staging::install`] ran.
#[derive(Debug)]
pub struct Staging {
    pub path: PathBuf,
    /// Where the finished tree goes.
    pub dest: PathBuf,
    armed: bool,
}

impl Staging {
    /// Create a fresh `tarball-<pid>-<n>.part` under `scratch`.
    pub fn create(scratch: &Path) -> Result<Staging> {
        std::fs::create_dir_all(scratch).map_err(|e| {
            StageError::io("create directory", scratch, e).with_hint(format!(
                "set {} to a writable directory",
                ktstr_sdk::paths::CACHE_DIR_ENV
            ))
        })?;
        let pid = std::process::id();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{KIND}-{pid}-{n}");
            let dest = scratch.join(&name);
            let path = scratch.join(format!("{name}{PART}"));
            if std::fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Staging {
                        path,
                        dest,
                        armed: true,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StageError::io("create directory", &path, e)),
            }
        }
    }

    /// Move `tree` (the staging dir or a directory inside it) to
    /// [`Staging::dest`] and drop what is left of the staging dir.
    pub fn install(mut self, tree: &Path) -> Result<PathBuf> {
        std::fs::rename(tree, &self.dest).at("rename into place", tree)?;
        if tree != self.path {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        self.armed = false;
        Ok(self.dest.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The pid in a scratch entry name `<kind>-<pid>-<n>[.suffix]`.
pub fn owner_pid(name: &str) -> Option<(String, u32)> {
    let base = name.split('.').next()?;
    let mut parts = base.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let kind = parts.next()?;
    if kind.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((kind.to_string(), pid.parse().ok()?))
}

fn alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove scratch entries (`<kind>-<pid>-<n>` and their `.part` staging
/// dirs) under `scratch` whose process is gone. `kind` limits the sweep to
/// one prefix (`Some("tarball")`); `None` sweeps every kind. Returns what
/// was removed; entries that cannot be removed are logged and skipped.
pub fn sweep_dead(scratch: &Path, kind: Option<&str>) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(scratch) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StageError::io("read", scratch, e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((entry_kind, pid)) = owner_pid(&name) else {
            continue;
        };
        if kind.is_some_and(|k| k != entry_kind) || alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!("cannot remove stale scratch {}: {e}", path.display()),
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_kind_and_pid() {
        assert_eq!(owner_pid("tarball-123-0"), Some(("tarball".into(), 123)));
        assert_eq!(
            owner_pid("tarball-123-4.part"),
            Some(("tarball".into(), 123))
        );
        assert_eq!(owner_pid("git-work-77-1"), Some(("git-work".into(), 77)));
        assert_eq!(owner_pid("linux"), None);
        assert_eq!(owner_pid("tarball-x-1"), None);
    }

    #[test]
    fn staging_is_removed_unless_installed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::create(dir.path()).unwrap();
        let path = s.path.clone();
        std::fs::write(path.join("f"), b"x").unwrap();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(".part")
        );
        drop(s);
        assert!(!path.exists());
        let s = Staging::create(dir.path()).unwrap();
        std::fs::create_dir(s.path.join("linux-1.2.3")).unwrap();
        let tree = s.path.join("linux-1.2.3");
        let staging = s.path.clone();
        let dest = s.install(&tree).unwrap();
        assert!(dest.is_dir());
        assert!(!staging.exists());
    }

    #[test]
    fn sweep_removes_dead_pids_only() {
        let dir = tempfile::tempdir().unwrap();
        let mine = format!("tarball-{}-0", std::process::id());
        // pid_max is at most 4194304 on Linux, so this pid cannot be alive.
        for name in [
            &mine,
            "tarball-4999999-1",
            "tarball-4999999-2.part",
            "git-4999999-1",
            "notes",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let removed = sweep_dead(dir.path(), Some(KIND)).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(dir.path().join(&mine).exists());
        assert!(dir.path().join("git-4999999-1").exists());
        assert!(dir.path().join("notes").exists());
        let removed = sweep_dead(dir.path(), None).unwrap();
        assert_eq!(removed, vec![dir.path().join("git-4999999-1")]);
        assert!(
            sweep_dead(&dir.path().join("missing"), None)
                .unwrap()
                .is_empty()
        );
    }
}
