//! Build leases in an S3 bucket: `<prefix>/v1/leases/<key>.json`, one
//! small JSON [`LeaseRecord`] per key being built (see docs/remote-cache.md,
//! "Build leases").
//!
//! Every write is conditional, so the bucket arbitrates: a new lease is a
//! create-only PUT (`If-None-Match: *`), a heartbeat or a takeover replaces
//! the object only if its ETag is still the one this run saw (`If-Match`).
//! After every successful write the object is read back and must carry this
//! run's id: a store whose conditional PUT is check-then-write (s3s-fs
//! renames a temporary file after checking) can let two racing writers both
//! succeed, and only the last one's content stays; reading it back tells the
//! other one it lost. Release reads the lease and deletes it only if it is
//! still this run's; S3 has no conditional DELETE, so a takeover landing
//! between the read and the delete (possible only once this run's lease
//! had already expired) is lost, and the new holder's waiters build too.

use std::sync::Arc;

use bytes::Bytes;
use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::error::{ErrorKind, Result, StageError};
use ktstr_sdk::lease::{Claim, Lease, LeaseRecord, LeaseStore, LeaseTimings, Theirs};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};

use super::errors::summarize;

/// How often a claim retries when the lease vanishes between a refused
/// create and the read of its holder (a holder releasing just then).
const CLAIM_ATTEMPTS: usize = 5;

/// The leases of one tier. Shares the tier's client and runtime, so the
/// host's heartbeat thread and the build's own requests use one
/// connection pool (a current-thread runtime may be blocked on from
/// several threads: one drives it, the others wait their turn).
pub struct TierLeases {
    pub(super) plugin: &'static str,
    pub(super) location: String,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) runtime: Arc<tokio::runtime::Runtime>,
    /// `<prefix>/v1/leases`.
    pub(super) dir: ObjPath,
    pub(super) timings: LeaseTimings,
    /// How long after a successful conditional write the lease is read
    /// back (`lease_settle`). On a store whose conditional PUT is atomic
    /// (AWS S3, MinIO, R2) the write alone decides and the read only
    /// confirms; on one that checks, then writes (s3s-fs), a racing writer
    /// that passed the check too has finished its write by then, so the
    /// read shows the one real winner.
    pub(super) settle: std::time::Duration,
}

/// What one read of a lease object found.
enum Read {
    Absent,
    Found { bytes: Bytes, version: String },
}

impl TierLeases {
    fn path(&self, key: &CacheKey) -> ObjPath {
        self.dir.clone().join(format!("{key}.json"))
    }

    fn url(&self, key: &CacheKey) -> String {
        format!("{}/v1/leases/{key}.json", self.location)
    }

    fn failed(&self, action: &str, key: &CacheKey, e: &object_store::Error) -> StageError {
        tracing::debug!("{}: {action} {}: {e:?}", self.plugin, self.url(key));
        let kind = match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ErrorKind::InvalidInput,
            object_store::Error::NotImplemented { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::Io,
        };
        let mut err = StageError::new(
            kind,
            format!("{action} build lease {} failed", self.url(key)),
        );
        err.causes.push(summarize(e));
        err.with_hint(
            "the store must allow PutObject with If-None-Match/If-Match and DeleteObject under \
             v1/leases/; set leases = false (KTSTR_S3_LEASES=0) for a store that cannot",
        )
    }

