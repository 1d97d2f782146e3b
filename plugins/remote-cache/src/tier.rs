//! [`RemoteTier`]: the [`CacheBackend`] over an object store, shared by
//! `s3-cache` and `http-cache`.
//!
//! The host calls tiers synchronously, so each tier owns a small
//! current-thread tokio runtime and blocks on it; nothing here needs the
//! host to be async, and a tier that is never used costs one idle runtime.
//!
//! How a pull works, and why:
//! - The manifest is fetched first (one small GET); a 404 is a plain miss.
//! - The archive is streamed straight into the unpacker on a second thread
//!   while its bytes are hashed, so a pull costs about one transfer rather
//!   than transfer + decompress + copy. Files land in a private scratch
//!   directory; only after the archive digest, every file digest and every
//!   size agree with the manifest is the entry returned, and the host then
//!   copies it into the local cache with its atomic store. A bad object is
//!   reported as `Corrupt` (the host warns and builds) and deleted locally.
//! - Scratch directories are named `.tmp-remote@<plugin>.<n>-<pid>` under the
//!   cache root, following the SDK's owned-directory contract
//!   ([`ktstr_sdk::owned`]) so any sweep of the root removes them once the
//!   pid is dead, and are removed when the tier is dropped.
//!
//! How a push works: pack into a temporary archive (digests computed on the
//! way), skip only if the remote already has an entry with the same file
//! digests *and* an archive whose streamed sha256 is the recorded one (a key
//! a lookup in this run found damaged is replaced without asking), upload
//! the archive (multipart above one part, aborted on failure so no parts
//! linger), then the manifest. A dead push's scratch is swept whenever the
//! tier is constructed.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use futures::StreamExt;
use ktstr_sdk::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, Listed, Metadata,
};
use ktstr_sdk::error::{ErrorKind, IoResultExt, Result, StageError};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::format::{self, Hashing, Manifest};

/// Tuning a tier needs beyond the client itself.
#[derive(Debug, Clone)]
pub struct TierOptions {
    pub read_only: bool,
    pub max_entry_size: u64,
    pub compression_level: i32,
    /// `(part size, concurrent parts)`; `None`: always one PUT.
    pub multipart: Option<(u64, usize)>,
    /// Where to unpack downloads; `None`: the cache root, else the temp dir.
    pub scratch_dir: Option<PathBuf>,
    /// `KTSTR_S3_` / `KTSTR_HTTP_CACHE_`, for hints.
    pub env_prefix: &'static str,
    /// What to say about credentials when the server refuses them.
    pub auth_hint: String,
}

/// A remote cache tier.
pub struct RemoteTier {
    plugin: &'static str,
    /// `s3://bucket/prefix` or the base URL: names the cache in messages.
    location: String,
    /// Extra words for `describe()` (endpoint, credential source).
    detail: String,
    store: Box<dyn ObjectStore>,
    /// `<prefix>/v1`.
    root: ObjPath,
    opts: TierOptions,
    runtime: tokio::runtime::Runtime,
    scratch: Mutex<Option<Scratch>>,
    /// Keys this run found damaged here: the next store replaces them
    /// whatever the remote's manifest claims.
    damaged: Mutex<HashSet<CacheKey>>,
    /// What the first miss (or push) found out about the bucket: `Some`
    /// error when it does not exist.
    bucket_check: std::sync::OnceLock<Option<StageError>>,
}

