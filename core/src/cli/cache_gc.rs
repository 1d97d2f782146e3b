//! `ktstr cache gc`: keep a cache within a size, an age or a count by
//! evicting the least recently used kernels, and remove what no entry
//! owns. The local cache by default; with `--remote`, every writable
//! remote tier (a shared bucket only shrinks when someone runs this).
//!
//! The policy itself is the SDK's (`ktstr_sdk::cache_gc`) and each tier
//! applies it (`CacheBackend::gc`), because only the tier knows its sizes,
//! its last uses and what must not go now (an entry being read, a key
//! under a build lease). This file parses the request, refuses read-only
//! tiers, and reports.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use ktstr_sdk::StageError;
use ktstr_sdk::cache_gc::{GcPolicy, GcReport, GcRequest};

use super::kernel::short_time;
use crate::byte_size::human;
use crate::progress::LABEL;
use crate::table::{Column, GiveWay};
use crate::tiers::{Tier, is_read_only};

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("policy")
        .required(true)
        .multiple(true)
        .args(["max_size", "max_age", "keep_last"])
))]
pub struct GcArgs {
    /// Collect in every writable remote tier (config `caches`, and
    /// --plugin) instead of the local cache.
    #[arg(long)]
    pub remote: bool,
    /// Load a plugin's remote tier (e.g. `s3-cache`) for this command and
    /// collect in it; implies --remote; repeatable.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
    /// Evict the least recently used entries until the rest take at most
    /// SIZE (binary units: 500M, 20G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Evict entries not used for longer than AGE (30d, 12h, 2w).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub max_age: Option<Duration>,
    /// Never evict the N most recently used entries; alone: evict all
    /// but them.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(raw: &str) -> Result<u64, String> {
    crate::byte_size::parse(raw)
}

fn parse_age(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        format!("{raw:?} is not an age: {e}; write a number and a unit, like 30d, 12h or 2w")
    })
}

/// One tier's result, as `--json` reports it.
#[derive(Debug, serde::Serialize)]
struct TierReport {
    tier: String,
    description: String,
    #[serde(flatten)]
    report: GcReport,
    freed: u64,
}

/// What `cache gc --json` prints.
#[derive(Debug, serde::Serialize)]
struct Report {
    dry_run: bool,
    tiers: Vec<TierReport>,
}

pub fn run(args: &GcArgs) -> Result<()> {
    let remote = args.remote || !args.plugins.is_empty();
    let stages = if remote {
        super::cache::stages(&args.plugins)?
    } else {
        crate::stage_setup::stages_with_plugins(&[])?
    };
    let targets: Vec<&Tier> = if remote {
        stages.tiers.remotes().iter().collect()
    } else {
        vec![stages.tiers.local()]
    };
    let (cx, _progress) = super::host_context();
    let request = GcRequest {
        policy: GcPolicy {
            max_size: args.max_size,
            max_age: args.max_age,
            keep_last: args.keep_last,
        },
        dry_run: args.dry_run,
        now: SystemTime::now(),
    };
    let mut done = Vec::new();
    let mut refused = Vec::new();
    let mut failed = Vec::new();
    for tier in targets {
        cx.cancel.check()?;
        if is_read_only(tier) {
            let e = StageError::new(
                ktstr_sdk::ErrorKind::Unsupported,
                format!("not collecting garbage in {}: it is read-only", tier.name),
            )
            .with_hint(
                "gc deletes from the tier: run it where the tier is writable (unset read_only, \
                 e.g. KTSTR_S3_READ_ONLY) with credentials that may delete",
            );
            refused.push(e);
            continue;
        }
        match tier.stage.gc(&request, &cx) {
            Ok(report) => done.push((tier, report)),
            Err(e) if e.kind == ktstr_sdk::ErrorKind::Cancelled => return Err(e.into()),
            Err(e) => {
                crate::report::eprint_warning(&format!("{}: gc failed: ", tier.name), &e);
                failed.push(tier.name.clone());
            }
        }
    }
    if !remote && !args.dry_run && done.iter().any(|(_, r)| !r.evicted.is_empty()) {
        // As `kernel clean` does: the lock files of entries that are gone.
        super::kernel_clean::prune_locks(&stages, &cx);
    }
    if done.is_empty()
        && failed.is_empty()
        && let Some(first) = refused.first()
    {
        return Err(first.clone().into());
    }
    for e in &refused {
        crate::report::eprint_warning("", e);
    }
    print(args, &done)?;
    if !failed.is_empty() {
        return Err(StageError::new(
            ktstr_sdk::ErrorKind::Io,
            format!("gc failed in {}", failed.join(", ")),
        )
        .with_hint("the warnings above say why; nothing half-removed is visible to readers")
        .into());
    }
    let spared: usize = done.iter().map(|(_, r)| r.spared.len()).sum();
    if spared > 0 && !args.dry_run {
        eprintln!(
            "{LABEL}: note: {spared} kept for now (in use, under a build lease, or the delete \
             failed: see the table); the next gc tries again"
        );
    }
    Ok(())
}

