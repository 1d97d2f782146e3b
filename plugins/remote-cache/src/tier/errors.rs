//! How the tier words failures: a failed request as one line with the
//! right kind and hint, a missing bucket, a damaged entry, a refused write.
//!
//! object_store's errors nest the same text several levels deep; the host
//! prints one warning line per failed tier, so everything is condensed
//! here and the full chain goes to the debug log.

use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::error::{ErrorKind, Result, StageError};
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;

use super::RemoteTier;

/// One line for a failed request. object_store nests the same text several
/// levels deep (and appends HTML/XML error bodies); the innermost cause plus
/// the S3 error code says it all, and the full chain goes to the debug log.
pub(super) fn summarize(e: &object_store::Error) -> String {
    let mut innermost = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        innermost = c.to_string();
        cur = c.source();
    }
    let code = innermost
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string());
    let mut line: String = innermost
        .split(['<', '\r', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches(':')
        .chars()
        .take(200)
        .collect();
    if let Some(code) = code {
        line.push_str(&format!(" ({code})"));
    }
    if let Some(retries) = e
        .to_string()
        .split_once(", after ")
        .and_then(|(_, r)| r.split_once(" retries"))
        .map(|(n, _)| n.to_string())
        .filter(|n| n != "0")
    {
        line.push_str(&format!(", after {retries} retries"));
    }
    line
}

impl RemoteTier {
    /// A failed request, worded for the host's one-line warning.
    pub(super) fn request_error(
        &self,
        action: &str,
        object: &ObjPath,
        e: object_store::Error,
    ) -> StageError {
        if let Some(bucket) = self.missing_bucket(&e) {
            tracing::debug!("{}: {action} {}: {e:?}", self.plugin, self.url_of(object));
            return StageError::not_found(format!(
                "bucket {bucket} does not exist ({})",
                self.endpoint_words()
            ))
            .with_hint(format!(
                "check the bucket name (bucket in [plugin.{}], {}BUCKET) and the endpoint and \
                 region; create the bucket if this cache is new",
                self.plugin, self.opts.env_prefix
            ));
        }
        let (kind, hint) = match &e {
            object_store::Error::NotFound { .. } => (ErrorKind::NotFound, None),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                (ErrorKind::InvalidInput, Some(self.opts.auth_hint.clone()))
            }
            _ => (
                ErrorKind::Io,
                Some(format!(
                    "is the server reachable? timeouts and retries are set by connect_timeout, \
                     read_timeout, request_timeout and retries ({}CONNECT_TIMEOUT, ...)",
                    self.opts.env_prefix
                )),
            ),
        };
        tracing::debug!("{}: {action} {}: {e:?}", self.plugin, self.url_of(object));
        let mut err = StageError::new(kind, format!("{action} {} failed", self.url_of(object)));
        err.causes.push(summarize(&e));
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }

    /// The bucket named in `location`, when `e` says it does not exist
    /// (S3's `NoSuchBucket`, which object_store reports as a plain 404).
    pub(super) fn missing_bucket(&self, e: &object_store::Error) -> Option<String> {
        let bucket = self.location.strip_prefix("s3://")?.split('/').next()?;
        let mut text = e.to_string();
        let mut cur = std::error::Error::source(e);
        while let Some(c) = cur {
            text.push_str(&c.to_string());
            cur = c.source();
        }
        text.contains("NoSuchBucket").then(|| bucket.to_string())
    }

    /// On the first miss or push of an S3 tier, make sure the bucket exists:
    /// AWS answers a GET in a missing bucket with `NoSuchBucket`,
    /// but some servers (s3s-fs, ...) say `NoSuchKey`, which would make a
    /// misspelt bucket a silent miss forever. One LIST per run; any answer
    /// but `NoSuchBucket` (a read-only key without ListBucket gets 403) is
    /// ignored.
    pub(super) async fn check_bucket_once(&self) -> Result<()> {
        if !self.location.starts_with("s3://") {
            return Ok(());
        }
        if let Some(known) = self.bucket_check.get() {
            return known.clone().map_or(Ok(()), Err);
        }
        let verdict = match self.store.list_with_delimiter(Some(&self.root)).await {
            Err(e) if self.missing_bucket(&e).is_some() => {
                Some(self.request_error("list", &self.root, e))
            }
            Err(e) => {
                tracing::debug!("{}: bucket check: {e}", self.plugin);
                None
            }
            Ok(_) => None,
        };
        let _ = self.bucket_check.set(verdict.clone());
        verdict.map_or(Ok(()), Err)
    }

    /// "AWS" or "at http://host:port", for messages about the server.
    pub(super) fn endpoint_words(&self) -> String {
        if self.detail.is_empty() {
            self.location.clone()
        } else {
            self.detail.split(", ").next().unwrap_or("").to_string()
        }
    }

    pub(super) fn corrupt(&self, key: &CacheKey, reason: impl std::fmt::Display) -> StageError {
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        StageError::corrupt(format!(
            "{} entry {key} at {}: {reason}",
            self.plugin, self.location
        ))
        .with_hint(if self.opts.read_only {
            "ask whoever maintains the remote cache to remove or re-push the entry".to_string()
        } else {
            format!(
                "the next successful build of {key} replaces it; `ktstr cache push {key}` does so now"
            )
        })
    }
}