impl std::fmt::Debug for RemoteTier {
    // Deliberately not the client: its config holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("plugin", &self.plugin)
            .field("location", &self.location)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The tier's private directory; removed on drop.
#[derive(Debug)]
struct Scratch {
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
fn scratch_base(opts: &TierOptions) -> Option<PathBuf> {
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
pub(crate) fn sweep_dead_scratch(base: &Path, plugin: &str) -> Vec<PathBuf> {
    ktstr_sdk::owned::sweep_dead_temp(base, |what| is_scratch_of(what, plugin))
}

/// What a push found at the remote under its key.
enum Existing {
    Absent,
    /// An intact entry with the same files: nothing to upload.
    Same,
    /// An intact entry of another build of the key.
    Different,
    /// Unreadable, or bytes that do not match their digest.
    Damaged(String),
}

static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Reads what the download loop sends; EOF when the sender is gone.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// One line for a failed request. object_store nests the same text several
/// levels deep (and appends HTML/XML error bodies); the innermost cause plus
/// the S3 error code says it all, and the full chain goes to the debug log.
fn summarize(e: &object_store::Error) -> String {
    let mut innermost = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        innermost = c.to_string();
        cur = c.source();
    }
    let code = innermost
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string());
    let mut line: String = innermost
        .split(['<', '\r', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches(':')
        .chars()
        .take(200)
        .collect();
    if let Some(code) = code {
        line.push_str(&format!(" ({code})"));
    }
    if let Some(retries) = e
        .to_string()
        .split_once(", after ")
        .and_then(|(_, r)| r.split_once(" retries"))
        .map(|(n, _)| n.to_string())
        .filter(|n| n != "0")
    {
        line.push_str(&format!(", after {retries} retries"));
    }
    line
}

impl RemoteTier {
    pub(crate) fn new(
        plugin: &'static str,
        location: String,
        detail: String,
        store: Box<dyn ObjectStore>,
        prefix: &str,
        opts: TierOptions,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StageError::internal(format!("plugin {plugin}: cannot start the I/O runtime"))
                    .caused_by(e)
            })?;
        // A push killed with -9 leaves its scratch (a packed archive, often
        // 100 MB) behind; every command that opens this tier removes such
        // leftovers, not only the next local store.
        if let Some(base) = scratch_base(&opts) {
            for stale in sweep_dead_scratch(&base, plugin) {
                tracing::info!("removed {} left by a dead ktstr", stale.display());
            }
        }
        let root = if prefix.is_empty() {
            ObjPath::from("v1")
        } else {
            ObjPath::from(format!("{prefix}/v{}", format::FORMAT_VERSION))
        };
        Ok(Self {
            plugin,
            location,
            detail,
            store,
            root,
            opts,
            runtime,
            scratch: Mutex::new(None),
            damaged: Mutex::new(HashSet::new()),
            bucket_check: std::sync::OnceLock::new(),
        })
    }

    /// `s3://bucket/prefix` or the URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn object(&self, rel: &str) -> ObjPath {
        let mut p = self.root.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    fn manifest_path(&self, key: &CacheKey) -> ObjPath {
        self.object(&format::manifest_name(key))
    }

    fn archive_path(&self, key: &CacheKey, name: &str) -> ObjPath {
        self.object(&format!("{}/{name}", format::archive_dir(key)))
    }

    /// Human-readable address of an object, for messages and listings.
    fn url_of(&self, p: &ObjPath) -> String {
        let rel = p
            .as_ref()
            .strip_prefix(self.root.as_ref())
            .unwrap_or(p.as_ref());
        format!("{}/v{}{rel}", self.location, format::FORMAT_VERSION)
    }

    /// A fresh directory under the tier's scratch dir.
    fn scratch_subdir(&self, what: &str) -> Result<PathBuf> {
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

    /// A failed request, worded for the host's one-line warning.
    fn request_error(&self, action: &str, object: &ObjPath, e: object_store::Error) -> StageError {
        if let Some(bucket) = self.missing_bucket(&e) {
            tracing::debug!("{}: {action} {}: {e:?}", self.plugin, self.url_of(object));
            return StageError::not_found(format!(
                "bucket {bucket} does not exist ({})",
                self.endpoint_words()
            ))
            .with_hint(format!(
                "check the bucket name (bucket in [plugin.{}], {}BUCKET) and the endpoint and \
                 region; create the bucket if this cache is new",
                self.plugin, self.opts.env_prefix
            ));
        }
        let (kind, hint) = match &e {
            object_store::Error::NotFound { .. } => (ErrorKind::NotFound, None),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                (ErrorKind::InvalidInput, Some(self.opts.auth_hint.clone()))
            }
            _ => (
                ErrorKind::Io,
                Some(format!(
                    "is the server reachable? timeouts and retries are set by connect_timeout, \
                     read_timeout, request_timeout and retries ({}CONNECT_TIMEOUT, ...)",
                    self.opts.env_prefix
                )),
            ),
        };
        tracing::debug!("{}: {action} {}: {e:?}", self.plugin, self.url_of(object));
        let mut err = StageError::new(kind, format!("{action} {} failed", self.url_of(object)));
        err.causes.push(summarize(&e));
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }

