//! The spec grammar this plugin claims, parsed once into a [`Spec`].
//!
//! Versions (`6.12.3`, `6.12`, `6.10..6.12`, `6.13-rc3`), tarball URLs
//! (`http(s)://`, `file://`) and plain paths to tarball files, each
//! optionally carrying `#sha256=<64 hex>`. Claiming is purely syntactic
//! (plus one `is_dir` check), so the host can ask every acquirer cheaply
//! and the `local` source keeps directories even when they are named like
//! archives.

use std::fmt;
use std::path::PathBuf;

use ktstr_sdk::archive::has_archive_suffix;
use ktstr_sdk::prelude::*;

/// File name endings this plugin accepts for archives (the content is
/// recognised by its magic bytes, not by the name). One list with the
/// `local` source, which leaves such paths to this plugin.
pub use ktstr_sdk::archive::ARCHIVE_SUFFIXES;

/// A kernel.org release number: `6.12.3`, `6.12` (= `6.12.0`), `6.13-rc3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `-rcN`; `None` for a final release. Ordered before the final
    /// release of the same `major.minor` by [`Release::sort_key`].
    pub rc: Option<u32>,
}

impl Release {
    /// Parse `6.12`, `6.12.3`, `6.13-rc3` (kernel.org spelling) or
    /// `6.13.0-rc3` (Makefile spelling).
    pub fn parse(s: &str) -> Option<Release> {
        let (nums, rc) = match s.split_once("-rc") {
            Some((n, rc)) => (n, Some(parse_num(rc)?)),
            None => (s, None),
        };
        let mut it = nums.split('.');
        let major = parse_num(it.next()?)?;
        let minor = parse_num(it.next()?)?;
        let patch = match it.next() {
            Some(p) => parse_num(p)?,
            None => 0,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Release {
            major,
            minor,
            patch,
            rc,
        })
    }

    /// Order: rc1 < rc2 < final (.0) < .1 < ...
    pub fn sort_key(&self) -> (u32, u32, u32, u32) {
        (
            self.major,
            self.minor,
            self.patch,
            self.rc.unwrap_or(u32::MAX),
        )
    }

    pub fn series(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// The spelling kernel.org uses in file names: `6.12` for the `.0`
    /// release, `6.13-rc3` for release candidates.
    pub fn file_version(&self) -> String {
        let base = if self.patch == 0 {
            format!("{}.{}", self.major, self.minor)
        } else {
            format!("{}.{}.{}", self.major, self.minor, self.patch)
        };
        match self.rc {
            Some(rc) => format!("{base}-rc{rc}"),
            None => base,
        }
    }

    /// `linux-6.12.3.tar.xz`.
    pub fn file_name(&self) -> String {
        format!("linux-{}.tar.xz", self.file_version())
    }

    /// The kernel.org directory holding this release's tarball: `v6.x`.
    pub fn major_dir(&self) -> String {
        if self.major == 2 {
            "v2.6".to_string()
        } else {
            format!("v{}.x", self.major)
        }
    }
}

/// The Makefile spelling (`6.12.0`, `6.13.0-rc3`): what the tree reports
/// and what goes into the cache key.
impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(rc) = self.rc {
            write!(f, "-rc{rc}")?;
        }
        Ok(())
    }
}

fn parse_num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A release series (`6.12`) or an exact release, as written in a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// `6.12`: the newest stable `6.12.x`.
    Series(u32, u32),
    /// `6.12.3`, `6.12.0`, `6.13-rc3`.
    Exact(Release),
}

impl VersionSpec {
    fn parse(s: &str) -> Option<VersionSpec> {
        let release = Release::parse(s)?;
        let dots = s.split("-rc").next().unwrap_or(s).matches('.').count();
        Some(if dots == 1 && release.rc.is_none() {
            VersionSpec::Series(release.major, release.minor)
        } else {
            VersionSpec::Exact(release)
        })
    }
}

