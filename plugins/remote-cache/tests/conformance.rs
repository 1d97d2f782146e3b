//! s3-cache and http-cache against the SDK's cache conformance suite, on
//! the real servers the other remote tests use (s3s-fs, nginx with
//! WebDAV); each skips with a printed reason when its server is missing.
//!
//! Every rule gets its own object prefix (the fixture's id), so each starts
//! from an empty cache on the one server.

use std::path::{Path, PathBuf};

use ktstr_plugin_remote_cache::{http_tier_with_env, s3_tier_with_env};
use ktstr_sdk::cache::{CacheBackend, CacheKey};
use ktstr_sdk::conformance::cache::{self, Fixture, Options};
use ktstr_test_servers::{Nginx, S3Server};
use serde_json::{Value, json};

fn no_env(_: &str) -> Option<String> {
    None
}

/// Settings of one fixture's tier: its own prefix and scratch directory.
fn settings(fx: &Fixture, read_only: bool) -> Value {
    json!({"prefix": fx.id, "read_only": read_only})
}

/// Flip a byte in the middle of every archive of `key` under `objects`
/// (the server's files for the fixture's prefix): damage at rest, size
/// unchanged.
fn flip_archives(objects: &Path, key: &CacheKey) {
    let dir = objects.join("v1/archives").join(key.as_str());
    let archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        !archives.is_empty(),
        "no archive of {key} in {}",
        dir.display()
    );
    for archive in archives {
        let mut bytes = std::fs::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&archive, &bytes).unwrap();
    }
}

#[test]
fn s3_cache_conforms() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let make = |fx: &Fixture, read_only: bool| -> Box<dyn CacheBackend> {
        s3_tier_with_env(
            &server.config(&fx.private, settings(fx, read_only)),
            &no_env,
        )
        .unwrap()
        .into_backend()
    };
    cache::run(
        &|fx: &Fixture| make(fx, false),
        Options::default()
            .read_only(|fx: &Fixture| make(fx, true))
            .corrupt(|fx: &Fixture, key: &CacheKey| {
                flip_archives(&server.bucket_dir().join(&fx.id), key)
            }),
    );
}

#[test]
fn http_cache_conforms() {
    let Some(server) = Nginx::start() else {
        return;
    };
    let make = |fx: &Fixture, read_only: bool| -> Box<dyn CacheBackend> {
        http_tier_with_env(
            &server.config(&fx.private, settings(fx, read_only)),
            &no_env,
        )
        .unwrap()
        .into_backend()
    };
    cache::run(
        &|fx: &Fixture| make(fx, false),
        Options::default()
            .read_only(|fx: &Fixture| make(fx, true))
            .corrupt(|fx: &Fixture, key: &CacheKey| {
                flip_archives(&server.data_dir().join(&fx.id), key)
            }),
    );
}
