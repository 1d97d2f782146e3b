//! Built-in source: kernel.org versions and kernel tarballs (http, https,
//! file).
//!
//! `--kernel 6.12.3`, `6.12`, `6.10..6.12`, a tarball URL or a tarball file
//! become a scratch kernel tree. Resolving comes first and is cheap: an
//! exact release needs no network at all (its identity is the release,
//! verified against kernel.org's `sha256sums.asc` when it is downloaded), a
//! series or range reads `releases.json` and the sums listing, and a spec
//! with `#sha256=` is keyed by that digest. So a cache hit never downloads.
//!
//! Acquiring streams download → decompress → extract in three threads (see
//! [`download`]), verifies the sha256 while streaming, and installs the
//! tree only when the digest matches. Everything about where data comes
//! from is configurable (see [`config`]) so air-gapped sites can point at a
//! mirror, including a `file://` one.

pub mod config;
pub mod decompress;
pub mod download;
pub mod extract;
pub mod fetch;
pub mod memo;
pub mod pipe;
pub mod releases;
pub mod revalidate;
pub mod spec;

use std::path::PathBuf;

use ktstr_sdk::prelude::*;
use ktstr_sdk::scratch::Scratch;

use crate::config::Settings;
use crate::fetch::OpenError;
use crate::releases::{Catalog, Sums};
use crate::spec::{Location, Release, Spec, VersionSpec};

/// The plugin's registered name and its identity kind.
pub const NAME: &str = "tarball";

/// Source acquirer for kernel.org releases and kernel tarballs.
#[derive(Debug, Clone)]
pub struct TarballSource {
    settings: Settings,
    /// The cache root; `None` means "ask `paths::cache_root()` at acquire".
    cache_root: Option<PathBuf>,
}

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "kernel.org releases (6.12.3, 6.12, 6.10..6.12) and kernel tarballs (http(s)://, file://, PATH; #sha256=), streamed and verified",
        constructor: Constructor::Source(|cfg| Ok(Box::new(TarballSource::new(cfg)?))),
    }
}

impl TarballSource {
    /// From the `[plugin.tarball]` table (`Null` when absent) and the
    /// environment.
    pub fn new(cfg: &PluginConfig) -> Result<Self> {
        Ok(Self {
            settings: Settings::from_config(cfg)?,
            cache_root: None,
        })
    }

