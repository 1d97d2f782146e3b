//! One backend instance as the rules call it.
//!
//! Every call into a backend goes through [`Handle`], which passes the
//! [`StageContext`] on and, as the host does, lends each lookup a fresh
//! [`Staging`] that outlives the hit (until the handle is dropped). Each
//! call is also guarded against panics, so a panicking backend breaks the
//! rule it was called for instead of aborting the suite.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use crate::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, Listed, Metadata, Staging,
};
use crate::context::StageContext;
use crate::error::Result;

/// A backend and the context its calls run in.
pub(super) struct Handle {
    backend: Box<dyn CacheBackend>,
    cx: StageContext,
    /// Every lookup's staging, kept while the rules read the hits; declared
    /// before `staging_root` so it is dropped (removed) first.
    staged: Mutex<Vec<Staging>>,
    staging_root: Option<tempfile::TempDir>,
}

/// A fresh context: no progress output, the real process runner, not cancelled.
pub(super) fn context() -> StageContext {
    StageContext {
        progress: Arc::new(crate::context::NoProgress),
        runner: Arc::new(crate::runner::SystemRunner),
        cancel: crate::context::Cancellation::new(),
    }
}

/// `f`, with a panic turned into an observation.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        format!("{what} panicked: {msg}")
    })
}

impl Handle {
    pub fn new(backend: Box<dyn CacheBackend>) -> Self {
        Self::with_context(backend, context())
    }

    pub fn with_context(backend: Box<dyn CacheBackend>, cx: StageContext) -> Self {
        Self {
            backend,
            cx,
            staged: Mutex::default(),
            staging_root: tempfile::tempdir().ok(),
        }
    }

    /// A fresh staging place for one lookup, kept until the handle goes.
    fn staging(&self) -> Staging {
        let root = (self.staging_root.as_ref())
            .map(|d| d.path().to_path_buf())
            .unwrap_or_else(std::env::temp_dir);
        Staging::new(&root)
    }

    pub fn describe(&self) -> String {
        guarded("describe", || self.backend.describe()).unwrap_or_else(|e| e)
    }

    pub fn capabilities(&self) -> std::result::Result<Capabilities, String> {
        guarded("capabilities", || self.backend.capabilities())
    }

    /// The backend's answer, panics caught: for rules that expect an error.
    pub fn try_lookup(&self, key: &CacheKey) -> Caught<Option<CacheEntry>> {
        let staging = self.staging();
        let found = guarded(&format!("lookup {key}"), || {
            self.backend.lookup(key, &staging, &self.cx)
        });
        (self.staged.lock().unwrap_or_else(|p| p.into_inner())).push(staging);
        found
    }

    pub fn try_store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
    ) -> Caught<CacheEntry> {
        guarded(&format!("store {key}"), || {
            self.backend.store(key, artifacts, metadata, &self.cx)
        })
    }

    pub fn try_list(&self) -> Caught<Vec<Listed>> {
        guarded("list", || self.backend.list(&self.cx))
    }

    pub fn try_remove(&self, key: &CacheKey) -> Caught<bool> {
        guarded(&format!("remove {key}"), || {
            self.backend.remove(key, &self.cx)
        })
    }

    /// A call that must succeed; its error becomes the observation.
    pub fn lookup(&self, key: &CacheKey) -> Observed<Option<CacheEntry>> {
        must(&format!("lookup {key}"), self.try_lookup(key))
    }

    pub fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
    ) -> Observed<CacheEntry> {
        must(
            &format!("store {key}"),
            self.try_store(key, artifacts, metadata),
        )
    }

    pub fn list(&self) -> Observed<Vec<Listed>> {
        must("list", self.try_list())
    }

    pub fn remove(&self, key: &CacheKey) -> Observed<bool> {
        must(&format!("remove {key}"), self.try_remove(key))
    }
}

/// What a rule observed when it broke.
pub(super) type Observed<T> = std::result::Result<T, String>;

/// A backend call's own result, or the panic it raised.
pub(super) type Caught<T> = Observed<Result<T>>;

/// The error of a call that had to succeed, as an observation.
fn must<T>(what: &str, r: Caught<T>) -> Observed<T> {
    r?.map_err(|e| format!("{what} failed: {}", describe_error(&e)))
}

/// An error as the rules quote it: kind, message and causes.
pub(super) fn describe_error(e: &crate::error::StageError) -> String {
    format!("{e} (kind {:?})", e.kind)
}
