//! Example ktstr plugin: a cache tier in a directory many machines share,
//! typically an NFS mount (`/mnt/kernels`).
//!
//! Built exactly as a third party would build it — a cdylib depending on
//! `ktstr-sdk` only — and loaded with `--plugin shared-dir-cache`. The
//! local cache stays the first tier; this one is asked on a local miss (a
//! hit is copied into the local cache) and receives every new build.
//!
//! Layout: `<dir>/kernels/<key>/` holds the image, vmlinux, config and a
//! `metadata.json` with each file's sha256 and size (the same format as the
//! local cache); `<dir>/locks/<key>.lock` serialises writers of one key;
//! `<dir>/tmp/` holds entries being written.
//!
//! Safety on NFS: writers take an `O_EXCL` lock file (see [`lock`]), write
//! the whole entry into a private temp directory, fsync it, and publish it
//! with one `rename` — readers on any machine see the old entry or the new
//! one, never a partial one. Readers take no lock; a lookup checks that
//! every recorded file is present with its recorded size. An interrupted
//! store stops between files and removes its temp directory.
//!
//! Entries are directories, so lookups return them in place (the host's
//! staging is for backends that must unpack) and `dir` is always the entry.
//! Metadata is stored verbatim; `origin` in it is the host's business.
//!
//! Config (`[plugin.shared-dir-cache]` in ktstr's config file):
//! `dir` (required, or `$KTSTR_SHARED_CACHE_DIR`), `read_only` (default
//! false), `stale_lock_secs` (default 900), `lock_wait_secs` (default 120).

pub mod lock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr_sdk::cache::{CONFIG_NAME, METADATA_NAME, VMLINUX_NAME};
use ktstr_sdk::export::Plugin;
use ktstr_sdk::prelude::*;

pub const NAME: &str = "shared-dir-cache";
pub const DIR_ENV: &str = "KTSTR_SHARED_CACHE_DIR";
const KEYS: &[&str] = &["dir", "read_only", "stale_lock_secs", "lock_wait_secs"];

/// The cache tier.
#[derive(Debug, Clone)]
pub struct SharedDirCache {
    dir: PathBuf,
    read_only: bool,
    stale_after: Duration,
    lock_wait: Duration,
}

fn config_error(why: String) -> StageError {
    StageError::invalid_input(format!("plugin {NAME}: {why}")).with_hint(format!(
        "set `dir = \"/mnt/kernels\"` under [plugin.{NAME}] in ktstr's config file, or {DIR_ENV}"
    ))
}

