//! Where ktstr keeps things: the cache root, its shared directories and the
//! host's own lock files (and `~` in paths users give, which every source
//! spec expands the same way).
//!
//! Only what several crates share is derived here (the root, `.locks/`,
//! `scratch/`, a plugin's state directory, and the host's build and tree
//! locks, which tests look for too); a path only one plugin uses (a git
//! mirror, an LLC lock, a cache entry's lock) is that plugin's own.
//! Locks live under the cache root's `.locks/` rather than `/tmp`, where
//! tmp cleaners may unlink a lock file that a holder still has open.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cache::CacheKey;
use crate::error::{Result, StageError};

pub const CACHE_DIR_ENV: &str = "KTSTR_CACHE_DIR";
pub const LOCK_DIR_NAME: &str = ".locks";
pub const KERNELS_DIR_NAME: &str = "kernels";
pub const TREES_DIR_NAME: &str = "trees";
pub const SCRATCH_DIR_NAME: &str = "scratch";
/// `build-<key>.lock`: see [`build_lock`].
pub const BUILD_LOCK_PREFIX: &str = "build-";
/// `source-<crc32 of tree>.lock`: see [`source_lock`].
pub const SOURCE_LOCK_PREFIX: &str = "source-";

/// An environment variable's value; empty counts as unset.
pub fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `raw` with a leading `~` or `~/` replaced by `$HOME`; anything else
/// (`~user/x`, `./~/x`) as is. `None` when `raw` starts with `~` but
/// `$HOME` is unset or empty.
pub fn expand_home(raw: &str) -> Option<PathBuf> {
    expand_home_with(raw, std::env::var_os("HOME"))
}

/// [`expand_home`] with `home` standing in for `$HOME`.
pub fn expand_home_with(raw: &str, home: Option<OsString>) -> Option<PathBuf> {
    let rest = match raw.strip_prefix('~') {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => return Some(PathBuf::from(raw)),
    };
    home.filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(rest))
}

/// `$KTSTR_CACHE_DIR`, else `$XDG_CACHE_HOME/ktstr`, else `~/.cache/ktstr`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = env_nonempty(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("ktstr"));
    }
    if let Some(home) = env_nonempty("HOME") {
        return Ok(PathBuf::from(home).join(".cache").join("ktstr"));
    }
    Err(
        StageError::invalid_input("cannot find a cache directory: HOME is not set")
            .with_hint(format!("set {CACHE_DIR_ENV} to a writable directory")),
    )
}

/// Create `<root>/kernels` and `<root>/.locks`. The error names the root
/// and says how to point ktstr elsewhere.
pub fn ensure_root(root: &Path) -> Result<()> {
    for dir in [root.join(KERNELS_DIR_NAME), lock_dir(root)] {
        std::fs::create_dir_all(&dir).map_err(|e| {
            StageError::io("create directory", &dir, e)
                .context(format!("cache root {} is not writable", root.display()))
                .with_hint(format!("set {CACHE_DIR_ENV} to a writable directory"))
        })?;
    }
    Ok(())
}

/// `<root>/.locks`.
pub fn lock_dir(root: &Path) -> PathBuf {
    root.join(LOCK_DIR_NAME)
}

/// `<root>/scratch`: temporary kernel trees (extracted tarballs, git
/// checkouts). Each lives in a `<kind>-<pid>-<n>` directory so that a sweep
/// can remove the ones whose process died.
pub fn scratch_dir(root: &Path) -> PathBuf {
    root.join(SCRATCH_DIR_NAME)
}

/// `<root>/state/<plugin>`: small facts a plugin remembers between runs
/// (e.g. which kernel version a tarball digest unpacks to).
pub fn plugin_state(root: &Path, plugin: &str) -> PathBuf {
    root.join("state").join(plugin)
}

/// Lock making one cache key's build single-flight: whoever holds it builds
/// the key; the others wait and then look in the cache again. Held through
/// the build (and by every process the build runs), whatever the reserver.
pub fn build_lock(root: &Path, key: &CacheKey) -> PathBuf {
    lock_dir(root).join(format!("{BUILD_LOCK_PREFIX}{key}.lock"))
}

fn tree_hash(canonical_tree: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    crate::hash::crc32_hex(canonical_tree.as_os_str().as_bytes())
}

/// Lock serialising builds in one source tree (by canonical path).
pub fn source_lock(root: &Path, canonical_tree: &Path) -> PathBuf {
    lock_dir(root).join(format!(
        "{SOURCE_LOCK_PREFIX}{}.lock",
        tree_hash(canonical_tree)
    ))
}

/// What ktstr last configured a local tree for (see the host's `tree_config`).
pub fn tree_record(root: &Path, canonical_tree: &Path) -> PathBuf {
    root.join(TREES_DIR_NAME)
        .join(format!("{}.json", tree_hash(canonical_tree)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_a_leading_tilde_only() {
        let home = || Some(OsString::from("/home/u"));
        let expand = |raw: &str| expand_home_with(raw, home()).unwrap();
        assert_eq!(expand("~/linux"), PathBuf::from("/home/u/linux"));
        assert_eq!(expand("~//linux"), PathBuf::from("/home/u/linux"));
        assert_eq!(expand("~"), PathBuf::from("/home/u"));
        assert_eq!(expand("./~/x"), PathBuf::from("./~/x"));
        assert_eq!(expand("~user/x"), PathBuf::from("~user/x"));
        assert_eq!(expand("/abs/x.tar.xz"), PathBuf::from("/abs/x.tar.xz"));
        assert_eq!(expand_home_with("~/linux", None), None);
        assert_eq!(expand_home_with("~/linux", Some(OsString::new())), None);
        assert_eq!(
            expand_home_with("linux", None),
            Some(PathBuf::from("linux"))
        );
    }

    #[test]
    fn lock_names_are_stable() {
        let root = Path::new("/c");
        let key = CacheKey::parse("6.12.0-local-x86_64-abcd").unwrap();
        assert_eq!(
            build_lock(root, &key),
            Path::new("/c/.locks/build-6.12.0-local-x86_64-abcd.lock")
        );
        let a = source_lock(root, Path::new("/src/linux"));
        let b = source_lock(root, Path::new("/src/linux2"));
        assert_ne!(a, b);
        assert!(a.starts_with("/c/.locks"));
    }
}