    async fn read(&self, key: &CacheKey) -> Result<Read> {
        let path = self.path(key);
        let got = match self.store.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(Read::Absent),
            Err(e) => return Err(self.failed("GET", key, &e)),
        };
        let Some(version) = got.meta.e_tag.clone() else {
            return Err(StageError::new(
                ErrorKind::Unsupported,
                format!("the store sent no ETag for {}", self.url(key)),
            )
            .with_hint("build leases need ETags; set leases = false (KTSTR_S3_LEASES=0)"));
        };
        match got.bytes().await {
            Ok(bytes) => Ok(Read::Found { bytes, version }),
            Err(object_store::Error::NotFound { .. }) => Ok(Read::Absent),
            Err(e) => Err(self.failed("GET", key, &e)),
        }
    }

    fn theirs(bytes: &[u8], version: String) -> Theirs {
        Theirs {
            record: LeaseRecord::from_json(bytes),
            version,
        }
    }

    /// After a write of `record` succeeded: whose the lease is now.
    /// `None`: it vanished (released) in between.
    async fn confirm(&self, record: &LeaseRecord) -> Result<Option<Claim>> {
        Ok(match self.read(&record.key).await? {
            Read::Absent => None,
            Read::Found { bytes, version } => Some(match LeaseRecord::from_json(&bytes) {
                Ok(r) if r.run_id == record.run_id => Claim::Ours(Lease { record: r, version }),
                _ => Claim::Theirs(Self::theirs(&bytes, version)),
            }),
        })
    }

    /// One conditional PUT of `record`, then whose the lease is.
    async fn put(&self, record: &LeaseRecord, mode: PutMode) -> Result<Option<Claim>> {
        let path = self.path(&record.key);
        let body = PutPayload::from(record.to_json());
        match self.store.put_opts(&path, body, mode.into()).await {
            Ok(_) => {
                tokio::time::sleep(self.settle).await;
                self.confirm(record).await
            }
            // Ours all the same when a retry of a write whose answer was
            // lost is the one refused: `confirm` looks at the run id.
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => self.confirm(record).await,
            Err(e) => Err(self.failed("PUT", &record.key, &e)),
        }
    }

    async fn claim_async(&self, record: &LeaseRecord) -> Result<Claim> {
        for _ in 0..CLAIM_ATTEMPTS {
            if let Some(claim) = self.put(record, PutMode::Create).await? {
                return Ok(claim);
            }
        }
        Err(StageError::new(
            ErrorKind::Io,
            format!(
                "build lease {} kept vanishing while it was taken",
                self.url(&record.key)
            ),
        ))
    }
}

fn if_match(version: &str) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(version.to_string()),
        version: None,
    })
}

impl LeaseStore for TierLeases {
    fn describe(&self) -> String {
        format!("{} {}", self.plugin, self.location)
    }

    fn timings(&self) -> LeaseTimings {
        self.timings
    }

    fn claim(&self, record: &LeaseRecord) -> Result<Claim> {
        self.runtime.block_on(self.claim_async(record))
    }

    fn take_over(&self, record: &LeaseRecord, stale: &Theirs) -> Result<Claim> {
        self.runtime.block_on(async {
            match self.put(record, if_match(&stale.version)).await? {
                Some(claim) => Ok(claim),
                // Released while we looked: take it the ordinary way.
                None => self.claim_async(record).await,
            }
        })
    }

    fn refresh(&self, held: &Lease, record: &LeaseRecord) -> Result<Claim> {
        self.runtime.block_on(async {
            let mut version = held.version.clone();
            // Twice at most: a refresh whose answer was lost left the lease
            // ours at a version we never saw; write again over that one.
            for _ in 0..2 {
                match self.put(record, if_match(&version)).await? {
                    Some(Claim::Ours(now)) if now.record != *record => version = now.version,
                    Some(claim) => return Ok(claim),
                    None => {
                        return Err(StageError::not_found(format!(
                            "build lease {} is gone (deleted by someone else)",
                            self.url(&record.key)
                        )));
                    }
                }
            }
            Err(StageError::new(
                ErrorKind::Io,
                format!("build lease {} kept changing", self.url(&record.key)),
            ))
        })
    }

    fn release(&self, held: &Lease) -> Result<bool> {
        let key = &held.record.key;
        self.runtime.block_on(async {
            let Read::Found { bytes, .. } = self.read(key).await? else {
                return Ok(false);
            };
            match LeaseRecord::from_json(&bytes) {
                Ok(r) if r.run_id == held.record.run_id => {}
                _ => return Ok(false),
            }
            match self.store.delete(&self.path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(self.failed("DELETE", key, &e)),
            }
        })
    }
}

#[cfg(test)]
mod tests;
