//! Built-in source: git remotes through a local bare mirror, checked out
//! into scratch trees.
//!
//! `--kernel git+https://host/linux.git#tag=v6.12` names a commit on a
//! remote. [`resolve`](SourceAcquirer::resolve) asks the remote which commit
//! the ref points at (one `ls-refs` round trip, no objects), so the cache key
//! follows the ref: a moved branch gives a new key, an unchanged one a hit.
//! When the mirror already holds the commit, the kernel release is read from
//! its Makefile in the object database and the key is complete before
//! anything is downloaded or written.
//!
//! [`acquire`](SourceAcquirer::acquire) fetches the commit into the remote's
//! bare mirror (see [`mirror`]) unless it is already there, then writes its
//! tree into a fresh scratch directory (see [`checkout`]). The user's own
//! repositories are only ever read, through the git protocol.
//!
//! Spec grammar: [`spec`]; the full user documentation is
//! `docs/sources-git.md`.

pub mod checkout;
pub mod mirror;
pub mod remote;
pub mod spec;

use std::path::PathBuf;

use ktstr_sdk::config::ConfigReader;
use ktstr_sdk::lock::{LockMode, describe_holders, lock_reporting};
use ktstr_sdk::paths;
use ktstr_sdk::prelude::*;
use ktstr_sdk::source::short_id;

use crate::mirror::Mirror;
use crate::remote::Timeouts;
use crate::spec::{GitRef, GitSpec};

/// The plugin's registered name and its identity kind.
pub const NAME: &str = "git";

/// Fetch depth when the config does not set one: the commit alone.
pub const DEFAULT_DEPTH: u32 = 1;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "git remotes (--kernel git+URL#tag=|#branch=|#sha=) through a bare mirror in the cache, checked out into scratch trees",
        constructor: Constructor::Source(|cfg| Ok(Box::new(GitSource::from_config(cfg)?))),
    }
}

/// `[plugin.git]` settings.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Commits of history fetched per wanted commit; 0 = full history.
    depth: Option<u32>,
    /// Seconds an http(s) remote may send nothing before ktstr gives up.
    timeout_secs: Option<u64>,
    /// Seconds to establish an http(s) connection.
    connect_timeout_secs: Option<u64>,
}

/// Source acquirer for git remotes.
#[derive(Debug, Clone)]
pub struct GitSource {
    /// Cache root; `None` means [`paths::cache_root`] at call time.
    root: Option<PathBuf>,
    depth: u32,
    timeouts: Timeouts,
}

impl Default for GitSource {
    fn default() -> Self {
        Self {
            root: None,
            depth: DEFAULT_DEPTH,
            timeouts: Timeouts::default(),
        }
    }
}

impl GitSource {
    /// Build from the `[plugin.git]` table (`Null` when absent).
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        let config: Config = ConfigReader::new(NAME, cfg)
            .and_then(|r| r.deserialize())
            .map_err(|e| {
                e.with_hint(
                    "settings: depth = N (commits of history to fetch; 0 = all), timeout_secs = N, connect_timeout_secs = N",
                )
            })?;
        let mut timeouts = Timeouts::default();
        for (key, value, slot) in [
            ("timeout_secs", config.timeout_secs, &mut timeouts.stall),
            (
                "connect_timeout_secs",
                config.connect_timeout_secs,
                &mut timeouts.connect,
            ),
        ] {
            match value {
                Some(0) => {
                    return Err(StageError::invalid_input(format!(
                        "[plugin.git]: {key} = 0: must be at least 1 second"
                    )));
                }
                Some(secs) => *slot = std::time::Duration::from_secs(secs),
                None => {}
            }
        }
        Ok(Self {
            root: None,
            depth: config.depth.unwrap_or(DEFAULT_DEPTH),
            timeouts,
        })
    }

    /// Use `root` as the cache root instead of the environment's.
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    fn root(&self) -> Result<PathBuf> {
        match &self.root {
            Some(root) => Ok(root.clone()),
            None => paths::cache_root(),
        }
    }

    /// The commit `spec` names: itself for `#sha=`, else asked of the remote.
    fn commit_of(&self, spec: &GitSpec, mirror: &Mirror) -> Result<String> {
        match &spec.reference {
            GitRef::Sha(sha) => Ok(sha.clone()),
            _ => remote::resolve_ref(&mirror.repo, spec, self.timeouts),
        }
    }
}

fn identity(commit: &str) -> SourceIdentity {
    SourceIdentity {
        kind: NAME.to_string(),
        id: commit.to_string(),
        short: Some(short_id(commit).to_string()),
    }
}

