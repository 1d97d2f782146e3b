//! `ktstr cache gc` on a remote tier: evict the least recently used
//! entries until the policy holds, then remove what no entry owns.
//!
//! The policy is the SDK's ([`ktstr_sdk::cache_gc`]); this tier feeds it
//! what only it knows: an entry's size is its archive's (what the bucket
//! holds, not the unpacked files), its last use is its marker's (see
//! `listing`), and an entry whose key is under a live build lease
//! (`<prefix>/v1/leases/<key>.json`, taken by a machine building it) is
//! never removed: the builder's waiters are about to pull it.
//!
//! Removal is the tier's `remove`: manifest first (readers miss from then
//! on rather than finding an archive going away), then the archives, then
//! the marker; except that an archive its manifest does not name and that
//! is younger than an hour stays, since a push in flight is about to name
//! it in a new manifest. A pull that read the manifest just before sees the archive
//! vanish: a corrupt entry, which the host reports and rebuilds; its
//! unpacked files are deleted, never stored.
//!
//! Orphans, found after the evictions:
//! - archives no manifest names (a push killed before its manifest, the
//!   losing archive of two concurrent pushes, a gc killed midway), once
//!   they are an hour old, so a push still uploading keeps its archive;
//! - markers whose entry is gone, also after an hour;
//! - leases whose heartbeat is older than their expiry (their holder
//!   died; read as [`LeaseRecord`], the lease writer's own type), and
//!   unreadable lease objects a day old.
//!
//! Abandoned multipart uploads are not listed: object_store cannot list
//! them (S3 `ListMultipartUploads` is not in its API). A push aborts its
//! own upload when it fails or is interrupted; for a killed one, the
//! bucket's lifecycle rule (`AbortIncompleteMultipartUpload` after a day)
//! is the backstop, as docs/remote-cache.md says.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use ktstr_sdk::cache::{CacheKey, Listed};
use ktstr_sdk::cache_gc::{self, Candidate, GcReport, GcRequest, Orphan, Spared};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::Result;
use ktstr_sdk::lease::LeaseRecord;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

use super::RemoteTier;
use super::listing::USED_DIR;
use crate::format;

/// An archive or marker younger than this may belong to a push or pull in
/// flight: never an orphan.
pub(super) const ORPHAN_AGE: Duration = Duration::from_secs(60 * 60);
/// An unreadable lease object younger than this is left alone (and its key
/// kept): it may be another ktstr's newer format.
const UNREADABLE_LEASE_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Directory of build leases, under `<prefix>/v1/`.
pub(super) const LEASES_DIR: &str = "leases";

/// What gc makes of one lease object.
enum Lease {
    /// Its holder is alive (as far as its heartbeat says): who it is.
    Live(String),
    /// Dead holder or unreadable old object: removed, with why.
    Orphan(String),
}

/// Something to delete that no entry owns.
struct Found {
    path: ObjPath,
    what: String,
    size: u64,
    /// The version gc judged (a lease's ETag): deleted only if unchanged.
    judged: Option<String>,
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

impl RemoteTier {
    /// [`CacheBackend::gc`](ktstr_sdk::cache::CacheBackend::gc) for this tier.
    pub(super) fn collect_garbage(
        &self,
        request: &GcRequest,
        cx: &StageContext,
    ) -> Result<GcReport> {
        let rows = self.rows()?;
        let leases = self.runtime.block_on(self.leases(request.now))?;
        let protected: BTreeMap<CacheKey, String> = leases
            .iter()
            .filter_map(|(key, lease)| match lease {
                (Lease::Live(who), _) => {
                    Some((key.clone(), format!("a build holds its lease ({who})")))
                }
                _ => None,
            })
            .collect();
        let mut candidates = Vec::new();
        let mut corrupt = 0;
        for row in &rows {
            match (&row.listed, &row.archive) {
                (Listed::Ok(e), Some((_, size))) => candidates.push(Candidate {
                    key: e.key.clone(),
                    size: *size,
                    last_used: cache_gc::last_used(e),
                }),
                _ => corrupt += 1,
            }
        }
        let mut report = cache_gc::collect(
            request,
            candidates,
            &protected,
            |key| self.remove_entry_sparing(key, Some(ORPHAN_AGE)).map(drop),
            cx,
        )?;
        if corrupt > 0 {
            report.notes.push(cache_gc::corrupt_note(corrupt));
        }
        let evicted: HashSet<&str> = report.evicted.iter().map(|e| e.key.as_str()).collect();
        // What the entries that stay own: every archive of a key whose
        // manifest cannot be read (the entry may be repaired), the named
        // one of the others.
        let mut owned: HashMap<String, Option<String>> = HashMap::new();
        for row in rows.iter().filter(|r| !evicted.contains(r.key())) {
            owned.insert(
                row.key().to_string(),
                row.archive.as_ref().map(|(name, _)| name.clone()),
            );
        }
        let mut found = self
            .runtime
            .block_on(self.orphans(&owned, &evicted, request.now))?;
        for (_, (lease, found_lease)) in leases {
            if let (Lease::Orphan(_), Some(f)) = (lease, found_lease) {
                found.push(f);
            }
        }
        for f in found {
            cx.cancel.check()?;
            let location = self.url_of(&f.path);
            if !request.dry_run && self.runtime.block_on(self.changed_since(&f)) {
                continue; // a waiter took the stale lease over meanwhile
            }
            if !request.dry_run
                && let Err(e) = self.runtime.block_on(self.store.delete(&f.path))
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                report.spared.push(Spared {
                    key: location,
                    reason: self.request_error("DELETE", &f.path, e).to_string(),
                });
                continue;
            }
            report.orphans.push(Orphan {
                what: f.what,
                location,
                size: Some(f.size),
            });
        }
        Ok(report)
    }

