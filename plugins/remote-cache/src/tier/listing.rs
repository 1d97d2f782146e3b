//! Listing a remote's entries (each checked against its manifest and
//! archive size, damaged ones reported rather than hidden, each with its
//! last use) and removing one.
//!
//! Last use is a small marker per entry, `<prefix>/v1/used/<key>`, holding
//! `{"used_at": "<RFC 3339>"}`: a pull refreshes it at most once a day
//! (see `pull`), so recording uses costs one small GET per pull and one PUT
//! per entry and day. The time is inside the object rather than taken from
//! its modification time because stores differ in what they report, and
//! because tests (and an operator moving a bucket) can then set it. An
//! entry without a marker was last used when it was uploaded.

use std::collections::HashSet;
use std::path::PathBuf;

use futures::StreamExt;
use ktstr_sdk::cache::{CacheEntry, CacheKey, Listed, Metadata};
use ktstr_sdk::error::{ErrorKind, Result};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::RemoteTier;
use crate::format;

/// Directory of the last-use markers, under `<prefix>/v1/`.
pub(super) const USED_DIR: &str = "used";
/// A marker is a line of JSON; anything bigger is not one of ours.
const MAX_MARKER_SIZE: u64 = 4096;

/// What a last-use marker holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    /// RFC 3339 UTC.
    pub used_at: String,
}

/// One level of a listing.
#[derive(Default)]
pub(super) struct Listing {
    pub dirs: Vec<ObjPath>,
    pub objects: Vec<object_store::ObjectMeta>,
}

/// A listing row, with the archive (name, size) of a usable entry.
pub(super) struct Row {
    pub listed: Listed,
    pub archive: Option<(String, u64)>,
}

impl Row {
    fn of(listed: Listed) -> Self {
        Self {
            listed,
            archive: None,
        }
    }

    pub fn key(&self) -> &str {
        match &self.listed {
            Listed::Ok(e) => e.key.as_str(),
            Listed::Corrupt { key, .. } => key,
        }
    }
}

impl RemoteTier {
    /// An entry as stored and listed: no local files (`dir` empty), its
    /// archive's address as the location.
    pub(super) fn remote_entry(&self, key: &CacheKey, metadata: Metadata) -> CacheEntry {
        CacheEntry {
            key: key.clone(),
            dir: PathBuf::new(),
            metadata,
            origin: self.plugin.to_string(),
            location: Some(self.url_of(&self.object(&format::archive_dir(key)))),
            last_used: None,
        }
    }

    /// [`CacheBackend::list`](ktstr_sdk::cache::CacheBackend::list):
    /// every entry, newest first, damaged ones last.
    pub(super) fn list_entries(&self) -> Result<Vec<Listed>> {
        let mut rows: Vec<Listed> = self.rows()?.into_iter().map(|r| r.listed).collect();
        ktstr_sdk::cache::sort_newest_first(&mut rows);
        Ok(rows)
    }

    /// The sub-directories and objects directly under `dir` (one level:
    /// WebDAV servers such as nginx refuse `Depth: infinity`); none when
    /// it does not exist.
    pub(super) async fn objects_in(&self, dir: &ObjPath) -> Result<Listing> {
        match self.store.list_with_delimiter(Some(dir)).await {
            Ok(v) => Ok(Listing {
                dirs: v.common_prefixes,
                objects: v.objects,
            }),
            Err(e @ object_store::Error::NotFound { .. }) if self.missing_bucket(&e).is_none() => {
                Ok(Listing::default())
            }
            Err(e) => Err(self.request_error("list", dir, e)),
        }
    }

    /// Every entry with what garbage collection needs besides the row:
    /// its archive's name and size.
    pub(super) fn rows(&self) -> Result<Vec<Row>> {
        self.runtime.block_on(async {
            let manifests = self.objects_in(&self.object("manifests")).await?.objects;
            let marked: HashSet<String> = (self.objects_in(&self.object(USED_DIR)).await?)
                .objects
                .iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .collect();
            Ok(futures::stream::iter(manifests)
                .map(|m| self.list_entry(m, &marked))
                .buffer_unordered(8)
                .filter_map(|r| async move { r })
                .collect()
                .await)
        })
    }

