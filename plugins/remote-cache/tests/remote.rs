//! The remote tiers against real servers on 127.0.0.1: s3s-fs (SigV4
//! checked) and nginx with WebDAV. Two tier instances with separate
//! scratch directories, and two local caches, stand in for two machines
//! sharing a bucket.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ktstr_plugin_local_cache::LocalCache;
use ktstr_plugin_remote_cache::{RemoteTier, http_tier_with_env, s3_tier_with_env};
use ktstr_sdk::ErrorKind;
use ktstr_sdk::cache::{Artifacts, CacheBackend, CacheEntry, Listed, Staging};
use ktstr_sdk::context::StageContext;
use serde_json::json;
use support::*;

fn cx() -> StageContext {
    StageContext::quiet()
}

/// A fresh staging place, as the host lends each lookup; removed on drop,
/// so a test that reads a hit's files keeps it in a variable.
fn stage() -> Staging {
    Staging::new(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn s3(server: &S3Server, scratch: &Path, extra: serde_json::Value) -> RemoteTier {
    s3_tier_with_env(&server.config(scratch, extra), &no_env).unwrap()
}

fn http(server: &Nginx, scratch: &Path, extra: serde_json::Value) -> RemoteTier {
    http_tier_with_env(&server.config(scratch, extra), &no_env).unwrap()
}

/// What the host does with a remote hit: copy it into the local cache.
fn backfill(local: &LocalCache, hit: &CacheEntry) -> CacheEntry {
    local
        .store(&hit.key, &hit.artifacts(), &hit.metadata, &cx())
        .unwrap()
}

fn same_bytes(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

/// Push from "machine A", pull on "machine B", backfill B's local cache.
fn push_pull_round_trip(a: &RemoteTier, b: &RemoteTier, work: &Path) {
    let k = key("6.12.3-local-x86_64-tiny-0a1b2c3d");
    let src = build_output(&work.join("build"), 300_000, 1);

    // Machine A: local store first (as the host does), then push.
    let local_a = LocalCache::at(work.join("cache-a"));
    let stored = local_a
        .store(&k, &src, &metadata(&k, "2025-05-01T10:00:00Z"), &cx())
        .unwrap();
    assert!(
        b.lookup(&k, &stage(), &cx()).unwrap().is_none(),
        "miss before push"
    );
    let pushed = a.store(&k, &src, &stored.metadata, &cx()).unwrap();
    assert_eq!(pushed.origin, a.describe().split(' ').next().unwrap());
    assert_eq!(
        pushed.metadata.source.path, None,
        "local path never uploaded"
    );

    // Machine B.
    let staging = stage();
    let hit = b
        .lookup(&k, &staging, &cx())
        .unwrap()
        .expect("hit after push");
    assert!(
        staging.holds(&hit.dir),
        "not unpacked into the host's staging"
    );
    assert_eq!(hit.key, k);
    assert_eq!(hit.metadata.source.path, None);
    assert_eq!(hit.metadata.artifacts, stored.metadata.artifacts);
    same_bytes(&hit.image(), &src.image);
    same_bytes(&hit.vmlinux().unwrap(), src.vmlinux.as_ref().unwrap());
    same_bytes(&hit.config(), &src.config);
    same_bytes(
        &hit.log().expect("the build log travels"),
        src.log.as_ref().unwrap(),
    );

    let local_b = LocalCache::at(work.join("cache-b"));
    assert!(local_b.lookup(&k, &stage(), &cx()).unwrap().is_none());
    let installed = backfill(&local_b, &hit);
    assert_eq!(installed.origin, "local");
    local_b.verify(&k).unwrap();
    assert!(local_b.lookup(&k, &stage(), &cx()).unwrap().is_some());
    same_bytes(&installed.log().unwrap(), src.log.as_ref().unwrap());

    // Listing shows it, without downloading it.
    let rows = b.list(&cx()).unwrap();
    assert!(
        matches!(&rows[..], [Listed::Ok(e)] if e.key == k && e.metadata.version.as_deref() == Some("6.12.3")),
        "{rows:?}"
    );

    // Pushing the same files again is a no-op that still succeeds.
    a.store(&k, &src, &stored.metadata, &cx()).unwrap();
    assert!(b.lookup(&k, &stage(), &cx()).unwrap().is_some());

    // Remove: gone for everyone, then nothing to remove.
    assert!(a.remove(&k, &cx()).unwrap());
    assert!(b.lookup(&k, &stage(), &cx()).unwrap().is_none());
    assert!(!a.remove(&k, &cx()).unwrap());
    assert!(b.list(&cx()).unwrap().is_empty());
}

#[test]
fn s3_push_then_pull_on_a_second_machine() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let a = s3(&server, &work.path().join("scratch-a"), json!({}));
    let b = s3(&server, &work.path().join("scratch-b"), json!({}));
    assert!(!a.capabilities().read_only);
    push_pull_round_trip(&a, &b, work.path());
    // Nothing left in the bucket but empty prefixes.
    assert_eq!(tree(&server.bucket_dir()), Vec::<String>::new());
    // Scratch dirs are cleaned when the tiers go away.
    drop((a, b));
    assert_eq!(tree(&work.path().join("scratch-a")), Vec::<String>::new());
    assert_eq!(tree(&work.path().join("scratch-b")), Vec::<String>::new());
}

/// Push one entry and return the archive's path on the server's disk.
fn push_one(tier: &RemoteTier, work: &Path, name: &str, server_dir: &Path) -> std::path::PathBuf {
    let k = key(name);
    let src = build_output(&work.join(name), 200_000, 7);
    tier.store(&k, &src, &metadata(&k, "2025-05-01T10:00:00Z"), &cx())
        .unwrap();
    find_file(server_dir, ".tar.zst")
}

fn assert_corrupt_miss(tier: &RemoteTier, name: &str, want: &str, scratch: &Path) {
    // Lent, so what the tier leaves is still there to look at.
    let staging = Staging::lent(scratch.join("staging"));
    let err = tier.lookup(&key(name), &staging, &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(err.message.contains(want), "{err} should mention {want:?}");
    assert!(err.message.contains(name), "{err}");
    assert!(err.hint.is_some());
    // Nothing unpacked is left behind to be mistaken for an entry.
    let left: Vec<String> = tree(scratch)
        .into_iter()
        .filter(|p| p.contains(name))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn s3_digest_mismatch_truncation_and_bad_manifest_are_misses() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("scratch");
    let tier = s3(&server, &scratch, json!({}));

    // A flipped byte, same size.
    let archive = push_one(&tier, work.path(), "k-flip", &server.bucket_dir());
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, &bytes).unwrap();
    assert_corrupt_miss(&tier, "k-flip", "sha256", &scratch);
    assert!(tier.remove(&key("k-flip"), &cx()).unwrap());

    // Truncated.
    let archive = push_one(&tier, work.path(), "k-trunc", &server.bucket_dir());
    let len = std::fs::metadata(&archive).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&archive)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    assert_corrupt_miss(&tier, "k-trunc", "truncated", &scratch);
    // The listing flags it too.
    let rows = tier.list(&cx()).unwrap();
    assert!(
        matches!(&rows[..], [Listed::Corrupt { key, reason }] if key == "k-trunc" && reason.contains("bytes")),
        "{rows:?}"
    );
    // Archive deleted entirely.
    std::fs::remove_file(&archive).unwrap();
    assert_corrupt_miss(&tier, "k-trunc", "missing", &scratch);
    assert!(tier.remove(&key("k-trunc"), &cx()).unwrap());

    // Garbage manifest.
    push_one(&tier, work.path(), "k-manifest", &server.bucket_dir());
    let manifest = find_file(&server.bucket_dir(), "k-manifest.json");
    std::fs::write(&manifest, b"{\"format\": \"something else\"}").unwrap();
    assert_corrupt_miss(&tier, "k-manifest", "manifest is not valid", &scratch);

    // A re-push repairs it.
    let k = key("k-manifest");
    let src = build_output(&work.path().join("again"), 1000, 9);
    tier.store(&k, &src, &metadata(&k, "2025-05-02T00:00:00Z"), &cx())
        .unwrap();
    assert!(tier.lookup(&k, &stage(), &cx()).unwrap().is_some());
}

#[test]
fn s3_server_down_fails_fast_with_one_error() {
    let work = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = json!({
        "endpoint": format!("http://127.0.0.1:{port}"),
        "bucket": BUCKET,
        "anonymous": true,
        "connect_timeout": "1s",
        "retries": 1,
        "scratch_dir": work.path(),
    });
    let tier = s3_tier_with_env(&cfg, &no_env).unwrap();
    let k = key("k-down");
    let started = Instant::now();
    let err = tier.lookup(&k, &stage(), &cx()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(err.kind, ErrorKind::Corrupt);
    eprintln!("server down: {err}");
    assert_eq!(
        err.message,
        "GET s3://kernels/ktstr/v1/manifests/k-down.json failed"
    );
    assert!(
        err.hint
            .as_deref()
            .unwrap()
            .contains("KTSTR_S3_CONNECT_TIMEOUT"),
        "{err:?}"
    );

    let src = build_output(&work.path().join("b"), 1000, 1);
    let started = Instant::now();
    let err = tier
        .store(&k, &src, &metadata(&k, "2025-01-01T00:00:00Z"), &cx())
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.message.contains("failed"), "{err}");
}

#[test]
fn s3_stalling_server_times_out_quickly() {
    let staller = Staller::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = json!({
        "endpoint": format!("http://127.0.0.1:{}", staller.port),
        "bucket": BUCKET,
        "anonymous": true,
        "connect_timeout": "1s",
        "read_timeout": "300ms",
        "request_timeout": "1s",
        "retries": 1,
        "retry_timeout": "2s",
        "scratch_dir": work.path(),
    });
    let tier = s3_tier_with_env(&cfg, &no_env).unwrap();
    let k = key("k-stall");
    let started = Instant::now();
    let err = tier.lookup(&k, &stage(), &cx()).unwrap_err();
    let took = started.elapsed();
    eprintln!("stalled lookup failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(err.kind, ErrorKind::Io, "{err}");

    let src = build_output(&work.path().join("b"), 1000, 1);
    let started = Instant::now();
    let err = tier
        .store(&k, &src, &metadata(&k, "2025-01-01T00:00:00Z"), &cx())
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("stalled store failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn s3_wrong_credentials_are_refused() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let good = s3(&server, &work.path().join("g"), json!({}));
    push_one(&good, work.path(), "k-auth", &server.bucket_dir());
    let before = tree(&server.bucket_dir());

    let bad = s3(&server, &work.path().join("b"), json!({"profile": "bad"}));
    let err = bad.lookup(&key("k-auth"), &stage(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
    let hint = err.hint.clone().unwrap();
    assert!(hint.contains("profile bad"), "{hint}");
    assert!(
        !format!("{err:?}").contains("not-the-secret"),
        "secret leaked: {err:?}"
    );
    assert!(!format!("{bad:?}").contains("not-the-secret"));
    assert!(!format!("{good:?}").contains(SECRET_KEY));

    let k = key("k-auth-2");
    let src = build_output(&work.path().join("x"), 1000, 3);
    let err = bad
        .store(&k, &src, &metadata(&k, "2025-01-01T00:00:00Z"), &cx())
        .unwrap_err();
    assert!(!err.to_string().contains("not-the-secret"));
    assert_eq!(tree(&server.bucket_dir()), before, "nothing written");

    // Unsigned requests to a private bucket are refused as well.
    let anon = s3(&server, &work.path().join("a"), json!({"anonymous": true}));
    assert!(anon.lookup(&key("k-auth"), &stage(), &cx()).is_err());
}

#[test]
fn s3_read_only_reads_and_never_writes() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let writer = s3(&server, &work.path().join("w"), json!({}));
    push_one(&writer, work.path(), "k-ro", &server.bucket_dir());
    let before = tree(&server.bucket_dir());

    let ro = s3_tier_with_env(
        &server.config(&work.path().join("r"), json!({})),
        &|k: &str| (k == "KTSTR_S3_READ_ONLY").then(|| "1".to_string()),
    )
    .unwrap()
    .into_backend();
    assert!(ro.capabilities().read_only);
    assert!(ro.describe().ends_with("read-only"), "{}", ro.describe());
    assert!(ro.lookup(&key("k-ro"), &stage(), &cx()).unwrap().is_some());
    let k = key("k-ro-new");
    let src = build_output(&work.path().join("n"), 1000, 5);
    let err = ro
        .store(&k, &src, &metadata(&k, "2025-01-01T00:00:00Z"), &cx())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(err.hint.unwrap().contains("KTSTR_S3_READ_ONLY"));
    assert_eq!(
        ro.remove(&key("k-ro"), &cx()).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    assert_eq!(tree(&server.bucket_dir()), before, "a read-only tier wrote");
}

#[test]
fn s3_multipart_upload_of_an_entry_larger_than_one_part() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = json!({"part_size": "5MiB", "concurrency": 2});
    let a = s3(&server, &work.path().join("a"), cfg.clone());
    let b = s3(&server, &work.path().join("b"), cfg);
    let k = key("k-big");
    // 12 MiB of noise: three parts, the last one short.
    let src = build_output(&work.path().join("big"), 12 << 20, 11);
    a.store(&k, &src, &metadata(&k, "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    let archive = find_file(&server.bucket_dir(), ".tar.zst");
    assert!(std::fs::metadata(&archive).unwrap().len() > 10 << 20);
    let staging = stage();
    let hit = b.lookup(&k, &staging, &cx()).unwrap().unwrap();
    same_bytes(&hit.image(), &src.image);
    // No multipart upload is left in progress on the server.
    let leftovers: Vec<String> = tree(server.dir.path())
        .into_iter()
        .filter(|p| p.contains("upload") && !p.ends_with(".log") && !p.ends_with(".err"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn s3_concurrent_pushes_of_one_key_leave_a_valid_entry() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let k = key("k-race");
    // Two machines built the same kernel (different image bytes, as real
    // builds embed timestamps) and push at the same moment, repeatedly.
    std::thread::scope(|s| {
        for m in 0..2u64 {
            let (server, work, k) = (&server, work.path(), &k);
            s.spawn(move || {
                let tier = s3(server, &work.join(format!("s{m}")), json!({}));
                let src = build_output(&work.join(format!("m{m}")), 400_000, 100 + m);
                for round in 0..3 {
                    tier.store(
                        k,
                        &src,
                        &metadata(k, &format!("2025-01-0{}T00:00:00Z", round + 1)),
                        &cx(),
                    )
                    .unwrap();
                }
            });
        }
    });
    let reader = s3(&server, &work.path().join("r"), json!({}));
    let staging = stage();
    let hit = reader
        .lookup(&k, &staging, &cx())
        .unwrap()
        .expect("an entry");
    let image = std::fs::read(hit.image()).unwrap();
    assert!(image == noise(400_000, 100) || image == noise(400_000, 101));
    // The digests were checked against the manifest, so image and
    // metadata belong to the same push.
}

/// Push `name`, then damage its archive at rest without changing its size.
fn push_and_flip(
    tier: &RemoteTier,
    work: &Path,
    name: &str,
    server_dir: &Path,
) -> (std::path::PathBuf, Artifacts) {
    let k = key(name);
    let src = build_output(&work.join(name), 200_000, 11);
    tier.store(&k, &src, &metadata(&k, "2025-05-01T10:00:00Z"), &cx())
        .unwrap();
    let archive = find_file(server_dir, ".tar.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();
    (archive, src)
}

/// A same-size flipped byte at rest is repaired by the next store: by the
/// machine whose lookup found it (its store does not trust the manifest),
/// and by one that never looked (its store hashes the remote archive
/// before calling it "already there").
fn damaged_at_rest_is_repaired(make: &dyn Fn(&Path) -> RemoteTier, server_dir: &Path) {
    let work = tempfile::tempdir().unwrap();
    let k = key("k-rest");

    // Machine A looks, finds it damaged, rebuilds and stores.
    let a = make(&work.path().join("scratch-a"));
    let (archive, src) = push_and_flip(&a, work.path(), "k-rest", server_dir);
    let damaged = std::fs::read(&archive).unwrap();
    assert_eq!(
        a.lookup(&k, &stage(), &cx()).unwrap_err().kind,
        ErrorKind::Corrupt
    );
    a.store(&k, &src, &metadata(&k, "2025-05-01T10:00:00Z"), &cx())
        .unwrap();
    assert!(
        a.lookup(&k, &stage(), &cx()).unwrap().is_some(),
        "the store repaired it"
    );
    assert_ne!(
        std::fs::read(find_file(server_dir, ".tar.zst")).unwrap(),
        damaged
    );

    // Damaged again; machine B pushes without looking first.
    let archive = find_file(server_dir, ".tar.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x08;
    std::fs::write(&archive, &bytes).unwrap();
    let b = make(&work.path().join("scratch-b"));
    b.store(&k, &src, &metadata(&k, "2025-05-01T10:00:00Z"), &cx())
        .unwrap();
    let c = make(&work.path().join("scratch-c"));
    let staging = stage();
    let hit = c
        .lookup(&k, &staging, &cx())
        .unwrap()
        .expect("repaired by B's push");
    same_bytes(&hit.image(), &src.image);
    assert!(a.remove(&k, &cx()).unwrap());
}

#[test]
fn s3_archive_damaged_at_rest_is_replaced_by_the_next_store() {
    let Some(server) = S3Server::start() else {
        return;
    };
    damaged_at_rest_is_repaired(
        &|scratch: &Path| s3(&server, scratch, json!({})),
        &server.bucket_dir(),
    );
}

#[test]
fn http_archive_damaged_at_rest_is_replaced_by_the_next_store() {
    let Some(server) = Nginx::start() else { return };
    damaged_at_rest_is_repaired(
        &|scratch: &Path| http(&server, scratch, json!({})),
        &server.data_dir(),
    );
}

#[test]
fn s3_missing_bucket_is_reported_not_a_miss() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tier = s3(
        &server,
        &work.path().join("scratch"),
        json!({"bucket": "no-such-bucket"}),
    );
    let k = key("k-nobucket");
    for err in [
        tier.lookup(&k, &stage(), &cx()).unwrap_err(),
        tier.list(&cx()).unwrap_err(),
        tier.store(
            &k,
            &build_output(&work.path().join("src"), 1000, 3),
            &metadata(&k, "2025-05-01T10:00:00Z"),
            &cx(),
        )
        .unwrap_err(),
    ] {
        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
        assert!(
            err.message.contains("bucket no-such-bucket does not exist"),
            "{err}"
        );
        assert!(err.message.contains(&server.endpoint()), "{err}");
        let hint = err.hint.unwrap();
        assert!(hint.contains("KTSTR_S3_BUCKET"), "{hint}");
    }
}

#[test]
fn http_push_pull_list_remove() {
    let Some(server) = Nginx::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let a = http(&server, &work.path().join("a"), json!({}));
    let b = http(&server, &work.path().join("b"), json!({}));
    push_pull_round_trip(&a, &b, work.path());
}

#[test]
fn http_digest_mismatch_is_a_miss() {
    let Some(server) = Nginx::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("s");
    let tier = http(&server, &scratch, json!({}));
    let archive = push_one(&tier, work.path(), "k-http-flip", &server.data_dir());
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&archive, &bytes).unwrap();
    assert_corrupt_miss(&tier, "k-http-flip", "sha256", &scratch);
    std::fs::write(&archive, &bytes[..bytes.len() - 10]).unwrap();
    assert_corrupt_miss(&tier, "k-http-flip", "truncated", &scratch);
}

#[test]
fn http_server_down_and_stalling() {
    let work = tempfile::tempdir().unwrap();
    let down = http_tier_with_env(
        &json!({
            "url": format!("http://127.0.0.1:{}/cache", closed_port()),
            "connect_timeout": "1s",
            "retries": 1,
            "scratch_dir": work.path(),
        }),
        &no_env,
    )
    .unwrap();
    let started = Instant::now();
    let err = down.lookup(&key("k"), &stage(), &cx()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.message.starts_with("GET http://127.0.0.1:"), "{err}");
    assert!(
        err.hint
            .unwrap()
            .contains("KTSTR_HTTP_CACHE_CONNECT_TIMEOUT")
    );

    let staller = Staller::start();
    let stalled = http_tier_with_env(
        &json!({
            "url": format!("http://127.0.0.1:{}/cache", staller.port),
            "read_timeout": "300ms",
            "request_timeout": "1s",
            "retries": 1,
            "retry_timeout": "2s",
            "scratch_dir": work.path(),
        }),
        &no_env,
    )
    .unwrap();
    let started = Instant::now();
    assert!(stalled.lookup(&key("k"), &stage(), &cx()).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}
