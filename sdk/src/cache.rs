//! Cache keys, entry metadata and the cache backend stage, with its
//! contract: what each call gets and returns, what `dir` means, where a
//! backend that must unpack puts files ([`Staging`]), and which parts of
//! the metadata are the host's (see docs/cache.md, "Backend contract").

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::context::StageContext;
use crate::error::{IoResultExt, Result, StageError};

/// A validated cache key: safe to use as one path component.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct CacheKey(String);

impl CacheKey {
    /// Longest key accepted (well under NAME_MAX with temp-dir decorations).
    pub const MAX_LEN: usize = 160;

    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| {
            Err(StageError::invalid_input(format!("cache key {raw:?}: {why}")).with_hint(
                "keys look like 6.12.3-tarball-x86_64-1a2b3c4d; copy one from `ktstr kernel list`",
            ))
        };
        if raw.is_empty() {
            return bad("is empty");
        }
        if raw.len() > Self::MAX_LEN {
            return bad("is too long");
        }
        if raw.starts_with('.') {
            return bad("must not start with '.'");
        }
        if raw.contains("..") {
            return bad("must not contain '..'");
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
        {
            return bad(&format!(
                "contains {c:?}; only letters, digits and - _ . + are allowed"
            ));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl TryFrom<String> for CacheKey {
    type Error = StageError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<CacheKey> for String {
    fn from(k: CacheKey) -> String {
        k.0
    }
}

/// One named input of the cache key ("source", "config", "toolchain").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct KeyComponent {
    pub name: String,
    pub value: String,
}

impl KeyComponent {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Where the built kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// Acquirer kind (`local`, `tarball`, `git`).
    pub kind: String,
    /// Content identity (commit id, tarball sha256).
    pub identity: String,
    /// The user's tree path, for local sources. Never uploaded to remotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Digest and size of one stored file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
}

/// How vmlinux was reduced before storing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StripInfo {
    /// The command used (`objcopy --strip-debug`).
    pub tool: String,
    pub original_size: u64,
    pub stripped_size: u64,
    /// How long stripping took, in milliseconds (absent in older entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `metadata.json`: everything known about one entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// Format version of this file.
    pub schema: u32,
    pub key: CacheKey,
    pub source: SourceInfo,
    /// Kernel release (`6.12.117`).
    pub version: Option<String>,
    pub arch: String,
    /// File name of the image inside the entry (`bzImage`).
    pub image_name: String,
    pub profile: String,
    /// sha256 of the final `.config`.
    pub config_sha256: String,
    /// sha256 of each user fragment, in order.
    #[serde(default)]
    pub fragments: Vec<FragmentInfo>,
    pub builder: String,
    pub toolchain: String,
    /// RFC 3339, UTC.
    pub built_at: String,
    /// Every key input, so a miss can be explained.
    pub components: Vec<KeyComponent>,
    /// sha256 + size of each stored file, by file name.
    pub artifacts: BTreeMap<String, ArtifactInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip: Option<StripInfo>,
    /// Where a backfilled entry came from (`s3-cache s3://bucket/prefix`);
    /// `None` for kernels built on this machine. Never part of the key.
    /// The host's field: it sets it when it copies a remote hit into the
    /// local tier and clears it before storing in a remote tier; backends
    /// store metadata verbatim and never touch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `include/config/kernel.release` after the build (`6.12.3`): the
    /// release the kernel reports in `uname -r`. Absent in older entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernelrelease: Option<String>,
    /// How the entry was built and how to build it again. Absent in entries
    /// stored before ktstr recorded it (and in backfills of those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRecord>,
    /// The boot check's verdict (`ktstr build --verify`, `ktstr kernel
    /// verify-boot`). Absent until a verifier ran; never part of the key.
    /// The host's field, like `origin`: it sets it after running the
    /// verifier and re-stores the metadata; backends store it verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::VerifyRecord>,
}

/// The evidence a build leaves in its entry's metadata (see docs/cache.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BuildRecord {
    /// Wall-clock time of each step.
    #[serde(default)]
    pub durations: StepDurations,
    /// Lines of the build log that report a compiler/linker warning
    /// (`...: warning: ...`).
    #[serde(default)]
    pub warnings: u64,
    /// Lines of the build log that report an error (`...: error: ...`); a
    /// stored build can have some (make `-k`, a tool that recovers).
    #[serde(default)]
    pub errors: u64,
    /// The exact make command line that built the kernel, as run in the tree
    /// (`make -j8 KCFLAGS=-Wno-error LOCALVERSION=`); `None` when the builder
    /// did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_command: Option<String>,
    /// Every input the build was asked for: the key components plus the
    /// declared configuration (profile, fragment digests) that a local
    /// tree's `.config` digest stands for in the key.
    #[serde(default)]
    pub inputs: Vec<KeyComponent>,
    /// How to build this kernel again.
    #[serde(default)]
    pub reproduce: Reproducer,
}

/// Milliseconds per build step; `None` for a step that did not run (a local
/// tree whose `.config` already carried the request is not reconfigured).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepDurations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_ms: Option<u64>,
}