    /// The bucket named in `location`, when `e` says it does not exist
    /// (S3's `NoSuchBucket`, which object_store reports as a plain 404).
    fn missing_bucket(&self, e: &object_store::Error) -> Option<String> {
        let bucket = self.location.strip_prefix("s3://")?.split('/').next()?;
        let mut text = e.to_string();
        let mut cur = std::error::Error::source(e);
        while let Some(c) = cur {
            text.push_str(&c.to_string());
            cur = c.source();
        }
        text.contains("NoSuchBucket").then(|| bucket.to_string())
    }

    /// On the first miss or push of an S3 tier, make sure the bucket exists:
    /// AWS answers a GET in a missing bucket with `NoSuchBucket`,
    /// but some servers (s3s-fs, ...) say `NoSuchKey`, which would make a
    /// misspelt bucket a silent miss forever. One LIST per run; any answer
    /// but `NoSuchBucket` (a read-only key without ListBucket gets 403) is
    /// ignored.
    async fn check_bucket_once(&self) -> Result<()> {
        if !self.location.starts_with("s3://") {
            return Ok(());
        }
        if let Some(known) = self.bucket_check.get() {
            return known.clone().map_or(Ok(()), Err);
        }
        let verdict = match self.store.list_with_delimiter(Some(&self.root)).await {
            Err(e) if self.missing_bucket(&e).is_some() => {
                Some(self.request_error("list", &self.root, e))
            }
            Err(e) => {
                tracing::debug!("{}: bucket check: {e}", self.plugin);
                None
            }
            Ok(_) => None,
        };
        let _ = self.bucket_check.set(verdict.clone());
        verdict.map_or(Ok(()), Err)
    }

    /// "AWS" or "at http://host:port", for messages about the server.
    fn endpoint_words(&self) -> String {
        if self.detail.is_empty() {
            self.location.clone()
        } else {
            self.detail.split(", ").next().unwrap_or("").to_string()
        }
    }

    fn corrupt(&self, key: &CacheKey, reason: impl std::fmt::Display) -> StageError {
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        StageError::corrupt(format!(
            "{} entry {key} at {}: {reason}",
            self.plugin, self.location
        ))
        .with_hint(if self.opts.read_only {
            "ask whoever maintains the remote cache to remove or re-push the entry".to_string()
        } else {
            format!(
                "the next successful build of {key} replaces it; `ktstr cache push {key}` does so now"
            )
        })
    }

    fn read_only_error(&self, action: &str) -> StageError {
        StageError::new(
            ErrorKind::Unsupported,
            format!("cannot {action}: {} is read-only", self.location),
        )
        .with_hint(format!(
            "read_only is set ({}READ_ONLY); unset it on machines trusted to write",
            self.opts.env_prefix
        ))
    }

    async fn fetch_manifest(&self, key: &CacheKey) -> Result<Option<Manifest>> {
        let path = self.manifest_path(key);
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(e @ object_store::Error::NotFound { .. }) if self.missing_bucket(&e).is_none() => {
                self.check_bucket_once().await?;
                return Ok(None);
            }
            Err(e) => return Err(self.request_error("GET", &path, e)),
        };
        if got.meta.size > format::MAX_MANIFEST_SIZE {
            return Err(self.corrupt(
                key,
                format!("manifest is {} bytes; manifests are small", got.meta.size),
            ));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.request_error("GET", &path, e))?;
        format::parse_manifest(&bytes, key, self.opts.max_entry_size)
            .map(Some)
            .map_err(|reason| self.corrupt(key, reason))
    }

