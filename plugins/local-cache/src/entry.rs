//! Validation of one stored entry.
//!
//! A cache hit must be cheap (the whole point of the cache is that a hit
//! returns in milliseconds), so [`load`] reads `metadata.json` once and
//! `stat`s each recorded file — enough to catch a missing or truncated
//! artifact from a crash or a careless `rm`, and, because `metadata.json`
//! is written last, an artifact written to in place after the store (its
//! mtime is newer than the metadata's), even when its size is unchanged. Hashing every artifact (a
//! vmlinux is tens of megabytes) is left to [`verify_digests`], which only
//! `ktstr kernel verify`-style callers pay for.
//!
//! Problems are reported as a [`Fault`]: either the entry is corrupt (a
//! reason the listing can show next to the key) or the OS refused to let us
//! look (a real I/O error, which is not the entry's fault).

use std::io::ErrorKind as IoKind;
use std::path::Path;

use ktstr_sdk::cache::{CONFIG_NAME, CacheKey, METADATA_NAME, Metadata};
use ktstr_sdk::error::{ErrorKind, StageError};
use ktstr_sdk::fsread::{Follow, read_bounded};

/// A `metadata.json` is a few KiB; a larger one is not ktstr's.
pub(crate) const METADATA_LIMIT: u64 = 1 << 20;

/// What to do about a corrupt entry.
pub(crate) const CORRUPT_HINT: &str =
    "run `ktstr kernel clean` or rebuild with --force; the entry will be replaced";

/// Why an entry cannot be served.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The entry's contents are wrong; the string is the reason, without the key.
    Corrupt(String),
    /// Reading failed for a reason unrelated to the entry's contents.
    Io(StageError),
}

impl Fault {
    /// The error a caller sees: corrupt entries name the key and carry the hint.
    pub(crate) fn into_error(self, key: &CacheKey) -> StageError {
        match self {
            Self::Corrupt(reason) => {
                StageError::corrupt(format!("cache entry {key}: {reason}")).with_hint(CORRUPT_HINT)
            }
            Self::Io(e) => e.context(format!("cache entry {key}")),
        }
    }

    /// The reason shown in a listing row.
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Corrupt(reason) => reason.clone(),
            Self::Io(e) => e.to_string(),
        }
    }
}

pub(crate) use ktstr_sdk::cache::is_entry_file_name as is_plain_file_name;

/// Read and check the entry in `dir` for `key`: metadata parses, names this
/// key, and every recorded artifact exists with its recorded size.
pub(crate) fn load(dir: &Path, key: &CacheKey) -> Result<Metadata, Fault> {
    let meta_path = dir.join(METADATA_NAME);
    let raw = match read_bounded(&meta_path, METADATA_NAME, METADATA_LIMIT, Follow::No) {
        Ok(raw) => raw,
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Err(Fault::Corrupt(format!("{METADATA_NAME} is missing")));
        }
        // A directory, a FIFO, a symlink, a huge or unreadable file where
        // the metadata should be: the entry is unusable, so it is reported
        // and rebuilt (the rebuild replaces the whole entry directory).
        Err(e) => {
            return Err(Fault::Corrupt(match e.causes.first() {
                Some(cause) => format!("{}: {cause}", e.message),
                None => e.message,
            }));
        }
    };
    // metadata.json is written last when an entry is stored, so no artifact
    // is newer than it unless something wrote to the artifact afterwards.
    let stored_at = std::fs::symlink_metadata(&meta_path)
        .and_then(|m| m.modified())
        .ok();
    let metadata: Metadata = serde_json::from_slice(&raw)
        .map_err(|e| Fault::Corrupt(format!("{METADATA_NAME} is not valid: {e}")))?;
    check_metadata(&metadata, key)?;
    for (name, info) in &metadata.artifacts {
        let path = dir.join(name);
        let stat = match std::fs::symlink_metadata(&path) {
            Ok(stat) => stat,
            Err(e) if e.kind() == IoKind::NotFound => {
                return Err(Fault::Corrupt(format!("{name} is missing")));
            }
            Err(e) => return Err(Fault::Io(StageError::io("stat", &path, e))),
        };
        if !stat.is_file() {
            return Err(Fault::Corrupt(format!("{name} is not a regular file")));
        }
        if stat.len() != info.size {
            return Err(Fault::Corrupt(format!(
                "{name} is {} bytes, {METADATA_NAME} records {}",
                stat.len(),
                info.size
            )));
        }
        if let (Some(stored_at), Ok(modified)) = (stored_at, stat.modified())
            && modified > stored_at
        {
            return Err(Fault::Corrupt(format!(
                "{name} was modified after the entry was stored (it is newer than {METADATA_NAME})"
            )));
        }
    }
    Ok(metadata)
}

/// Checks on the parsed metadata alone.
fn check_metadata(metadata: &Metadata, key: &CacheKey) -> Result<(), Fault> {
    let corrupt = |reason: String| Err(Fault::Corrupt(reason));
    if metadata.schema != Metadata::SCHEMA {
        return corrupt(format!(
            "{METADATA_NAME} has schema {}, this ktstr reads schema {}",
            metadata.schema,
            Metadata::SCHEMA
        ));
    }
    if &metadata.key != key {
        return corrupt(format!("{METADATA_NAME} belongs to key {}", metadata.key));
    }
    // A crafted name like "../../x" must never send a reader outside the entry.
    if let Some(bad) = metadata.artifacts.keys().find(|n| !is_plain_file_name(n)) {
        return corrupt(format!("{METADATA_NAME} lists an unsafe file name {bad:?}"));
    }
    for required in [metadata.image_name.as_str(), CONFIG_NAME] {
        if !metadata.artifacts.contains_key(required) {
            return corrupt(format!(
                "{METADATA_NAME} records no digest for {required:?}"
            ));
        }
    }
    Ok(())
}

/// Hash every recorded artifact and compare with `metadata`.
pub(crate) fn verify_digests(dir: &Path, metadata: &Metadata) -> Result<(), Fault> {
    for (name, info) in &metadata.artifacts {
        let path = dir.join(name);
        let (sha256, size) = ktstr_sdk::hash::sha256_file(&path).map_err(Fault::Io)?;
        if sha256 != info.sha256 || size != info.size {
            return Err(Fault::Corrupt(format!(
                "{name} has sha256 {sha256} ({size} bytes), {METADATA_NAME} records {} ({} bytes)",
                info.sha256, info.size
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names() {
        for ok in ["bzImage", "Image", "vmlinux", "config", "vmlinuz-6.12"] {
            assert!(is_plain_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", METADATA_NAME] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn corrupt_fault_names_key_and_hint() {
        let key = CacheKey::parse("k-1").unwrap();
        let e = Fault::Corrupt("vmlinux is missing".into()).into_error(&key);
        assert_eq!(e.kind, ktstr_sdk::ErrorKind::Corrupt);
        assert_eq!(e.to_string(), "cache entry k-1: vmlinux is missing");
        assert_eq!(e.hint.as_deref(), Some(CORRUPT_HINT));
    }
}
