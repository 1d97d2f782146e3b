//! What exists upstream: kernel.org's `releases.json` (the maintained
//! series and their newest releases) and the `sha256sums.asc` of each
//! `v<major>.x` directory (every tarball the mirror has, with its digest).
//!
//! `releases.json` answers "newest 6.12.x" for maintained series; the sums
//! file answers it for end-of-life series, gives the digests that pin a
//! version, and is what a "did you mean" suggestion is taken from. The
//! sums file is clear-signed; the signature is not checked here (see
//! docs/sources.md): it only guards against corruption and mirrors that
//! serve other content than they list, not against a compromised mirror.

use std::collections::BTreeMap;

use ktstr_sdk::prelude::*;

use crate::config::Settings;
use crate::fetch::{self, OpenError};
use crate::spec::Release;

/// One entry of `releases.json` that names a tarball release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub release: Release,
    /// `mainline`, `stable`, `longterm`, `linux-next`.
    pub moniker: String,
    /// The tarball URL kernel.org gives (used for release candidates,
    /// which are not in the `v6.x` directories).
    pub source: Option<String>,
}

/// Parse kernel.org's `releases.json`. Entries without a parseable
/// version (linux-next) are skipped.
pub fn parse_releases_json(text: &str) -> std::result::Result<Vec<Listed>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        releases: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        version: String,
        #[serde(default)]
        moniker: String,
        #[serde(default)]
        source: Option<String>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(doc
        .releases
        .into_iter()
        .filter_map(|e| {
            Some(Listed {
                release: Release::parse(&e.version)?,
                moniker: e.moniker,
                source: e.source.filter(|s| !s.is_empty()),
            })
        })
        .collect())
}

/// `linux-*.tar.xz` digests of one `sha256sums.asc`, by release.
pub fn parse_sha256sums(text: &str) -> BTreeMap<Release, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN PGP SIGNATURE") {
            break;
        }
        // Clear-signed text dash-escapes lines that start with '-'.
        let line = line.strip_prefix("- ").unwrap_or(line);
        let mut parts = line.split_whitespace();
        let (Some(hex), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let hex = hex.to_ascii_lowercase();
        if !ktstr_sdk::hash::is_sha256_hex(&hex) {
            continue;
        }
        let name = name.trim_start_matches('*');
        let Some(version) = name
            .strip_prefix("linux-")
            .and_then(|n| n.strip_suffix(".tar.xz"))
        else {
            continue;
        };
        if let Some(release) = Release::parse(version) {
            out.insert(release, hex);
        }
    }
    out
}

/// Digests of one major directory, or why there are none.
#[derive(Debug, Clone)]
pub enum Sums {
    Listed(BTreeMap<Release, String>),
    /// The mirror has no sha256sums.asc there (404).
    Missing(StageError),
}

impl Sums {
    pub fn digest(&self, release: &Release) -> Option<&str> {
        match self {
            Sums::Listed(map) => map.get(release).map(String::as_str),
            Sums::Missing(_) => None,
        }
    }

    pub fn releases(&self) -> Vec<Release> {
        match self {
            Sums::Listed(map) => map.keys().copied().collect(),
            Sums::Missing(_) => Vec::new(),
        }
    }
}

/// Lazily fetched upstream metadata for one resolve/acquire call.
pub struct Catalog<'a> {
    settings: &'a Settings,
    client: &'a reqwest::blocking::Client,
    cx: &'a StageContext,
    releases: Option<Vec<Listed>>,
    sums: BTreeMap<String, Sums>,
}

impl<'a> Catalog<'a> {
    pub fn new(
        settings: &'a Settings,
        client: &'a reqwest::blocking::Client,
        cx: &'a StageContext,
    ) -> Self {
        Self {
            settings,
            client,
            cx,
            releases: None,
            sums: BTreeMap::new(),
        }
    }

