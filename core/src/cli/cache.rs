//! `ktstr cache push <key>` and `ktstr cache pull <key>`: move one entry
//! between the local cache and the remote tiers explicitly (`cache gc` is
//! in cache_gc.rs).
//!
//! Builds already push after storing and pull on a local miss; these are
//! for seeding a bucket with kernels built before it existed, and for
//! fetching a kernel onto a machine that will not build.

use anyhow::Result;
use clap::Subcommand;
use ktstr_sdk::StageError;
use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::context::Progress;

use super::host_context;
use crate::registry::Stages;
use crate::stage_setup;
use crate::tiers::{Backfilled, is_read_only};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Upload a local entry to every writable remote tier.
    Push {
        /// The entry's key (`ktstr kernel list`).
        key: String,
        /// Load a plugin (e.g. `s3-cache`) for this command; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
    },
    /// Download an entry from the first remote tier that has it.
    Pull {
        /// The entry's key (`ktstr kernel list --remote`).
        key: String,
        /// Load a plugin (e.g. `s3-cache`) for this command; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
        /// Print the result as one JSON object on stdout instead of the
        /// image path.
        #[arg(long)]
        json: bool,
    },
    /// Evict the least recently used kernels until a size, age or count
    /// holds (the local cache, or with --remote every writable remote
    /// tier), and remove what no entry owns.
    Gc(super::cache_gc::GcArgs),
}

fn parse_key(raw: &str) -> Result<CacheKey, StageError> {
    CacheKey::parse(raw).map_err(|e| {
        StageError::invalid_input(format!("{raw:?} is not a cache key: {e}"))
            .with_hint("`ktstr kernel list` and `ktstr kernel list --remote` show the keys")
    })
}

pub(super) fn stages(plugins: &[String]) -> Result<Stages> {
    let stages = stage_setup::stages_with_plugins(plugins)?;
    if stages.tiers.remotes().is_empty() {
        return Err(
            StageError::invalid_input("no remote cache tier is configured")
                .with_hint(
                    "add one for this command (--plugin s3-cache) or in the config file \
                 (caches = [\"s3-cache\"]); see `ktstr docs remote-cache`",
                )
                .into(),
        );
    }
    Ok(stages)
}

pub fn push(key: &str, plugins: &[String]) -> Result<()> {
    let key = parse_key(key)?;
    let stages = stages(plugins)?;
    let (cx, progress) = host_context();
    let Some(entry) = stages.tiers.lookup_in(stages.tiers.local(), &key, &cx)? else {
        return Err(
            StageError::not_found(format!("{key} is not in the local cache"))
                .with_hint("`ktstr kernel list` shows local entries; build it first")
                .into(),
        );
    };
    // Never spread a locally corrupted entry: push is the one place an
    // entry leaves this machine, so it pays for the full digest check.
    crate::integrity::require_intact(&entry, &cx.cancel)?;
    let mut pushed = 0;
    let mut failed = Vec::new();
    for tier in stages.tiers.remotes() {
        if is_read_only(tier) {
            progress.note(&format!("{} is read-only; skipped", tier.name));
            continue;
        }
        cx.cancel.check()?;
        // What the tier holds now, verified: a lookup downloads the entry
        // and checks every digest, which a manifest and a size cannot.
        let found = match stages.tiers.lookup_in(tier, &key, &cx) {
            Ok(Some(remote)) if remote.metadata.artifacts == entry.metadata.artifacts => {
                progress.println(&format!(
                    "{key} is already at {}, verified (every digest matches); nothing uploaded",
                    tier.stage.describe()
                ));
                pushed += 1;
                continue;
            }
            Ok(Some(_)) => "; replaced another build of it",
            Ok(None) => "",
            Err(e) if e.kind == ktstr_sdk::ErrorKind::Corrupt => {
                crate::report::warn_error_then(&*progress, "", &e, "; replacing it");
                "; replaced the damaged copy"
            }
            Err(e) => {
                crate::report::warn_error(&*progress, &format!("{}: ", tier.name), &e);
                failed.push(tier.name.clone());
                continue;
            }
        };
        cx.cancel.check()?;
        match stages.tiers.push_to(tier, &entry, &cx) {
            Ok(_) => {
                progress.println(&format!(
                    "pushed {key} to {} (uploaded{found})",
                    tier.stage.describe()
                ));
                pushed += 1;
            }
            Err(e) => {
                crate::report::warn_error(&*progress, &format!("{}: ", tier.name), &e);
                failed.push(tier.name.clone());
            }
        }
    }
    if !failed.is_empty() || pushed == 0 {
        return Err(StageError::new(
            ktstr_sdk::ErrorKind::Io,
            format!(
                "{key} was not pushed to {}",
                if failed.is_empty() {
                    "any tier: every remote tier is read-only".to_string()
                } else {
                    failed.join(", ")
                }
            ),
        )
        .with_hint("the warnings above say why")
        .into());
    }
    Ok(())
}

/// What `cache pull --json` prints.
#[derive(Debug, serde::Serialize)]
pub struct PullReport {
    pub key: String,
    /// `present` (already local, nothing transferred) or `pulled`.
    pub outcome: &'static str,
    /// The tier it came from (`null` when already present).
    pub from: Option<String>,
    pub image: std::path::PathBuf,
    pub vmlinux: Option<std::path::PathBuf>,
    pub config: std::path::PathBuf,
    pub metadata: std::path::PathBuf,
    pub duration_ms: u64,
}

fn print_pulled(
    entry: &ktstr_sdk::cache::CacheEntry,
    outcome: &'static str,
    from: Option<String>,
    started: std::time::Instant,
    json: bool,
) -> Result<()> {
    if !json {
        println!("{}", entry.image().display());
        return Ok(());
    }
    crate::report::print_json(&PullReport {
        key: entry.key.to_string(),
        outcome,
        from,
        image: entry.image(),
        vmlinux: entry.vmlinux(),
        config: entry.config(),
        metadata: entry.dir.join(ktstr_sdk::cache::METADATA_NAME),
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

pub fn pull(key: &str, plugins: &[String], json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let key = parse_key(key)?;
    let stages = stages(plugins)?;
    let (cx, progress) = host_context();
    if let Some(entry) = stages.tiers.lookup_in(stages.tiers.local(), &key, &cx)? {
        progress.note(&format!("{key} is already in the local cache"));
        return print_pulled(&entry, "present", None, started, json);
    }
    for tier in stages.tiers.remotes() {
        cx.cancel.check()?;
        match stages.tiers.lookup_in(tier, &key, &cx) {
            Ok(Some(remote)) => {
                let Backfilled::Local(local) = stages.tiers.backfill(tier, &remote, &cx) else {
                    return Err(StageError::new(
                        ktstr_sdk::ErrorKind::Io,
                        format!("{key} was fetched but could not be stored locally"),
                    )
                    .with_hint("the warning above says why")
                    .into());
                };
                progress.println(&format!("pulled {key} from {}", tier.stage.describe()));
                return print_pulled(&local, "pulled", Some(tier.name.clone()), started, json);
            }
            Ok(None) => {}
            Err(e) => crate::report::warn_error(&*progress, &format!("{}: ", tier.name), &e),
        }
    }
    Err(StageError::not_found(format!("{key} is in no remote tier"))
        .with_hint("`ktstr kernel list --remote` shows remote entries")
        .into())
}