/// Where a tarball comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `http://` or `https://`.
    Http(String),
    /// A local file (from `file://` or a plain path).
    File(PathBuf),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Http(url) => f.write_str(url),
            Location::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Location {
    /// The last path segment (`linux-6.12.3.tar.xz`).
    pub fn file_name(&self) -> String {
        match self {
            Location::Http(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path.rsplit('/').next().unwrap_or(path).to_string()
            }
            Location::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The release named by a `linux-X.Y[.Z][-rcN].tar.*` file name.
    pub fn release_from_name(&self) -> Option<Release> {
        let name = self.file_name();
        let stem = name.strip_prefix("linux-")?;
        let stem = ARCHIVE_SUFFIXES.iter().find_map(|s| stem.strip_suffix(s))?;
        Release::parse(stem)
    }
}

/// A parsed spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A kernel.org version, with the expected digest when pinned.
    Version {
        version: VersionSpec,
        sha256: Option<String>,
    },
    /// `6.10..6.12` or `6.12.1..6.12.4`.
    Range { from: VersionSpec, to: VersionSpec },
    /// A tarball URL or file.
    Tarball {
        location: Location,
        sha256: Option<String>,
    },
}

/// Split off `#sha256=<hex>`; `Err` when a fragment is present but malformed.
fn split_digest(raw: &str) -> std::result::Result<(&str, Option<String>), String> {
    let Some((body, fragment)) = raw.split_once('#') else {
        return Ok((raw, None));
    };
    let Some(hex) = fragment.strip_prefix("sha256=") else {
        return Err(format!(
            "unknown fragment #{fragment}: the only one understood is #sha256=<64 hex digits>"
        ));
    };
    let digest = hex.to_ascii_lowercase();
    if !ktstr_sdk::hash::is_sha256_hex(&digest) {
        return Err(format!(
            "#sha256={hex}: a sha256 digest is 64 hex digits (got {} characters)",
            hex.len()
        ));
    }
    Ok((body, Some(digest)))
}

fn scheme(s: &str) -> Option<&'static str> {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    ["http://", "https://", "file://"]
        .into_iter()
        .find(|p| lower.starts_with(p))
}

/// Whether this plugin claims `raw` (a syntactic check; a malformed
/// `#sha256=` on an otherwise claimed spec is still claimed so that
/// [`parse`] can say what is wrong with it).
pub fn claims(raw: &str) -> bool {
    let body = raw.split_once('#').map_or(raw, |(b, _)| b);
    if body.is_empty() {
        return false;
    }
    if let Some((a, b)) = body.split_once("..") {
        return VersionSpec::parse(a).is_some() && VersionSpec::parse(b).is_some();
    }
    if VersionSpec::parse(body).is_some() {
        return true;
    }
    if let Some(scheme) = scheme(body) {
        let path = body.split('?').next().unwrap_or(body);
        return has_archive_suffix(path) && path.len() > scheme.len();
    }
    if body.contains("://") || body.starts_with("git+") {
        return false;
    }
    has_archive_suffix(body) && !local_path(body).is_dir()
}

/// The file a local archive spec names. Without `$HOME` a `~/` path stays
/// as written (and is then not found, under that name).
fn local_path(body: &str) -> PathBuf {
    ktstr_sdk::paths::expand_home(body).unwrap_or_else(|| PathBuf::from(body))
}

