//! Settings of the remote tiers: the plugin's config table, overridden by
//! `KTSTR_S3_*` / `KTSTR_HTTP_CACHE_*` environment variables.
//!
//! Every setting has one config key and one environment variable, named
//! mechanically (`part_size` ↔ `KTSTR_S3_PART_SIZE`), so the docs, the
//! error messages and the code cannot drift apart; the SDK's
//! [`ConfigReader`] reads them (the environment wins, an empty variable
//! counts as unset).
//!
//! Credentials are deliberately *not* settings: a config file is often
//! committed or shared, so secrets come only from the standard AWS sources
//! (see [`crate::s3`]) or, for http-cache, from environment variables.

use std::time::Duration;

use ktstr_sdk::config::{ConfigReader, Env};
pub use ktstr_sdk::config::{Setting, env_name};
use ktstr_sdk::error::Result;
use ktstr_sdk::lease::LeaseTimings;
use ktstr_sdk::paths::env_nonempty;
use ktstr_sdk::registry::PluginConfig;

/// Limits and tuning shared by both tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub read_only: bool,
    /// Serve only entries whose recorded boot check passed; any other
    /// entry is a miss (with a note), not an error.
    pub require_verified: bool,
    pub connect_timeout: Duration,
    /// Longest silence on an open connection (a stalled server).
    pub read_timeout: Duration,
    /// Longest single request, transfer included.
    pub request_timeout: Duration,
    /// Retries after the first attempt for 5xx, throttling and timeouts.
    pub retries: usize,
    /// No retry starts after this long since the first attempt.
    pub retry_timeout: Duration,
    /// Largest unpacked entry (and largest archive) accepted on fetch.
    pub max_entry_size: u64,
    /// zstd level for uploads.
    pub compression_level: i32,
}

impl Common {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
    pub const DEFAULT_RETRIES: usize = 3;
    pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 4 << 30;
    pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
}

/// Settings of `s3-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http(s)://host[:port]`; `None` means AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Object-name prefix inside the bucket (no leading/trailing `/`).
    pub prefix: String,
    pub region: Option<String>,
    /// `https://endpoint/bucket/...` rather than `https://bucket.endpoint/...`.
    pub path_style: bool,
    /// Send unsigned requests (public-read buckets); no credentials needed.
    pub anonymous: bool,
    /// Profile in the shared credentials file (`None`: `AWS_PROFILE`/default).
    pub profile: Option<String>,
    /// Shared credentials file (`None`: `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`).
    pub credentials_file: Option<String>,
    pub part_size: u64,
    pub concurrency: usize,
    /// Build leases (fleet single-flight); `None` when `leases = false`.
    pub leases: Option<LeaseTimings>,
    /// How long after a lease write it is read back (`lease_settle`).
    pub lease_settle: Duration,
    pub common: Common,
}

impl S3Settings {
    pub const DEFAULT_PREFIX: &'static str = "ktstr";
    /// S3's smallest allowed part (except the last one).
    pub const MIN_PART_SIZE: u64 = 5 << 20;
    pub const MAX_PART_SIZE: u64 = 5 << 30;
    pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
    pub const DEFAULT_CONCURRENCY: usize = 4;
    /// `lease_settle`: on s3s-fs a racing writer's check-then-write takes
    /// milliseconds; 250 ms covers it on a loaded machine.
    pub const DEFAULT_LEASE_SETTLE: Duration = Duration::from_millis(250);
    /// Longest `lease_settle`: every lease write waits this long.
    pub const MAX_LEASE_SETTLE: Duration = Duration::from_secs(10);
}

/// Settings of `http-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Base URL; entries live below it.
    pub url: String,
    pub prefix: String,
    pub common: Common,
}

macro_rules! settings {
    ($name:ident, [$($key:literal => $help:literal),* $(,)?]) => {
        pub const $name: &[Setting] = &[
            $(Setting { key: $key, help: $help },)*
        ];
    };
}