/// Commands that rebuild an entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Reproducer {
    /// The `ktstr build ... --force` command that rebuilds it.
    #[serde(default)]
    pub ktstr: String,
    /// Plain kbuild: `cp config .config && make olddefconfig && <make_command>`,
    /// run in the source at `source.identity` with the entry's `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
}

impl Metadata {
    pub const SCHEMA: u32 = 1;
}

/// A user fragment as recorded in metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FragmentInfo {
    pub name: String,
    pub sha256: String,
}

/// Files to store, already processed (vmlinux stripped). Crosses the
/// plugin ABI as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifacts {
    pub image: PathBuf,
    pub vmlinux: Option<PathBuf>,
    pub config: PathBuf,
    /// The zstd-compressed build log ([`LOG_NAME`]), stored as is.
    /// Optional on the wire: older hosts and plugins do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

/// File name of the stored vmlinux and config inside an entry.
pub const VMLINUX_NAME: &str = "vmlinux";
pub const CONFIG_NAME: &str = "config";
/// File name of the build log inside an entry: make's whole output
/// (configure and build steps), zstd-compressed. Optional: entries stored
/// before ktstr kept logs, and builds by other hosts, have none.
pub const LOG_NAME: &str = "build.log.zst";
pub const METADATA_NAME: &str = "metadata.json";

/// A name that is one plain file inside an entry directory (and not the
/// metadata file): what every artifact name must be, whatever the backend.
pub fn is_entry_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name != METADATA_NAME
}

/// A usable kernel image name: an entry file other than vmlinux, config and
/// the build log.
pub fn is_image_name(name: &str) -> bool {
    is_entry_file_name(name) && name != VMLINUX_NAME && name != CONFIG_NAME && name != LOG_NAME
}

/// A cache entry: its metadata, and where its files are.
/// Crosses the plugin ABI as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    pub key: CacheKey,
    /// A directory on this machine holding the entry's files, or empty
    /// when the backend keeps none (see [`CacheEntry::is_local`]):
    ///
    /// - `lookup`: always a readable directory: the entry itself for a
    ///   backend that stores directories, else a directory inside the
    ///   lookup's [`Staging`] (readable until the host removes it);
    /// - `store` and `list`: the entry itself for a backend that stores
    ///   directories; empty for one that does not (a tar file, an object
    ///   store), which names the entry in [`CacheEntry::location`] instead.
    ///
    /// The host refuses anything else from a plugin (a `.tar` file here
    /// would make `image()` name `key.tar/bzImage`).
    pub dir: PathBuf,
    pub metadata: Metadata,
    /// Which backend answered (`local`, `s3-cache`).
    pub origin: String,
    /// Where the backend keeps the entry, for people (`s3://b/p/v1/...`,
    /// `/srv/kernels/KEY.tar`), when that is not `dir`. Never opened by
    /// the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// When the entry was last used (RFC 3339), for `list` rows of a
    /// backend that records it (`ktstr cache gc` evicts the least recently
    /// used first); `None` elsewhere, and then the build time stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

