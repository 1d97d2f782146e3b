//! Listing a remote's entries (each checked against its manifest and
//! archive size, damaged ones reported rather than hidden) and removing one.

use std::path::PathBuf;

use futures::StreamExt;
use ktstr_sdk::cache::{CacheEntry, CacheKey, Listed, Metadata};
use ktstr_sdk::error::{ErrorKind, Result};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::RemoteTier;
use crate::format;

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
        ktstr_sdk::cache::sort_newest_first(&mut rows);
        Ok(rows)
    }

    /// [`CacheBackend::remove`](ktstr_sdk::cache::CacheBackend::remove):
    /// the manifest, then every archive of `key`.
    pub(super) fn remove_entry(&self, key: &CacheKey) -> Result<bool> {
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