    /// With explicit settings (no environment) and cache root: for tests and
    /// tools embedding the plugin.
    pub fn with_settings(settings: Settings, cache_root: Option<PathBuf>) -> Self {
        Self {
            settings,
            cache_root,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn cache_root(&self) -> Result<PathBuf> {
        match &self.cache_root {
            Some(root) => Ok(root.clone()),
            None => ktstr_sdk::paths::cache_root(),
        }
    }

    fn release_identity(release: &Release) -> SourceIdentity {
        SourceIdentity {
            kind: NAME.to_string(),
            id: format!("linux-{release}"),
            short: Some(release.to_string()),
        }
    }

    fn digest_identity(sha256: &str) -> SourceIdentity {
        SourceIdentity {
            kind: NAME.to_string(),
            id: sha256.to_string(),
            short: Some(ktstr_sdk::source::short_id(sha256).to_string()),
        }
    }

    /// The pinned spec of a final release: `6.12.3[#sha256=…]`.
    fn pinned(release: &Release, sha256: Option<&str>) -> KernelSpec {
        KernelSpec::new(match sha256 {
            Some(hex) => format!("{release}#sha256={hex}"),
            None => release.to_string(),
        })
    }

    /// A tarball's version: from its name, else remembered by digest.
    fn version_for(&self, location: &Location, sha256: &str) -> Option<String> {
        location
            .release_from_name()
            .map(|r| r.to_string())
            .or_else(|| memo::version_of(&self.cache_root().ok()?, sha256))
    }

    /// The version memo steers the key of a tarball before it is unpacked;
    /// once unpacked, the Makefile is the truth. A memo that disagrees was
    /// damaged or tampered with: it is corrected, and this run fails rather
    /// than store a tree under a version it does not have.
    fn check_memo(&self, sha256: &str, version: &str) -> Result<()> {
        let Ok(root) = self.cache_root() else {
            return Ok(());
        };
        match memo::version_of(&root, sha256) {
            Some(memo) if memo != version => {
                memo::record(&root, sha256, version);
                let file = memo::file(&root, sha256).unwrap_or_default();
                Err(StageError::corrupt(format!(
                    "the version memo {} says {memo}, but the tarball's Makefile says {version}",
                    file.display()
                ))
                .with_hint("the memo was damaged or edited by hand; ktstr corrected it, run the command again"))
            }
            _ => Ok(()),
        }
    }

    /// A URL without a digest is known only after download, unless the
    /// server confirms it still serves the content remembered from the
    /// last download (see [`revalidate`]): then it is pinned to that digest.
    fn revalidated(&self, spec: &KernelSpec, url: &str, cx: &StageContext) -> Result<Resolved> {
        let Ok(root) = self.cache_root() else {
            return Ok(Resolved::unknown(spec.clone()));
        };
        let client = fetch::client(&self.settings)?;
        Ok(match revalidate::unchanged(&client, &root, url, cx) {
            Some(hex) => Resolved {
                spec: KernelSpec::new(format!("{}#sha256={hex}", spec.raw)),
                identity: Some(Self::digest_identity(&hex)),
                version: self.version_for(&Location::Http(url.to_string()), &hex),
            },
            None => Resolved::unknown(spec.clone()),
        })
    }

    fn resolve_release(&self, release: Release, sha256: Option<String>) -> Resolved {
        Resolved {
            spec: Self::pinned(&release, sha256.as_deref()),
            identity: Some(Self::release_identity(&release)),
            version: Some(release.to_string()),
        }
    }

    /// A series' newest release, pinned with its digest when the mirror
    /// lists one.
    fn resolve_series(&self, catalog: &mut Catalog, major: u32, minor: u32) -> Result<Resolved> {
        let Some(release) = catalog.newest_in_series(major, minor)? else {
            return Err(self.series_not_found(catalog, major, minor));
        };
        let digest = catalog.sums(&release)?.digest(&release).map(str::to_string);
        Ok(self.resolve_release(release, digest))
    }

    fn series_not_found(&self, catalog: &mut Catalog, major: u32, minor: u32) -> StageError {
        let err = StageError::not_found(format!(
            "--kernel {major}.{minor}: no {major}.{minor}.x release in {} or {}/v{major}.x/sha256sums.asc",
            self.settings.releases_url, self.settings.mirror
        ));
        let rc = catalog.releases().ok().and_then(|list| {
            list.iter()
                .find(|l| l.release.series() == (major, minor) && l.release.rc.is_some())
                .map(|l| l.release.file_version())
        });
        if let Some(rc) = rc {
            return err.with_hint(format!(
                "{major}.{minor} has no final release yet; its release candidate is --kernel {rc}"
            ));
        }
        let wanted = Release {
            major,
            minor,
            patch: 0,
            rc: None,
        };
        match catalog.suggestion(&wanted) {
            Some(s) => err.with_hint(s),
            None => err.with_hint(self.settings.releases_hint()),
        }
    }

    fn resolve_range(
        &self,
        catalog: &mut Catalog,
        from: VersionSpec,
        to: VersionSpec,
        cx: &StageContext,
    ) -> Result<Vec<Resolved>> {
        match (from, to) {
            // Members are the releases the mirror lists between the ends,
            // never every number in between: `6.12.0..6.12.999999` names
            // the few hundred 6.12 releases that exist.
            (VersionSpec::Exact(a), VersionSpec::Exact(b)) => {
                let sums = catalog.sums(&a)?.clone();
                if let Sums::Missing(e) = &sums {
                    cx.progress.warn(&format!(
                        "{e}; the range holds the releases {} lists",
                        self.settings.releases_url
                    ));
                }
                let members: Vec<Release> = catalog
                    .known(a.major)?
                    .into_iter()
                    .filter(|r| a.sort_key() <= r.sort_key() && r.sort_key() <= b.sort_key())
                    .collect();
                if members.is_empty() {
                    return Err(StageError::not_found(format!(
                        "--kernel {}..{}: no release in this range in {} or the mirror's sha256sums.asc",
                        a.file_version(),
                        b.file_version(),
                        self.settings.releases_url
                    ))
                    .with_hint(self.settings.releases_hint()));
                }
                Ok(members
                    .into_iter()
                    .map(|r| {
                        let digest = sums.digest(&r).map(str::to_string);
                        self.resolve_release(r, digest)
                    })
                    .collect())
            }
            (VersionSpec::Series(a, b), VersionSpec::Series(c, d)) => {
                let mut series: Vec<(u32, u32)> = Vec::new();
                for major in a..=c {
                    let probe = Release {
                        major,
                        minor: 0,
                        patch: 0,
                        rc: None,
                    };
                    if let Sums::Missing(e) = catalog.sums(&probe)? {
                        cx.progress.warn(&format!(
                            "{e}; series no longer maintained are missing from the range"
                        ));
                    }
                    series.extend(catalog.known(major)?.iter().map(Release::series));
                }
                series.retain(|s| (a, b) <= *s && *s <= (c, d));
                series.sort();
                series.dedup();
                if series.is_empty() {
                    return Err(StageError::not_found(format!(
                        "--kernel {a}.{b}..{c}.{d}: no release of these series in {} or the mirror's sha256sums.asc",
                        self.settings.releases_url
                    ))
                    .with_hint(self.settings.releases_hint()));
                }
                series
                    .into_iter()
                    .map(|(major, minor)| self.resolve_series(catalog, major, minor))
                    .collect()
            }
            _ => Err(StageError::invalid_input("mixed range ends")),
        }
    }

    /// Acquire a kernel.org release from the mirror.
    fn acquire_release(
        &self,
        release: Release,
        sha256: Option<String>,
        cx: &StageContext,
    ) -> Result<AcquiredSource> {
        let client = fetch::client(&self.settings)?;
        let mut catalog = Catalog::new(&self.settings, &client, cx);
        if release.rc.is_some() {
            let Some(listed) = catalog.listed_rc(&release)?.and_then(|l| l.source) else {
                return Err(rc_not_offered(&release));
            };
            return self.acquire_tarball(&client, Location::Http(listed), None, None, cx);
        }
        let url = format!(
            "{}/{}",
            self.settings.major_dir_url(&release),
            release.file_name()
        );
        let mut unverified = false;
        let expected = match sha256 {
            Some(hex) => Some(hex),
            None => match catalog.sums(&release)? {
                Sums::Listed(map) => match map.get(&release) {
                    Some(hex) => Some(hex.clone()),
                    None => {
                        let mut err = StageError::not_found(format!(
                            "--kernel {release}: {} is not listed in {}/sha256sums.asc",
                            release.file_name(),
                            self.settings.major_dir_url(&release)
                        ));
                        if let Some(s) = catalog.suggestion(&release) {
                            err = err.with_hint(s);
                        }
                        return Err(err);
                    }
                },
                Sums::Missing(e) if self.settings.skip_sha256 => {
                    cx.progress.warn(&format!(
                        "{e}: {} cannot be verified (skip_sha256); the tree is built but not cached",
                        release.file_name()
                    ));
                    unverified = true;
                    None
                }
                Sums::Missing(e) => {
                    return Err(StageError::corrupt(format!(
                        "--kernel {release}: cannot verify {url}: {}",
                        e.message
                    ))
                    .with_hint("mirror sha256sums.asc along with the tarballs, pin the digest (--kernel 6.12.3#sha256=<hex>), or pass --skip-sha256 to build it unverified (never cached)"));
                }
            },
        };
        let mut source = match self.acquire_tarball(
            &client,
            location_of(&url),
            expected.as_deref(),
            Some(release),
            cx,
        ) {
            Err(e) if e.kind == ErrorKind::NotFound => {
                let hint = catalog
                    .suggestion(&release)
                    .unwrap_or_else(|| self.settings.mirror_hint());
                return Err(
                    StageError::not_found(format!("--kernel {release}: {}", e.message))
                        .with_hint(hint),
                );
            }
            other => other?,
        };
        source.identity = Self::release_identity(&release);
        source.is_dirty |= unverified;
        Ok(source)
    }

    /// Download/open, unpack, verify and install one tarball.
    /// `expected` is the digest to verify; `named` the release the spec
    /// promised (checked against the Makefile).
    fn acquire_tarball(
        &self,
        client: &reqwest::blocking::Client,
        location: Location,
        expected: Option<&str>,
        named: Option<Release>,
        cx: &StageContext,
    ) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        let what = location.to_string();
        let opened = match &location {
            Location::Http(url) => fetch::open(
                client,
                url,
                &self.settings,
                &format!(
                    "check the URL and the network; or download the tarball another way and pass its path. {}",
                    self.settings.mirror_hint()
                ),
                cx,
            )
            .map_err(OpenError::into_stage)?,
            Location::File(path) => fetch::open_file(path).map_err(|e| e.context(format!("--kernel {what}")))?,
        };
        let validators = opened.validators.clone();
        let staging = Scratch::stage(&self.cache_root()?, NAME)?;
        cx.progress
            .step(&format!("fetching {}", location.file_name()));
        let fetched =
            download::fetch_and_extract(opened, &what, staging.path(), &self.settings, cx);
        cx.progress.finish_step();
        let fetched = fetched?;
        let mut dirty = false;
        if let Some(expected) = expected
            && expected != fetched.sha256
        {
            if let (Location::Http(url), Ok(root)) = (&location, self.cache_root()) {
                revalidate::forget(&root, url);
            }
            let message = format!(
                "sha256 mismatch for {what}: expected {expected}, got {}",
                fetched.sha256
            );
            if !self.settings.skip_sha256 {
                return Err(StageError::corrupt(message).with_hint(
                    "the download is damaged or the mirror serves other content than it lists; retry or use another mirror. --skip-sha256 builds it anyway (never cached)",
                ));
            }
            cx.progress.warn(&format!(
                "{message}; continuing because of --skip-sha256: the tree is built but not cached"
            ));
            dirty = true;
        }
        let (tree, version) = extract::find_tree(staging.path(), &what)?;
        if let Some(named) = named
            && Release::parse(&version) != Some(named)
        {
            return Err(StageError::corrupt(format!(
                "{what}: expected a {named} tree, but its Makefile says {version}"
            ))
            .with_hint("the file is misnamed or the mirror serves the wrong file; pin it by digest with a URL spec instead"));
        }
        if !dirty {
            self.check_memo(&fetched.sha256, &version)?;
        }
        let source_dir = staging.install(&tree)?;
        let source_dir = std::fs::canonicalize(&source_dir).at("resolve", &source_dir)?;
        cx.progress.note(&format!(
            "unpacked {} ({} files, {}) into {}",
            location.file_name(),
            fetched.extracted.entries,
            ktstr_sdk::context::human_bytes(fetched.extracted.bytes),
            source_dir.display()
        ));
        let id = expected.unwrap_or(&fetched.sha256);
        if !dirty && let Ok(root) = self.cache_root() {
            memo::record(&root, &fetched.sha256, &version);
            if let Location::Http(url) = &location {
                revalidate::remember(&root, url, &fetched.sha256, &validators);
            }
        }
        Ok(AcquiredSource {
            source_dir,
            identity: Self::digest_identity(id),
            version: Some(version),
            is_temp: true,
            is_dirty: dirty,
            is_git: false,
            is_local: false,
        })
    }
}

fn location_of(url: &str) -> Location {
    match fetch::file_url_path(url) {
        Some(path) => Location::File(path),
        None => Location::Http(url.to_string()),
    }
}

fn rc_not_offered(release: &Release) -> StageError {
    StageError::not_found(format!(
        "--kernel {}: release candidates are only offered as tarballs while current, and releases.json does not list it",
        release.file_version()
    ))
    .with_hint(format!(
        "build it from git: --kernel git+https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git#tag=v{}",
        release.file_version()
    ))
}

impl SourceAcquirer for TarballSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        spec::claims(&spec.raw)
    }

    fn accepted_forms(&self) -> Vec<String> {
        spec::accepted_forms()
    }

    fn resolve(&self, spec: &KernelSpec, cx: &StageContext) -> Result<Vec<Resolved>> {
        cx.cancel.check()?;
        match spec::parse(&spec.raw)? {
            Spec::Version {
                version: VersionSpec::Exact(release),
                sha256,
            } if release.rc.is_none() => Ok(vec![self.resolve_release(release, sha256)]),
            Spec::Version {
                version: VersionSpec::Exact(release),
                ..
            } => {
                let client = fetch::client(&self.settings)?;
                let mut catalog = Catalog::new(&self.settings, &client, cx);
                match catalog.listed_rc(&release)?.and_then(|l| l.source) {
                    Some(url) => Ok(vec![Resolved {
                        spec: KernelSpec::new(url),
                        identity: None,
                        version: Some(release.to_string()),
                    }]),
                    None => Err(rc_not_offered(&release)),
                }
            }
            Spec::Version {
                version: VersionSpec::Series(major, minor),
                ..
            } => {
                let client = fetch::client(&self.settings)?;
                let mut catalog = Catalog::new(&self.settings, &client, cx);
                Ok(vec![self.resolve_series(&mut catalog, major, minor)?])
            }
            Spec::Range { from, to } => {
                let client = fetch::client(&self.settings)?;
                let mut catalog = Catalog::new(&self.settings, &client, cx);
                self.resolve_range(&mut catalog, from, to, cx)
            }
            Spec::Tarball {
                location,
                sha256: Some(hex),
            } => Ok(vec![Resolved {
                spec: spec.clone(),
                identity: Some(Self::digest_identity(&hex)),
                version: self.version_for(&location, &hex),
            }]),
            Spec::Tarball {
                location: Location::File(path),
                sha256: None,
            } => {
                // Hashing a local file costs far less than unpacking it, and
                // with the version (from its name, or remembered from an
                // earlier unpack) it makes the file keyable.
                fetch::open_file(&path).map_err(|e| e.context(format!("--kernel {}", spec.raw)))?;
                let (hex, _) = ktstr_sdk::hash::sha256_file_cancellable(&path, Some(&cx.cancel))?;
                Ok(vec![Resolved {
                    spec: KernelSpec::new(format!("{}#sha256={hex}", spec.raw)),
                    identity: Some(Self::digest_identity(&hex)),
                    version: self.version_for(&Location::File(path), &hex),
                }])
            }
            Spec::Tarball {
                location: Location::Http(url),
                sha256: None,
            } => Ok(vec![self.revalidated(spec, &url, cx)?]),
        }
    }

    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        match spec::parse(&spec.raw)? {
            Spec::Version {
                version: VersionSpec::Exact(release),
                sha256,
            } => self.acquire_release(release, sha256, cx),
            Spec::Version {
                version: VersionSpec::Series(..),
                ..
            } => {
                let resolved = self.resolve(spec, cx)?.remove(0);
                self.acquire(&resolved.spec, cx)
            }
            Spec::Range { .. } => Err(StageError::invalid_input(format!(
                "--kernel {}: a range names several kernels; resolve it first and acquire each member",
                spec.raw
            ))),
            Spec::Tarball { location, sha256 } => {
                let client = fetch::client(&self.settings)?;
                let named = sha256.as_ref().and_then(|_| location.release_from_name());
                self.acquire_tarball(&client, location, sha256.as_deref(), named, cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_as_builtin_source() {
        let p = ktstr_sdk::registry::builtins()
            .into_iter()
            .find(|p| p.name == NAME)
            .expect("tarball is registered");
        assert_eq!(p.constructor.kind(), StageKind::Source);
        let Constructor::Source(make) = p.constructor else {
            unreachable!()
        };
        let source = make(&PluginConfig::Null).unwrap();
        assert!(source.claims(&KernelSpec::new("6.12.3")));
        assert!(!source.claims(&KernelSpec::new("./linux")));
        assert!(source.accepted_forms().len() >= 3);
    }

    #[test]
    fn exact_release_resolves_without_network() {
        let settings = Settings {
            mirror: "http://127.0.0.1:9".into(),
            releases_url: "http://127.0.0.1:9/releases.json".into(),
            ..Settings::default()
        };
        let source = TarballSource::with_settings(settings, None);
        let r = source
            .resolve(&KernelSpec::new("6.12.3"), &StageContext::quiet())
            .unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_keyable());
        assert_eq!(r[0].spec.raw, "6.12.3");
        assert_eq!(r[0].version.as_deref(), Some("6.12.3"));
        let id = r[0].identity.as_ref().unwrap();
        assert_eq!(
            (id.kind.as_str(), id.id.as_str()),
            ("tarball", "linux-6.12.3")
        );
        let r = source
            .resolve(&KernelSpec::new("6.12.0"), &StageContext::quiet())
            .unwrap();
        assert_eq!(r[0].identity.as_ref().unwrap().id, "linux-6.12.0");
    }
}
