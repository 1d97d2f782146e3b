//! [`ReadOnly`]: a cache backend that can only be read.
//!
//! Whether a tier may be written is policy, and the policy is the host's:
//! a backend configured read-only is wrapped in this decorator (by the
//! plugin that knows its configuration, or by the host for any backend
//! whose capabilities say so), so backends never check it themselves.
//! Writes are refused here, with the reason the wrapper was given, before
//! they reach the backend.

use crate::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, Listed, Metadata, Staging,
};
use crate::context::StageContext;
use crate::error::{ErrorKind, Result, StageError};

/// `inner`, with `store` and `remove` refused.
pub struct ReadOnly<B: ?Sized> {
    /// How to make it writable, for the refusal's hint.
    why: String,
    inner: Box<B>,
}

impl<B: CacheBackend + ?Sized> ReadOnly<B> {
    /// `why` says where read-only was set and how to unset it, e.g.
    /// "read_only is set (KTSTR_S3_READ_ONLY); unset it on machines trusted to write".
    pub fn new(inner: Box<B>, why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            inner,
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn refuse(&self, action: String) -> StageError {
        StageError::new(
            ErrorKind::Unsupported,
            format!("cannot {action}: {} is read-only", self.inner.describe()),
        )
        .with_hint(self.why.clone())
    }
}

impl<B: CacheBackend + ?Sized> CacheBackend for ReadOnly<B> {
    fn lookup(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        self.inner.lookup(key, staging, cx)
    }

    fn store(
        &self,
        key: &CacheKey,
        _: &Artifacts,
        _: &Metadata,
        _: &StageContext,
    ) -> Result<CacheEntry> {
        Err(self.refuse(format!("store {key}")))
    }

    fn list(&self, cx: &StageContext) -> Result<Vec<Listed>> {
        self.inner.list(cx)
    }

    fn remove(&self, key: &CacheKey, _: &StageContext) -> Result<bool> {
        Err(self.refuse(format!("remove {key}")))
    }

    fn gc(
        &self,
        _: &crate::cache_gc::GcRequest,
        _: &StageContext,
    ) -> Result<crate::cache_gc::GcReport> {
        Err(self.refuse("collect garbage".to_string()))
    }

    fn describe(&self) -> String {
        let inner = self.inner.describe();
        if inner.ends_with("read-only") {
            inner
        } else {
            format!("{inner}, read-only")
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_only: true }
    }

    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        self.inner.locks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Counting {
        writes: AtomicUsize,
    }

    impl CacheBackend for Counting {
        fn lookup(
            &self,
            _: &CacheKey,
            _: &Staging,
            _: &StageContext,
        ) -> Result<Option<CacheEntry>> {
            Ok(None)
        }
        fn store(
            &self,
            _: &CacheKey,
            _: &Artifacts,
            _: &Metadata,
            _: &StageContext,
        ) -> Result<CacheEntry> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Err(StageError::internal("reached the backend"))
        }
        fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
            Ok(Vec::new())
        }
        fn remove(&self, _: &CacheKey, _: &StageContext) -> Result<bool> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }
        fn describe(&self) -> String {
            "counting cache at nowhere".into()
        }
    }

    #[test]
    fn writes_are_refused_before_the_backend_and_reads_pass() {
        let ro = ReadOnly::new(Box::new(Counting::default()), "unset read_only = true");
        let key = CacheKey::parse("k-1").unwrap();
        let cx = StageContext::quiet();
        let root = tempfile::tempdir().unwrap();
        let staging = Staging::new(root.path());
        assert!(ro.lookup(&key, &staging, &cx).unwrap().is_none());
        assert!(ro.list(&cx).unwrap().is_empty());
        let e = ro.remove(&key, &cx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert_eq!(
            e.message,
            "cannot remove k-1: counting cache at nowhere is read-only"
        );
        assert_eq!(e.hint.as_deref(), Some("unset read_only = true"));
        assert!(ro.capabilities().read_only);
        assert_eq!(ro.describe(), "counting cache at nowhere, read-only");
        assert_eq!(ro.inner().writes.load(Ordering::SeqCst), 0);
    }
}
