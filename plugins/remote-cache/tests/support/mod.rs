//! Fixtures for the remote-cache tests: fake build outputs, metadata and
//! file-tree helpers. The servers they run against (s3s-fs, nginx with
//! WebDAV, a listener that never answers) come from `ktstr-test-servers`,
//! shared with the end-to-end tests; each test skips with a printed reason
//! when its server binary is missing; .ci/run installs both.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::{Artifacts, CacheKey, Metadata, SourceInfo};
pub use ktstr_test_servers::*;

pub fn key(s: &str) -> CacheKey {
    CacheKey::parse(s).unwrap()
}

/// Deterministic, incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Files of a fake build in `dir`: an image of `image_len` bytes.
pub fn build_output(dir: &Path, image_len: usize, seed: u64) -> Artifacts {
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.join("bzImage");
    let vmlinux = dir.join("vmlinux-stripped");
    let config = dir.join(".config");
    std::fs::write(&image, noise(image_len, seed)).unwrap();
    let mut v = b"\x7fELF".to_vec();
    v.extend(std::iter::repeat_n(b"symbols ".to_vec(), 4096).flatten());
    std::fs::write(&vmlinux, v).unwrap();
    std::fs::write(&config, format!("CONFIG_SEED={seed}\nCONFIG_X=y\n")).unwrap();
    let log = dir.join("build.log.zst");
    std::fs::write(&log, format!("(compressed build log {seed})")).unwrap();
    Artifacts {
        image,
        vmlinux: Some(vmlinux),
        config,
        log: Some(log),
    }
}

pub fn metadata(key: &CacheKey, built_at: &str) -> Metadata {
    Metadata {
        schema: Metadata::SCHEMA,
        key: key.clone(),
        source: SourceInfo {
            kind: "local".into(),
            identity: "0123456789abcdef0123456789abcdef01234567".into(),
            path: Some("/home/alice/src/linux".into()),
        },
        version: Some("6.12.3".into()),
        arch: "x86_64".into(),
        image_name: "bzImage".into(),
        profile: "tiny".into(),
        config_sha256: "0".repeat(64),
        fragments: vec![],
        builder: "kbuild 0.1.0".into(),
        toolchain: "gcc 12".into(),
        built_at: built_at.into(),
        components: vec![],
        artifacts: BTreeMap::new(),
        strip: None,
        origin: None,
        kernelrelease: None,
        build: None,
        verify: None,
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Find the single file under `dir` whose path ends with `suffix`.
pub fn find_file(dir: &Path, suffix: &str) -> PathBuf {
    let hits: Vec<String> = tree(dir)
        .into_iter()
        .filter(|p| p.ends_with(suffix))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "files ending in {suffix}: {hits:?} in {:?}",
        tree(dir)
    );
    dir.join(&hits[0])
}
