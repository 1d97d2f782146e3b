//! Failure injection that a real server cannot do on demand: a part
//! upload that fails halfway through a multipart upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use ktstr_sdk::cache::{CacheBackend, Staging};
use ktstr_sdk::context::{Cancellation, Progress, StageContext};
use object_store::memory::InMemory;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutResult, UploadPart,
};

use super::*;
use crate::tier::TierOptions;

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

fn options(dir: &std::path::Path, multipart: Option<(u64, usize)>) -> TierOptions {
    TierOptions {
        require_verified: false,
        read_only: false,
        max_entry_size: 1 << 30,
        compression_level: 1,
        multipart,
        scratch_dir: Some(dir.join("scratch")),
        env_prefix: "KTSTR_S3_",
        auth_hint: String::new(),
        leases: None,
    }
}

/// A 12 MiB entry (three 5 MiB parts) to push.
fn entry(dir: &std::path::Path, name: &str) -> (CacheKey, Artifacts, Metadata) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let artifacts = Artifacts {
        image: src.join("bzImage"),
        vmlinux: None,
        config: src.join("config"),
        log: None,
    };
    std::fs::write(&artifacts.image, noise(12 << 20)).unwrap();
    std::fs::write(&artifacts.config, b"CONFIG_X=y\n").unwrap();
    let key = CacheKey::parse(name).unwrap();
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
        verify: None,
    };
    (key, artifacts, metadata)
}

fn scratch_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("scratch"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count()
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
        options(dir.path(), Some((5 << 20, 2))),
    )
    .unwrap();
    let (key, artifacts, metadata) = entry(dir.path(), "k-multipart-fail");
    let cx = StageContext::quiet();
    let err = tier.store(&key, &artifacts, &metadata, &cx).unwrap_err();
    assert!(err.message.starts_with("upload part of"), "{err}");
    assert!(err.to_string().contains("injected 500 on part 2"), "{err}");
    assert!(aborted.load(Ordering::SeqCst), "upload was not aborted");
    // No manifest (and so no entry) was published.
    let staging = Staging::new(dir.path());
    assert!(tier.lookup(&key, &staging, &cx).unwrap().is_none());
    assert!(tier.list(&cx).unwrap().is_empty());
    // The push's temporary archive is gone.
    assert_eq!(scratch_files(dir.path()), 0);
}

/// Interrupts the run as soon as the upload starts.
struct InterruptOnUpload(Cancellation);

impl Progress for InterruptOnUpload {
    fn step(&self, name: &str) {
        if name.starts_with("uploading") {
            self.0.cancel();
        }
    }
    fn line(&self, _: &str) {}
    fn finish_step(&self) {}
    fn warn(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// Interrupted during the upload, in one PUT or in parts, a push is
/// `Cancelled` and leaves nothing behind: no manifest, no archive, no
/// multipart upload, no scratch file.
#[test]
fn an_interrupted_push_leaves_nothing_on_the_remote() {
    for multipart in [None, Some((5 << 20, 2))] {
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
            options(dir.path(), multipart),
        )
        .unwrap();
        let (key, artifacts, metadata) = entry(dir.path(), "k-interrupted");
        let cancel = Cancellation::new();
        let cx = StageContext {
            progress: Arc::new(InterruptOnUpload(cancel.clone())),
            cancel,
            ..StageContext::quiet()
        };
        let err = tier.store(&key, &artifacts, &metadata, &cx).unwrap_err();
        assert_eq!(
            err.kind,
            ktstr_sdk::ErrorKind::Cancelled,
            "{multipart:?}: {err}"
        );
        assert_eq!(aborted.load(Ordering::SeqCst), multipart.is_some());
        let quiet = StageContext::quiet();
        let staging = Staging::new(dir.path());
        assert!(tier.lookup(&key, &staging, &quiet).unwrap().is_none());
        assert!(tier.list(&quiet).unwrap().is_empty());
        let objects: Vec<_> = tier
            .runtime
            .block_on(tier.store.list(None).collect::<Vec<_>>());
        assert!(objects.is_empty(), "{multipart:?}: {objects:?}");
        assert_eq!(scratch_files(dir.path()), 0);
    }
}

/// The same build pushed again with a boot check verdict replaces only
/// the manifest (the archive stays the one object under its key); a push
/// without a verdict never drops the one recorded.
#[test]
fn a_new_verdict_for_the_same_build_replaces_only_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let tier = RemoteTier::new(
        "s3-cache",
        "s3://test/p".into(),
        String::new(),
        Box::new(InMemory::new()),
        "p",
        options(dir.path(), None),
    )
    .unwrap();
    let (key, artifacts, mut metadata) = entry(dir.path(), "k-verdict");
    let cx = StageContext::quiet();
    tier.store(&key, &artifacts, &metadata, &cx).unwrap();
    let objects = || -> Vec<String> {
        let listed: Vec<_> = tier
            .runtime
            .block_on(tier.store.list(None).collect::<Vec<_>>());
        let mut names: Vec<String> = listed
            .into_iter()
            .map(|o| o.unwrap().location.to_string())
            .collect();
        names.sort();
        names
    };
    let before = objects();
    assert_eq!(before.len(), 2, "{before:?}");

    metadata.verify = Some(
        serde_json::from_value(serde_json::json!({
            "verifier": "qemu", "verifier_version": "0.1.0",
            "verified_at": "2026-12-06T05:00:00Z", "duration_ms": 24000,
            "passed": true, "summary": "booted"
        }))
        .unwrap(),
    );
    tier.store(&key, &artifacts, &metadata, &cx).unwrap();
    assert_eq!(objects(), before, "one archive, one manifest");
    let staging = Staging::new(dir.path());
    let found = tier.lookup(&key, &staging, &cx).unwrap().unwrap();
    assert_eq!(found.metadata.verify, metadata.verify);

    let mut unchecked = metadata.clone();
    unchecked.verify = None;
    tier.store(&key, &artifacts, &unchecked, &cx).unwrap();
    let staging = Staging::new(dir.path());
    let found = tier.lookup(&key, &staging, &cx).unwrap().unwrap();
    assert_eq!(found.metadata.verify, metadata.verify, "verdict kept");
}
