//! Which kernel version a tarball digest unpacks to, remembered per cache root.
//!
//! A tarball whose name does not carry its version (Debian's
//! `linux-source-6.12.tar.xz`, a URL with only `#sha256=`) is keyable only
//! once its version is known, and the version is in the Makefile inside.
//! After the first unpack the digest → version fact is stored, so later runs
//! hash the file (or trust the given digest), find the version here and hit
//! the cache without unpacking. A digest names its content, so the fact never
//! goes stale; a lost or garbled file only costs one unpack.

use std::path::{Path, PathBuf};

use ktstr_sdk::paths;

fn path(root: &Path, sha256: &str) -> Option<PathBuf> {
    ktstr_sdk::hash::is_sha256_hex(sha256)
        .then(|| paths::plugin_state(root, crate::NAME).join(format!("{sha256}.version")))
}

/// A memo is one version number; anything larger is not one.
const MEMO_LIMIT: u64 = 256;

/// The memo file for `sha256`, for messages.
pub fn file(root: &Path, sha256: &str) -> Option<PathBuf> {
    path(root, sha256)
}

/// The version recorded for `sha256`, if any. A memo that is not a small
/// regular file (a FIFO, a directory, a symlink, a huge file) is ignored
/// with a warning naming it: it only costs one unpack.
pub fn version_of(root: &Path, sha256: &str) -> Option<String> {
    use ktstr_sdk::fsread::{Follow, read_optional};
    let file = path(root, sha256)?;
    let bytes = match read_optional(&file, "tarball version memo", MEMO_LIMIT, Follow::No) {
        Ok(bytes) => bytes?,
        Err(e) => {
            tracing::warn!("ignoring {e}");
            return None;
        }
    };
    let text = String::from_utf8(bytes).ok()?;
    let version = text.trim();
    let plausible = !version.is_empty()
        && version.len() < 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    plausible.then(|| version.to_string())
}

/// Record that `sha256` unpacks to `version` (atomically; failures only log).
pub fn record(root: &Path, sha256: &str, version: &str) {
    let Some(dest) = path(root, sha256) else {
        return;
    };
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let written = dest
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, format!("{version}\n")))
        .and_then(|()| std::fs::rename(&tmp, &dest));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("cannot record the version of {sha256}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let root = tempfile::tempdir().unwrap();
        let sha = "a".repeat(64);
        assert_eq!(version_of(root.path(), &sha), None);
        record(root.path(), &sha, "6.12.58");
        assert_eq!(version_of(root.path(), &sha).as_deref(), Some("6.12.58"));
        std::fs::write(path(root.path(), &sha).unwrap(), "../../etc\n").unwrap();
        assert_eq!(version_of(root.path(), &sha), None);
        assert_eq!(path(root.path(), "../x"), None);
        // Not a regular file: ignored at once, never read.
        let memo = path(root.path(), &sha).unwrap();
        std::fs::remove_file(&memo).unwrap();
        nix::unistd::mkfifo(&memo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(version_of(root.path(), &sha), None);
        std::fs::remove_file(&memo).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &memo).unwrap();
        assert_eq!(version_of(root.path(), &sha), None);
    }
}
