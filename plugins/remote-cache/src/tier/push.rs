//! Pushing an entry: pack into a temporary archive (digests computed on
//! the way), skip only if the remote already holds the same build intact,
//! upload the archive, then the manifest. The same build with a new boot
//! check verdict (`ktstr kernel verify-boot`) replaces only the manifest.
//!
//! An existing entry counts as the same only if it records the same file
//! digests *and* its archive's streamed sha256 is the recorded one; a key a
//! lookup in this run found damaged is replaced without asking. Archives
//! above one part go up as a multipart upload, aborted on failure so no
//! parts linger. The upload reports progress; an interrupt stops it between
//! parts and always before the manifest, the object that makes an entry
//! visible, so a cancelled push leaves nothing a reader would see (the
//! archive already sent is deleted).

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use ktstr_sdk::cache::{Artifacts, CacheEntry, CacheKey, Metadata};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::{IoResultExt, Result, StageError};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::RemoteTier;
use super::errors::summarize;
use super::pull::{Every, mib};
use crate::format::{self, Hashing, Manifest};

/// What a push found at the remote under its key.
enum Existing {
    Absent,
    /// An intact entry with the same files (its manifest): nothing to
    /// upload but, at most, a new verdict.
    Same(Box<Manifest>),
    /// An intact entry of another build of the key.
    Different,
    /// Unreadable, or bytes that do not match their digest.
    Damaged(String),
}

impl RemoteTier {
    /// [`CacheBackend::store`](ktstr_sdk::cache::CacheBackend::store):
    /// upload `artifacts` under `key` unless the remote already has them.
    pub(super) fn push(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        cx.cancel.check()?;
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
                    Existing::Same(existing)
                        if m.metadata.verify.is_none()
                            || existing.metadata.verify == m.metadata.verify =>
                    {
                        tracing::debug!(
                            "{}: {key} is already at {} (archive digest verified)",
                            self.plugin,
                            self.location
                        );
                        return Ok(());
                    }
                    Existing::Same(existing) => {
                        return self.record_verdict(key, *existing, m, cx).await;
                    }
                    Existing::Damaged(why) => tracing::info!(
                        "{}: replacing the damaged {key} at {} ({why})",
                        self.plugin,
                        self.location
                    ),
                    Existing::Different | Existing::Absent => {}
                }
                let archive = self.archive_path(key, &m.archive.name);
                cx.cancel.check()?;
                cx.progress.step(&format!(
                    "uploading {key} to {} ({})",
                    self.location,
                    mib(m.archive.size)
                ));
                let sent = self
                    .upload_archive(&archive, packed.file.path(), m.archive.size, cx)
                    .await;
                cx.progress.finish_step();
                sent?;
                if cx.cancel.is_cancelled() {
                    // Nothing names it yet; do not leave it to lifecycle rules.
                    let _ = self.store.delete(&archive).await;
                    return Err(StageError::cancelled());
                }
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

    /// The remote holds this build intact; only its boot check verdict is
    /// new: replace the manifest, which keeps naming the same archive.
    async fn record_verdict(
        &self,
        key: &CacheKey,
        mut existing: Manifest,
        m: &Manifest,
        cx: &StageContext,
    ) -> Result<()> {
        cx.cancel.check()?;
        existing.metadata.verify = m.metadata.verify.clone();
        existing.uploaded_at = m.uploaded_at.clone();
        let manifest = self.manifest_path(key);
        self.store
            .put(&manifest, PutPayload::from(existing.to_json()))
            .await
            .map_err(|e| self.request_error("PUT", &manifest, e))?;
        tracing::debug!(
            "{}: recorded the boot check of {key} at {}",
            self.plugin,
            self.location
        );
        Ok(())
    }

    async fn upload_archive(
        &self,
        path: &ObjPath,
        file: &Path,
        size: u64,
        cx: &StageContext,
    ) -> Result<()> {
        match self.opts.multipart {
            Some((part, concurrency)) if size > part => {
                self.upload_multipart(path, file, (part, concurrency), size, cx)
                    .await
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

    /// Parts of `part` bytes, `concurrency` at a time. On any failure or
    /// an interrupt the upload is aborted, so the store discards the parts
    /// already sent.
    async fn upload_multipart(
        &self,
        path: &ObjPath,
        file: &Path,
        (part, concurrency): (u64, usize),
        size: u64,
        cx: &StageContext,
    ) -> Result<()> {
        let mut f = std::fs::File::open(file).at("open", file)?;
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.request_error("start multipart upload of", path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part as usize);
        let mut buf = vec![0u8; 1 << 20];
        let mut report = Every::new(size);
        loop {
            if cx.cancel.is_cancelled() {
                self.abort(w, path).await;
                return Err(StageError::cancelled());
            }
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
            report.add(n as u64, cx);
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
            Ok(()) => Existing::Same(Box::new(existing)),
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
}

#[cfg(test)]
mod tests;