/// Parse a claimed spec. Errors name the spec and say how to write it.
pub fn parse(raw: &str) -> Result<Spec> {
    let bad = |why: String| {
        StageError::invalid_input(format!("--kernel {raw}: {why}")).with_hint(FORMS_HINT)
    };
    let (body, sha256) = split_digest(raw).map_err(bad)?;
    if let Some((a, b)) = body.split_once("..") {
        let (Some(from), Some(to)) = (VersionSpec::parse(a), VersionSpec::parse(b)) else {
            return Err(bad("a range is VERSION..VERSION".into()));
        };
        if sha256.is_some() {
            return Err(bad("a range cannot carry #sha256=".into()));
        }
        return range(raw, from, to).map(|_| Spec::Range { from, to });
    }
    if let Some(version) = VersionSpec::parse(body) {
        if sha256.is_some() && matches!(version, VersionSpec::Series(..)) {
            return Err(bad(
                "#sha256= needs an exact release (6.12.3), not a series".into(),
            ));
        }
        return Ok(Spec::Version { version, sha256 });
    }
    let location = match scheme(body) {
        Some("file://") => {
            let path = &body["file://".len()..];
            if !path.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///srv/linux-6.12.3.tar.xz)".into(),
                ));
            }
            Location::File(PathBuf::from(percent_decode(path)))
        }
        Some(_) => Location::Http(body.to_string()),
        None => Location::File(local_path(body)),
    };
    Ok(Spec::Tarball { location, sha256 })
}

