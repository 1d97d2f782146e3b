//! Built-in remote cache tiers: `s3-cache` (S3-compatible object stores)
//! and `http-cache` (HTTP/WebDAV servers that accept PUT).
//!
//! A team or CI fleet shares built kernels through a store it already runs:
//! the first machine builds and pushes, every other machine pulls in
//! seconds. The local cache stays first and authoritative; the host asks
//! these tiers only on a local miss, copies a hit into the local cache, and
//! pushes every stored build to each writable tier. Any failure here is a
//! warning for the host, never a failed build, so everything is bounded by
//! timeouts and retries and every fetched byte is verified (see [`format`]).
//!
//! Both tiers share one entry format and one [`tier::RemoteTier`]; they
//! differ only in the client ([`s3`], [`http`]) and the settings
//! ([`settings`]). See `docs/remote-cache.md` for users' documentation.

pub mod format;
pub mod http;
pub mod s3;
pub mod settings;
pub mod tier;

use ktstr_sdk::error::Result;
use ktstr_sdk::registry::{BuiltinPlugin, Constructor, PluginConfig};

pub use settings::{HttpSettings, S3Settings};
pub use tier::{RemoteTier, TierOptions};

/// Registered name of the S3 tier.
pub const S3_PLUGIN: &str = "s3-cache";
/// Registered name of the HTTP tier.
pub const HTTP_PLUGIN: &str = "http-cache";

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: S3_PLUGIN,
        version: env!("CARGO_PKG_VERSION"),
        summary: "remote tier on an S3-compatible object store (AWS, MinIO, Ceph, Garage, R2)",
        constructor: Constructor::Cache(|cfg| Ok(s3_tier(cfg)?.into_backend())),
    }
}

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: HTTP_PLUGIN,
        version: env!("CARGO_PKG_VERSION"),
        summary: "remote tier on an HTTP/WebDAV server that accepts PUT (nginx, Apache)",
        constructor: Constructor::Cache(|cfg| Ok(http_tier(cfg)?.into_backend())),
    }
}

/// `s3-cache` from its config table and the process environment.
pub fn s3_tier(cfg: &PluginConfig) -> Result<RemoteTier> {
    s3_tier_with_env(cfg, &ktstr_sdk::paths::env_nonempty)
}

/// `s3-cache` from its config table and `env` (tests inject one; the
/// AWS_* variables object_store reads itself still come from the process).
pub fn s3_tier_with_env(
    cfg: &PluginConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RemoteTier> {
    let s = S3Settings::from_sources(cfg, env)?;
    let scratch_dir = settings::scratch_dir(
        S3_PLUGIN,
        settings::S3_ENV_PREFIX,
        settings::S3_KEYS,
        cfg,
        env,
    )?;
    let (store, creds) = s3::build(&s, env)?;
    let location = if s.prefix.is_empty() {
        format!("s3://{}", s.bucket)
    } else {
        format!("s3://{}/{}", s.bucket, s.prefix)
    };
    let mut detail = s
        .endpoint
        .clone()
        .map_or_else(|| "AWS".to_string(), |e| format!("at {e}"));
    match &creds {
        s3::CredentialSource::Anonymous => detail.push_str(", anonymous"),
        s3::CredentialSource::Profile { profile, .. } => {
            detail.push_str(&format!(", profile {profile}"))
        }
        s3::CredentialSource::Chain => {}
    }
    let auth_hint = format!(
        "check that the credentials ({}) may read{} bucket {}; for a public cache set anonymous = true (KTSTR_S3_ANONYMOUS=1)",
        match &creds {
            s3::CredentialSource::Anonymous => "none: anonymous = true".to_string(),
            s3::CredentialSource::Profile { profile, file } =>
                format!("profile {profile} in {}", file.display()),
            s3::CredentialSource::Chain =>
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity or instance role".to_string(),
        },
        if s.common.read_only { "" } else { " and write" },
        s.bucket
    );
    RemoteTier::new(
        S3_PLUGIN,
        location,
        detail,
        Box::new(store),
        &s.prefix,
        TierOptions {
            read_only: s.common.read_only,
            require_verified: s.common.require_verified,
            max_entry_size: s.common.max_entry_size,
            compression_level: s.common.compression_level,
            multipart: Some((s.part_size, s.concurrency)),
            scratch_dir,
            env_prefix: settings::S3_ENV_PREFIX,
            auth_hint,
            leases: s.leases.map(|timings| tier::LeaseOptions {
                timings,
                settle: s.lease_settle,
            }),
        },
    )
}

/// `http-cache` from its config table and the process environment.
pub fn http_tier(cfg: &PluginConfig) -> Result<RemoteTier> {
    http_tier_with_env(cfg, &ktstr_sdk::paths::env_nonempty)
}

/// `http-cache` from its config table and `env`.
pub fn http_tier_with_env(
    cfg: &PluginConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RemoteTier> {
    let s = HttpSettings::from_sources(cfg, env)?;
    let scratch_dir = settings::scratch_dir(
        HTTP_PLUGIN,
        settings::HTTP_ENV_PREFIX,
        settings::HTTP_KEYS,
        cfg,
        env,
    )?;
    let store = http::build(&s, env)?;
    let location = if s.prefix.is_empty() {
        s.url.clone()
    } else {
        format!("{}/{}", s.url, s.prefix)
    };
    RemoteTier::new(
        HTTP_PLUGIN,
        location,
        String::new(),
        Box::new(store),
        &s.prefix,
        TierOptions {
            read_only: s.common.read_only,
            require_verified: s.common.require_verified,
            max_entry_size: s.common.max_entry_size,
            compression_level: s.common.compression_level,
            multipart: None,
            scratch_dir,
            env_prefix: settings::HTTP_ENV_PREFIX,
            auth_hint: format!(
                "the server refused the request: set {} or {} + {} if it needs credentials, \
                 and check it allows PUT and DELETE for writers",
                http::TOKEN_ENV,
                http::USER_ENV,
                http::PASSWORD_ENV
            ),
            // object_store's HTTP client refuses conditional PUTs, and nginx's
            // WebDAV ignores If-None-Match on PUT: no atomic create, no leases.
            leases: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tiers_are_registered() {
        let names: Vec<_> = ktstr_sdk::registry::builtins()
            .into_iter()
            .filter(|p| matches!(p.constructor, Constructor::Cache(_)))
            .map(|p| p.name)
            .collect();
        assert!(names.contains(&S3_PLUGIN), "{names:?}");
        assert!(names.contains(&HTTP_PLUGIN), "{names:?}");
    }

    #[test]
    fn construction_does_no_io_and_reports_capabilities() {
        use ktstr_sdk::cache::CacheBackend;
        let none = |_: &str| None;
        let t = s3_tier_with_env(
            &serde_json::json!({
                "bucket": "kernels",
                "endpoint": "http://127.0.0.1:1",
                "read_only": true,
                "anonymous": true,
            }),
            &none,
        )
        .unwrap();
        assert_eq!(
            t.capabilities(),
            ktstr_sdk::cache::Capabilities { read_only: true }
        );
        assert_eq!(
            t.describe(),
            "s3-cache s3://kernels/ktstr (at http://127.0.0.1:1, anonymous), read-only"
        );
        let h =
            http_tier_with_env(&serde_json::json!({"url": "http://127.0.0.1:1/c"}), &none).unwrap();
        assert_eq!(h.describe(), "http-cache http://127.0.0.1:1/c");
        assert!(!h.capabilities().read_only);
    }
}
