//! `s3-cache`: the remote tier over any S3-compatible object store.
//!
//! Request signing (SigV4), multipart uploads, retries and the AWS
//! credential chain come from the `object_store` crate; this module only
//! turns [`S3Settings`] into a configured client.
//!
//! Credentials, in order (the AWS SDK's order, so a machine already set up
//! for the `aws` CLI works unchanged):
//! 1. `anonymous = true`: unsigned requests, no credentials at all.
//! 2. An explicit `profile` setting: that profile of the shared credentials
//!    file, or an error if it is not there.
//! 3. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
//! 4. The shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), profile `AWS_PROFILE` or `default`. object_store
//!    does not read this file, so it is parsed here (static keys only; SSO
//!    and `credential_process` profiles are not supported).
//! 5. object_store's chain: web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
//!    `AWS_ROLE_ARN`), ECS/EKS container credentials, then EC2 instance
//!    metadata (IMDSv2; 1 s connect timeout when not on EC2).
//!
//! Secrets never reach a log line or an error: [`ProfileCredentials`] has a
//! redacting `Debug`, object_store's own credential types redact, and the
//! tier's `Debug` does not print the client.

use std::path::PathBuf;
use std::sync::Arc;

use ktstr_sdk::error::{Result, StageError};
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::{ClientOptions, RetryConfig, StaticCredentialProvider};

use crate::settings::{Common, S3_ENV_PREFIX, S3Settings, env_name};

/// Static keys read from a shared credentials file.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for ProfileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `[profile]` section of an AWS shared credentials file (INI).
/// `None` when the profile is absent or lacks a key pair.
pub fn parse_credentials_file(text: &str, profile: &str) -> Option<ProfileCredentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            // ~/.aws/config spells sections `[profile name]`; accept both.
            let name = section.strip_prefix("profile ").unwrap_or(section).trim();
            in_profile = name == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(ProfileCredentials {
        access_key_id: id.filter(|s| !s.is_empty())?,
        secret_access_key: secret.filter(|s| !s.is_empty())?,
        session_token: token.filter(|s| !s.is_empty()),
    })
}

/// Where the credentials came from, for `describe()` and debugging
/// (never the credentials themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Anonymous,
    Profile {
        profile: String,
        file: PathBuf,
    },
    /// object_store's chain: env keys, web identity, container, IMDS.
    Chain,
}

