//! What `ktstr locks` shows: every lock file a stage takes, with what it
//! guards and who holds it.
//!
//! Which lock files exist is each stage's own fact (an LLC reserver's CPU
//! locks, a git source's mirror locks, a cache's entry locks), so stages
//! list them through their `locks()` hook (on [`SourceAcquirer`],
//! [`Reserver`] and [`CacheBackend`]; empty by default, which is also what
//! a plugin library gets). The host adds its own build and tree locks and
//! knows no plugin's file names. Lock files of one family share a
//! directory and a name prefix, `<prefix><id>.lock`; [`list_dir`] reads
//! such a family.
//!
//! [`SourceAcquirer`]: crate::source::SourceAcquirer
//! [`Reserver`]: crate::reserve::Reserver
//! [`CacheBackend`]: crate::cache::CacheBackend

use std::path::{Path, PathBuf};

use crate::lock::{self, Holder};

/// A lock description read from a file is cut off beyond this.
const DESCRIPTION_LIMIT: u64 = 4 << 10;

/// One lock file and who holds or waits for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockInfo {
    /// What kind of lock: `llc`, `mirror`, `entry`, ...
    pub kind: String,
    /// Key, LLC id or hash from the file name.
    pub id: String,
    /// What the file says it guards (tree path, CPUs), if anything.
    pub guards: String,
    pub path: PathBuf,
    pub holders: Vec<Holder>,
}

/// Every `<prefix><id>.lock` in `dir` as a lock of `kind`, unsorted. A
/// directory that cannot be read lists nothing.
pub fn list_dir(dir: &Path, kind: &str, prefix: &str) -> Vec<LockInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .and_then(|n| n.strip_prefix(prefix))
        else {
            continue;
        };
        let path = entry.path();
        out.push(LockInfo {
            kind: kind.to_string(),
            id: id.to_string(),
            guards: description(&path),
            holders: lock::holders(&path),
            path,
        });
    }
    out
}

/// The first line of a lock file: what it guards. A lock file replaced by
/// a FIFO or a huge file must not hang or bloat the listing.
fn description(path: &Path) -> String {
    crate::fsread::read_text(
        path,
        "lock file",
        DESCRIPTION_LIMIT,
        crate::fsread::Follow::No,
    )
    .ok()
    .and_then(|t| t.lines().next().map(str::to_string))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_one_family_with_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("llc-2.lock"), "cpus 4-7\nmore\n").unwrap();
        std::fs::write(d.join("llc-10.lock"), "").unwrap();
        std::fs::write(d.join("source-ab.lock"), "").unwrap();
        std::fs::write(d.join("llc-3.txt"), "").unwrap();
        let mut got = list_dir(d, "llc", "llc-");
        got.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<_> = got
            .iter()
            .map(|l| (l.kind.as_str(), l.id.as_str(), l.guards.as_str()))
            .collect();
        assert_eq!(ids, [("llc", "10", ""), ("llc", "2", "cpus 4-7")]);
        assert!(got.iter().all(|l| l.holders.is_empty()));
        assert!(list_dir(&d.join("missing"), "llc", "llc-").is_empty());
    }
}
