//! Publishing a directory atomically: stage, fsync, then rename into place.
//!
//! Readers must see the old entry or the new one, never a mix, even a
//! reader that ignores the lock and even after a crash. So a new entry is
//! assembled in a private staging directory, every file and the directory
//! itself are fsynced, and only then does one `rename` make it visible.
//! Replacing an existing entry uses `renameat2(RENAME_EXCHANGE)`, which
//! swaps the two directories in one step; the old contents end up at the
//! staging path and are deleted from there. On a filesystem without
//! exchange support (NFS, older ZFS, some FUSE) the old entry is renamed
//! aside first, which leaves a short window where the key is *absent*
//! (a miss, never a partial entry); readers holding the shared entry lock
//! never observe that window.
//!
//! [`Staging`] removes its directory on drop unless it was published, so
//! every early return cleans up after itself.

use std::fs::File;
use std::io::{ErrorKind as IoKind, Write};
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::ArtifactInfo;
use ktstr_sdk::error::{IoResultExt, Result, StageError};

/// A staging directory that is deleted on drop unless published.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    /// False once the directory has been renamed into place.
    owned: bool,
}

impl Staging {
    /// Create an empty staging directory at `path`, replacing a leftover of
    /// the same name. The caller must hold the lock that makes `path` its own.
    pub(crate) fn create(path: PathBuf) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!("removed leftover staging dir {}", path.display()),
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&path)?;
        Ok(Self { path, owned: true })
    }

    /// Copy `src` to `<staging>/<name>` (the source is only read), fsync the
    /// copy, and return the copy's digest and size.
    pub(crate) fn copy_in(&self, name: &str, src: &Path) -> Result<ArtifactInfo> {
        let dest = self.path.join(name);
        std::fs::copy(src, &dest)
            .map_err(|e| StageError::io("copy", src, e).context(format!("store {name}")))?;
        fsync_file(&dest)?;
        let (sha256, size) = ktstr_sdk::hash::sha256_file(&dest)?;
        Ok(ArtifactInfo { sha256, size })
    }

    /// Write `bytes` to `<staging>/<name>` and fsync it.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.path.join(name);
        let mut file = File::create(&dest).at("create", &dest)?;
        file.write_all(bytes).at("write", &dest)?;
        file.sync_all().at("fsync", &dest)
    }

    /// Make the staged directory appear at `dest` in one step.
    ///
    /// `aside` is a private scratch path used only when the filesystem cannot
    /// exchange directories. If `dest` already holds an entry, that entry
    /// stays in place on every failure.
    pub(crate) fn publish(mut self, dest: &Path, aside: &Path) -> Result<()> {
        fsync_dir(&self.path)?;
        let replacing = match std::fs::symlink_metadata(dest) {
            Ok(_) => true,
            Err(e) if e.kind() == IoKind::NotFound => false,
            Err(e) => return Err(StageError::io("stat", dest, e)),
        };
        if !replacing {
            std::fs::rename(&self.path, dest).map_err(|e| rename_error(&self.path, dest, e))?;
            self.owned = false;
        } else {
            match exchange(&self.path, dest) {
                // The old entry now sits at the staging path; drop deletes it.
                Ok(()) => {}
                Err(e) if exchange_unsupported(&e) => {
                    tracing::debug!(
                        "RENAME_EXCHANGE unsupported for {} ({e}); replacing via rename",
                        dest.display()
                    );
                    replace_via_aside(&self.path, dest, aside)?;
                    self.owned = false;
                }
                Err(e) => return Err(rename_error(&self.path, dest, e)),
            }
        }
        if let Some(parent) = dest.parent() {
            // The entry is complete and visible; a failed directory fsync only
            // weakens durability across a power loss, and a torn entry is
            // then caught by lookup's size checks and replaced.
            if let Err(e) = fsync_dir(parent) {
                tracing::warn!("{e}");
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot remove cache temp dir {} (it will be swept later): {e}",
                self.path.display()
            ),
        }
    }
}