/// Decide on the credentials (see the module docs for the order).
pub fn resolve_credentials(
    s: &S3Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(CredentialSource, Option<ProfileCredentials>)> {
    if s.anonymous {
        return Ok((CredentialSource::Anonymous, None));
    }
    let file = s
        .credentials_file
        .clone()
        .or_else(|| env("AWS_SHARED_CREDENTIALS_FILE"))
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    if let Some(profile) = &s.profile {
        let Some(file) = file else {
            return Err(StageError::invalid_input(format!(
                "plugin s3-cache: profile {profile:?} is set but there is no credentials file (HOME is unset)"
            ))
            .with_hint("set credentials_file or AWS_SHARED_CREDENTIALS_FILE"));
        };
        let text = read_credentials(&file).map_err(|e| {
            e.context(format!(
                "plugin s3-cache: profile {profile:?} ({})",
                env_name(S3_ENV_PREFIX, "profile")
            ))
        })?;
        return match parse_credentials_file(&text, profile) {
            Some(c) => Ok((
                CredentialSource::Profile {
                    profile: profile.clone(),
                    file,
                },
                Some(c),
            )),
            None => Err(StageError::invalid_input(format!(
                "plugin s3-cache: profile {profile:?} has no aws_access_key_id and aws_secret_access_key in {}",
                file.display()
            ))
            .with_hint("add the keys to that profile, or pick another with `profile` / KTSTR_S3_PROFILE")),
        };
    }
    if env("AWS_ACCESS_KEY_ID").is_some() {
        return Ok((CredentialSource::Chain, None));
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    if let Some(file) = file
        && let Ok(text) = read_credentials(&file)
        && let Some(c) = parse_credentials_file(&text, &profile)
    {
        return Ok((CredentialSource::Profile { profile, file }, Some(c)));
    }
    Ok((CredentialSource::Chain, None))
}

/// A credentials file: a regular file (symlinks followed) of at most 1 MiB,
/// so a FIFO or a device there fails at once instead of hanging.
fn read_credentials(file: &std::path::Path) -> ktstr_sdk::Result<String> {
    ktstr_sdk::fsread::read_text(
        file,
        "credentials file",
        ktstr_sdk::fsread::SMALL_FILE_LIMIT,
        ktstr_sdk::fsread::Follow::Yes,
    )
}

/// Timeouts and retries shared with http-cache.
pub(crate) fn client_options(c: &Common, allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(c.connect_timeout)
        .with_read_timeout(c.read_timeout)
        .with_timeout(c.request_timeout)
        .with_user_agent(object_store::HeaderValue::from_static(concat!(
            "ktstr/",
            env!("CARGO_PKG_VERSION")
        )))
}

pub(crate) fn retry_config(c: &Common) -> RetryConfig {
    let mut r = RetryConfig {
        max_retries: c.retries,
        retry_timeout: c.retry_timeout,
        ..RetryConfig::default()
    };
    r.backoff.init_backoff = std::time::Duration::from_millis(100);
    r.backoff.max_backoff = std::time::Duration::from_secs(5);
    r
}

/// `https://bucket.host:port` from `https://host:port`.
fn virtual_host_endpoint(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// The configured client, and where its credentials come from.
pub(crate) fn build(
    s: &S3Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(object_store::aws::AmazonS3, CredentialSource)> {
    let (source, creds) = resolve_credentials(s, env)?;
    // from_env picks up AWS_* (endpoint, region, web identity, container
    // credentials...); explicit settings below override it.
    let mut b = AmazonS3Builder::from_env().with_bucket_name(&s.bucket);
    let region = s
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    b = b.with_region(region);
    let allow_http = s
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    if let Some(endpoint) = &s.endpoint {
        if s.path_style {
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        } else {
            b = b
                .with_endpoint(virtual_host_endpoint(endpoint, &s.bucket))
                .with_virtual_hosted_style_request(true);
        }
    } else {
        b = b.with_virtual_hosted_style_request(!s.path_style);
    }
    b = b
        .with_client_options(client_options(&s.common, allow_http))
        .with_retry(retry_config(&s.common));
    if s.anonymous {
        b = b.with_skip_signature(true);
    } else if let Some(c) = creds {
        b = b.with_credentials(Arc::new(StaticCredentialProvider::new(AwsCredential {
            key_id: c.access_key_id,
            secret_key: c.secret_access_key,
            token: c.session_token,
        })));
    }
    let store = b.build().map_err(|e| {
        StageError::invalid_input(format!(
            "plugin s3-cache: cannot set up the client for bucket {}",
            s.bucket
        ))
        .caused_by(e)
        .with_hint("check endpoint, bucket and region (KTSTR_S3_ENDPOINT, KTSTR_S3_BUCKET, KTSTR_S3_REGION)")
    })?;
    Ok((store, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[default]
aws_access_key_id = AKDEFAULT
aws_secret_access_key = sdefault

[profile ci]
aws_access_key_id=AKCI
aws_secret_access_key=SECRETCI
aws_session_token = TOKENCI

[broken]
aws_access_key_id = AKONLY
";

    #[test]
    fn credentials_file_profiles() {
        let d = parse_credentials_file(FILE, "default").unwrap();
        assert_eq!(d.access_key_id, "AKDEFAULT");
        assert_eq!(d.secret_access_key, "sdefault");
        assert_eq!(d.session_token, None);
        let ci = parse_credentials_file(FILE, "ci").unwrap();
        assert_eq!(ci.session_token.as_deref(), Some("TOKENCI"));
        assert!(parse_credentials_file(FILE, "broken").is_none());
        assert!(parse_credentials_file(FILE, "absent").is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let ci = parse_credentials_file(FILE, "ci").unwrap();
        let dbg = format!("{ci:?}");
        assert!(
            !dbg.contains("SECRETCI") && !dbg.contains("TOKENCI"),
            "{dbg}"
        );
        assert!(dbg.contains("AKCI"));
    }

    #[test]
    fn explicit_profile_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, FILE).unwrap();
        let cfg = serde_json::json!({
            "bucket": "b",
            "credentials_file": path,
            "profile": "nope",
        });
        let no_env = |_: &str| None;
        let s = S3Settings::from_sources(&cfg, &no_env).unwrap();
        let err = resolve_credentials(&s, &no_env).unwrap_err();
        assert!(err.message.contains("profile \"nope\""), "{err}");
        assert!(!err.to_string().contains("sdefault"));

        let cfg = serde_json::json!({"bucket": "b", "credentials_file": path});
        let s = S3Settings::from_sources(&cfg, &no_env).unwrap();
        let (src, creds) = resolve_credentials(&s, &no_env).unwrap();
        assert!(matches!(src, CredentialSource::Profile { profile, .. } if profile == "default"));
        assert_eq!(creds.unwrap().access_key_id, "AKDEFAULT");

        // Env keys win over the file's default profile.
        let with_keys = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "AKENV".to_string());
        let (src, creds) = resolve_credentials(&s, &with_keys).unwrap();
        assert_eq!(src, CredentialSource::Chain);
        assert!(creds.is_none());
    }

    #[test]
    fn virtual_host() {
        assert_eq!(
            virtual_host_endpoint("https://s3.example:9000", "kb"),
            "https://kb.s3.example:9000"
        );
    }
}
