//! When each local entry was last used, for `ktstr cache gc`.
//!
//! A hit touches a marker file, `<root>/used/<key>`: its mtime is the last
//! use (one `utimensat`, the file is created on the first hit). Access
//! times cannot serve: most filesystems are mounted `noatime` or
//! `relatime`, which records a read at most once a day or never. The
//! marker lives outside the entry because an entry is never written after
//! it is stored (a hit checks that no artifact is newer than its
//! metadata), and because a cache directory that is read-only for this
//! user must still serve hits: touching is best effort, never an error.
//!
//! A store touches the marker too (storing is a use). An entry stored by
//! a ktstr that kept no markers counts as used when it was stored
//! (`metadata.json`'s mtime).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ktstr_sdk::cache::{CacheKey, METADATA_NAME};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// Directory of the markers under the cache root.
pub const USED_DIR_NAME: &str = "used";

/// The marker of `key`.
pub fn marker(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(USED_DIR_NAME).join(key.as_str())
}

/// Record a use of `key` now. Failures are logged at debug level: a
/// read-only cache still serves hits.
pub(crate) fn touch(root: &Path, key: &CacheKey) {
    let path = marker(root, key);
    let now = || {
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &TimeSpec::UTIME_NOW,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::NoFollowSymlink,
        )
    };
    let done = match now() {
        Err(nix::errno::Errno::ENOENT) => path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
            })
            .map(drop),
        other => other.map_err(std::io::Error::from),
    };
    if let Err(e) = done {
        tracing::debug!("cannot record the use of {key} in {}: {e}", path.display());
    }
}

/// When `key` (stored in `entry_dir`) was last used, as RFC 3339 UTC.
pub(crate) fn last_used(root: &Path, key: &CacheKey, entry_dir: &Path) -> Option<String> {
    let mtime = |p: &Path| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
    let used = mtime(&marker(root, key)).or_else(|| mtime(&entry_dir.join(METADATA_NAME)))?;
    Some(rfc3339(used))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Forget `key`'s uses (its entry was removed).
pub(crate) fn forget(root: &Path, key: &CacheKey) {
    let path = marker(root, key);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!("cannot remove {}: {e}", path.display()),
    }
}