/// Validate a range's shape: both ends series, or both exact releases of
/// one series, with `from <= to`.
fn range(raw: &str, from: VersionSpec, to: VersionSpec) -> Result<()> {
    let err = |why: &str| {
        StageError::invalid_input(format!("--kernel {raw}: {why}")).with_hint(
            "write a range of series (6.10..6.12: the newest release of each) or of releases within one series (6.12.1..6.12.4)",
        )
    };
    match (from, to) {
        (VersionSpec::Series(a, b), VersionSpec::Series(c, d)) => {
            if (a, b) > (c, d) {
                return Err(err("the range is empty (its start is after its end)"));
            }
        }
        (VersionSpec::Exact(a), VersionSpec::Exact(b)) => {
            if a.rc.is_some() || b.rc.is_some() {
                return Err(err("release candidates cannot be range ends"));
            }
            if a.series() != b.series() {
                return Err(err("a range of exact releases must stay within one series"));
            }
            if a.patch > b.patch {
                return Err(err("the range is empty (its start is after its end)"));
            }
        }
        _ => return Err(err("both ends must have the same form")),
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The spec forms, for messages.
pub const FORMS_HINT: &str = "accepted: 6.12.3, 6.12 (newest 6.12.x), 6.10..6.12, \
https://host/linux-6.12.3.tar.xz, file:///path/linux-6.12.3.tar.xz, ./linux-6.12.3.tar.xz \
(.tar.xz/.tar.gz/.tar.zst), each optionally followed by #sha256=<64 hex digits>";

/// One line per form for `accepted_forms()`.
pub fn accepted_forms() -> Vec<String> {
    [
        "VERSION: a kernel.org release (6.12.3), a series for its newest release (6.12), or a release candidate (6.13-rc3)",
        "VERSION..VERSION: every series in a range (6.10..6.12), or releases within one series (6.12.1..6.12.4)",
        "URL of a kernel tarball: http(s)://host/linux-6.12.3.tar.xz (.tar.gz, .tar.zst), optionally #sha256=<64 hex>",
        "file:///path/linux-6.12.3.tar.xz or a PATH to a tarball file (./linux-6.12.3.tar.xz), optionally #sha256=<64 hex>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_order() {
        let r = Release::parse("6.12.3").unwrap();
        assert_eq!(r.to_string(), "6.12.3");
        assert_eq!(r.file_name(), "linux-6.12.3.tar.xz");
        let zero = Release::parse("6.12").unwrap();
        assert_eq!(zero.to_string(), "6.12.0");
        assert_eq!(zero.file_name(), "linux-6.12.tar.xz");
        let rc = Release::parse("6.13-rc3").unwrap();
        assert_eq!(rc.to_string(), "6.13.0-rc3");
        assert_eq!(rc.file_version(), "6.13-rc3");
        assert_eq!(Release::parse("6.13.0-rc3"), Some(rc));
        assert!(rc.sort_key() < Release::parse("6.13").unwrap().sort_key());
        assert!(Release::parse("6.12.2").unwrap().sort_key() < r.sort_key());
        for bad in ["6", "6.x", "6.12.3.4", "v6.12", "6..12", "6.12-rc", ""] {
            assert_eq!(Release::parse(bad), None, "{bad}");
        }
        assert_eq!(r.major_dir(), "v6.x");
    }

    #[test]
    fn claims_versions_urls_and_tarball_paths() {
        for yes in [
            "6.12.3",
            "6.12",
            "6.13-rc3",
            "6.10..6.12",
            "6.12.1..6.12.4",
            "6.12.3#sha256=00",
            "https://cdn.example/pub/linux-6.12.3.tar.xz",
            "http://h/linux-6.12.3.tar.gz#sha256=abc",
            "HTTPS://h/x.tar.zst",
            "file:///srv/linux-6.12.3.tar.xz",
            "./linux-6.12.3.tar.xz",
            "linux-6.12.3.tar.xz",
            "/usr/src/linux-source-6.12.tar.xz",
            "~/linux.tgz",
        ] {
            assert!(claims(yes), "{yes}");
        }
        for no in [
            "",
            "./linux",
            "/src/linux",
            ".",
            "git+https://h/linux.git#tag=v6.12",
            "https://h/linux.git",
            "https://h/",
            "ssh://h/linux.tar.xz",
            "6",
            "linux-6.12",
            "cache:6.12.3-tarball-x86_64-abcd",
        ] {
            assert!(!claims(no), "{no}");
        }
    }

    #[test]
    fn directory_named_like_a_tarball_is_left_to_local() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux-6.12.tar.xz");
        std::fs::create_dir(&tree).unwrap();
        assert!(!claims(tree.to_str().unwrap()));
        std::fs::remove_dir(&tree).unwrap();
        std::fs::write(&tree, b"x").unwrap();
        assert!(claims(tree.to_str().unwrap()));
    }

    #[test]
    fn parses_digests_ranges_and_locations() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse(&format!("6.12.3#sha256={hex}")).unwrap(),
            Spec::Version {
                version: VersionSpec::Exact(Release::parse("6.12.3").unwrap()),
                sha256: Some("ab".repeat(32)),
            }
        );
        assert_eq!(
            parse("6.12").unwrap(),
            Spec::Version {
                version: VersionSpec::Series(6, 12),
                sha256: None
            }
        );
        assert!(matches!(parse("6.10..6.12").unwrap(), Spec::Range { .. }));
        assert!(matches!(
            parse("6.12.1..6.12.4").unwrap(),
            Spec::Range { .. }
        ));
        for bad in [
            "6.12..6.10",
            "6.12.1..6.13.1",
            "6.12..6.12.3",
            "6.12#sha256=00",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
            assert!(e.message.contains(bad), "{}", e.message);
        }
        let e = parse("https://h/linux-6.12.3.tar.xz#sha256=123").unwrap_err();
        assert!(e.message.contains("64 hex digits"), "{}", e.message);
        let e = parse("https://h/linux-6.12.3.tar.xz#tag=x").unwrap_err();
        assert!(e.message.contains("unknown fragment"), "{}", e.message);
        assert_eq!(
            parse("file:///srv/a%20b/linux-6.1.tar.gz").unwrap(),
            Spec::Tarball {
                location: Location::File("/srv/a b/linux-6.1.tar.gz".into()),
                sha256: None
            }
        );
        let Spec::Tarball { location, .. } = parse("https://h/x/linux-6.12.3.tar.zst").unwrap()
        else {
            panic!()
        };
        assert_eq!(location.file_name(), "linux-6.12.3.tar.zst");
        assert_eq!(location.release_from_name(), Release::parse("6.12.3"));
        let Spec::Tarball { location, .. } = parse("/usr/src/linux-source-6.12.tar.xz").unwrap()
        else {
            panic!()
        };
        assert_eq!(location.release_from_name(), None);
    }
}
