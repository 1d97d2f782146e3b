//! Checking a cache entry's files against the digests its metadata records.
//!
//! A lookup checks sizes only (see docs/cache.md, "What a hit checks"):
//! hashing every artifact would make a hit cost what reading the entry
//! costs. The full check is what `ktstr kernel verify` runs, and what
//! `ktstr cache push` runs before an entry leaves the machine, so a
//! locally corrupted entry is never spread to a shared tier.

use ktstr_sdk::cache::CacheEntry;
use ktstr_sdk::context::Cancellation;
use ktstr_sdk::{Result, StageError};

/// One artifact that does not match its recorded digest or size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    pub file: String,
    pub reason: String,
}

/// Hash every artifact `entry` records. `Ok(vec![])` when all match;
/// a file that cannot be read counts as a mismatch (it cannot be served).
/// `Err` only for cancellation.
pub fn check_entry(entry: &CacheEntry, cancel: &Cancellation) -> Result<Vec<Mismatch>> {
    let mut bad = Vec::new();
    for (name, info) in &entry.metadata.artifacts {
        let path = entry.dir.join(name);
        match ktstr_sdk::hash::sha256_file_cancellable(&path, Some(cancel)) {
            Ok((sha256, size)) if sha256 == info.sha256 && size == info.size => {}
            Ok((sha256, size)) => bad.push(Mismatch {
                file: name.clone(),
                reason: format!(
                    "sha256 {sha256} ({size} bytes), metadata records {} ({} bytes)",
                    info.sha256, info.size
                ),
            }),
            Err(e) if e.kind == ktstr_sdk::ErrorKind::Cancelled => return Err(e),
            Err(e) => bad.push(Mismatch {
                file: name.clone(),
                reason: e.to_string(),
            }),
        }
    }
    Ok(bad)
}

/// [`check_entry`] as an error naming the entry and its first bad file.
pub fn require_intact(entry: &CacheEntry, cancel: &Cancellation) -> Result<()> {
    let bad = check_entry(entry, cancel)?;
    match bad.first() {
        None => Ok(()),
        Some(m) => Err(StageError::corrupt(format!(
            "cache entry {} is corrupt: {}: {}",
            entry.key, m.file, m.reason
        ))
        .with_hint(format!(
            "`ktstr kernel verify {}` removes it; the next build of it rebuilds it",
            entry.key
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::cache::{ArtifactInfo, CacheKey, Metadata};

    fn entry(dir: &std::path::Path, body: &[u8]) -> CacheEntry {
        let mut metadata: Metadata = serde_json::from_value(serde_json::json!({
            "schema": 1, "key": "k-1",
            "source": {"kind": "x", "identity": "y"},
            "version": null, "arch": "x86_64", "image_name": "bzImage",
            "profile": "default", "config_sha256": "", "builder": "b",
            "toolchain": "t", "built_at": "now", "components": [], "artifacts": {}
        }))
        .unwrap();
        metadata.artifacts.insert(
            "bzImage".into(),
            ArtifactInfo {
                sha256: ktstr_sdk::hash::sha256_hex(body),
                size: body.len() as u64,
            },
        );
        CacheEntry {
            key: CacheKey::parse("k-1").unwrap(),
            dir: dir.to_path_buf(),
            metadata,
            origin: "local".into(),
            location: None,
            last_used: None,
        }
    }

    #[test]
    fn a_same_size_flip_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bzImage"), b"kernel").unwrap();
        let e = entry(dir.path(), b"kernel");
        let cancel = Cancellation::default();
        assert!(check_entry(&e, &cancel).unwrap().is_empty());
        std::fs::write(dir.path().join("bzImage"), b"kernEl").unwrap();
        let err = require_intact(&e, &cancel).unwrap_err();
        assert_eq!(err.kind, ktstr_sdk::ErrorKind::Corrupt);
        assert!(
            err.message.contains("k-1 is corrupt: bzImage: sha256"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("bzImage")).unwrap();
        assert_eq!(check_entry(&e, &cancel).unwrap().len(), 1);
    }
}