    /// The last-use marker of `key`.
    pub(super) fn used_path(&self, key: &CacheKey) -> ObjPath {
        self.object(&format!("{USED_DIR}/{key}"))
    }

    /// When `key` was last used, as its marker says; `None` when it has
    /// none (or one that is not ours: a marker is never worth an error).
    pub(super) async fn read_marker(&self, key: &CacheKey) -> Option<String> {
        let path = self.used_path(key);
        let got = self.store.get(&path).await.ok()?;
        if got.meta.size > MAX_MARKER_SIZE {
            return None;
        }
        let bytes = got.bytes().await.ok()?;
        let marker: Marker = serde_json::from_slice(&bytes).ok()?;
        ktstr_sdk::cache_gc::parse_time(&marker.used_at).map(|_| marker.used_at)
    }

    /// [`CacheBackend::remove`](ktstr_sdk::cache::CacheBackend::remove):
    /// the manifest, then every archive of `key`, then its marker.
    pub(super) fn remove_entry(&self, key: &CacheKey) -> Result<bool> {
        self.remove_entry_sparing(key, None)
    }

    /// [`Self::remove_entry`], except that archives the manifest does not
    /// name and that are younger than `young` stay: a push in flight
    /// uploaded them and is about to write the manifest naming one (gc
    /// removes them later as orphans if it never does).
    pub(super) fn remove_entry_sparing(
        &self,
        key: &CacheKey,
        young: Option<std::time::Duration>,
    ) -> Result<bool> {
        let now = std::time::SystemTime::now();
        let in_flight = |m: &object_store::ObjectMeta| {
            young.is_some_and(|young| {
                now.duration_since(m.last_modified.into())
                    .is_ok_and(|age| age < young)
            })
        };
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
                // By name: an HTTP store lists paths relative to the
                // server, not to the tier's URL.
                Ok(found) => archives.extend(
                    (found.objects.iter())
                        .filter(|m| !in_flight(m))
                        .filter_map(|m| m.location.filename())
                        .map(|name| self.archive_path(key, name)),
                ),
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
            // The marker last: it is worth nothing without the entry, so
            // failing to delete it fails nothing (gc removes it later as an
            // orphan), and deleting it does not make the removal count (S3
            // answers a DELETE of a missing object with success).
            let marker = self.used_path(key);
            match self.store.delete(&marker).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(
                    "{}: removed {key} but not its last-use marker {}: {}",
                    self.plugin,
                    self.url_of(&marker),
                    super::errors::summarize(&e)
                ),
            }
            Ok(removed)
        })
    }

    async fn list_entry(
        &self,
        meta: object_store::ObjectMeta,
        marked: &HashSet<String>,
    ) -> Option<Row> {
        let name = meta.location.filename()?.to_string();
        let raw_key = name.strip_suffix(".json")?.to_string();
        let key = match CacheKey::parse(&raw_key) {
            Ok(k) => k,
            Err(_) => {
                return Some(Row::of(Listed::Corrupt {
                    key: raw_key,
                    reason: "not a valid cache key".into(),
                }));
            }
        };
        let corrupt = |reason: String| {
            Some(Row::of(Listed::Corrupt {
                key: key.to_string(),
                reason,
            }))
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
                return corrupt(reason);
            }
            Err(e) => return corrupt(e.to_string()),
        };
        let archive = self.archive_path(&key, &m.archive.name);
        match self.store.head(&archive).await {
            Ok(h) if h.size == m.archive.size => {
                let used = if marked.contains(key.as_str()) {
                    self.read_marker(&key).await
                } else {
                    None
                };
                let mut entry = self.remote_entry(&key, m.metadata);
                entry.last_used = ktstr_sdk::cache_gc::later(used, Some(m.uploaded_at));
                Some(Row {
                    listed: Listed::Ok(entry),
                    archive: Some((m.archive.name, m.archive.size)),
                })
            }
            Ok(h) => corrupt(format!(
                "archive is {} bytes, the manifest records {}",
                h.size, m.archive.size
            )),
            Err(object_store::Error::NotFound { .. }) => corrupt("archive is missing".to_string()),
            Err(e) => corrupt(format!("cannot check the archive: {e}")),
        }
    }
}
