//! [`RemoteTier`]: the [`CacheBackend`] over an object store, shared by
//! `s3-cache` and `http-cache`.
//!
//! The host calls tiers synchronously, so each tier owns a small
//! current-thread tokio runtime and blocks on it; nothing here needs the
//! host to be async, and a tier that is never used costs one idle runtime.
//!
//! This file holds the tier's state and object naming; the work is split
//! by what it does: `pull` (lookup, into the host's staging), `push`
//! (store), `listing` (list, remove, last-use markers), `gc` (`ktstr
//! cache gc`: eviction and orphans), `errors` (how failures are
//! worded) and `scratch` (the private directory pushes pack in).

mod errors;
mod gc;
mod lease;
mod listing;
mod pull;
mod push;
mod scratch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ktstr_sdk::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, Listed, Metadata, Staging,
};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::{Result, StageError};
use ktstr_sdk::lease::{LeaseStore, LeaseTimings};
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;

use crate::format;
pub use lease::TierLeases;
use scratch::{Scratch, scratch_base, sweep_dead_scratch};

/// Tuning a tier needs beyond the client itself.
#[derive(Debug, Clone)]
pub struct TierOptions {
    pub read_only: bool,
    /// Serve only entries whose recorded boot check passed.
    pub require_verified: bool,
    pub max_entry_size: u64,
    pub compression_level: i32,
    /// `(part size, concurrent parts)`; `None`: always one PUT.
    pub multipart: Option<(u64, usize)>,
    /// Where to pack uploads; `None`: the cache root, else the temp dir.
    /// (Downloads go to the host's staging directory.)
    pub scratch_dir: Option<PathBuf>,
    /// `KTSTR_S3_` / `KTSTR_HTTP_CACHE_`, for hints.
    pub env_prefix: &'static str,
    /// What to say about credentials when the server refuses them.
    pub auth_hint: String,
    /// Build leases (fleet single-flight), for a store whose PUT can be
    /// conditional; `None`: no leases. Never used when read-only.
    pub leases: Option<LeaseOptions>,
}

/// The settings of a tier's build leases.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    pub timings: LeaseTimings,
    /// How long after a write a lease is read back (see [`TierLeases`]).
    pub settle: std::time::Duration,
}

/// A remote cache tier.
pub struct RemoteTier {
    plugin: &'static str,
    /// `s3://bucket/prefix` or the base URL: names the cache in messages.
    location: String,
    /// Extra words for `describe()` (endpoint, credential source).
    detail: String,
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/v1`.
    root: ObjPath,
    opts: TierOptions,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Build leases, shared with the host's heartbeat thread.
    leases: Option<Arc<TierLeases>>,
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

impl RemoteTier {
    /// The tier as the host uses it: a read-only one behind the SDK's
    /// [`ReadOnly`](ktstr_sdk::read_only::ReadOnly), which refuses writes
    /// before they reach it (so store and remove never check).
    pub fn into_backend(self) -> Box<dyn CacheBackend> {
        if !self.opts.read_only {
            return Box::new(self);
        }
        let why = format!(
            "read_only is set ({}READ_ONLY); unset it on machines trusted to write",
            self.opts.env_prefix
        );
        Box::new(ktstr_sdk::read_only::ReadOnly::new(Box::new(self), why))
    }

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
        let store: Arc<dyn ObjectStore> = Arc::from(store);
        let runtime = Arc::new(runtime);
        let leases = (opts.leases).filter(|_| !opts.read_only).map(|lease| {
            Arc::new(TierLeases {
                plugin,
                location: location.clone(),
                store: store.clone(),
                runtime: runtime.clone(),
                dir: root.clone().join("leases"),
                timings: lease.timings,
                settle: lease.settle,
            })
        });
        Ok(Self {
            plugin,
            location,
            detail,
            store,
            root,
            opts,
            runtime,
            leases,
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
}

impl CacheBackend for RemoteTier {
    fn lookup(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        self.pull(key, staging, cx)
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        self.push(key, artifacts, metadata, cx)
    }

    fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
        self.list_entries()
    }

    fn remove(&self, key: &CacheKey, _: &StageContext) -> Result<bool> {
        self.remove_entry(key)
    }

    fn gc(
        &self,
        request: &ktstr_sdk::cache_gc::GcRequest,
        cx: &StageContext,
    ) -> Result<ktstr_sdk::cache_gc::GcReport> {
        self.collect_garbage(request, cx)
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
        }
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        self.leases.clone().map(|l| l as Arc<dyn LeaseStore>)
    }
}
