//! Source acquisition: turning a `--kernel` spec into a tree on disk.

use std::path::PathBuf;

use crate::context::StageContext;
use crate::error::Result;

/// The `--kernel` argument exactly as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelSpec {
    pub raw: String,
}

impl KernelSpec {
    pub fn new(raw: impl Into<String>) -> Self {
        Self { raw: raw.into() }
    }
}

/// What identifies the source's content, before any build.
///
/// `id` must change whenever the tree's content can change: a full git
/// commit id, a tarball sha256, a release version verified by digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceIdentity {
    /// The acquirer's kind, used in the readable key prefix ("local", "tarball", "git").
    pub kind: String,
    /// Content identity; empty when the source has none (a dirty or non-git tree).
    pub id: String,
    /// Short form for messages (e.g. 12 hex digits of a commit).
    pub short: Option<String>,
}

/// A kernel tree ready to configure and build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcquiredSource {
    /// The tree's top directory (canonical).
    pub source_dir: PathBuf,
    pub identity: SourceIdentity,
    /// Kernel release from the top Makefile (`6.12.3`, `6.13.0-rc1`).
    pub version: Option<String>,
    /// The tree is ktstr's own scratch copy and is removed after the build.
    pub is_temp: bool,
    /// The tree has changes its identity does not capture; never cache it.
    pub is_dirty: bool,
    /// The tree is a git work tree (decides which dirty hint to show).
    pub is_git: bool,
    /// The tree is the user's own (not a scratch copy): enables the tree
    /// lock, `--clean` and compile_commands.json.
    pub is_local: bool,
}

/// A fresh look at a local tree, compared with the acquire-time one to
/// detect edits and commits made while ktstr waited or built.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceState {
    pub is_dirty: bool,
    pub is_git: bool,
    /// Full HEAD commit id, when the tree is a git work tree with a HEAD.
    pub head: Option<String>,
}

/// A spec narrowed to the exact content it names, before the tree is fetched.
///
/// Resolving first is what lets a cache hit skip the download: when both
/// `identity` and `version` are known, the host derives the cache key from
/// them and only calls [`SourceAcquirer::acquire`] on a miss.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// What `acquire` is given. Pinned where the spec could move (a branch
    /// becomes `#sha=<commit>`, a version becomes its tarball URL with
    /// `#sha256=`), so the tree fetched is the one `identity` names.
    pub spec: KernelSpec,
    /// Content identity, when known without fetching the tree.
    pub identity: Option<SourceIdentity>,
    /// Kernel release (`6.12.3`), when known; part of the key's readable prefix.
    pub version: Option<String>,
}

impl Resolved {
    /// Nothing is known until the tree is acquired (local trees, plain URLs).
    pub fn unknown(spec: KernelSpec) -> Self {
        Self {
            spec,
            identity: None,
            version: None,
        }
    }

    /// Whether the host can derive the cache key before acquiring.
    pub fn is_keyable(&self) -> bool {
        self.identity.as_ref().is_some_and(|i| !i.id.is_empty()) && self.version.is_some()
    }
}

/// Stage 1: find and prepare a kernel tree.
pub trait SourceAcquirer: Send + Sync {
    /// Whether this acquirer understands `spec`. The host asks every
    /// acquirer in registration order and uses the first that claims it.
    fn claims(&self, spec: &KernelSpec) -> bool;

    /// Spec forms this acquirer accepts, for the "nobody claimed it" error.
    fn accepted_forms(&self) -> Vec<String>;

    /// Narrow `spec` to what it names without fetching the tree: resolve a
    /// version prefix to its newest release, a branch to its commit, a range
    /// to its members (one [`Resolved`] each, built in order). Cheap network
    /// lookups are fine here; downloads are not.
    fn resolve(&self, spec: &KernelSpec, cx: &StageContext) -> Result<Vec<Resolved>> {
        let _ = cx;
        Ok(vec![Resolved::unknown(spec.clone())])
    }

    /// Make the tree available and describe it. `spec` is a
    /// [`Resolved::spec`] from this acquirer. When the resolution carried an
    /// identity and version, the returned source must carry the same ones.
    /// Scratch trees (`is_temp`) go under [`crate::paths::scratch_dir`];
    /// the host removes them after the build.
    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource>;

    /// Re-inspect a tree this acquirer returned. `None` means the tree
    /// cannot change behind ktstr's back (scratch copies).
    fn probe(&self, source: &AcquiredSource, cx: &StageContext) -> Result<Option<SourceState>> {
        let _ = (source, cx);
        Ok(None)
    }

    /// The lock files this acquirer takes, for `ktstr locks` (see
    /// [`crate::lock_list`]). None by default.
    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        Ok(Vec::new())
    }
}

/// The short form of a content id for messages: its first 12 characters.
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}

/// Read `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from a kernel Makefile.
pub fn kernel_version_from_makefile(makefile: &str) -> Option<String> {
    let mut fields = [None::<String>, None, None, None];
    const NAMES: [&str; 4] = ["VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"];
    for line in makefile.lines().take(40) {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if let Some(i) = NAMES.iter().position(|n| *n == name.trim()) {
            fields[i].get_or_insert_with(|| value.trim().to_string());
        }
    }
    let [Some(v), Some(p), s, e] = fields else {
        return None;
    };
    let s = s.filter(|s| !s.is_empty()).unwrap_or_else(|| "0".into());
    Some(format!("{v}.{p}.{s}{}", e.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_is_twelve_chars_at_most() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn parses_kernel_makefile_version() {
        let mk = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n";
        assert_eq!(
            kernel_version_from_makefile(mk).as_deref(),
            Some("6.12.117")
        );
        let rc = "VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n";
        assert_eq!(
            kernel_version_from_makefile(rc).as_deref(),
            Some("6.13.0-rc1")
        );
        assert_eq!(kernel_version_from_makefile("all:\n\ttrue\n"), None);
    }
}