impl CacheEntry {
    /// Whether the entry's files are on this machine, in `dir`.
    pub fn is_local(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// Check what a backend returned from `call` (`lookup`, `store`,
    /// `list`) for `key` against the `dir` rules above. The host runs it
    /// on every entry a dynamic plugin returns.
    pub fn check_returned(&self, call: &str, key: Option<&CacheKey>, backend: &str) -> Result<()> {
        let broke = |why: String| {
            Err(StageError::internal(format!(
                "{backend}: {call} returned entry {} with {why}",
                self.key
            ))
            .with_hint(
                "the cache backend breaks the backend contract (`ktstr docs cache`): \
                 report it to the plugin's author",
            ))
        };
        if let Some(k) = key
            && *k != self.key
        {
            return broke(format!("another key than the {k} asked for"));
        }
        if self.metadata.key != self.key {
            return broke(format!("metadata for {}", self.metadata.key));
        }
        if !self.is_local() {
            if call == "lookup" {
                return broke(
                    "no directory: a hit's files must be on this machine (unpack into the \
                     staging directory)"
                        .into(),
                );
            }
            return Ok(());
        }
        if !self.dir.is_absolute() || !self.dir.is_dir() {
            return broke(format!(
                "dir {} that is not a directory{}",
                self.dir.display(),
                if call == "lookup" {
                    " (unpack into the staging directory)"
                } else {
                    " (leave dir empty and set location for an entry that is not a directory)"
                }
            ));
        }
        Ok(())
    }

    pub fn image(&self) -> PathBuf {
        self.dir.join(&self.metadata.image_name)
    }

    pub fn vmlinux(&self) -> Option<PathBuf> {
        self.metadata
            .artifacts
            .contains_key(VMLINUX_NAME)
            .then(|| self.dir.join(VMLINUX_NAME))
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_NAME)
    }

    /// The compressed build log, when the entry has one.
    pub fn log(&self) -> Option<PathBuf> {
        self.metadata
            .artifacts
            .contains_key(LOG_NAME)
            .then(|| self.dir.join(LOG_NAME))
    }

    /// The entry's files, for storing it in another tier.
    pub fn artifacts(&self) -> Artifacts {
        Artifacts {
            image: self.image(),
            vmlinux: self.vmlinux(),
            config: self.config(),
            log: self.log(),
        }
    }
}

/// One row of a backend's listing: an entry, or why it is unusable.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // listings are short; boxing buys nothing
pub enum Listed {
    Ok(CacheEntry),
    Corrupt { key: String, reason: String },
}

impl Listed {
    /// The row as the host trusts it: an entry that fails
    /// [`CacheEntry::check_returned`] (a plugin's listing crossed a process
    /// or library boundary) is reported as corrupt instead.
    pub fn checked(self, backend: &str) -> Listed {
        match self {
            Listed::Ok(e) => match e.check_returned("list", None, backend) {
                Ok(()) => Listed::Ok(e),
                Err(why) => Listed::Corrupt {
                    key: e.key.to_string(),
                    reason: why.to_string(),
                },
            },
            corrupt => corrupt,
        }
    }
}

/// Put a listing in the order [`CacheBackend::list`] returns: usable
/// entries newest first (equal times by key), then corrupt ones by key.
/// `ktstr kernel clean --keep N` keeps the first N usable rows.
pub fn sort_newest_first(rows: &mut [Listed]) {
    rows.sort_by(|a, b| match (a, b) {
        (Listed::Ok(x), Listed::Ok(y)) => y
            .metadata
            .built_at
            .cmp(&x.metadata.built_at)
            .then_with(|| x.key.cmp(&y.key)),
        (Listed::Ok(_), Listed::Corrupt { .. }) => std::cmp::Ordering::Less,
        (Listed::Corrupt { .. }, Listed::Ok(_)) => std::cmp::Ordering::Greater,
        (Listed::Corrupt { key: x, .. }, Listed::Corrupt { key: y, .. }) => x.cmp(y),
    });
}