impl SharedDirCache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            read_only: false,
            stale_after: Duration::from_secs(900),
            lock_wait: Duration::from_secs(120),
        }
    }

    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        let empty = serde_json::Map::new();
        let table = match cfg {
            serde_json::Value::Null => &empty,
            serde_json::Value::Object(t) => t,
            other => return Err(config_error(format!("config must be a table, got {other}"))),
        };
        if let Some(k) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(config_error(format!(
                "unknown key {k:?} (known: {})",
                KEYS.join(", ")
            )));
        }
        let dir = match table.get("dir") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => return Err(config_error(format!("`dir` must be a path, got {other}"))),
            None => match std::env::var(DIR_ENV).ok().filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d),
                None => return Err(config_error("no directory configured".into())),
            },
        };
        if !dir.is_absolute() {
            return Err(config_error(format!(
                "`dir` {} must be an absolute path",
                dir.display()
            )));
        }
        let secs = |key: &str, default: u64| match table.get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| config_error(format!("`{key}` must be a whole number of seconds"))),
        };
        Ok(Self {
            read_only: match table.get("read_only") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| config_error("`read_only` must be true or false".into()))?,
            },
            stale_after: secs("stale_lock_secs", 900)?,
            lock_wait: secs("lock_wait_secs", 120)?,
            dir,
        })
    }

    fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.dir.join("kernels").join(key.as_str())
    }

    fn lock(&self, key: &CacheKey) -> Result<lock::EntryLock> {
        let path = self.dir.join("locks").join(format!("{key}.lock"));
        lock::acquire(&path, self.stale_after, self.lock_wait)
    }

    /// A unique directory under `<dir>/tmp` (host and pid keep NFS clients apart).
    fn temp_dir(&self, what: &str, key: &CacheKey) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.dir.join("tmp").join(format!(
            "{what}-{key}-{}-{}-{nanos}",
            lock::hostname(),
            std::process::id()
        ))
    }

    /// Read and check one entry; `Ok(None)` when absent.
    ///
    /// Readers take no lock, so a writer may publish between our reading
    /// the metadata and checking the files: a check that fails is retried
    /// while the metadata keeps changing under us.
    fn read(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let mut tries = 0;
        loop {
            let (text, checked) = match self.read_once(key)? {
                None => return Ok(None),
                Some(read) => read,
            };
            match checked {
                Err(e) if tries < 5 && self.metadata_text(key)?.as_ref() != Some(&text) => {
                    tracing::debug!("{key} was replaced while being read ({e}); reading again");
                    tries += 1;
                }
                checked => return checked.map(Some),
            }
        }
    }

    /// The entry's metadata file as text; `None` when there is no entry.
    fn metadata_text(&self, key: &CacheKey) -> Result<Option<String>> {
        let meta_path = self.entry_dir(key).join(METADATA_NAME);
        match std::fs::read_to_string(&meta_path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StageError::io("read", &meta_path, e)),
        }
    }

    /// One unlocked read: the metadata text and the checked entry.
    fn read_once(&self, key: &CacheKey) -> Result<Option<(String, Result<CacheEntry>)>> {
        let Some(text) = self.metadata_text(key)? else {
            return Ok(None);
        };
        let checked = self.check(key, &text);
        Ok(Some((text, checked)))
    }

    /// Check the entry whose metadata is `text`.
    fn check(&self, key: &CacheKey, text: &str) -> Result<CacheEntry> {
        let dir = self.entry_dir(key);
        let corrupt = |why: String| {
            StageError::corrupt(format!(
                "shared cache entry {key} in {}: {why}",
                dir.display()
            ))
        };
        let metadata: Metadata =
            serde_json::from_str(text).map_err(|e| corrupt(format!("bad {METADATA_NAME}: {e}")))?;
        if &metadata.key != key {
            return Err(corrupt(format!("metadata is for {}", metadata.key)));
        }
        for (name, info) in &metadata.artifacts {
            match std::fs::metadata(dir.join(name)) {
                Ok(m) if m.len() == info.size => {}
                Ok(m) => {
                    return Err(corrupt(format!(
                        "{name} is {} bytes, not {}",
                        m.len(),
                        info.size
                    )));
                }
                Err(_) => return Err(corrupt(format!("{name} is missing"))),
            }
        }
        Ok(CacheEntry {
            key: key.clone(),
            dir,
            metadata,
            origin: NAME.into(),
            location: None,
            last_used: None,
        })
    }

    /// Refuse `action` (`store KEY`) when configured read-only.
    fn refuse_if_read_only(&self, action: &str) -> Result<()> {
        if !self.read_only {
            return Ok(());
        }
        Err(StageError::new(
            ErrorKind::Unsupported,
            format!("cannot {action}: {} is read-only", self.describe()),
        )
        .with_hint(format!(
            "set `read_only = false` under [plugin.{NAME}] on machines trusted to write"
        )))
    }

    fn write_entry(
        &self,
        tmp: &Path,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<Metadata> {
        std::fs::create_dir_all(tmp).at("create", tmp)?;
        let mut stored = metadata.clone();
        stored.artifacts.clear();
        let mut files = vec![(stored.image_name.clone(), &artifacts.image)];
        if let Some(v) = &artifacts.vmlinux {
            files.push((VMLINUX_NAME.into(), v));
        }
        files.push((CONFIG_NAME.into(), &artifacts.config));
        if let Some(log) = &artifacts.log {
            files.push((ktstr_sdk::cache::LOG_NAME.into(), log));
        }
        for (name, src) in files {
            cx.cancel.check()?;
            cx.progress.line(&format!("copying {name}"));
            let dst = tmp.join(&name);
            std::fs::copy(src, &dst).at("copy into the shared cache", src)?;
            let (sha256, size) = ktstr_sdk::hash::sha256_file(&dst)?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .at("sync", &dst)?;
            stored.artifacts.insert(name, ArtifactInfo { sha256, size });
        }
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| StageError::internal("encode metadata").caused_by(e))?;
        let meta = tmp.join(METADATA_NAME);
        std::fs::write(&meta, json).at("write", &meta)?;
        for p in [&meta, &tmp.to_path_buf()] {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .at("sync", p)?;
        }
        cx.cancel.check()?;
        Ok(stored)
    }
}