    /// Stream the archive into `dest`, verifying everything.
    fn fetch_archive(&self, key: &CacheKey, m: &Manifest, dest: &Path) -> Result<()> {
        let path = self.archive_path(key, &m.archive.name);
        let (tx, rx) = mpsc::sync_channel::<Bytes>(64);
        std::thread::scope(|scope| {
            let unpacker = scope.spawn(move || {
                format::unpack(
                    ChannelReader {
                        rx,
                        cur: Bytes::new(),
                    },
                    m,
                    dest,
                )
            });
            let fetched = self.runtime.block_on(async move {
                let got = match self.store.get(&path).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(self.corrupt(
                            key,
                            format!("its archive {} is missing", self.url_of(&path)),
                        ));
                    }
                    Err(e) => return Err(self.request_error("GET", &path, e)),
                };
                if got.meta.size != m.archive.size {
                    return Err(self.corrupt(
                        key,
                        format!(
                            "archive is {} bytes, the manifest records {} (truncated or replaced)",
                            got.meta.size, m.archive.size
                        ),
                    ));
                }
                let mut hash = Hashing::with_limit((), m.archive.size);
                let mut stream = got.into_stream();
                let mut tx = Some(tx);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.request_error("GET", &path, e))?;
                    if hash.update(&chunk).is_err() {
                        return Err(self.corrupt(
                            key,
                            format!(
                                "archive is longer than the {} bytes recorded",
                                m.archive.size
                            ),
                        ));
                    }
                    // Blocking here is the back-pressure: the unpacker is the
                    // only consumer and the runtime has nothing else to do.
                    // If the unpacker gave up, keep hashing (at most the
                    // recorded size) so a damaged object is reported as a
                    // digest mismatch rather than as whatever broke first.
                    if let Some(t) = &tx
                        && t.send(chunk).is_err()
                    {
                        tx = None;
                    }
                }
                drop(tx);
                let (sha, n, ()) = hash.finish();
                Ok((sha, n))
            });
            let unpacked = unpacker
                .join()
                .unwrap_or_else(|_| Err("the unpacker panicked".to_string()));
            let (sha, n) = fetched?;
            if n != m.archive.size || sha != m.archive.sha256 {
                return Err(self.corrupt(
                    key,
                    format!(
                        "archive has sha256 {sha} ({n} bytes), the manifest records {} ({} bytes)",
                        m.archive.sha256, m.archive.size
                    ),
                ));
            }
            unpacked.map_err(|reason| self.corrupt(key, reason))
        })
    }

    async fn upload_archive(&self, path: &ObjPath, file: &Path, size: u64) -> Result<()> {
        match self.opts.multipart {
            Some((part, concurrency)) if size > part => {
                self.upload_multipart(path, file, part, concurrency).await
            }
            _ => {
                let bytes = std::fs::read(file).at("read", file)?;
                self.store
                    .put(path, PutPayload::from(Bytes::from(bytes)))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.request_error("PUT", path, e))
            }
        }
    }

    /// Parts of `part` bytes, `concurrency` at a time. On any failure the
    /// upload is aborted, so the store discards the parts already sent.
    async fn upload_multipart(
        &self,
        path: &ObjPath,
        file: &Path,
        part: u64,
        concurrency: usize,
    ) -> Result<()> {
        let mut f = std::fs::File::open(file).at("open", file)?;
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.request_error("start multipart upload of", path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part as usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = w.wait_for_capacity(concurrency).await {
                self.abort(w, path).await;
                return Err(self.request_error("upload part of", path, e));
            }
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    self.abort(w, path).await;
                    return Err(StageError::io("read", file, e));
                }
            };
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
        }
        // Wait for every part first, so a failed part is reported as that
        // (not as a failed completion); the upload is then aborted.
        if let Err(e) = w.wait_for_capacity(0).await {
            self.abort(w, path).await;
            return Err(self.request_error("upload part of", path, e));
        }
        // finish() aborts the upload itself when the completion fails.
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.request_error("complete multipart upload of", path, e))
    }

    async fn abort(&self, w: WriteMultipart, path: &ObjPath) {
        if let Err(e) = w.abort().await {
            tracing::warn!(
                "{}: could not abort the multipart upload of {} ({e}); the store's lifecycle rules must clean it up",
                self.plugin,
                self.url_of(path)
            );
        }
    }

    /// What the remote holds under `key`, compared with manifest `m`. An
    /// entry counts as the same only if its manifest records the same file
    /// digests *and* its archive, streamed and hashed (not unpacked), has
    /// the recorded sha256: a manifest and a HEAD size say nothing about
    /// bytes damaged at rest. A key a lookup in this run found damaged is
    /// replaced without asking.
    async fn existing(&self, key: &CacheKey, m: &Manifest) -> Existing {
        let known_bad = self
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key);
        if known_bad {
            return Existing::Damaged("a lookup in this run found it damaged".into());
        }
        let existing = match self.fetch_manifest(key).await {
            Ok(Some(existing)) => existing,
            Ok(None) => return Existing::Absent,
            Err(e) => return Existing::Damaged(e.to_string()),
        };
        if existing.metadata.artifacts != m.metadata.artifacts {
            return Existing::Different;
        }
        match self.archive_digest(key, &existing).await {
            Ok(()) => Existing::Same,
            Err(why) => Existing::Damaged(why),
        }
    }

    /// Stream the archive `m` names and check its size and sha256.
    async fn archive_digest(
        &self,
        key: &CacheKey,
        m: &Manifest,
    ) -> std::result::Result<(), String> {
        let path = self.archive_path(key, &m.archive.name);
        let got = self.store.get(&path).await.map_err(|e| summarize(&e))?;
        if got.meta.size != m.archive.size {
            return Err(format!(
                "archive is {} bytes, the manifest records {}",
                got.meta.size, m.archive.size
            ));
        }
        let mut hash = Hashing::with_limit((), m.archive.size);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| summarize(&e))?;
            hash.update(&chunk)
                .map_err(|_| "archive is longer than recorded".to_string())?;
        }
        let (sha, n, ()) = hash.finish();
        if n != m.archive.size || sha != m.archive.sha256 {
            return Err(format!(
                "archive has sha256 {sha} ({n} bytes), the manifest records {}",
                m.archive.sha256
            ));
        }
        Ok(())
    }

    fn remote_entry(&self, key: &CacheKey, metadata: Metadata) -> CacheEntry {
        CacheEntry {
            key: key.clone(),
            dir: PathBuf::from(self.url_of(&self.object(&format::archive_dir(key)))),
            metadata,
            origin: self.plugin.to_string(),
        }
    }

    async fn list_entry(&self, meta: object_store::ObjectMeta) -> Option<Listed> {
        let name = meta.location.filename()?.to_string();
        let raw_key = name.strip_suffix(".json")?.to_string();
        let key = match CacheKey::parse(&raw_key) {
            Ok(k) => k,
            Err(_) => {
                return Some(Listed::Corrupt {
                    key: raw_key,
                    reason: "not a valid cache key".into(),
                });
            }
        };
        let corrupt = |reason: String| Listed::Corrupt {
            key: key.to_string(),
            reason,
        };
        let m = match self.fetch_manifest(&key).await {
            Ok(Some(m)) => m,
            Ok(None) => return None, // removed while listing
            Err(e) if e.kind == ErrorKind::Corrupt => {
                // The message repeats the key and location; keep the reason.
                let reason = e
                    .message
                    .split_once(": ")
                    .map_or(e.message.clone(), |(_, r)| r.to_string());
                return Some(corrupt(reason));
            }
            Err(e) => return Some(corrupt(e.to_string())),
        };
        let archive = self.archive_path(&key, &m.archive.name);
        match self.store.head(&archive).await {
            Ok(h) if h.size == m.archive.size => {
                Some(Listed::Ok(self.remote_entry(&key, m.metadata)))
            }
            Ok(h) => Some(corrupt(format!(
                "archive is {} bytes, the manifest records {}",
                h.size, m.archive.size
            ))),
            Err(object_store::Error::NotFound { .. }) => {
                Some(corrupt("archive is missing".to_string()))
            }
            Err(e) => Some(corrupt(format!("cannot check the archive: {e}"))),
        }
    }
}