    /// `releases.json`; unreachable or malformed is an error naming the URL.
    pub fn releases(&mut self) -> Result<&[Listed]> {
        if self.releases.is_none() {
            let url = &self.settings.releases_url;
            let hint = self.settings.releases_hint();
            let text = fetch::fetch_text(self.client, url, self.settings, &hint, self.cx).map_err(
                |e| match e {
                    OpenError::NotFound(e) => e.with_hint(hint.clone()),
                    OpenError::Other(e) => e,
                },
            )?;
            let list = parse_releases_json(&text).map_err(|why| {
                StageError::corrupt(format!("{url}: not a kernel.org releases.json: {why}"))
                    .with_hint(hint.clone())
            })?;
            self.releases = Some(list);
        }
        Ok(self.releases.as_deref().unwrap_or_default())
    }

    /// The `sha256sums.asc` of `release`'s major directory. A 404 is not an
    /// error here (a mirror may not carry it); unreachable is.
    pub fn sums(&mut self, release: &Release) -> Result<&Sums> {
        let dir = self.settings.major_dir_url(release);
        if !self.sums.contains_key(&dir) {
            let url = format!("{dir}/sha256sums.asc");
            let hint = self.settings.mirror_hint();
            let sums = match fetch::fetch_text(self.client, &url, self.settings, &hint, self.cx) {
                Ok(text) => Sums::Listed(parse_sha256sums(&text)),
                Err(OpenError::NotFound(e)) => Sums::Missing(e),
                Err(OpenError::Other(e)) => return Err(e),
            };
            self.sums.insert(dir.clone(), sums);
        }
        Ok(&self.sums[&dir])
    }

    /// Every final release known for `major` (releases.json plus the sums
    /// listing), newest last.
    pub fn known(&mut self, major: u32) -> Result<Vec<Release>> {
        let probe = Release {
            major,
            minor: 0,
            patch: 0,
            rc: None,
        };
        let mut all: Vec<Release> = self.sums(&probe)?.releases();
        all.extend(
            self.releases()?
                .iter()
                .map(|l| l.release)
                .filter(|r| r.major == major),
        );
        all.retain(|r| r.rc.is_none());
        all.sort_by_key(Release::sort_key);
        all.dedup();
        Ok(all)
    }

    /// The newest final release of `major.minor`: releases.json first (it
    /// knows the maintained series), then the sums listing (end-of-life
    /// series). `None` when neither lists the series.
    pub fn newest_in_series(&mut self, major: u32, minor: u32) -> Result<Option<Release>> {
        let listed = self
            .releases()?
            .iter()
            .filter(|l| l.release.series() == (major, minor) && l.release.rc.is_none())
            .map(|l| l.release)
            .max_by_key(Release::sort_key);
        if listed.is_some() {
            return Ok(listed);
        }
        Ok(self
            .known(major)?
            .into_iter()
            .filter(|r| r.series() == (major, minor))
            .max_by_key(Release::sort_key))
    }

    /// The releases.json entry for a release candidate, if it is listed.
    pub fn listed_rc(&mut self, release: &Release) -> Result<Option<Listed>> {
        Ok(self
            .releases()?
            .iter()
            .find(|l| l.release == *release)
            .cloned())
    }

    /// "did you mean" for a release that does not exist, from whatever
    /// listing can be had (errors fetching them are ignored: this is
    /// only a suggestion).
    pub fn suggestion(&mut self, wanted: &Release) -> Option<String> {
        let mut known = self.known(wanted.major).unwrap_or_default();
        if known.is_empty()
            && let Ok(list) = self.releases()
        {
            known = list
                .iter()
                .map(|l| l.release)
                .filter(|r| r.rc.is_none())
                .collect();
        }
        nearest(wanted, &known).map(|r| {
            let newest_in_series = known
                .iter()
                .filter(|k| k.series() == r.series())
                .max_by_key(|k| k.sort_key());
            if newest_in_series == Some(&r) && r.patch > 0 {
                format!(
                    "the nearest existing release is {} (the newest {}.{}.x)",
                    r.file_version(),
                    r.major,
                    r.minor
                )
            } else {
                format!("the nearest existing release is {}", r.file_version())
            }
        })
    }
}