/// What a backend can do. Crosses the plugin ABI as JSON; unknown fields
/// (such as `remote`, which ABI 0.1 had and nothing read) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Never stores or removes: the host wraps the backend in
    /// [`ReadOnly`](crate::read_only::ReadOnly), so `store` and `remove`
    /// never reach it, skips it when storing a build and in `kernel clean`,
    /// and `cache push` says it was skipped.
    pub read_only: bool,
}

/// A directory the host lends one `lookup` for the files of a hit, for a
/// backend that must unpack (a tar file, an object store).
///
/// The host creates the staging place and removes it, with whatever is
/// in it, once it no longer needs the files: after it copied the hit into
/// the local tier, or at the end of the run (and a later run's sweep
/// removes what a killed ktstr left). A backend calls [`Staging::dir`] only
/// when it has a hit to unpack, puts the entry's files in it (or in a
/// directory it creates inside it), returns that directory as the entry's
/// `dir`, and never removes it. Backends that store directories ignore it.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    /// Removed on drop: the host's value, not the plugin's view of it.
    owned: bool,
}

impl Staging {
    /// Host side: a fresh staging place under `<root>/scratch`, created on
    /// first use and removed on drop. Named like every scratch entry
    /// (`cache-staging-<pid>-<n>`), so [`crate::scratch::sweep_dead`]
    /// removes it once this process is gone.
    pub fn new(root: &Path) -> Self {
        Self {
            path: crate::paths::scratch_dir(root).join(crate::scratch::entry_name("cache-staging")),
            owned: true,
        }
    }

    /// The plugin's view of the host's staging place: never removed here.
    pub fn lent(path: PathBuf) -> Self {
        Self { path, owned: false }
    }

    /// Where the staging directory is (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The staging directory, created (empty) on the first call.
    pub fn dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.path).at("create the cache staging directory", &self.path)?;
        Ok(&self.path)
    }

    /// Whether `path` is inside the staging directory.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Stage 5: keep built kernels. The contract (docs/cache.md, "Backend
