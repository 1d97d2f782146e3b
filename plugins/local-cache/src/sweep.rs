//! Names of the cache's scratch directories, and removal of those left
//! behind by processes that died.
//!
//! Every scratch directory lives directly under the cache root (so renames
//! into `kernels/` stay on one filesystem) and is named
//! `.tmp-<what>-<pid>`: the trailing pid says who owns it. A store that is
//! killed mid-copy leaves its staging directory behind; the next store
//! removes it once `/proc/<pid>` shows the owner is gone. A live owner's
//! directory is never touched, whatever it contains.
//!
//! Names are unambiguous: keys may not contain `@`, so the delete / aside
//! names (`.tmp-del@<key>-<pid>`, `.tmp-old@<key>-<pid>`) can never equal
//! the staging name of some other key, and since pids contain no `-` the
//! owner is always the part after the last `-`.

use std::path::{Path, PathBuf};

use ktstr_sdk::cache::CacheKey;

/// Prefix shared by every scratch directory under the cache root.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Where a store assembles a new entry before publishing it.
pub(crate) fn staging_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(format!("{TEMP_PREFIX}{key}-{}", std::process::id()))
}

/// Where `remove` moves an entry so it disappears atomically before deletion.
pub(crate) fn delete_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(format!("{TEMP_PREFIX}del@{key}-{}", std::process::id()))
}

/// Where a replacing store parks the old entry when the filesystem cannot
/// exchange two directories atomically.
pub(crate) fn aside_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(format!("{TEMP_PREFIX}old@{key}-{}", std::process::id()))
}

/// The pid owning a scratch directory named `.tmp-...-<pid>`.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (_, pid) = rest.rsplit_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// True when `/proc` can tell us about processes at all. Without it every
/// pid would look dead, so sweeping is skipped rather than guessed.
fn proc_available() -> bool {
    Path::new("/proc/self").exists()
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove scratch directories under `root` whose owner is no longer
/// running. Failures are logged, never returned: a leftover directory wastes
/// space but does not affect correctness, so it must not fail a build.
/// Returns the paths removed.
pub(crate) fn sweep_dead(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !proc_available() {
        tracing::debug!("/proc is not available; not sweeping stale cache temp dirs");
        return removed;
    }
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!("cannot list {} for stale temp dirs: {e}", root.display());
            return removed;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        // Only directories: a scratch *file* is not ours to judge.
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::debug!("removed {} left by dead pid {pid}", path.display());
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot remove stale cache temp dir {} (pid {pid} is gone): {e}",
                path.display()
            ),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_is_the_last_dash_field() {
        assert_eq!(
            owner_pid(".tmp-6.12.3-tarball-x86_64-1a2b-4242"),
            Some(4242)
        );
        assert_eq!(owner_pid(".tmp-del@abc-7"), Some(7));
        assert_eq!(owner_pid(".tmp-abc-"), None);
        assert_eq!(owner_pid(".tmp-abc-12x"), None);
        assert_eq!(owner_pid(".tmp-abc"), None);
        assert_eq!(owner_pid("tmp-abc-12"), None);
        assert_eq!(owner_pid(".locks"), None);
    }

    #[test]
    fn scratch_names_never_collide_across_keys() {
        let root = Path::new("/c");
        let foo = CacheKey::parse("foo").unwrap();
        // A key that looks like a delete/aside prefix still gets a distinct name.
        let del_foo = CacheKey::parse("del-foo").unwrap();
        let old_foo = CacheKey::parse("old-foo").unwrap();
        assert_ne!(delete_dir(root, &foo), staging_dir(root, &del_foo));
        assert_ne!(aside_dir(root, &foo), staging_dir(root, &old_foo));
        let me = std::process::id();
        for p in [
            staging_dir(root, &foo),
            delete_dir(root, &foo),
            aside_dir(root, &foo),
        ] {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(owner_pid(name), Some(me), "{name}");
        }
    }
}