settings!(S3_KEYS, [
    "endpoint" => "S3 endpoint URL (http://host:port); unset means AWS",
    "bucket" => "bucket name (required)",
    "prefix" => "object-name prefix inside the bucket (default ktstr)",
    "region" => "region (default AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)",
    "path_style" => "true: endpoint/bucket/key URLs; false: bucket.endpoint/key (default true)",
    "anonymous" => "send unsigned requests, for public-read buckets (default false)",
    "profile" => "profile in the shared credentials file (default AWS_PROFILE, else default)",
    "credentials_file" => "shared credentials file (default AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials)",
    "read_only" => "never upload or delete (default false)",
    "require_verified" => "pull only entries whose boot check passed (default false)",
    "connect_timeout" => "TCP+TLS connect timeout (default 5s)",
    "read_timeout" => "longest silence on an open connection (default 30s)",
    "request_timeout" => "longest single request, transfer included (default 10m)",
    "retries" => "retries of a failed request: 5xx, throttling, timeouts (default 3)",
    "retry_timeout" => "no retry starts after this long (default 60s)",
    "part_size" => "multipart upload part size, at least 5MiB (default 16MiB)",
    "concurrency" => "parts uploaded in parallel (default 4)",
    "max_entry_size" => "largest entry accepted on download, unpacked (default 4GiB)",
    "compression_level" => "zstd level for uploads, 1-19 (default 3)",
    "scratch_dir" => "where uploads are packed before they are sent",
    "leases" => "take a build lease so a fleet builds each kernel once (default true)",
    "lease_heartbeat" => "how often a lease holder refreshes its lease (default 30s)",
    "lease_expiry" => "a lease not refreshed for this long is taken over (default 5m)",
    "lease_wait" => "longest wait for another machine's build before building here (default 1h)",
    "lease_poll" => "how often a waiter looks for the other machine's entry (default 5s)",
    "lease_settle" => "how long after a lease write it is read back to confirm it (default 250ms)",
]);

settings!(HTTP_KEYS, [
    "url" => "base URL of the cache (required), e.g. http://cache.example:8080/ktstr",
    "prefix" => "path below the URL (default none)",
    "read_only" => "never upload or delete (default false)",
    "require_verified" => "pull only entries whose boot check passed (default false)",
    "connect_timeout" => "TCP+TLS connect timeout (default 5s)",
    "read_timeout" => "longest silence on an open connection (default 30s)",
    "request_timeout" => "longest single request, transfer included (default 10m)",
    "retries" => "retries of a failed request: 5xx, throttling, timeouts (default 3)",
    "retry_timeout" => "no retry starts after this long (default 60s)",
    "max_entry_size" => "largest entry accepted on download, unpacked (default 4GiB)",
    "compression_level" => "zstd level for uploads, 1-19 (default 3)",
    "scratch_dir" => "where uploads are packed before they are sent",
]);

/// Env prefix of `s3-cache`.
pub const S3_ENV_PREFIX: &str = "KTSTR_S3_";
/// Env prefix of `http-cache`.
pub const HTTP_ENV_PREFIX: &str = "KTSTR_HTTP_CACHE_";

/// The reader of one remote plugin's table, with its environment.
fn reader<'a>(
    plugin: &'static str,
    env_prefix: &'static str,
    known: &[Setting],
    cfg: &PluginConfig,
    env: Env<'a>,
) -> Result<ConfigReader<'a>> {
    ConfigReader::new(plugin, cfg)?
        .with_env(env_prefix, env)
        .known(known)
}

