//! Failure injection that a real server cannot do on demand: a part
//! upload that fails halfway through a multipart upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use ktstr_sdk::cache::CacheBackend;
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
        TierOptions {
            read_only: false,
            max_entry_size: 1 << 30,
            compression_level: 1,
            multipart: Some((5 << 20, 2)),
            scratch_dir: Some(dir.path().join("scratch")),
            env_prefix: "KTSTR_S3_",
            auth_hint: String::new(),
        },
    )
    .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let artifacts = Artifacts {
        image: src.join("bzImage"),
        vmlinux: None,
        config: src.join("config"),
        log: None,
    };
    std::fs::write(&artifacts.image, noise(12 << 20)).unwrap();
    std::fs::write(&artifacts.config, b"CONFIG_X=y\n").unwrap();
    let key = CacheKey::parse("k-multipart-fail").unwrap();
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
    };
    let err = tier.store(&key, &artifacts, &metadata).unwrap_err();
    assert!(err.message.starts_with("upload part of"), "{err}");
    assert!(err.to_string().contains("injected 500 on part 2"), "{err}");
    assert!(aborted.load(Ordering::SeqCst), "upload was not aborted");
    // No manifest (and so no entry) was published.
    assert!(tier.lookup(&key).unwrap().is_none());
    assert!(tier.list().unwrap().is_empty());
    // The push's temporary archive is gone.
    assert_eq!(
        std::fs::read_dir(dir.path().join("scratch"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .count(),
        0
    );
}
