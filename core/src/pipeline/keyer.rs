//! The cache key of what building now would produce.
//!
//! A downloaded tree is keyed by its identity and the request as declared;
//! a local tree by its identity and the digest of the `.config` in its
//! build directory, when that `.config` carries the request. Reading the
//! `.config` means hashing a file and asking the configurer, so each phase
//! reads it once ([`ConfigSnapshot`]) and shares what it read.

use std::path::Path;

use ktstr_sdk::Result;
use ktstr_sdk::cache::KeyComponent;
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::source::AcquiredSource;

use crate::identity::{self, ConfigIdentity, DerivedKey, KeyInputs};
use crate::registry::Stages;
use crate::tree_config;

/// Derives keys for one request (the parts that don't change mid-run).
pub(super) struct Keyer {
    pub root: std::path::PathBuf,
    pub arch: &'static str,
    pub builder: Vec<KeyComponent>,
    /// The configurer's identity of the request (profile, fragments).
    pub declared: Vec<KeyComponent>,
}

/// One read of a local build directory's `.config`.
pub(super) enum ConfigSnapshot {
    /// Not read: the source is downloaded, keyed as declared.
    Unread,
    /// Read; `configured` says whether it carries the request.
    Read {
        configured: bool,
        sha256: Option<String>,
    },
}

impl ConfigSnapshot {
    /// Read `build_dir`'s `.config` if `source` is a local tree: whether
    /// it carries `request` (not asked for a dirty tree, which is never
    /// keyed) and its digest, if there is one.
    pub fn take(
        stages: &Stages,
        source: &AcquiredSource,
        build_dir: &Path,
        request: &ConfigureRequest,
    ) -> Result<Self> {
        if !source.is_local {
            return Ok(Self::Unread);
        }
        if source.is_dirty || !stages.configurer.stage.is_configured(build_dir, request)? {
            return Ok(Self::Read {
                configured: false,
                sha256: dot_config_sha256(build_dir).ok(),
            });
        }
        Ok(Self::Read {
            configured: true,
            sha256: Some(dot_config_sha256(build_dir)?),
        })
    }

    /// The `.config` digest if it was read, whether or not it carries the
    /// request.
    pub fn any_sha256(&self) -> Option<&str> {
        match self {
            Self::Read { sha256, .. } => sha256.as_deref(),
            Self::Unread => None,
        }
    }

    /// The `.config` digest, if it was read and carries the request.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Self::Read {
                configured: true,
                sha256,
            } => sha256.as_deref(),
            _ => None,
        }
    }
}

impl Keyer {
    pub fn derive(&self, source: &AcquiredSource, config: ConfigIdentity) -> DerivedKey {
        identity::derive(&KeyInputs {
            source,
            arch: self.arch,
            config,
            builder: &self.builder,
        })
    }

    /// The key of a resolution known before anything is fetched.
    pub fn declared_key(&self, source: &AcquiredSource) -> DerivedKey {
        self.derive(source, ConfigIdentity::Declared(self.declared.clone()))
    }

    /// The key of what building now would produce, if it is knowable
    /// without configuring: fresh trees always, local trees when their
    /// `.config` (as `snapshot` read it) already satisfies the request and
    /// is not ktstr's own output for another request.
    pub fn current(
        &self,
        source: &AcquiredSource,
        build_dir: &Path,
        snapshot: &ConfigSnapshot,
    ) -> Option<DerivedKey> {
        if source.is_dirty {
            return None;
        }
        if !source.is_local {
            return Some(self.declared_key(source));
        }
        let sha = snapshot.sha256()?;
        if tree_config::is_leftover(&self.root, build_dir, sha, &self.declared) {
            return None;
        }
        Some(self.derive(source, ConfigIdentity::DotConfig(sha.to_string())))
    }
}

pub(super) fn dot_config_sha256(tree: &Path) -> Result<String> {
    Ok(ktstr_sdk::hash::sha256_file(&tree.join(".config"))?.0)
}