fn common(r: &ConfigReader<'_>) -> Result<Common> {
    Ok(Common {
        read_only: r.bool("read_only", false)?,
        require_verified: r.bool("require_verified", false)?,
        connect_timeout: r.duration("connect_timeout", Common::DEFAULT_CONNECT_TIMEOUT)?,
        read_timeout: r.duration("read_timeout", Common::DEFAULT_READ_TIMEOUT)?,
        request_timeout: r.duration("request_timeout", Common::DEFAULT_REQUEST_TIMEOUT)?,
        retries: r.int("retries", Common::DEFAULT_RETRIES as i64, (0, 20))? as usize,
        retry_timeout: r.duration("retry_timeout", Common::DEFAULT_RETRY_TIMEOUT)?,
        max_entry_size: r.size("max_entry_size", Common::DEFAULT_MAX_ENTRY_SIZE)?,
        compression_level: r.int(
            "compression_level",
            Common::DEFAULT_COMPRESSION_LEVEL as i64,
            (1, 19),
        )? as i32,
    })
}

/// Strip slashes so `"/a/b/"` and `"a/b"` name the same prefix.
fn clean_prefix(p: &str) -> String {
    p.trim_matches('/').to_string()
}

fn check_url(reader: &ConfigReader<'_>, key: &str, url: &str) -> Result<()> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(reader.bad(
            key,
            format!("{url:?} is not a URL (expected http://host:port)"),
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(reader.bad(key, format!("{url:?}: scheme must be http or https")));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        // Credentials in a URL end up in error messages and logs.
        return Err(reader.bad(
            key,
            "must not contain user:password@; credentials in URLs end up in logs",
        ));
    }
    if authority.is_empty() {
        return Err(reader.bad(key, format!("{url:?} has no host")));
    }
    Ok(())
}

impl S3Settings {
    /// Read from `cfg` and the process environment.
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        Self::from_sources(cfg, &env_nonempty)
    }

    /// Read from `cfg` and `env` (tests pass a map instead of the process env).
    pub fn from_sources(cfg: &PluginConfig, env: Env<'_>) -> Result<Self> {
        Self::read(&reader(crate::S3_PLUGIN, S3_ENV_PREFIX, S3_KEYS, cfg, env)?)
    }

    fn read(r: &ConfigReader<'_>) -> Result<Self> {
        let endpoint = r.string("endpoint")?;
        if let Some(e) = &endpoint {
            check_url(r, "endpoint", e)?;
        }
        let bucket = r.required("bucket")?;
        if bucket.contains('/') || bucket.trim() != bucket {
            return Err(r.bad("bucket", format!("{bucket:?} is not a bucket name")));
        }
        let part_size = r.size("part_size", Self::DEFAULT_PART_SIZE)?;
        if !(Self::MIN_PART_SIZE..=Self::MAX_PART_SIZE).contains(&part_size) {
            return Err(r.bad(
                "part_size",
                format!("is {part_size} bytes; S3 parts must be from 5MiB to 5GiB"),
            ));
        }
        Ok(Self {
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            bucket,
            prefix: clean_prefix(
                &r.string("prefix")?
                    .unwrap_or_else(|| Self::DEFAULT_PREFIX.into()),
            ),
            region: r.string("region")?,
            path_style: r.bool("path_style", true)?,
            anonymous: r.bool("anonymous", false)?,
            profile: r.string("profile")?,
            credentials_file: r.string("credentials_file")?,
            part_size,
            concurrency: r.int("concurrency", Self::DEFAULT_CONCURRENCY as i64, (1, 64))? as usize,
            leases: leases(r)?,
            lease_settle: lease_settle(r)?,
            common: common(r)?,
        })
    }
}

impl HttpSettings {
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        Self::from_sources(cfg, &env_nonempty)
    }

    pub fn from_sources(cfg: &PluginConfig, env: Env<'_>) -> Result<Self> {
        Self::read(&reader(
            crate::HTTP_PLUGIN,
            HTTP_ENV_PREFIX,
            HTTP_KEYS,
            cfg,
            env,
        )?)
    }

    fn read(r: &ConfigReader<'_>) -> Result<Self> {
        let url = r.required("url")?;
        check_url(r, "url", &url)?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            prefix: clean_prefix(&r.string("prefix")?.unwrap_or_default()),
            common: common(r)?,
        })
    }
}