/// contract") in short: every call may report progress and must stop when
/// `cx.cancel` says so, leaving nothing visible; metadata is stored and
/// returned verbatim (its `origin` is the host's); `dir` follows the rules
/// on [`CacheEntry::dir`].
pub trait CacheBackend: Send + Sync {
    /// `None` on a miss. A corrupt entry is an `Err` of kind `Corrupt` with
    /// the reason; it is never returned as a hit. A hit's files are on this
    /// machine: a backend that does not store directories unpacks them into
    /// `staging` (see [`Staging`]).
    fn lookup(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>>;

    /// Store atomically: readers see the old entry or the new one, never a
    /// mix. Cancelled (`Err` of kind `Cancelled`) or failed, it leaves
    /// nothing visible. `metadata` is stored as given.
    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry>;

    /// Every entry, in [`sort_newest_first`] order.
    fn list(&self, cx: &StageContext) -> Result<Vec<Listed>>;

    /// `Ok(false)` when there was nothing to remove.
    fn remove(&self, key: &CacheKey, cx: &StageContext) -> Result<bool>;

    /// One line for humans: "local cache at /root/.cache/ktstr".
    fn describe(&self) -> String;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The lock files this backend takes, for `ktstr locks` (see
    /// [`crate::lock_list`]). None by default.
    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        Ok(Vec::new())
    }

    /// `ktstr cache gc`: remove the least recently used entries until the
    /// request's policy holds (see [`crate::cache_gc`]). The default
    /// applies it over [`list`](Self::list) and [`remove`](Self::remove);
    /// a backend that knows more (sizes in its own store, entries it must
    /// not remove now, objects no entry owns) overrides it and still
    /// decides through [`crate::cache_gc::collect`].
    fn gc(
        &self,
        request: &crate::cache_gc::GcRequest,
        cx: &StageContext,
    ) -> Result<crate::cache_gc::GcReport> {
        crate::cache_gc::default_gc(self, request, cx)
    }

    /// Build leases in this tier (fleet single-flight, see
    /// [`crate::lease`]), if it can create objects atomically and may be
    /// written. None by default: no fleet single-flight.
    fn leases(&self) -> Option<std::sync::Arc<dyn crate::lease::LeaseStore>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_put_the_newest_first_and_corrupt_last() {
        let ok = |key: &str, built_at: &str| {
            let metadata: Metadata = serde_json::from_value(serde_json::json!({
                "schema": 1, "key": key,
                "source": {"kind": "x", "identity": "y"},
                "version": null, "arch": "x86_64", "image_name": "bzImage",
                "profile": "default", "config_sha256": "", "builder": "b",
                "toolchain": "t", "built_at": built_at, "components": [], "artifacts": {}
            }))
            .unwrap();
            Listed::Ok(CacheEntry {
                key: metadata.key.clone(),
                dir: PathBuf::from(key),
                metadata,
                origin: "local".into(),
                location: None,
                last_used: None,
            })
        };
        let corrupt = |key: &str| Listed::Corrupt {
            key: key.into(),
            reason: "r".into(),
        };
        let mut rows = vec![
            corrupt("z-bad"),
            ok("k-old", "2024-01-01T00:00:00Z"),
            corrupt("a-bad"),
            ok("k-b", "2025-06-01T12:00:00Z"),
            ok("k-a", "2025-06-01T12:00:00Z"),
            ok("k-mid", "2025-01-01T00:00:00Z"),
        ];
        sort_newest_first(&mut rows);
        let keys: Vec<&str> = rows
            .iter()
            .map(|r| match r {
                Listed::Ok(e) => e.key.as_str(),
                Listed::Corrupt { key, .. } => key,
            })
            .collect();
        assert_eq!(keys, ["k-a", "k-b", "k-mid", "k-old", "a-bad", "z-bad"]);
    }

    #[test]
    fn key_validation_rejects_unsafe_names() {
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a..b",
            "a\0b",
            "a b",
            &"x".repeat(200),
        ] {
            let err = CacheKey::parse(bad).unwrap_err();
            assert_eq!(err.kind, crate::error::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.hint.is_some());
        }
        let ok = CacheKey::parse("6.12.117-local-x86_64-tiny-0a1b2c3d").unwrap();
        assert_eq!(ok.as_str(), "6.12.117-local-x86_64-tiny-0a1b2c3d");
    }

    fn entry_in(dir: PathBuf) -> CacheEntry {
        let metadata: Metadata = serde_json::from_value(serde_json::json!({
            "schema": 1, "key": "k-1",
            "source": {"kind": "x", "identity": "y"},
            "version": null, "arch": "x86_64", "image_name": "bzImage",
            "profile": "default", "config_sha256": "", "builder": "b",
            "toolchain": "t", "built_at": "", "components": [], "artifacts": {}
        }))
        .unwrap();
        CacheEntry {
            key: metadata.key.clone(),
            dir,
            metadata,
            origin: "x".into(),
            location: None,
            last_used: None,
        }
    }