impl RemoteTier {
    /// Benchmark baseline: GET the archive of `key` with this tier's client
    /// and discard it (no hashing, no unpacking). Returns the byte count.
    #[doc(hidden)]
    pub fn plain_get_archive(&self, key: &CacheKey) -> Result<u64> {
        self.runtime.block_on(async {
            let m = self.fetch_manifest(key).await?.ok_or_else(|| {
                StageError::not_found(format!("{key} is not in {}", self.location))
            })?;
            let path = self.archive_path(key, &m.archive.name);
            let got = self
                .store
                .get(&path)
                .await
                .map_err(|e| self.request_error("GET", &path, e))?;
            let mut n = 0u64;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                n += chunk
                    .map_err(|e| self.request_error("GET", &path, e))?
                    .len() as u64;
            }
            Ok(n)
        })
    }
}

impl CacheBackend for RemoteTier {
    fn lookup(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let Some(manifest) = self.runtime.block_on(self.fetch_manifest(key))? else {
            return Ok(None);
        };
        let dest = self.scratch_subdir(key.as_str())?;
        match self.fetch_archive(key, &manifest, &dest) {
            Ok(()) => {
                tracing::debug!(
                    "{}: fetched {key} ({} bytes) into {}",
                    self.plugin,
                    manifest.archive.size,
                    dest.display()
                );
                Ok(Some(CacheEntry {
                    key: key.clone(),
                    dir: dest,
                    metadata: manifest.metadata,
                    origin: self.plugin.to_string(),
                }))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                Err(e)
            }
        }
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
    ) -> Result<CacheEntry> {
        if self.opts.read_only {
            return Err(self.read_only_error(&format!("store {key}")));
        }
        // Some servers create a missing bucket on PUT, AWS refuses it:
        // either way a misspelt bucket is an error, not an upload.
        self.runtime.block_on(self.check_bucket_once())?;
        let work = self.scratch_subdir("push")?;
        let result = (|| {
            let packed =
                format::pack(key, artifacts, metadata, self.opts.compression_level, &work)?;
            let m = &packed.manifest;
            self.runtime.block_on(async {
                match self.existing(key, m).await {
                    Existing::Same => {
                        tracing::debug!(
                            "{}: {key} is already at {} (archive digest verified)",
                            self.plugin,
                            self.location
                        );
                        return Ok(());
                    }
                    Existing::Damaged(why) => tracing::info!(
                        "{}: replacing the damaged {key} at {} ({why})",
                        self.plugin,
                        self.location
                    ),
                    Existing::Different | Existing::Absent => {}
                }
                let archive = self.archive_path(key, &m.archive.name);
                self.upload_archive(&archive, packed.file.path(), m.archive.size)
                    .await?;
                // Last: from now on readers see the entry, archive included.
                let manifest = self.manifest_path(key);
                self.store
                    .put(&manifest, PutPayload::from(m.to_json()))
                    .await
                    .map_err(|e| self.request_error("PUT", &manifest, e))?;
                tracing::debug!(
                    "{}: stored {key} ({} bytes) at {}",
                    self.plugin,
                    m.archive.size,
                    self.location
                );
                self.damaged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                Ok(())
            })?;
            Ok(self.remote_entry(key, packed.manifest.metadata.clone()))
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn list(&self) -> Result<Vec<Listed>> {
        let prefix = self.object("manifests");
        // One level (WebDAV servers such as nginx refuse `Depth: infinity`).
        let metas: Vec<object_store::ObjectMeta> = match self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&prefix)))
        {
            Ok(v) => v.objects,
            Err(e @ object_store::Error::NotFound { .. }) if self.missing_bucket(&e).is_none() => {
                Vec::new()
            }
            Err(e) => return Err(self.request_error("list", &prefix, e)),
        };
        let mut rows: Vec<Listed> = self.runtime.block_on(
            futures::stream::iter(metas)
                .map(|m| self.list_entry(m))
                .buffer_unordered(8)
                .filter_map(|r| async move { r })
                .collect(),
        );
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
        Ok(rows)
    }