/// The lease settings; `None` when `leases = false`.
fn leases(r: &ConfigReader<'_>) -> Result<Option<LeaseTimings>> {
    let d = LeaseTimings::DEFAULT;
    let t = LeaseTimings {
        heartbeat: r.duration("lease_heartbeat", d.heartbeat)?,
        expiry: r.duration("lease_expiry", d.expiry)?,
        wait: r.duration("lease_wait", d.wait)?,
        poll: r.duration("lease_poll", d.poll)?,
    };
    if !r.bool("leases", true)? {
        return Ok(None);
    }
    for (key, value) in [("lease_heartbeat", t.heartbeat), ("lease_poll", t.poll)] {
        if value < Duration::from_millis(100) {
            return Err(r.bad(key, format!("is {value:?}; it must be at least 100ms")));
        }
    }
    if t.expiry < 2 * t.heartbeat {
        return Err(r.bad(
            "lease_expiry",
            format!(
                "is {:?}, less than two heartbeats ({:?} each): a live holder would be taken over",
                t.expiry, t.heartbeat
            ),
        ));
    }
    Ok(Some(t))
}

/// `lease_settle`, at most [`S3Settings::MAX_LEASE_SETTLE`].
fn lease_settle(r: &ConfigReader<'_>) -> Result<Duration> {
    let d = r.duration("lease_settle", S3Settings::DEFAULT_LEASE_SETTLE)?;
    if d > S3Settings::MAX_LEASE_SETTLE {
        return Err(r.bad(
            "lease_settle",
            format!(
                "is {d:?}; it must be at most {:?} (every lease write waits this long)",
                S3Settings::MAX_LEASE_SETTLE
            ),
        ));
    }
    Ok(d)
}

