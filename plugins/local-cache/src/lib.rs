//! Built-in local cache backend: atomic entries under the cache root.
//!
//! This is the authoritative cache tier. Each built kernel lives in its own
//! directory, `<root>/kernels/<key>/`, holding the image, the (stripped)
//! vmlinux, the final `.config`, the build log (`build.log.zst`, stored as
//! the host compressed it) and a `metadata.json` that records the sha256
//! and size of every file. Entries are installed atomically (see
//! [`atomic`]) under a per-key exclusive flock; readers take the shared
//! flock, so a reader never sees a half-installed entry and `remove` never
//! pulls an entry out from under a running reader or install.
//!
//! Lookups are cheap on purpose: one metadata read plus a `stat` per file.
//! Full digest checks are available through [`LocalCache::verify`]. A
//! store stops between files when the run is interrupted, leaving nothing
//! (the unpublished temp dir goes with it); entries are directories, so
//! lookups never use the host's staging.
//! A hit records when it happened ([`last_use`]) so `ktstr cache gc` can
//! evict the least recently used entries first.

mod atomic;
mod entry;
pub mod last_use;
mod sweep;

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::{
    Artifacts, CONFIG_NAME, CacheBackend, CacheEntry, CacheKey, LOG_NAME, Listed, METADATA_NAME,
    Metadata, VMLINUX_NAME,
};
use ktstr_sdk::config::{ConfigReader, Setting};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::{ErrorKind, Result, StageError};
use ktstr_sdk::lock::{self, FileLock, LockMode};
use ktstr_sdk::paths;
use ktstr_sdk::registry::{BuiltinPlugin, Constructor, PluginConfig};

use crate::atomic::Staging;
use crate::entry::Fault;

/// Registered plugin name.
pub const PLUGIN_NAME: &str = "local-cache";

/// `CacheEntry::origin` of entries served by this backend.
pub const ORIGIN: &str = "local";

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: PLUGIN_NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "kernels cached on this machine under the cache root (atomic, flock-protected)",
        constructor: Constructor::Cache(|cfg| Ok(Box::new(LocalCache::from_config(cfg)?))),
    }
}

/// File name prefix of an entry lock, `entry-<key>.lock`.
const ENTRY_LOCK_PREFIX: &str = "entry-";

/// Lock serialising installs of one cache entry, in `<root>/.locks`.
pub fn entry_lock(root: &Path, key: &CacheKey) -> PathBuf {
    paths::lock_dir(root).join(format!("{ENTRY_LOCK_PREFIX}{key}.lock"))
}

/// The local cache: entries under `<root>/kernels`.
/// The keys of `[plugin.local-cache]`.
const SETTINGS: &[Setting] = &[Setting {
    key: "root",
    help: "cache directory (default $KTSTR_CACHE_DIR, else the XDG cache dir)",
}];

#[derive(Debug, Clone)]
pub struct LocalCache {
    root: PathBuf,
}

