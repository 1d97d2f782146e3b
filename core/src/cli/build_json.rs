//! `ktstr build --json`: one JSON object per kernel on stdout, so scripts
//! need not parse stderr. Its field names are a contract (docs/cli.md,
//! "JSON output"); tests/tests/json_output.rs asserts the exact set.

use std::path::PathBuf;
use std::time::Instant;

use ktstr_sdk::cache::{CacheEntry, METADATA_NAME};
use ktstr_sdk::verify::VerifyRecord;
use serde::Serialize;

use crate::pipeline::{NotCached, Outcome};
use crate::tiers::Tiers;

/// One kernel's result.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    /// The cache key; null when the build was not cached.
    pub key: Option<String>,
    /// `hit`, `pulled`, `built` or `not-cached`.
    pub outcome: &'static str,
    /// Why a build was not cached: `dirty`, `not-git` or
    /// `changed-during-build`; null otherwise.
    pub reason: Option<&'static str>,
    pub image: PathBuf,
    /// Null when the entry has none, or the build was not cached.
    pub vmlinux: Option<PathBuf>,
    /// The entry's `.config`; null when not cached.
    pub config: Option<PathBuf>,
    /// The entry's `metadata.json`; null when not cached.
    pub metadata: Option<PathBuf>,
    /// The source tree, for a build that was not cached.
    pub tree: Option<PathBuf>,
    pub durations: Durations,
    /// The entry's boot check (docs/verify.md); null when it has none.
    pub verify: Option<VerifyRecord>,
}

/// Milliseconds.
#[derive(Debug, Serialize)]
pub struct Durations {
    /// This command, start to result.
    pub total_ms: u64,
    /// The entry's recorded configure and build steps (null for a step
    /// that did not run, for entries that did not record them, and for
    /// builds that were not cached).
    pub configure_ms: Option<u64>,
    pub build_ms: Option<u64>,
}

/// When this command started, to time it.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub at: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self { at: Instant::now() }
    }
}

fn from_entry(entry: &CacheEntry, outcome: &'static str, started: Started) -> BuildReport {
    let durations = entry.metadata.build.as_ref().map(|b| &b.durations);
    BuildReport {
        key: Some(entry.key.to_string()),
        outcome,
        reason: None,
        image: entry.image(),
        vmlinux: entry.vmlinux(),
        config: Some(entry.config()),
        metadata: Some(entry.dir.join(METADATA_NAME)),
        tree: None,
        durations: Durations {
            total_ms: started.at.elapsed().as_millis() as u64,
            configure_ms: durations.and_then(|d| d.configure_ms),
            build_ms: durations.and_then(|d| d.build_ms),
        },
        verify: entry.metadata.verify.clone(),
    }
}

impl BuildReport {
    /// `tiers`: the run's tiers, which know whether a remote answered.
    pub fn new(outcome: &Outcome, started: Started, tiers: &Tiers) -> Self {
        match outcome {
            Outcome::Hit(e) if tiers.pulled_from(&e.key).is_some() => {
                from_entry(e, "pulled", started)
            }
            // A concurrent build stored it while this one waited: a hit.
            Outcome::Hit(e) | Outcome::PeerBuilt(e) => from_entry(e, "hit", started),
            Outcome::Stored(e) => from_entry(e, "built", started),
            Outcome::NotCached {
                tree,
                image,
                reason,
            } => BuildReport {
                key: None,
                outcome: "not-cached",
                reason: Some(match reason {
                    NotCached::Dirty { is_git: true } => "dirty",
                    NotCached::Dirty { is_git: false } => "not-git",
                    NotCached::ChangedDuringBuild => "changed-during-build",
                }),
                image: image.clone(),
                vmlinux: None,
                config: None,
                metadata: None,
                tree: Some(tree.clone()),
                durations: Durations {
                    total_ms: started.at.elapsed().as_millis() as u64,
                    configure_ms: None,
                    build_ms: None,
                },
                verify: None,
            },
        }
    }
}

/// A member of a range that failed, in `build --json` of a range.
#[derive(Debug, Serialize)]
pub struct Failed {
    pub kernel: String,
    pub outcome: &'static str,
    pub error: String,
}