fn entries(n: usize) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

fn print(args: &GcArgs, done: &[(&Tier, GcReport)]) -> Result<()> {
    for (tier, r) in done {
        let orphan_bytes: u64 = r.orphans.iter().filter_map(|o| o.size).sum();
        let evicted_bytes = r.freed() - orphan_bytes;
        let what = format!(
            "{} ({}){}",
            entries(r.evicted.len()),
            human(evicted_bytes),
            if r.orphans.is_empty() {
                String::new()
            } else {
                format!(
                    " and {} orphaned object{} ({})",
                    r.orphans.len(),
                    if r.orphans.len() == 1 { "" } else { "s" },
                    human(orphan_bytes)
                )
            }
        );
        let left = format!(
            "{} ({}) left",
            entries(r.entries_after),
            human(r.bytes_after)
        );
        if args.dry_run {
            eprintln!(
                "{LABEL}: {}: would remove {what}; {left}; nothing removed (--dry-run)",
                tier.name
            );
        } else {
            eprintln!("{LABEL}: {}: removed {what}; {left}", tier.name);
        }
        for note in &r.notes {
            eprintln!("{LABEL}: note: {}: {note}", tier.name);
        }
    }
    if args.json {
        return crate::report::print_json(&Report {
            dry_run: args.dry_run,
            tiers: done
                .iter()
                .map(|(tier, r)| TierReport {
                    tier: tier.name.clone(),
                    description: tier.stage.describe(),
                    freed: r.freed(),
                    report: r.clone(),
                })
                .collect(),
        });
    }
    let rows = table_rows(done, args.dry_run);
    if rows.is_empty() {
        return Ok(());
    }
    let (lines, _) = crate::table::render(&COLUMNS, &GIVE_WAY, &rows, crate::table::width(false));
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// TIER WHAT SIZE LAST-USED ACTION: one row per eviction, orphan and
/// spared entry.
const COLUMNS: [Column; 5] = [
    Column {
        header: "TIER",
        min: 0,
        middle: false,
    },
    Column {
        header: "KEY",
        min: 24,
        middle: true,
    },
    Column {
        header: "SIZE",
        min: 0,
        middle: false,
    },
    Column {
        header: "LAST USED",
        min: 0,
        middle: false,
    },
    Column {
        header: "ACTION",
        min: 16,
        middle: false,
    },
];

/// Too wide: the action shortens, the tier and last use go, the key
/// shortens in its middle.
const GIVE_WAY: [GiveWay; 4] = [
    GiveWay::Shorten(4),
    GiveWay::Drop(0),
    GiveWay::Drop(3),
    GiveWay::Shorten(1),
];

fn table_rows(done: &[(&Tier, GcReport)], dry_run: bool) -> Vec<Vec<String>> {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut rows = Vec::new();
    for (tier, r) in done {
        for e in &r.evicted {
            rows.push(vec![
                tier.name.clone(),
                e.key.clone(),
                human(e.size),
                short_time(&e.last_used),
                format!("{verb} ({})", e.reason),
            ]);
        }
        for o in &r.orphans {
            rows.push(vec![
                tier.name.clone(),
                o.location.clone(),
                o.size.map(human).unwrap_or_else(|| "?".into()),
                "-".into(),
                format!("{verb}: {}", o.what),
            ]);
        }
        for s in &r.spared {
            rows.push(vec![
                tier.name.clone(),
                s.key.clone(),
                "?".into(),
                "-".into(),
                format!("kept: {}", s.reason),
            ]);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_what_people_write() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86400)));
        let e = parse_age("soon").unwrap_err();
        assert!(
            e.contains("\"soon\" is not an age") && e.contains("like 30d"),
            "{e}"
        );
    }
}