fn rename_error(from: &Path, to: &Path, e: std::io::Error) -> StageError {
    StageError::io("rename", from, e).context(format!("install {}", to.display()))
}

/// Replace `dest` with `staged` using two plain renames: park the old entry
/// at `aside`, move the new one in, delete the old. If the second rename
/// fails the old entry is put back.
pub(crate) fn replace_via_aside(staged: &Path, dest: &Path, aside: &Path) -> Result<()> {
    match std::fs::remove_dir_all(aside) {
        Ok(()) => {}
        Err(e) if e.kind() == IoKind::NotFound => {}
        Err(e) => return Err(StageError::io("remove", aside, e)),
    }
    std::fs::rename(dest, aside).map_err(|e| rename_error(dest, aside, e))?;
    if let Err(e) = std::fs::rename(staged, dest) {
        if let Err(back) = std::fs::rename(aside, dest) {
            tracing::error!(
                "could not restore the previous cache entry from {} to {}: {back}",
                aside.display(),
                dest.display()
            );
        }
        return Err(rename_error(staged, dest, e));
    }
    if let Err(e) = std::fs::remove_dir_all(aside) {
        tracing::warn!(
            "cannot remove replaced cache entry {} (it will be swept later): {e}",
            aside.display()
        );
    }
    Ok(())
}

/// Atomically swap two existing paths.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(Into::into)
}

/// Atomically swap two existing paths (not available here: callers fall back).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(IoKind::Unsupported))
}

/// Errors meaning "this filesystem or kernel cannot exchange", as opposed to
/// a real failure such as permissions.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == IoKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(nix::libc::EINVAL | nix::libc::ENOSYS | nix::libc::EOPNOTSUPP)
        )
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .at("fsync", path)
}

/// fsync a directory so the names inside it survive a crash.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .at("fsync directory", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn drop_removes_unpublished_staging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".tmp-x-1");
        {
            let s = Staging::create(path.clone()).unwrap();
            s.write("f", b"x").unwrap();
            assert!(path.join("f").exists());
        }
        assert!(!path.exists());
    }

    #[test]
    fn create_replaces_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".tmp-x-1");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("old"), b"x").unwrap();
        let s = Staging::create(path.clone()).unwrap();
        assert!(!s.path.join("old").exists());
    }

    #[test]
    fn publish_new_and_exchange_existing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("entry");
        let aside = dir.path().join(".tmp-old@entry-1");
        let s = Staging::create(dir.path().join(".tmp-a")).unwrap();
        s.write("f", b"one").unwrap();
        s.publish(&dest, &aside).unwrap();
        assert_eq!(read(&dest.join("f")), "one");
        assert!(!dir.path().join(".tmp-a").exists());

        let s = Staging::create(dir.path().join(".tmp-b")).unwrap();
        s.write("f", b"two").unwrap();
        s.publish(&dest, &aside).unwrap();
        assert_eq!(read(&dest.join("f")), "two");
        assert!(!dir.path().join(".tmp-b").exists(), "old contents removed");
        assert!(!aside.exists());
    }

    #[test]
    fn aside_fallback_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("entry");
        let staged = dir.path().join("staged");
        let aside = dir.path().join("aside");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("f"), b"old").unwrap();
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("f"), b"new").unwrap();
        replace_via_aside(&staged, &dest, &aside).unwrap();
        assert_eq!(read(&dest.join("f")), "new");
        assert!(!staged.exists() && !aside.exists());
    }

    #[test]
    fn aside_fallback_restores_old_entry_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("entry");
        let aside = dir.path().join("aside");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("f"), b"old").unwrap();
        // The staged directory does not exist, so moving it in fails.
        let err = replace_via_aside(&dir.path().join("gone"), &dest, &aside).unwrap_err();
        assert_eq!(err.kind, ktstr_sdk::ErrorKind::Io);
        assert_eq!(read(&dest.join("f")), "old");
        assert!(!aside.exists());
    }
}
