//! The tier's private scratch directories: where pulls unpack and pushes
//! pack before anything is handed on.
//!
//! They are named `.tmp-remote@<plugin>.<n>-<pid>` under the cache root,
//! following the SDK's owned-directory contract ([`ktstr_sdk::owned`]) so
//! any sweep of the root removes them once the pid is dead, and are removed
//! when the tier is dropped. A dead push's scratch is swept
//! whenever a tier is constructed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ktstr_sdk::error::{IoResultExt, Result};

use super::{RemoteTier, TierOptions};

/// The tier's private directory; removed on drop.
#[derive(Debug)]
pub(super) struct Scratch {
    dir: PathBuf,
    next: usize,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Where a tier's scratch directories go: the configured directory, else
/// the cache root (the temp dir when neither can be named).
pub(super) fn scratch_base(opts: &TierOptions) -> Option<PathBuf> {
    opts.scratch_dir
        .clone()
        .or_else(|| ktstr_sdk::paths::cache_root().ok())
}

/// The `what` of a tier's scratch directory, `.tmp-<what>-<pid>`:
/// `remote@<plugin>.<n>`.
fn scratch_what(plugin: &str, n: usize) -> String {
    format!("remote@{plugin}.{n}")
}

/// Whether `what` (of a `.tmp-<what>-<pid>` name) is one of `plugin`'s.
fn is_scratch_of(what: &str, plugin: &str) -> bool {
    what.strip_prefix("remote@")
        .and_then(|r| r.strip_prefix(plugin))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
}

/// Remove `plugin`'s scratch directories under `base` whose process is
/// gone. Failures are logged: a leftover wastes space, it never breaks a run.
pub(super) fn sweep_dead_scratch(base: &Path, plugin: &str) -> Vec<PathBuf> {
    ktstr_sdk::owned::sweep_dead_temp(base, |what| is_scratch_of(what, plugin))
}

static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

impl RemoteTier {
    /// A fresh directory under the tier's scratch dir.
    pub(super) fn scratch_subdir(&self, what: &str) -> Result<PathBuf> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let base = scratch_base(&self.opts)
                .filter(|b| self.opts.scratch_dir.is_some() || std::fs::create_dir_all(b).is_ok())
                .unwrap_or_else(std::env::temp_dir);
            let dir = base.join(ktstr_sdk::owned::temp_name(&scratch_what(
                self.plugin,
                SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed),
            )));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).at("create scratch directory", &dir)?;
            *guard = Some(Scratch { dir, next: 0 });
        }
        let s = guard.as_mut().expect("just set");
        s.next += 1;
        let sub = s.dir.join(format!("{what}-{}", s.next));
        std::fs::create_dir(&sub).at("create scratch directory", &sub)?;
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn stale_scratch_of_dead_pids_is_swept_at_construction() {
        let owner = |name: &str, plugin: &str| {
            ktstr_sdk::owned::temp_owner(name)
                .filter(|(what, _)| is_scratch_of(what, plugin))
                .map(|(_, pid)| pid)
        };
        assert_eq!(owner(".tmp-remote@s3-cache.3-123", "s3-cache"), Some(123));
        assert_eq!(owner(".tmp-remote@s3-cache.3-123", "http-cache"), None);
        assert_eq!(owner(".tmp-remote@s3-cache.x-123", "s3-cache"), None);
        assert_eq!(owner("6.12.3-tarball-x86_64-1a2b3c4d", "s3-cache"), None);
        assert_eq!(
            ktstr_sdk::owned::temp_name(&scratch_what("s3-cache", 3)),
            format!(".tmp-remote@s3-cache.3-{}", std::process::id())
        );
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("scratch");
        // Pid numbers wrap well below this, so no such process runs.
        let dead = base.join(format!(".tmp-remote@s3-cache.0-{}", i32::MAX - 1));
        let mine = base.join(format!(".tmp-remote@s3-cache.0-{}", std::process::id()));
        let other = base.join("notes");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d.join("push-1")).unwrap();
        }
        std::fs::write(dead.join("push-1/archive.tar.zst"), b"partial").unwrap();
        let _tier = RemoteTier::new(
            "s3-cache",
            "s3://test/p".into(),
            String::new(),
            Box::new(InMemory::new()),
            "p",
            TierOptions {
                require_verified: false,
                read_only: false,
                max_entry_size: 1 << 30,
                compression_level: 1,
                multipart: None,
                scratch_dir: Some(base.clone()),
                env_prefix: "KTSTR_S3_",
                auth_hint: String::new(),
                leases: None,
            },
        )
        .unwrap();
        assert!(!dead.exists(), "the dead push's scratch is still there");
        assert!(mine.exists() && other.exists());
    }
}
