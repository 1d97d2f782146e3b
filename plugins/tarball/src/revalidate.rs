//! Conditional re-validation of a tarball URL given without a digest.
//!
//! Such a URL's identity is its content, which the server may change at any
//! time, so every run must ask. Asking need not cost a download: each
//! verified HTTP download remembers the URL's validators (`ETag`,
//! `Last-Modified`) with the content's sha256, and the next resolve sends
//! them as `If-None-Match` / `If-Modified-Since`. A `304 Not Modified`
//! (or a `200` naming the same strong `ETag`, from a server that ignores
//! conditions) means the content is the one remembered: the URL resolves to
//! `URL#sha256=<digest>`, keyable before anything is fetched, and a cache
//! hit transfers no body at all. Anything else (a changed file, a server
//! without validators, an error) resolves as before: download, then key.
//!
//! Weak ETags (`W/"..."`) are not sent: they promise equivalent content,
//! not the same bytes, and the digest names bytes. A memo that lies (a
//! server answering 304 for changed content) is caught by the digest check
//! of the next download, which forgets it.

use std::path::{Path, PathBuf};

use ktstr_sdk::paths;
use ktstr_sdk::prelude::*;
use reqwest::header::{ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};

/// What a response said about its content's version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// A strong `ETag` (weak ones are dropped, see the module doc).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(str::to_string)
        };
        Self {
            etag: text(ETAG).filter(|e| e.starts_with('"')),
            last_modified: text(LAST_MODIFIED),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// One URL's memo: its validators when its content had this digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Memo {
    url: String,
    sha256: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// A memo is a URL and a few short headers.
const MEMO_LIMIT: u64 = 16 << 10;

fn memo_path(root: &Path, url: &str) -> PathBuf {
    let name = ktstr_sdk::hash::sha256_hex(url.as_bytes());
    paths::plugin_state(root, crate::NAME)
        .join("urls")
        .join(format!("{name}.json"))
}

fn recall(root: &Path, url: &str) -> Option<Memo> {
    use ktstr_sdk::fsread::{Follow, read_optional};
    let file = memo_path(root, url);
    let bytes = match read_optional(&file, "tarball URL memo", MEMO_LIMIT, Follow::No) {
        Ok(bytes) => bytes?,
        Err(e) => {
            tracing::warn!("ignoring {e}");
            return None;
        }
    };
    let memo: Memo = serde_json::from_slice(&bytes).ok()?;
    let usable = memo.url == url
        && ktstr_sdk::hash::is_sha256_hex(&memo.sha256)
        && (memo.etag.is_some() || memo.last_modified.is_some());
    usable.then_some(memo)
}

/// Remember that `url` served content `sha256` with `validators`
/// (atomically; failures only log: they cost a download next time).
pub fn remember(root: &Path, url: &str, sha256: &str, validators: &Validators) {
    if validators.is_empty() {
        forget(root, url);
        return;
    }
    let memo = Memo {
        url: url.to_string(),
        sha256: sha256.to_string(),
        etag: validators.etag.clone(),
        last_modified: validators.last_modified.clone(),
    };
    let dest = memo_path(root, url);
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let written = serde_json::to_vec(&memo)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            dest.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, json))
        })
        .and_then(|()| std::fs::rename(&tmp, &dest));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("cannot remember the validators of {url}: {e}");
    }
}

/// Drop `url`'s memo (its content is no longer the remembered one).
pub fn forget(root: &Path, url: &str) {
    let _ = std::fs::remove_file(memo_path(root, url));
}

/// The digest of `url`'s content when the server confirms it is unchanged
/// since it was remembered; `None` when it changed, cannot tell, or
/// cannot be asked (one attempt: the download that follows retries and
/// reports errors).
pub fn unchanged(
    client: &reqwest::blocking::Client,
    root: &Path,
    url: &str,
    cx: &StageContext,
) -> Option<String> {
    let memo = recall(root, url)?;
    if cx.cancel.is_cancelled() {
        return None;
    }
    let mut request = client.get(url);
    if let Some(etag) = &memo.etag {
        request = request.header(IF_NONE_MATCH, etag);
    }
    if let Some(date) = &memo.last_modified {
        request = request.header(IF_MODIFIED_SINCE, date);
    }
    let response = match request.send() {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("cannot revalidate {url}: {}", crate::fetch::error_chain(&e));
            return None;
        }
    };
    let status = response.status();
    let same = if status == reqwest::StatusCode::NOT_MODIFIED {
        true
    } else if status.is_success() {
        // A server that ignores the condition, but whose strong ETag
        // still names the remembered bytes. The body is not read.
        let now = Validators::from_headers(response.headers());
        memo.etag.is_some() && now.etag == memo.etag
    } else {
        false
    };
    tracing::debug!("revalidating {url}: HTTP {status}, unchanged: {same}");
    if same {
        cx.progress.note(&format!(
            "{url}: unchanged since it was downloaded (HTTP {}); sha256 {}",
            status.as_u16(),
            ktstr_sdk::source::short_id(&memo.sha256)
        ));
    }
    same.then_some(memo.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validators(etag: Option<&str>, lm: Option<&str>) -> Validators {
        Validators {
            etag: etag.map(str::to_string),
            last_modified: lm.map(str::to_string),
        }
    }

    #[test]
    fn memo_round_trip_and_damage() {
        let root = tempfile::tempdir().unwrap();
        let url = "http://mirror.example/k.tar.xz";
        let sha = "b".repeat(64);
        assert_eq!(recall(root.path(), url), None);
        remember(root.path(), url, &sha, &validators(Some("\"v1\""), None));
        let memo = recall(root.path(), url).unwrap();
        assert_eq!(
            (memo.sha256.as_str(), memo.etag.as_deref()),
            (sha.as_str(), Some("\"v1\""))
        );
        // Another URL never reads this one's memo.
        assert_eq!(
            recall(root.path(), "http://mirror.example/other.tar.xz"),
            None
        );
        // A response without validators forgets the URL.
        remember(root.path(), url, &sha, &Validators::default());
        assert_eq!(recall(root.path(), url), None);
        // Garbage, a memo for another URL, a bad digest: ignored.
        remember(
            root.path(),
            url,
            &sha,
            &validators(None, Some("Tue, 01 Dec 2026 00:00:00 GMT")),
        );
        let file = memo_path(root.path(), url);
        std::fs::write(&file, "{not json").unwrap();
        assert_eq!(recall(root.path(), url), None);
        std::fs::write(
            &file,
            r#"{"url":"http://evil/x","sha256":"bbbb","etag":"\"v1\"","last_modified":null}"#,
        )
        .unwrap();
        assert_eq!(recall(root.path(), url), None);
        std::fs::remove_file(&file).unwrap();
        nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(recall(root.path(), url), None, "a FIFO is never read");
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, "W/\"abc\"".parse().unwrap());
        assert_eq!(Validators::from_headers(&h), Validators::default());
        h.insert(ETAG, "\"abc\"".parse().unwrap());
        h.insert(
            LAST_MODIFIED,
            "Tue, 01 Dec 2026 00:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            Validators::from_headers(&h),
            validators(Some("\"abc\""), Some("Tue, 01 Dec 2026 00:00:00 GMT"))
        );
    }
}