    /// The outside tar-file tier's mistake (its `.tar` as `dir`) is
    /// refused for every call; an empty `dir` only where no files are due.
    #[test]
    fn entries_must_name_a_directory_or_none() {
        let root = tempfile::tempdir().unwrap();
        let tar = root.path().join("k-1.tar");
        std::fs::write(&tar, b"").unwrap();
        let key = CacheKey::parse("k-1").unwrap();
        for call in ["lookup", "store", "list"] {
            let e = entry_in(tar.clone())
                .check_returned(call, Some(&key), "tar-cache")
                .unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::Internal);
            assert!(e.message.contains("k-1.tar that is not a directory"), "{e}");
            assert!(e.hint.unwrap().contains("`ktstr docs cache`"));
            entry_in(root.path().to_path_buf())
                .check_returned(call, Some(&key), "tar-cache")
                .unwrap();
        }
        let remote = entry_in(PathBuf::new());
        assert!(!remote.is_local());
        remote.check_returned("store", Some(&key), "t").unwrap();
        remote.check_returned("list", None, "t").unwrap();
        let e = remote
            .check_returned("lookup", Some(&key), "t")
            .unwrap_err();
        assert!(e.message.contains("unpack into the staging"), "{e}");
        let other = CacheKey::parse("k-2").unwrap();
        let e = entry_in(root.path().to_path_buf())
            .check_returned("lookup", Some(&other), "t")
            .unwrap_err();
        assert!(e.message.contains("another key than the k-2"), "{e}");
    }

    /// Created on first use, removed by the host's value only.
    #[test]
    fn staging_is_made_on_demand_and_removed_by_its_owner() {
        let root = tempfile::tempdir().unwrap();
        let host = Staging::new(root.path());
        assert!(!host.path().exists(), "created before use");
        let lent = Staging::lent(host.path().to_path_buf());
        let dir = lent.dir().unwrap().to_path_buf();
        std::fs::write(dir.join("bzImage"), b"k").unwrap();
        assert!(lent.holds(&dir.join("bzImage")));
        drop(lent);
        assert!(dir.join("bzImage").exists(), "the plugin's view removed it");
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            crate::scratch::owner(&name),
            Some(("cache-staging", std::process::id())),
            "not swept like other scratch"
        );
        drop(host);
        assert!(!dir.exists());
    }

    #[test]
    fn capabilities_ignore_the_retired_remote_field() {
        let c: Capabilities =
            serde_json::from_str(r#"{"read_only": true, "remote": true}"#).unwrap();
        assert!(c.read_only);
        let c: Capabilities = serde_json::from_str("{}").unwrap();
        assert!(!c.read_only);
    }

    /// Entries and manifests written before the boot check read as
    /// unchecked; a verdict round-trips flat (`passed`, `summary` beside
    /// the host's fields) and is left out of JSON when absent.
    #[test]
    fn metadata_without_a_verdict_still_reads_and_a_verdict_round_trips() {
        let old = serde_json::json!({
            "schema": 1, "key": "k-1", "source": {"kind": "x", "identity": "y"},
            "version": null, "arch": "x86_64", "image_name": "bzImage",
            "profile": "default", "config_sha256": "", "builder": "b",
            "toolchain": "t", "built_at": "", "components": [], "artifacts": {}
        });
        let mut m: Metadata = serde_json::from_value(old).unwrap();
        assert_eq!(m.verify, None);
        assert!(!serde_json::to_string(&m).unwrap().contains("verify"));
        let record: crate::verify::VerifyRecord = serde_json::from_value(serde_json::json!({
            "verifier": "qemu", "verifier_version": "0.1.0",
            "verified_at": "2026-12-06T05:00:00Z", "duration_ms": 24000,
            "passed": false, "summary": "kernel panic",
            "console_tail": ["Kernel panic - not syncing"]
        }))
        .unwrap();
        assert!(record.verdict.observed.is_empty());
        m.verify = Some(record);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["verify"]["passed"], false);
        assert_eq!(json["verify"]["verifier"], "qemu");
        let back: Metadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn key_deserialization_validates() {
        let bad: std::result::Result<CacheKey, _> = serde_json::from_str("\"../etc\"");
        assert!(bad.is_err());
        let good: CacheKey = serde_json::from_str("\"abc-1\"").unwrap();
        assert_eq!(good.as_str(), "abc-1");
    }
}