    /// Whether `f` is no longer the version gc judged (a lease a waiter
    /// took over since it was read). object_store cannot delete
    /// conditionally, so this narrows the window rather than closing it;
    /// a holder whose lease is deleted warns that it lost it and still
    /// stores its build.
    async fn changed_since(&self, f: &Found) -> bool {
        let Some(judged) = &f.judged else {
            return false;
        };
        match self.store.head(&f.path).await {
            Ok(now) => now.e_tag.as_ref() != Some(judged),
            Err(_) => true,
        }
    }

    /// Every lease object, by key: live, or an orphan to delete.
    async fn leases(&self, now: SystemTime) -> Result<BTreeMap<CacheKey, (Lease, Option<Found>)>> {
        let mut out = BTreeMap::new();
        let dir = self.object(LEASES_DIR);
        for meta in self.objects_in(&dir).await?.objects {
            let Some(key) = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|k| CacheKey::parse(k).ok())
            else {
                continue;
            };
            let path = self.object(&format!("{LEASES_DIR}/{key}.json"));
            let read = match self.store.get(&path).await {
                Ok(got) if got.meta.size <= format::MAX_MANIFEST_SIZE => got.bytes().await.ok(),
                Ok(_) => None,
                Err(object_store::Error::NotFound { .. }) => continue, // released meanwhile
                Err(e) => return Err(self.request_error("GET", &path, e)),
            };
            let record = read.and_then(|b| LeaseRecord::from_json(&b).ok());
            let written = age(now, meta.last_modified.into());
            let lease = match record {
                Some(r) => match r.heartbeat_age(now) {
                    Some(silent) if !r.expired(now) => Lease::Live(format!(
                        "{}, heartbeat {}s ago",
                        r.holder(),
                        silent.as_secs()
                    )),
                    Some(silent) => Lease::Orphan(format!(
                        "stale build lease ({}, no heartbeat for {}s, expiry {}s)",
                        r.holder(),
                        silent.as_secs(),
                        r.expiry().as_secs()
                    )),
                    None if written < UNREADABLE_LEASE_AGE => {
                        Lease::Live(format!("{}, heartbeat time unreadable", r.holder()))
                    }
                    None => Lease::Orphan("build lease with an unreadable heartbeat".into()),
                },
                None if written < UNREADABLE_LEASE_AGE => {
                    Lease::Live("a lease object this ktstr cannot read".into())
                }
                None => Lease::Orphan("unreadable build lease, a day old".into()),
            };
            let found = match &lease {
                Lease::Orphan(what) => Some(Found {
                    path,
                    what: what.clone(),
                    size: meta.size,
                    judged: meta.e_tag.clone(),
                }),
                Lease::Live(_) => None,
            };
            out.insert(key, (lease, found));
        }
        Ok(out)
    }

    /// Archives and markers no remaining entry owns, an hour old.
    async fn orphans(
        &self,
        owned: &HashMap<String, Option<String>>,
        evicted: &HashSet<&str>,
        now: SystemTime,
    ) -> Result<Vec<Found>> {
        let old = |m: &object_store::ObjectMeta| age(now, m.last_modified.into()) >= ORPHAN_AGE;
        let mut found = Vec::new();
        // Listed names are re-rooted here: an HTTP store lists paths
        // relative to the server, not to the tier's URL.
        for listed in self.objects_in(&self.object("archives")).await?.dirs {
            let Some(key) = listed.filename().map(str::to_string) else {
                continue;
            };
            let dir = self.object(&format!("archives/{key}"));
            if evicted.contains(key.as_str()) {
                continue; // its entry's removal takes them (or would)
            }
            let what = match owned.get(&key) {
                None => "archive without a manifest",
                Some(None) => continue, // a damaged entry's: left for `kernel clean`
                Some(Some(_)) => "archive its manifest does not name (a concurrent push's)",
            };
            for m in self.objects_in(&dir).await?.objects {
                let Some(name) = m.location.filename() else {
                    continue;
                };
                let named = owned.get(&key).and_then(|n| n.as_deref()) == Some(name);
                if !named && old(&m) {
                    found.push(Found {
                        path: dir.clone().join(name),
                        what: what.to_string(),
                        size: m.size,
                        judged: None,
                    });
                }
            }
        }
        for m in self.objects_in(&self.object(USED_DIR)).await?.objects {
            let key = m.location.filename().unwrap_or_default().to_string();
            if !owned.contains_key(&key) && !evicted.contains(key.as_str()) && old(&m) {
                found.push(Found {
                    path: self.object(&format!("{USED_DIR}/{key}")),
                    what: "last-use marker of an entry that is gone".into(),
                    size: m.size,
                    judged: None,
                });
            }
        }
        Ok(found)
    }
}