    fn remove(&self, key: &CacheKey) -> Result<bool> {
        if self.opts.read_only {
            return Err(self.read_only_error(&format!("remove {key}")));
        }
        self.runtime.block_on(async {
            let manifest = self.manifest_path(key);
            let known_archive = match self.fetch_manifest(key).await {
                Ok(m) => m.map(|m| m.archive.name),
                Err(e) if e.kind == ErrorKind::Corrupt => None,
                Err(e) => return Err(e),
            };
            let mut removed = false;
            // Manifest first: from then on readers miss instead of finding
            // a manifest whose archive is going away.
            match self.store.head(&manifest).await {
                Ok(_) => {
                    self.store
                        .delete(&manifest)
                        .await
                        .map_err(|e| self.request_error("DELETE", &manifest, e))?;
                    removed = true;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.request_error("HEAD", &manifest, e)),
            }
            let mut archives: Vec<ObjPath> = known_archive
                .iter()
                .map(|name| self.archive_path(key, name))
                .collect();
            let dir = self.object(&format::archive_dir(key));
            match self.store.list_with_delimiter(Some(&dir)).await {
                Ok(found) => archives.extend(found.objects.into_iter().map(|m| m.location)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(
                    "{}: cannot list old archives of {key} to delete them: {e}",
                    self.plugin
                ),
            }
            archives.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
            archives.dedup();
            for a in archives {
                match self.store.delete(&a).await {
                    Ok(()) => removed = true,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.request_error("DELETE", &a, e)),
                }
            }
            Ok(removed)
        })
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {}", self.plugin, self.location);
        if !self.detail.is_empty() {
            s.push_str(&format!(" ({})", self.detail));
        }
        if self.opts.read_only {
            s.push_str(", read-only");
        }
        s
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.opts.read_only,
            remote: true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Failure injection that a real server cannot do on demand: a part
    //! upload that fails halfway through a multipart upload.

    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutOptions, PutResult, UploadPart,
    };