/// The release in `commit`'s Makefile, or an error saying the commit is
/// not a kernel tree.
fn require_version(spec: &GitSpec, mirror: &Mirror, commit: &str) -> Result<String> {
    mirror.kernel_version(commit)?.ok_or_else(|| {
        StageError::invalid_input(format!(
            "git+{} at {} (commit {}): not a kernel source tree (its top Makefile has no VERSION/PATCHLEVEL lines)",
            spec.url,
            spec.reference.describe(),
            short_id(commit)
        ))
        .with_hint("point --kernel at a Linux kernel repository and a ref of it")
    })
}

impl SourceAcquirer for GitSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        spec::claims(&spec.raw)
    }

    fn accepted_forms(&self) -> Vec<String> {
        spec::accepted_forms()
    }

    fn resolve(&self, raw: &KernelSpec, cx: &StageContext) -> Result<Vec<Resolved>> {
        cx.cancel.check()?;
        let spec = spec::parse(&raw.raw)?;
        let root = self.root()?;
        let (commit, mirror) = match &spec.reference {
            // A commit id needs no network; a mirror that does not exist
            // yet is not created just to learn that it lacks the commit.
            GitRef::Sha(sha) => {
                let existing = mirror::git_mirror(&root, &spec.url)
                    .exists()
                    .then(|| Mirror::open_or_init(&root, &spec.url))
                    .transpose()?;
                (sha.clone(), existing)
            }
            _ => {
                let mirror = Mirror::open_or_init(&root, &spec.url)?;
                (self.commit_of(&spec, &mirror)?, Some(mirror))
            }
        };
        let version = match &mirror {
            Some(m) if m.has_commit(&commit) => Some(require_version(&spec, m, &commit)?),
            _ => None,
        };
        tracing::debug!(url = %spec.url, reference = %spec.reference.describe(), %commit, ?version, "resolved git spec");
        Ok(vec![Resolved {
            spec: KernelSpec::new(spec.pinned(&commit)),
            identity: Some(identity(&commit)),
            version,
        }])
    }

    fn acquire(&self, raw: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        let spec = spec::parse(&raw.raw)?;
        let root = self.root()?;
        let mirror = Mirror::open_or_init(&root, &spec.url)?;
        let commit = self.commit_of(&spec, &mirror)?;
        let interrupt = cx.cancel.flag();
        let lock_path = mirror::mirror_lock(&root, &spec.url);

        if !mirror.has_commit(&commit) {
            let (_lock, _waited) = lock_reporting(&lock_path, LockMode::Exclusive, |holders| {
                cx.progress.note(&format!(
                    "waiting for the git mirror of {} ({})",
                    spec.url,
                    describe_holders(holders)
                ));
            })?;
            cx.cancel.check()?;
            for stale in mirror.remove_stale_locks() {
                cx.progress.note(&format!(
                    "removed {} left in the git mirror of {} by a fetch that was killed",
                    stale.display(),
                    spec.url
                ));
            }
            // A peer may have fetched it while we waited.
            if !mirror.has_commit(&commit) {
                cx.progress.step(&format!(
                    "fetching {} ({}) from {}",
                    short_id(&commit),
                    spec.reference.describe(),
                    spec.url
                ));
                let fetched = mirror.fetch_commit(
                    &spec,
                    &commit,
                    self.depth,
                    self.timeouts,
                    &cx.progress,
                    &interrupt,
                );
                cx.progress.finish_step();
                fetched?;
            }
        }
        cx.cancel.check()?;
        let version = require_version(&spec, &mirror, &commit)?;

        // No lock from here: the checkout only reads objects, which a
        // concurrent fetch never removes (it only adds packs by rename), so
        // a checkout does not wait behind another commit's long fetch.
        let scratch = ktstr_sdk::scratch::Scratch::stage(&root, NAME)?;
        cx.progress.step(&format!(
            "checking out {} into {}",
            short_id(&commit),
            scratch.path().display()
        ));
        let written = checkout::checkout(&mirror.path, &commit, scratch.path(), &interrupt);
        cx.progress.finish_step();
        written?;
        cx.cancel.check()?;
        let tree = scratch.path().to_path_buf();
        let installed = scratch.install(&tree)?;
        let source_dir = std::fs::canonicalize(&installed).at("resolve", &installed)?;
        Ok(AcquiredSource {
            source_dir,
            identity: identity(&commit),
            version: Some(version),
            is_temp: true,
            is_dirty: false,
            is_git: false,
            is_local: false,
        })
    }

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        Ok(ktstr_sdk::lock_list::list_dir(
            &paths::lock_dir(&self.root()?),
            "mirror",
            mirror::LOCK_PREFIX,
        ))
    }
}