impl LocalCache {
    /// A cache rooted at `root` (created on first store).
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// Build from the plugin's config table: an optional `root` string,
    /// defaulting to [`paths::cache_root`].
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        let r = ConfigReader::new(PLUGIN_NAME, cfg)?.known(SETTINGS)?;
        let root = r.path("root").map_err(|e| {
            e.with_hint(format!(
                "set `root = \"/path/to/cache\"` or omit it to use ${}",
                paths::CACHE_DIR_ENV
            ))
        })?;
        Ok(Self::at(match root {
            Some(root) => root,
            None => paths::cache_root()?,
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn kernels_dir(&self) -> PathBuf {
        self.root.join(paths::KERNELS_DIR_NAME)
    }

    fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.kernels_dir().join(key.as_str())
    }

    /// Hash every artifact of `key` and compare with its metadata.
    ///
    /// `Err` of kind `NotFound` when there is no such entry, `Corrupt` (naming
    /// the file) when a digest, size or the metadata itself is wrong.
    pub fn verify(&self, key: &CacheKey) -> Result<()> {
        let _lock = self.read_lock(key);
        let entry = self.read_entry(key).map_err(|f| f.into_error(key))?;
        let Some(entry) = entry else {
            return Err(StageError::not_found(format!(
                "cache entry {key} is not in the local cache at {}",
                self.root.display()
            ))
            .with_hint("`ktstr kernel list` shows the cached keys"));
        };
        entry::verify_digests(&entry.dir, &entry.metadata).map_err(|f| f.into_error(key))
    }

    /// Shared lock for reading `key`. Waits while an install holds it
    /// (installs are short). If the lock cannot be taken at all — a
    /// read-only cache directory, say — reading proceeds without it:
    /// installs are atomic renames, so an unlocked reader still sees whole
    /// entries.
    fn read_lock(&self, key: &CacheKey) -> Option<FileLock> {
        let path = entry_lock(&self.root, key);
        let waited = |holders: &[lock::Holder]| {
            tracing::debug!(
                "cache entry {key} is being installed ({}); waiting",
                lock::describe_holders(holders)
            );
        };
        match lock::lock_reporting(&path, LockMode::Shared, waited) {
            Ok((guard, _)) => Some(guard),
            Err(e) => {
                tracing::debug!("reading cache entry {key} without a lock: {e}");
                None
            }
        }
    }

    /// Load and check the entry for `key`; `Ok(None)` when there is none.
    fn read_entry(&self, key: &CacheKey) -> std::result::Result<Option<CacheEntry>, Fault> {
        let dir = self.entry_dir(key);
        // Never followed: a symlink here could serve anything on the disk
        // (an entry outside the cache root) under this key.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Fault::Corrupt(format!(
                    "{} is a symlink; cache entries are never followed through symlinks",
                    dir.display()
                )));
            }
            Ok(_) => {
                return Err(Fault::Corrupt(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(Fault::Io(StageError::io("stat", &dir, e))),
        }
        let metadata = entry::load(&dir, key)?;
        Ok(Some(CacheEntry {
            key: key.clone(),
            dir,
            metadata,
            origin: ORIGIN.to_string(),
            location: None,
            last_used: None,
        }))
    }

    /// An error for a cache root we cannot create or write into.
    fn unwritable(&self, e: StageError) -> StageError {
        e.context(format!(
            "cache root {} is not writable",
            self.root.display()
        ))
        .with_hint(format!(
            "set {} to a writable directory",
            paths::CACHE_DIR_ENV
        ))
    }

    fn store_locked(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        check_store_metadata(key, metadata)?;
        paths::ensure_root(&self.root)?;
        let _lock = lock::lock(&entry_lock(&self.root, key), LockMode::Exclusive)
            .map_err(|e| self.unwritable(e))?;
        for swept in sweep::sweep_dead(&self.root) {
            tracing::info!("removed stale cache temp dir {}", swept.display());
        }

        let staging_path = sweep::staging_dir(&self.root, key);
        let staging = Staging::create(staging_path.clone())
            .map_err(|e| self.unwritable(StageError::io("create directory", &staging_path, e)))?;
        let mut stored = metadata.clone();
        stored.artifacts.clear();
        let mut files = vec![(stored.image_name.clone(), &artifacts.image)];
        if let Some(vmlinux) = &artifacts.vmlinux {
            files.push((VMLINUX_NAME.to_string(), vmlinux));
        }
        files.push((CONFIG_NAME.to_string(), &artifacts.config));
        if let Some(log) = &artifacts.log {
            files.push((LOG_NAME.to_string(), log));
        }
        for (name, src) in files {
            cx.cancel.check()?;
            let info = staging.copy_in(&name, src)?;
            stored.artifacts.insert(name, info);
        }
        let mut json = serde_json::to_vec_pretty(&stored).map_err(|e| {
            StageError::internal(format!("cannot serialise {METADATA_NAME}")).caused_by(e)
        })?;
        json.push(b'\n');
        staging.write(METADATA_NAME, &json)?;

        cx.cancel.check()?;
        let dir = self.entry_dir(key);
        staging.publish(&dir, &sweep::aside_dir(&self.root, key))?;
        last_use::touch(&self.root, key);
        tracing::debug!("stored cache entry {key} at {}", dir.display());
        Ok(CacheEntry {
            key: key.clone(),
            dir,
            metadata: stored,
            origin: ORIGIN.to_string(),
            location: None,
            last_used: None,
        })
    }
}

/// What `store` refuses before touching the disk.
fn check_store_metadata(key: &CacheKey, metadata: &Metadata) -> Result<()> {
    if &metadata.key != key {
        return Err(StageError::invalid_input(format!(
            "cache entry {key}: metadata is for key {}",
            metadata.key
        ))
        .with_hint("this is a bug in the caller: store the metadata under its own key"));
    }
    if metadata.schema != Metadata::SCHEMA {
        return Err(StageError::invalid_input(format!(
            "cache entry {key}: metadata schema {} is not {}",
            metadata.schema,
            Metadata::SCHEMA
        )));
    }
    let name = metadata.image_name.as_str();
    if !ktstr_sdk::cache::is_image_name(name) {
        return Err(StageError::invalid_input(format!(
            "cache entry {key}: image name {name:?} is not a usable file name"
        ))
        .with_hint("use the kernel's own image name, such as bzImage or Image"));
    }
    Ok(())
}