impl CacheBackend for SharedDirCache {
    fn lookup(&self, key: &CacheKey, _: &Staging, _: &StageContext) -> Result<Option<CacheEntry>> {
        self.read(key)
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        self.refuse_if_read_only(&format!("store {key}"))?;
        let _lock = self.lock(key)?;
        let tmp = self.temp_dir("new", key);
        let stored = match self.write_entry(&tmp, artifacts, metadata, cx) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if e.kind == ErrorKind::Cancelled {
                    return Err(e);
                }
                return Err(e.context(format!("cannot store {key} in {}", self.describe())));
            }
        };
        let dest = self.entry_dir(key);
        let kernels = self.dir.join("kernels");
        std::fs::create_dir_all(&kernels).at("create", &kernels)?;
        // Replace: move the old entry aside first (rename cannot replace a
        // non-empty directory), then publish with one rename.
        let aside = self.temp_dir("old", key);
        let had_old = std::fs::rename(&dest, &aside).is_ok();
        std::fs::rename(&tmp, &dest).at("publish", &dest)?;
        std::fs::File::open(&kernels)
            .and_then(|f| f.sync_all())
            .at("sync", &kernels)?;
        if had_old {
            let _ = std::fs::remove_dir_all(&aside);
        }
        tracing::info!("stored {key} in {}", self.describe());
        Ok(CacheEntry {
            key: key.clone(),
            dir: dest,
            metadata: stored,
            origin: NAME.into(),
            location: None,
            last_used: None,
        })
    }

    fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
        let kernels = self.dir.join("kernels");
        let entries = match std::fs::read_dir(&kernels) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StageError::io("list", &kernels, e)),
        };
        let mut rows = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let row = match CacheKey::parse(&name) {
                Err(e) => Listed::Corrupt {
                    key: name,
                    reason: e.message,
                },
                Ok(key) => match self.read(&key) {
                    Ok(Some(entry)) => Listed::Ok(entry),
                    Ok(None) => continue,
                    Err(e) => Listed::Corrupt {
                        key: name,
                        reason: e.to_string(),
                    },
                },
            };
            rows.push(row);
        }
        ktstr_sdk::cache::sort_newest_first(&mut rows);
        Ok(rows)
    }

    fn remove(&self, key: &CacheKey, _: &StageContext) -> Result<bool> {
        self.refuse_if_read_only(&format!("remove {key}"))?;
        let dest = self.entry_dir(key);
        if !dest.exists() {
            return Ok(false);
        }
        let _lock = self.lock(key)?;
        let doomed = self.temp_dir("del", key);
        if let Some(parent) = doomed.parent() {
            std::fs::create_dir_all(parent).at("create", parent)?;
        }
        match std::fs::rename(&dest, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StageError::io("remove", &dest, e)),
        }
        std::fs::remove_dir_all(&doomed).at("remove", &doomed)?;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("shared directory cache at {}", self.dir.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
        }
    }
}

/// The plugin, for both transports: the library export below and the
/// stdio binary (`src/stdio.rs`).
pub fn plugin() -> Plugin {
    Plugin::new(NAME, env!("CARGO_PKG_VERSION")).stage(
        NAME,
        "kernels in a directory shared by many machines (NFS): O_EXCL lock files, atomic rename publish",
        KEYS,
        Constructor::Cache(|cfg| Ok(Box::new(SharedDirCache::from_config(cfg)?))),
    )
}

