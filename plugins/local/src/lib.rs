//! Built-in source acquirer for a kernel tree on local disk.
//!
//! `--kernel ./linux` (or any other path) names a kernel source tree the
//! user owns. ktstr builds it in place; it never copies or modifies it here.
//! Its identity is the HEAD commit when the tree is a clean git work tree;
//! any tracked change, a tree without commits, or a tree outside git makes it
//! dirty, and dirty trees are built but never cached.
//!
//! [`probe_tree`] is the dirty check (module `probe`, with the status
//! comparison in `changes`); `spec` decides which specs are local paths
//! and `tree` checks that a path is the top of a kernel tree.

mod changes;
mod probe;
mod spec;
mod stat_match;
mod tree;

use std::path::PathBuf;

use ktstr_sdk::prelude::*;

pub use probe::probe_tree;
pub use spec::claims_spec;

use spec::expand_home;
use tree::check_kernel_tree;

/// The plugin's registered name and its identity kind.
pub const NAME: &str = "local";

/// Source acquirer for a kernel tree on local disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSource;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "kernel source tree on local disk (--kernel PATH); clean git trees are cached by HEAD commit",
        constructor: Constructor::Source(|_cfg| Ok(Box::new(LocalSource))),
    }
}

impl SourceAcquirer for LocalSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        claims_spec(&spec.raw)
    }

    fn accepted_forms(&self) -> Vec<String> {
        vec!["PATH to a kernel source tree (./linux, /src/linux, ~/linux)".to_string()]
    }

    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        let raw = spec.raw.as_str();
        let path = expand_home(raw)?;
        let (source_dir, version) = check_kernel_tree(raw, &path)?;
        let state = probe_tree(&source_dir)?;
        Ok(acquired_source(source_dir, version, state))
    }

    fn probe(&self, source: &AcquiredSource, cx: &StageContext) -> Result<Option<SourceState>> {
        cx.cancel.check()?;
        probe_tree(&source.source_dir).map(Some)
    }
}

fn acquired_source(
    source_dir: PathBuf,
    version: Option<String>,
    state: SourceState,
) -> AcquiredSource {
    let clean_head = state.head.as_ref().filter(|_| !state.is_dirty);
    AcquiredSource {
        identity: SourceIdentity {
            kind: NAME.to_string(),
            id: clean_head.cloned().unwrap_or_default(),
            short: state
                .head
                .as_deref()
                .map(|h| ktstr_sdk::source::short_id(h).to_string()),
        },
        source_dir,
        version,
        is_temp: false,
        is_dirty: state.is_dirty,
        is_git: state.is_git,
        is_local: true,
    }
}

#[cfg(test)]
mod tests;