impl CacheBackend for LocalCache {
    fn lookup(
        &self,
        key: &CacheKey,
        _: &ktstr_sdk::cache::Staging,
        _: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        // A miss costs one stat and never creates lock files.
        match std::fs::symlink_metadata(self.entry_dir(key)) {
            Ok(_) => {}
            // No root, or a root that is not a directory: nothing cached
            // (a store will then explain what is wrong with the root).
            Err(e) if matches!(e.kind(), IoKind::NotFound | IoKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(StageError::io("stat", &self.entry_dir(key), e)),
        }
        let _lock = self.read_lock(key);
        let found = self.read_entry(key).map_err(|f| f.into_error(key))?;
        if found.is_some() {
            last_use::touch(&self.root, key);
        }
        Ok(found)
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        self.store_locked(key, artifacts, metadata, cx)
            .map_err(|e| {
                if e.kind == ErrorKind::Cancelled {
                    e
                } else {
                    e.context(format!("cannot store cache entry {key}"))
                }
            })
    }

    fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
        let kernels = self.kernels_dir();
        let dir = match std::fs::read_dir(&kernels) {
            Ok(dir) => dir,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StageError::io("list", &kernels, e)),
        };
        let mut ok = Vec::new();
        let mut corrupt = Vec::new();
        for dirent in dir {
            let dirent = dirent.map_err(|e| StageError::io("list", &kernels, e))?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            // Entries are directories; a symlink is listed as corrupt (and
            // never followed), other files are not entries.
            let is_link = dirent.file_type().is_ok_and(|t| t.is_symlink());
            if name.starts_with('.') || !(is_link || dirent.file_type().is_ok_and(|t| t.is_dir())) {
                continue;
            }
            let key = match CacheKey::parse(&name) {
                Ok(key) => key,
                Err(e) => {
                    corrupt.push(Listed::Corrupt {
                        key: name,
                        reason: format!("directory name is not a valid cache key: {e}"),
                    });
                    continue;
                }
            };
            let _lock = self.read_lock(&key);
            match self.read_entry(&key) {
                Ok(Some(mut entry)) => {
                    entry.last_used = last_use::last_used(&self.root, &key, &entry.dir);
                    ok.push(entry)
                }
                Ok(None) => {} // removed while we were listing
                Err(fault) => corrupt.push(Listed::Corrupt {
                    key: name,
                    reason: fault.reason(),
                }),
            }
        }
        let mut rows: Vec<Listed> = ok.into_iter().map(Listed::Ok).chain(corrupt).collect();
        ktstr_sdk::cache::sort_newest_first(&mut rows);
        Ok(rows)
    }

    fn remove(&self, key: &CacheKey, _: &StageContext) -> Result<bool> {
        let dir = self.entry_dir(key);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(false);
        }
        let lock_path = entry_lock(&self.root, key);
        let Some(_lock) = lock::try_lock(&lock_path, LockMode::Exclusive)? else {
            let holders = lock::describe_holders(&lock::holders(&lock_path));
            return Err(StageError::new(
                ErrorKind::Io,
                format!("cache entry {key} is in use: {holders}"),
            )
            .with_hint("retry when that process finishes"));
        };
        let doomed = sweep::delete_dir(&self.root, key);
        match std::fs::remove_dir_all(&doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(StageError::io("remove", &doomed, e)),
        }
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(StageError::io("remove", &dir, e)
                    .context(format!("cannot remove cache entry {key}")));
            }
        }
        last_use::forget(&self.root, key);
        // The entry is gone from the cache; what is left is disk space, which
        // the next store reclaims once this process has exited.
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(
                "removed cache entry {key} but could not delete {}: {e}",
                doomed.display()
            );
        }
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("local cache at {}", self.root.display())
    }

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        Ok(ktstr_sdk::lock_list::list_dir(
            &paths::lock_dir(&self.root),
            "entry",
            ENTRY_LOCK_PREFIX,
        ))
    }
}

#[cfg(test)]
mod tests;