ktstr_sdk::export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> StageContext {
        StageContext::quiet()
    }

    /// Entries are directories: lookups never touch the staging.
    fn no_staging() -> Staging {
        Staging::lent(PathBuf::from("/nonexistent/staging"))
    }

    fn metadata(key: &CacheKey) -> Metadata {
        Metadata {
            schema: Metadata::SCHEMA,
            key: key.clone(),
            source: ktstr_sdk::cache::SourceInfo {
                kind: "local".into(),
                identity: "abc".into(),
                path: None,
            },
            version: Some("6.99.0".into()),
            arch: "x86_64".into(),
            image_name: "bzImage".into(),
            profile: "default".into(),
            config_sha256: "0".into(),
            fragments: Vec::new(),
            builder: "kbuild".into(),
            toolchain: "cc".into(),
            built_at: "2025-01-01T00:00:00Z".into(),
            components: Vec::new(),
            artifacts: Default::default(),
            strip: None,
            origin: None,
            kernelrelease: None,
            build: None,
            verify: None,
        }
    }

    #[test]
    fn store_lookup_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("bzImage"), b"image").unwrap();
        std::fs::write(src.join("config"), b"CONFIG_X=y\n").unwrap();
        let cache = SharedDirCache::new(dir.path().join("shared"));
        let key = CacheKey::parse("6.99.0-local-x86_64-00000001").unwrap();
        assert!(cache.lookup(&key, &no_staging(), &cx()).unwrap().is_none());
        let artifacts = Artifacts {
            image: src.join("bzImage"),
            vmlinux: None,
            config: src.join("config"),
            log: None,
        };
        let stored = cache
            .store(&key, &artifacts, &metadata(&key), &cx())
            .unwrap();
        assert_eq!(std::fs::read(stored.image()).unwrap(), b"image");
        // Replacing an entry works, and leaves no temp dirs behind.
        cache
            .store(&key, &artifacts, &metadata(&key), &cx())
            .unwrap();
        let hit = cache.lookup(&key, &no_staging(), &cx()).unwrap().unwrap();
        assert_eq!(hit.metadata.artifacts["bzImage"].size, 5);
        assert_eq!(
            std::fs::read_dir(dir.path().join("shared/tmp"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(cache.list(&cx()).unwrap().len(), 1);
        // A truncated file is reported, never returned as a hit.
        std::fs::write(hit.image(), b"im").unwrap();
        assert_eq!(
            cache.lookup(&key, &no_staging(), &cx()).unwrap_err().kind,
            ErrorKind::Corrupt
        );
        assert!(cache.remove(&key, &cx()).unwrap());
        assert!(!cache.remove(&key, &cx()).unwrap());
        assert!(cache.list(&cx()).unwrap().is_empty());
    }

    #[test]
    fn a_cancelled_store_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("bzImage"), b"image").unwrap();
        std::fs::write(src.join("config"), b"CONFIG_X=y\n").unwrap();
        let cache = SharedDirCache::new(dir.path().join("shared"));
        let key = CacheKey::parse("6.99.0-local-x86_64-00000002").unwrap();
        let artifacts = Artifacts {
            image: src.join("bzImage"),
            vmlinux: None,
            config: src.join("config"),
            log: None,
        };
        let stopped = cx();
        stopped.cancel.cancel();
        let e = cache
            .store(&key, &artifacts, &metadata(&key), &stopped)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
        assert!(cache.lookup(&key, &no_staging(), &cx()).unwrap().is_none());
        assert!(cache.list(&cx()).unwrap().is_empty());
        let tmp = dir.path().join("shared/tmp");
        assert_eq!(std::fs::read_dir(tmp).map(|d| d.count()).unwrap_or(0), 0);
    }

    #[test]
    fn config_is_checked() {
        let e = SharedDirCache::from_config(&serde_json::json!({"dir": "rel"})).unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
        let e = SharedDirCache::from_config(&serde_json::json!({"dri": "/x"})).unwrap_err();
        assert!(e.message.contains("unknown key"), "{e}");
        let c = SharedDirCache::from_config(&serde_json::json!({"dir": "/x", "read_only": true}))
            .unwrap();
        assert!(c.capabilities().read_only);
    }
}