/// The release in `known` closest to `wanted`: within its series the
/// nearest patch level, else the newest release of the nearest series.
pub fn nearest(wanted: &Release, known: &[Release]) -> Option<Release> {
    let known: Vec<Release> = known.iter().copied().filter(|r| r != wanted).collect();
    let known = known.as_slice();
    let same: Vec<&Release> = known
        .iter()
        .filter(|r| r.series() == wanted.series() && r.rc.is_none())
        .collect();
    if let Some(best) = same
        .iter()
        .min_by_key(|r| (r.patch.abs_diff(wanted.patch), std::cmp::Reverse(r.patch)))
    {
        return Some(**best);
    }
    let distance = |r: &Release| {
        let a = i64::from(r.major) * 1000 + i64::from(r.minor);
        let b = i64::from(wanted.major) * 1000 + i64::from(wanted.minor);
        (a - b).abs()
    };
    let series = known
        .iter()
        .filter(|r| r.rc.is_none())
        .min_by_key(|r| (distance(r), std::cmp::Reverse(r.series())))?
        .series();
    known
        .iter()
        .filter(|r| r.series() == series && r.rc.is_none())
        .max_by_key(|r| r.sort_key())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Release {
        Release::parse(s).unwrap()
    }

    #[test]
    fn parses_kernel_org_releases_json() {
        let text = r#"{"latest_stable":{"version":"6.12.3"},"releases":[
          {"iseol":false,"version":"6.13-rc3","moniker":"mainline","source":"https://git.kernel.org/torvalds/t/linux-6.13-rc3.tar.gz","pgp":null,"released":{"timestamp":1},"gitweb":"x","changelog":null,"diffview":"x","patch":{"full":"x"}},
          {"iseol":false,"version":"6.12.3","moniker":"stable","source":"https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.3.tar.xz"},
          {"iseol":false,"version":"6.6.64","moniker":"longterm","source":"x"},
          {"iseol":false,"version":"next-20241206","moniker":"linux-next","source":null}
        ]}"#;
        let list = parse_releases_json(text).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].release, r("6.13-rc3"));
        assert_eq!(list[0].moniker, "mainline");
        assert_eq!(list[1].release, r("6.12.3"));
        assert!(parse_releases_json("<html>").is_err());
    }

    #[test]
    fn parses_clear_signed_sums() {
        let hex = "a".repeat(64);
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             {hex}  linux-6.12.3.tar.xz\n{hex}  linux-6.12.3.tar.gz\n\
             {hex}  patch-6.12.3.xz\n{}  linux-6.12.tar.xz\n- {hex}  linux-6.11.1.tar.xz\n\
             -----BEGIN PGP SIGNATURE-----\n{hex}  linux-9.9.tar.xz\n",
            "B".repeat(64)
        );
        let sums = parse_sha256sums(&text);
        assert_eq!(sums.len(), 3);
        assert_eq!(sums[&r("6.12.3")], hex);
        assert_eq!(sums[&r("6.12")], "b".repeat(64));
        assert!(sums.contains_key(&r("6.11.1")));
        assert!(!sums.contains_key(&r("9.9")));
    }

    #[test]
    fn nearest_prefers_the_same_series() {
        let known: Vec<Release> = ["6.10.14", "6.11", "6.11.1", "6.12", "6.12.1", "6.12.5"]
            .iter()
            .map(|s| r(s))
            .collect();
        assert_eq!(nearest(&r("6.12.9"), &known), Some(r("6.12.5")));
        assert_eq!(nearest(&r("6.12.2"), &known), Some(r("6.12.1")));
        assert_eq!(nearest(&r("6.13.1"), &known), Some(r("6.12.5")));
        assert_eq!(nearest(&r("6.9.3"), &known), Some(r("6.10.14")));
        assert_eq!(nearest(&r("6.9.3"), &[]), None);
    }
}
