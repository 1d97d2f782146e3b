//! Names of the cache's temporary directories, and removal of those left
//! behind by processes that died.
//!
//! Every temporary directory lives directly under the cache root (so
//! renames into `kernels/` stay on one filesystem) and follows the SDK's
//! owned-directory contract, `.tmp-<what>-<pid>` ([`ktstr_sdk::owned`]): a
//! store that is killed mid-copy leaves its staging directory behind, and
//! the next store removes it once its owner is gone. A live owner's
//! directory is never touched, whatever it contains. Any plugin's
//! directory named that way is swept here (a remote tier's download
//! scratch, for one), without this plugin knowing it.
//!
//! Names are unambiguous: keys may not contain `@`, so the delete / aside
//! names (`.tmp-del@<key>-<pid>`, `.tmp-old@<key>-<pid>`) can never equal
//! the staging name of some other key.

use std::path::{Path, PathBuf};

use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::owned::{sweep_dead_temp, temp_name};

/// Where a store assembles a new entry before publishing it.
pub(crate) fn staging_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(temp_name(key.as_str()))
}

/// Where `remove` moves an entry so it disappears atomically before deletion.
pub(crate) fn delete_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(temp_name(&format!("del@{key}")))
}

/// Where a replacing store parks the old entry when the filesystem cannot
/// exchange two directories atomically.
pub(crate) fn aside_dir(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(temp_name(&format!("old@{key}")))
}

/// Remove temporary directories under `root` whose owner is no longer
/// running. Failures are logged, never returned: a leftover directory wastes
/// space but does not affect correctness, so it must not fail a build.
/// Returns the paths removed.
pub(crate) fn sweep_dead(root: &Path) -> Vec<PathBuf> {
    sweep_dead_temp(root, |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (p, what) in [
            (staging_dir(root, &foo), "foo"),
            (delete_dir(root, &foo), "del@foo"),
            (aside_dir(root, &foo), "old@foo"),
        ] {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                ktstr_sdk::owned::temp_owner(name),
                Some((what, me)),
                "{name}"
            );
        }
        assert_eq!(
            staging_dir(
                root,
                &CacheKey::parse("6.12.3-tarball-x86_64-1a2b").unwrap()
            ),
            Path::new(&format!("/c/.tmp-6.12.3-tarball-x86_64-1a2b-{me}"))
        );
    }
}
