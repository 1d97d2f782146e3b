//! Pull throughput against a local s3s-fs: a full `lookup` (GET + sha256 +
//! zstd + untar + per-file sha256) versus a plain GET of the same archive
//! with the same client. Ignored by default; run it optimised:
//!
//!     cargo test --release -p ktstr-plugin-remote-cache --test bench -- --ignored --nocapture
//!
//! `KTSTR_BENCH_MB` sets the vmlinux size (default 160 MiB). See
//! `tests/bench/remote-pull.sh` and docs/benchmarks.md.

mod support;

use std::time::{Duration, Instant};

use ktstr_plugin_local_cache::LocalCache;
use ktstr_plugin_remote_cache::s3_tier_with_env;
use ktstr_sdk::cache::{CacheBackend, Staging};
use ktstr_sdk::context::StageContext;
use serde_json::json;
use support::*;

fn best(mut f: impl FnMut() -> Duration, runs: usize) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[test]
#[ignore = "benchmark; run with --release --ignored"]
fn pull_throughput_vs_plain_get() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mb: usize = std::env::var("KTSTR_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    // A kernel-like entry: an incompressible 12 MiB image and a vmlinux
    // that compresses about 3:1 (symbol tables and BTF do).
    let src = build_output(&work.path().join("src"), 12 << 20, 42);
    let vmlinux = src.vmlinux.clone().unwrap();
    let mut v = Vec::with_capacity(mb << 20);
    let mut i = 0u64;
    while v.len() < mb << 20 {
        // Per 64 KiB: 20 KiB that do not compress, 44 KiB of symbol-table-like
        // text that does (zstd -3 ends up near 3:1 overall).
        v.extend_from_slice(&noise(20 << 10, i + 1000));
        let mut text = Vec::with_capacity(44 << 10);
        let mut n = 0u64;
        while text.len() < 44 << 10 {
            text.extend_from_slice(format!("ffffffff{:08x} T sym_{i}_{n}\n", n * 16).as_bytes());
            n += 1;
        }
        text.truncate(44 << 10);
        v.extend_from_slice(&text);
        i += 1;
    }
    std::fs::write(&vmlinux, &v).unwrap();
    let unpacked = (12 << 20) + v.len() as u64;

    let k = key("6.12.3-bench-x86_64-00000000");
    let push =
        s3_tier_with_env(&server.config(&work.path().join("a"), json!({})), &|_| None).unwrap();
    let started = Instant::now();
    push.store(
        &k,
        &src,
        &metadata(&k, "2025-01-01T00:00:00Z"),
        &StageContext::quiet(),
    )
    .unwrap();
    let push_time = started.elapsed();

    let pull =
        s3_tier_with_env(&server.config(&work.path().join("b"), json!({})), &|_| None).unwrap();
    let archive_bytes = pull.plain_get_archive(&k).unwrap();
    let plain = best(
        || {
            let t = Instant::now();
            pull.plain_get_archive(&k).unwrap();
            t.elapsed()
        },
        5,
    );
    let full = best(
        || {
            let t = Instant::now();
            let staging = Staging::new(work.path());
            pull.lookup(&k, &staging, &StageContext::quiet())
                .unwrap()
                .unwrap();
            t.elapsed()
        },
        5,
    );
    // What the host adds on a hit: the local cache's atomic store (copy +
    // fsync + sha256).
    let staging = Staging::new(work.path());
    let hit = pull
        .lookup(&k, &staging, &StageContext::quiet())
        .unwrap()
        .unwrap();
    let local = LocalCache::at(work.path().join("cache"));
    let t = Instant::now();
    local
        .store(&k, &hit.artifacts(), &hit.metadata, &StageContext::quiet())
        .unwrap();
    let backfill = t.elapsed();

    println!(
        "entry: {:.1} MiB unpacked, archive {:.1} MiB",
        unpacked as f64 / (1 << 20) as f64,
        archive_bytes as f64 / (1 << 20) as f64
    );
    println!("push (pack + upload):         {push_time:>10.2?}");
    println!(
        "plain GET of the archive:     {plain:>10.2?}  {:>7.1} MiB/s",
        mbps(archive_bytes, plain)
    );
    println!(
        "lookup (GET+verify+unpack):   {full:>10.2?}  {:>7.1} MiB/s  ({:.0}% of plain GET)",
        mbps(archive_bytes, full),
        100.0 * plain.as_secs_f64() / full.as_secs_f64()
    );
    println!("backfill into local cache:    {backfill:>10.2?}");
    println!("pull total (lookup+backfill): {:>10.2?}", full + backfill);
}
