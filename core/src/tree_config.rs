//! What ktstr last configured each local tree for.
//!
//! A local tree's `.config` is built upon when it already carries every
//! requested line: kernel developers keep their own options there. But a
//! `.config` that ktstr itself produced for *another* profile or other
//! fragments must not leak into this request (a `default` config satisfies
//! every `tiny` line; a fragment's extra symbols would stay on forever).
//! So after configuring, ktstr records the `.config` digest and the
//! request's identity under the cache root; a later request that finds
//! exactly that `.config` but asks for something else starts from the
//! profile's base target. A `.config` the user edited since no longer
//! matches the record and is treated as the user's own again.

use std::path::Path;

use ktstr_sdk::cache::KeyComponent;
use ktstr_sdk::error::IoResultExt;
use ktstr_sdk::{Result, paths};

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Record {
    config_sha256: String,
    request: String,
}

/// A record is two digests; anything much larger is not one.
const RECORD_LIMIT: u64 = 4 << 10;

/// One string for a configure request's identity components.
fn request_id(declared: &[KeyComponent]) -> String {
    let joined: String = declared
        .iter()
        .map(|c| format!("{}={}\n", c.name, c.value))
        .collect();
    ktstr_sdk::hash::sha256_hex(joined.as_bytes())
}

/// True when `config_sha256` is ktstr's own output for a different request.
pub fn is_leftover(
    root: &Path,
    tree: &Path,
    config_sha256: &str,
    declared: &[KeyComponent],
) -> bool {
    use ktstr_sdk::fsread::{Follow, read_optional};
    let path = paths::tree_record(root, tree);
    let text = match read_optional(&path, "tree config record", RECORD_LIMIT, Follow::No) {
        Ok(Some(text)) => text,
        Ok(None) => return false,
        Err(e) => {
            // Not ours any more (replaced by a FIFO, a directory, a huge
            // file): the `.config` is treated as the user's, which is safe.
            tracing::warn!("ignoring {e}");
            return false;
        }
    };
    let Ok(record) = serde_json::from_slice::<Record>(&text) else {
        return false;
    };
    record.config_sha256 == config_sha256 && record.request != request_id(declared)
}

/// Remember that `tree/.config` (digest `config_sha256`) is ktstr's output
/// for `declared`. Written atomically; a failure only costs a reset later.
pub fn record(
    root: &Path,
    tree: &Path,
    config_sha256: &str,
    declared: &[KeyComponent],
) -> Result<()> {
    let path = paths::tree_record(root, tree);
    let dir = path.parent().expect("record path has a parent");
    std::fs::create_dir_all(dir).at("create", dir)?;
    let body = serde_json::to_string(&Record {
        config_sha256: config_sha256.to_string(),
        request: request_id(declared),
    })
    .expect("record serializes");
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, body).at("write", &tmp)?;
    std::fs::rename(&tmp, &path).at("rename into place", &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(profile: &str) -> Vec<KeyComponent> {
        vec![KeyComponent::new("profile", profile)]
    }

    #[test]
    fn leftover_only_for_our_config_and_another_request() {
        let root = tempfile::tempdir().unwrap();
        let tree = Path::new("/src/linux");
        assert!(
            !is_leftover(root.path(), tree, "aa", &req("tiny")),
            "no record: the user's"
        );
        record(root.path(), tree, "aa", &req("default")).unwrap();
        assert!(is_leftover(root.path(), tree, "aa", &req("tiny")));
        assert!(
            !is_leftover(root.path(), tree, "aa", &req("default")),
            "same request"
        );
        assert!(
            !is_leftover(root.path(), tree, "bb", &req("tiny")),
            "edited since: the user's"
        );
        // A record replaced by a FIFO or a directory is ignored at once.
        let path = paths::tree_record(root.path(), tree);
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(!is_leftover(root.path(), tree, "aa", &req("tiny")));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(!is_leftover(root.path(), tree, "aa", &req("tiny")));
        assert!(!is_leftover(
            root.path(),
            Path::new("/src/other"),
            "aa",
            &req("tiny")
        ));
    }
}
