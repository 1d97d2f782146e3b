//! Directories named after the process that owns them, and the one rule
//! that says whether that process still runs.
//!
//! A store, a pull or a git mirror init stages its work in a temporary
//! directory; a `kill -9` leaves it behind. Naming each such directory
//! `.tmp-<what>-<pid>` lets any later run remove the ones whose owner died,
//! without knowing which plugin made them: since pids contain no `-`, the
//! owner is always the part after the last `-`. Scratch trees
//! ([`crate::scratch`]) and cpuset sandboxes carry a pid in their names
//! too, and every sweep asks [`pid_alive`].

use std::path::{Path, PathBuf};

/// Prefix of every owned temporary directory.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Whether process `pid` exists (in this pid namespace).
///
/// Asks the kernel with `kill(pid, 0)` rather than looking for
/// `/proc/<pid>`, so the answer is right where `/proc` is not mounted:
/// `ESRCH` is the only "gone"; `EPERM` means it exists but belongs to
/// someone else. Pid 0 and pids beyond `i32` name no single process.
pub fn pid_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    if pid == std::process::id() {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// `.tmp-<what>-<pid>`, owned by this process. `what` must make the name
/// unique among this process's temporary directories in one parent.
pub fn temp_name(what: &str) -> String {
    format!("{TEMP_PREFIX}{what}-{}", std::process::id())
}

/// The `what` and owner pid of a `.tmp-<what>-<pid>` name.
pub fn temp_owner(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (what, pid) = rest.rsplit_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((what, pid.parse().ok()?))
}

/// Remove the `.tmp-<what>-<pid>` directories directly in `dir` whose
/// `what` satisfies `mine` and whose owner is gone. Failures are logged,
/// never returned: a leftover wastes space but must not fail a run. Only
/// directories are removed (a file or symlink is not ours to judge).
/// Returns what was removed.
pub fn sweep_dead_temp(dir: &Path, mine: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!("cannot list {} for stale temp dirs: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((what, pid)) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if !mine(what) || pid_alive(pid) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::debug!("removed {} left by dead pid {pid}", path.display());
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot remove stale temp dir {} (pid {pid} is gone): {e}",
                path.display()
            ),
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pid numbers wrap well below this, so no such process runs.
    const DEAD: u32 = i32::MAX as u32 - 1;

    #[test]
    fn liveness_needs_no_proc() {
        assert!(pid_alive(std::process::id()));
        // pid 1 exists in every namespace; it may belong to someone else.
        assert!(pid_alive(1));
        assert!(!pid_alive(DEAD));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn owner_is_the_last_dash_field() {
        assert_eq!(
            temp_owner(".tmp-6.12.3-tarball-x86_64-1a2b-4242"),
            Some(("6.12.3-tarball-x86_64-1a2b", 4242))
        );
        assert_eq!(temp_owner(".tmp-del@abc-7"), Some(("del@abc", 7)));
        assert_eq!(temp_owner(".tmp-abc-"), None);
        assert_eq!(temp_owner(".tmp-abc-12x"), None);
        assert_eq!(temp_owner(".tmp-abc"), None);
        assert_eq!(temp_owner("tmp-abc-12"), None);
        let mine = temp_name("remote@s3-cache.3");
        assert_eq!(
            temp_owner(&mine),
            Some(("remote@s3-cache.3", std::process::id()))
        );
    }

    #[test]
    fn sweep_removes_only_dead_owners_it_is_asked_about() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = d.join(format!(".tmp-a-{DEAD}"));
        let dead_other = d.join(format!(".tmp-b-{DEAD}"));
        let live = d.join(temp_name("a"));
        let file = d.join(format!(".tmp-c-{DEAD}"));
        for p in [&dead, &dead_other, &live] {
            std::fs::create_dir(p).unwrap();
        }
        std::fs::write(&file, "").unwrap();
        assert_eq!(sweep_dead_temp(d, |w| w != "b"), vec![dead.clone()]);
        assert!(dead_other.exists() && live.exists() && file.exists());
        assert!(sweep_dead_temp(&d.join("missing"), |_| true).is_empty());
    }
}