    use super::*;

    #[derive(Debug)]
    struct FailSecondPart {
        inner: InMemory,
        aborted: Arc<AtomicBool>,
    }

    impl std::fmt::Display for FailSecondPart {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FailSecondPart")
        }
    }

    #[derive(Debug)]
    struct FailingUpload {
        inner: Box<dyn MultipartUpload>,
        parts: usize,
        aborted: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl MultipartUpload for FailingUpload {
        fn put_part(&mut self, data: PutPayload) -> UploadPart {
            self.parts += 1;
            if self.parts == 2 {
                return Box::pin(async {
                    Err(object_store::Error::Generic {
                        store: "test",
                        source: "injected 500 on part 2".into(),
                    })
                });
            }
            self.inner.put_part(data)
        }

        async fn complete(&mut self) -> object_store::Result<PutResult> {
            self.inner.complete().await
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted.store(true, Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailSecondPart {
        async fn put_opts(
            &self,
            location: &ObjPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            let inner = self.inner.put_multipart_opts(location, opts).await?;
            Ok(Box::new(FailingUpload {
                inner,
                parts: 0,
                aborted: self.aborted.clone(),
            }))
        }

        async fn get_opts(
            &self,
            location: &ObjPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjPath>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjPath,
            to: &ObjPath,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

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
                read_only: false,
                max_entry_size: 1 << 30,
                compression_level: 1,
                multipart: None,
                scratch_dir: Some(base.clone()),
                env_prefix: "KTSTR_S3_",
                auth_hint: String::new(),
            },
        )
        .unwrap();
        assert!(!dead.exists(), "the dead push's scratch is still there");
        assert!(mine.exists() && other.exists());
    }

    #[test]
    fn failed_multipart_upload_is_aborted_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let aborted = Arc::new(AtomicBool::new(false));
        let tier = RemoteTier::new(
            "s3-cache",
            "s3://test/p".into(),
            String::new(),
            Box::new(FailSecondPart {
                inner: InMemory::new(),
                aborted: aborted.clone(),
            }),
            "p",
            TierOptions {
                read_only: false,
                max_entry_size: 1 << 30,
                compression_level: 1,
                multipart: Some((5 << 20, 2)),
                scratch_dir: Some(dir.path().join("scratch")),
                env_prefix: "KTSTR_S3_",
                auth_hint: String::new(),
            },
        )
        .unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let artifacts = Artifacts {
            image: src.join("bzImage"),
            vmlinux: None,
            config: src.join("config"),
            log: None,
        };
        std::fs::write(&artifacts.image, noise(12 << 20)).unwrap();
        std::fs::write(&artifacts.config, b"CONFIG_X=y\n").unwrap();
        let key = CacheKey::parse("k-multipart-fail").unwrap();
        let metadata = Metadata {
            schema: Metadata::SCHEMA,
            key: key.clone(),
            source: ktstr_sdk::cache::SourceInfo {
                kind: "git".into(),
                identity: "x".into(),
                path: None,
            },
            version: None,
            arch: "x86_64".into(),
            image_name: "bzImage".into(),
            profile: "tiny".into(),
            config_sha256: String::new(),
            fragments: vec![],
            builder: String::new(),
            toolchain: String::new(),
            built_at: "2025-01-01T00:00:00Z".into(),
            components: vec![],
            artifacts: Default::default(),
            strip: None,
            origin: None,
            kernelrelease: None,
            build: None,
        };
        let err = tier.store(&key, &artifacts, &metadata).unwrap_err();
        assert!(err.message.starts_with("upload part of"), "{err}");
        assert!(err.to_string().contains("injected 500 on part 2"), "{err}");
        assert!(aborted.load(Ordering::SeqCst), "upload was not aborted");
        // No manifest (and so no entry) was published.
        assert!(tier.lookup(&key).unwrap().is_none());
        assert!(tier.list().unwrap().is_empty());
        // The push's temporary archive is gone.
        assert_eq!(
            std::fs::read_dir(dir.path().join("scratch"))
                .unwrap()
                .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
                .count(),
            0
        );
    }
}