/// `scratch_dir` of either plugin.
pub(crate) fn scratch_dir(
    plugin: &'static str,
    env_prefix: &'static str,
    known: &[Setting],
    cfg: &PluginConfig,
    env: Env<'_>,
) -> Result<Option<std::path::PathBuf>> {
    let r = reader(plugin, env_prefix, known, cfg, env)?;
    Ok(r.string("scratch_dir")?.map(std::path::PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).filter(|v| !v.is_empty()).cloned()
    }

    #[test]
    fn s3_defaults_and_env_over_config() {
        let cfg = serde_json::json!({
            "bucket": "from-config",
            "prefix": "/team/kernels/",
            "read_only": false,
            "part_size": "8MiB",
            "connect_timeout": 2,
        });
        let s = S3Settings::from_sources(
            &cfg,
            &env(&[
                ("KTSTR_S3_BUCKET", "from-env"),
                ("KTSTR_S3_READ_ONLY", "1"),
                ("KTSTR_S3_REGION", ""),
            ]),
        )
        .unwrap();
        assert_eq!(s.bucket, "from-env");
        assert_eq!(s.prefix, "team/kernels");
        assert!(s.common.read_only);
        assert_eq!(s.region, None, "empty env var counts as unset");
        assert_eq!(s.part_size, 8 << 20);
        assert_eq!(s.common.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.common.read_timeout, Common::DEFAULT_READ_TIMEOUT);
        assert!(s.path_style);
        assert_eq!(s.concurrency, S3Settings::DEFAULT_CONCURRENCY);
    }

    #[test]
    fn s3_errors_name_the_setting_and_env_var() {
        let err = S3Settings::from_sources(&serde_json::Value::Null, &env(&[])).unwrap_err();
        assert_eq!(err.kind, ktstr_sdk::ErrorKind::InvalidInput);
        assert_eq!(err.message, "plugin s3-cache: setting `bucket` is not set");
        let hint = err.hint.unwrap();
        assert!(hint.contains("[plugin.s3-cache]"), "{hint}");
        assert!(hint.contains("KTSTR_S3_BUCKET"), "{hint}");

        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b"}),
            &env(&[("KTSTR_S3_PART_SIZE", "1MiB")]),
        )
        .unwrap_err();
        assert!(err.message.contains("`part_size`"), "{err}");
        assert!(err.message.contains("5MiB"), "{err}");

        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "read_only": "perhaps"}),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.message.contains("[plugin.s3-cache] read_only"), "{err}");

        let err =
            S3Settings::from_sources(&serde_json::json!({"bucket": "b", "bukket": 1}), &env(&[]))
                .unwrap_err();
        assert!(
            err.message.contains("unknown config key \"bukket\""),
            "{err}"
        );

        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "endpoint": "http://ak:sk@host:9000"}),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.message.contains("`endpoint`"), "{err}");
        assert!(!err.message.contains("sk@"), "secret echoed: {err}");
    }

    #[test]
    fn lease_settings_default_on_and_are_checked() {
        let s = S3Settings::from_sources(&serde_json::json!({"bucket": "b"}), &env(&[])).unwrap();
        assert_eq!(s.leases, Some(LeaseTimings::DEFAULT));
        assert_eq!(s.lease_settle, Duration::from_millis(250));
        let s = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "lease_expiry": "3s"}),
            &env(&[
                ("KTSTR_S3_LEASE_HEARTBEAT", "500ms"),
                ("KTSTR_S3_LEASE_POLL", "200ms"),
            ]),
        )
        .unwrap();
        let t = s.leases.unwrap();
        assert_eq!(t.heartbeat, Duration::from_millis(500));
        assert_eq!(t.expiry, Duration::from_secs(3));
        assert_eq!(t.poll, Duration::from_millis(200));
        assert_eq!(t.wait, LeaseTimings::DEFAULT.wait);
        let off = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b"}),
            &env(&[("KTSTR_S3_LEASES", "0")]),
        )
        .unwrap();
        assert_eq!(off.leases, None);
        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "lease_heartbeat": "1m", "lease_expiry": "90s"}),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.message.contains("`lease_expiry`"), "{err}");
        assert!(err.message.contains("two heartbeats"), "{err}");
        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "lease_poll": "1ms"}),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.message.contains("at least 100ms"), "{err}");
        let s = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b"}),
            &env(&[("KTSTR_S3_LEASE_SETTLE", "2s")]),
        )
        .unwrap();
        assert_eq!(s.lease_settle, Duration::from_secs(2));
        let err = S3Settings::from_sources(
            &serde_json::json!({"bucket": "b", "lease_settle": "1m"}),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.message.contains("`lease_settle`"), "{err}");
        assert!(err.message.contains("at most 10s"), "{err}");
    }

    #[test]
    fn http_settings() {
        let s = HttpSettings::from_sources(
            &serde_json::Value::Null,
            &env(&[
                ("KTSTR_HTTP_CACHE_URL", "http://127.0.0.1:8080/cache/"),
                ("KTSTR_HTTP_CACHE_READ_TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8080/cache");
        assert_eq!(s.common.read_timeout, Duration::from_millis(250));
        let err = HttpSettings::from_sources(&serde_json::Value::Null, &env(&[])).unwrap_err();
        assert!(err.hint.unwrap().contains("KTSTR_HTTP_CACHE_URL"));
        let err = HttpSettings::from_sources(&serde_json::json!({"url": "ftp://x"}), &env(&[]))
            .unwrap_err();
        assert!(err.message.contains("http or https"), "{err}");
    }

    #[test]
    fn every_setting_has_a_distinct_env_name() {
        for (keys, prefix) in [(S3_KEYS, S3_ENV_PREFIX), (HTTP_KEYS, HTTP_ENV_PREFIX)] {
            let mut seen = std::collections::BTreeSet::new();
            for s in keys {
                assert!(seen.insert(env_name(prefix, s.key)));
                assert!(!s.help.is_empty());
            }
        }
        assert_eq!(env_name(S3_ENV_PREFIX, "part_size"), "KTSTR_S3_PART_SIZE");
    }
}
