//! Pulling an entry: the manifest first (one small GET; a 404 is a plain
//! miss), then the archive streamed straight into the unpacker.
//!
//! The archive is unpacked on a second thread while its bytes are hashed,
//! so a pull costs about one transfer rather than transfer + decompress +
//! copy. Files land in the host's staging directory (the host removes it
//! once it copied the entry into the local cache with its atomic store);
//! only after the archive digest, every file digest and every size agree
//! with the manifest is the entry returned. A bad object is reported as
//! `Corrupt` (the host warns and builds) and its files deleted at once.
//! The download reports its progress and stops between chunks when the
//! run is interrupted. A verified pull refreshes the entry's last-use
//! marker (at most daily; see `listing`), which `ktstr cache gc` evicts by.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use ktstr_sdk::cache::{CacheEntry, CacheKey, Staging};
use ktstr_sdk::cache_gc::parse_time;
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::{IoResultExt, Result, StageError};
use object_store::{ObjectStoreExt, PutPayload};

use super::RemoteTier;
use super::listing::Marker;
use crate::format::{self, Hashing, Manifest};

/// How old a last-use marker may get before a pull rewrites it: gc works
/// in days, so a fresher marker is not worth a write per pull.
pub(super) const MARKER_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);

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

/// Reports a transfer's bytes to the host (which shows rate and time
/// left) at most every [`Every::INTERVAL`], and once at the end.
pub(super) struct Every {
    total: u64,
    done: u64,
    last: Option<std::time::Instant>,
}

impl Every {
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

    pub(super) fn new(total: u64) -> Self {
        Self {
            total,
            done: 0,
            last: None,
        }
    }

    pub(super) fn add(&mut self, n: u64, cx: &StageContext) {
        self.done += n;
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::INTERVAL);
        if due || self.done >= self.total {
            self.last = Some(std::time::Instant::now());
            cx.progress.bytes(self.done, Some(self.total));
        }
    }
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl RemoteTier {
    /// [`CacheBackend::lookup`](ktstr_sdk::cache::CacheBackend::lookup):
    /// the verified entry unpacked into `staging`, or `None` on a miss.
    pub(super) fn pull(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        let Some(manifest) = self.runtime.block_on(self.fetch_manifest(key))? else {
            return Ok(None);
        };
        if self.opts.require_verified {
            let why = match &manifest.metadata.verify {
                Some(v) if v.verdict.passed => None,
                Some(v) => Some(format!("its boot check failed ({})", v.verdict.summary)),
                None => Some("it has no boot check".to_string()),
            };
            if let Some(why) = why {
                cx.progress.note(&format!(
                    "{}: not pulling {key}: {why} and require_verified is set",
                    self.plugin
                ));
                return Ok(None);
            }
        }
        cx.cancel.check()?;
        let dest = staging.dir()?.join(key.as_str());
        std::fs::create_dir(&dest).at("create directory", &dest)?;
        cx.progress.step(&format!(
            "downloading {key} from {} ({})",
            self.location,
            mib(manifest.archive.size)
        ));
        let fetched = self.fetch_archive(key, &manifest, &dest, cx);
        cx.progress.finish_step();
        match fetched {
            Ok(()) => {
                tracing::debug!(
                    "{}: fetched {key} ({} bytes) into {}",
                    self.plugin,
                    manifest.archive.size,
                    dest.display()
                );
                self.record_use(key);
                Ok(Some(CacheEntry {
                    key: key.clone(),
                    dir: dest,
                    metadata: manifest.metadata,
                    origin: self.plugin.to_string(),
                    location: None,
                    last_used: None,
                }))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                Err(e)
            }
        }
    }

    /// Refresh `key`'s last-use marker (see `listing`) when it is missing
    /// or [`MARKER_REFRESH`] old: one small GET per pull, one PUT per entry
    /// and day. Best effort: a marker never fails a pull, and a read-only
    /// tier never writes one.
    fn record_use(&self, key: &CacheKey) {
        if self.opts.read_only {
            return;
        }
        self.runtime.block_on(async {
            let recent = |at: &str| {
                parse_time(at)
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age < MARKER_REFRESH)
            };
            if self.read_marker(key).await.is_some_and(|at| recent(&at)) {
                return;
            }
            let path = self.used_path(key);
            let marker = Marker {
                used_at: ktstr_sdk::now_rfc3339(),
            };
            let body = serde_json::to_vec(&marker).unwrap_or_default();
            if let Err(e) = self.store.put(&path, PutPayload::from(body)).await {
                tracing::warn!(
                    "{}: could not record the use of {key} at {}: {}",
                    self.plugin,
                    self.url_of(&path),
                    super::errors::summarize(&e)
                );
            }
        });
    }

    pub(super) async fn fetch_manifest(&self, key: &CacheKey) -> Result<Option<Manifest>> {
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
    fn fetch_archive(
        &self,
        key: &CacheKey,
        m: &Manifest,
        dest: &Path,
        cx: &StageContext,
    ) -> Result<()> {
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
                let mut report = Every::new(m.archive.size);
                while let Some(chunk) = stream.next().await {
                    // Dropping the sender on return stops the unpacker; the
                    // caller removes what it wrote.
                    cx.cancel.check()?;
                    let chunk = chunk.map_err(|e| self.request_error("GET", &path, e))?;
                    report.add(chunk.len() as u64, cx);
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
