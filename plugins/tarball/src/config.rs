//! The plugin's settings: the `[plugin.tarball]` config table, then the
//! environment on top (an empty variable counts as unset).
//!
//! Unknown keys are an error naming the key, so a typo in the config file
//! does not silently fall back to kernel.org.

use std::time::Duration;

use ktstr_sdk::config::ConfigReader;
use ktstr_sdk::prelude::*;

/// Overrides `mirror`.
pub const MIRROR_ENV: &str = "KTSTR_KERNEL_MIRROR";
/// Overrides `releases_url`.
pub const RELEASES_ENV: &str = "KTSTR_RELEASES_URL";

// `--skip-sha256` sets `skip_sha256` (the host knows the switch, not the key).
ktstr_sdk::inventory::submit! {
    ktstr_sdk::switch::SwitchBinding {
        switch: ktstr_sdk::switch::SKIP_SHA256,
        plugin: crate::NAME,
        key: "skip_sha256",
    }
}

pub const DEFAULT_MIRROR: &str = "https://cdn.kernel.org/pub/linux/kernel";
pub const DEFAULT_RELEASES_URL: &str = "https://www.kernel.org/releases.json";

/// Effective settings of one plugin instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Base URL mirroring kernel.org's `/pub/linux/kernel` (http, https or
    /// file://): `<mirror>/v6.x/linux-6.12.3.tar.xz`.
    pub mirror: String,
    /// kernel.org's `releases.json` (or a copy): version prefixes and ranges.
    pub releases_url: String,
    pub connect_timeout_secs: u64,
    /// No byte for this long fails the download (the no-progress watchdog).
    pub stall_timeout_secs: u64,
    /// Extra attempts after a transient failure (refused, reset, 5xx)
    /// that happened before any byte of the body was used.
    pub retries: u32,
    /// Upper bound on the sum of the archive's file sizes.
    pub max_unpacked_bytes: u64,
    /// Digest mismatches and missing digests warn instead of failing; the
    /// tree is then marked dirty (built, never cached).
    pub skip_sha256: bool,
    /// Threads for .xz decompression (0: one per available CPU).
    pub xz_threads: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mirror: DEFAULT_MIRROR.to_string(),
            releases_url: DEFAULT_RELEASES_URL.to_string(),
            connect_timeout_secs: 15,
            stall_timeout_secs: 60,
            retries: 3,
            max_unpacked_bytes: 8 << 30,
            skip_sha256: false,
            xz_threads: 0,
        }
    }
}

impl Settings {
    /// Settings from the config table, then the environment.
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        let r = ConfigReader::new(crate::NAME, cfg)?;
        let mut settings = Self::read(&r)?;
        if let Some(mirror) = r.env_var(MIRROR_ENV) {
            settings.mirror = mirror;
        }
        if let Some(url) = r.env_var(RELEASES_ENV) {
            settings.releases_url = url;
        }
        settings.mirror = settings.mirror.trim_end_matches('/').to_string();
        settings.check()?;
        Ok(settings)
    }

    /// Settings from the config table alone (no environment).
    pub fn from_table(cfg: &PluginConfig) -> Result<Self> {
        Self::read(&ConfigReader::new(crate::NAME, cfg)?)
    }

    fn read(r: &ConfigReader<'_>) -> Result<Self> {
        r.deserialize().map_err(|e| {
            e.with_hint(
                "known keys: mirror, releases_url, connect_timeout_secs, stall_timeout_secs, \
                 retries, max_unpacked_bytes, skip_sha256, xz_threads (see `ktstr docs sources`)",
            )
        })
    }

    fn check(&self) -> Result<()> {
        for (name, env, url) in [
            ("mirror", MIRROR_ENV, &self.mirror),
            ("releases_url", RELEASES_ENV, &self.releases_url),
        ] {
            let lower = url.to_ascii_lowercase();
            if !["http://", "https://", "file:///"]
                .iter()
                .any(|p| lower.starts_with(p))
            {
                return Err(StageError::invalid_input(format!(
                    "tarball {name} {url}: not an http://, https:// or file:/// URL"
                ))
                .with_hint(format!(
                    "set {env} (or {name} in [plugin.tarball]) to e.g. https://mirror.example/pub/linux/kernel or file:///srv/kernel"
                )));
            }
        }
        if self.stall_timeout_secs == 0 || self.connect_timeout_secs == 0 {
            return Err(StageError::invalid_input(
                "[plugin.tarball]: connect_timeout_secs and stall_timeout_secs must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }

    pub fn xz_threads(&self) -> u32 {
        if self.xz_threads > 0 {
            return self.xz_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32)
    }

    /// `<mirror>/v6.x/`.
    pub fn major_dir_url(&self, release: &crate::spec::Release) -> String {
        format!("{}/{}", self.mirror, release.major_dir())
    }

    /// The hint for an unreachable or failing kernel.org URL.
    pub fn mirror_hint(&self) -> String {
        format!(
            "check the network, or point ktstr at a mirror of kernel.org's /pub/linux/kernel: \
             set {MIRROR_ENV} (or mirror in [plugin.tarball] of the config file) to an http(s):// \
             or file:/// URL (now {}); or pass a tarball you already have: --kernel ./linux-6.12.3.tar.xz",
            self.mirror
        )
    }

    /// The hint for an unreachable or malformed releases.json.
    pub fn releases_hint(&self) -> String {
        format!(
            "point {RELEASES_ENV} (or releases_url in [plugin.tarball]) at a reachable copy of \
             kernel.org's releases.json (http(s):// or file:///; now {}), or name an exact \
             release (6.12.3), which needs no releases.json",
            self.releases_url
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_sha256_switch_sets_skip_sha256() {
        let mut configs = std::collections::BTreeMap::new();
        ktstr_sdk::switch::apply(ktstr_sdk::switch::SKIP_SHA256, &mut configs);
        assert!(
            Settings::from_table(&configs[crate::NAME])
                .unwrap()
                .skip_sha256
        );
    }

    #[test]
    fn null_config_gives_defaults() {
        let s = Settings::from_table(&PluginConfig::Null).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.mirror, DEFAULT_MIRROR);
        assert!(!s.skip_sha256);
    }

    #[test]
    fn table_keys_are_read_and_unknown_keys_rejected() {
        let cfg = serde_json::json!({
            "mirror": "file:///srv/kernel/",
            "stall_timeout_secs": 2,
            "skip_sha256": true,
        });
        let s = Settings::from_table(&cfg).unwrap();
        assert_eq!(s.mirror, "file:///srv/kernel/");
        assert_eq!(s.stall_timeout_secs, 2);
        assert!(s.skip_sha256);
        assert_eq!(s.retries, 3);
        let e = Settings::from_table(&serde_json::json!({"mirorr": "x"})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.to_string().contains("mirorr"), "{e}");
    }

    #[test]
    fn bad_urls_are_rejected_with_the_setting_named() {
        let mut s = Settings {
            mirror: "ftp://x".into(),
            ..Settings::default()
        };
        let e = s.check().unwrap_err();
        assert!(e.to_string().contains("mirror ftp://x"), "{e}");
        assert!(e.hint.unwrap().contains(MIRROR_ENV));
        s.mirror = DEFAULT_MIRROR.into();
        s.stall_timeout_secs = 0;
        assert!(s.check().is_err());
    }
}
