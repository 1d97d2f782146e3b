//! `ktstr kernel list`, `ktstr kernel clean` and `ktstr kernel verify`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use clap::Subcommand;
use ktstr_sdk::StageError;
use ktstr_sdk::cache::Listed;
use ktstr_sdk::source::short_id;
use serde_json::json;

use super::log::LogArgs;
use crate::byte_size::human;
use crate::progress::LABEL;
use crate::registry::Stages;
use crate::stage_setup;
use crate::table::{Column, GiveWay};
use crate::tiers::{Tier, is_read_only};

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List cached kernels, newest first, with their size on disk.
    List(ListArgs),
    /// Print the build log of a cached kernel (make's whole output) to stdout.
    Log(LogArgs),
    /// Remove cached kernels: named ones, all but the newest, or the oldest
    /// until the cache fits a size.
    Clean(CleanArgs),
    /// Check local entries' files against their recorded sha256 digests;
    /// a corrupt entry is removed so its next build rebuilds it.
    Verify {
        /// Keys to check (default: every local entry).
        keys: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table (full keys, sizes in bytes).
    #[arg(long)]
    pub json: bool,
    /// Never shorten keys or drop columns to fit the terminal.
    #[arg(long)]
    pub wide: bool,
    /// Also list the entries of this plugin's cache tiers (NAME or
    /// library path); repeatable.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
    /// Also list the entries of every remote tier (config `caches`).
    #[arg(long)]
    pub remote: bool,
}

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Remove exactly these entries (`ktstr kernel list` shows the keys).
    #[arg(value_name = "KEY", conflicts_with_all = ["keep", "max_size"])]
    pub keys: Vec<String>,
    /// Keep the N most recently built entries.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Remove the oldest entries until the rest take at most SIZE on disk
    /// (binary units: 500M, 20G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required off a terminal).
    #[arg(long)]
    pub force: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also clean this plugin's (writable) cache tiers; repeatable.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
}

fn parse_size(raw: &str) -> Result<u64, String> {
    crate::byte_size::parse(raw)
}

/// Every tier's rows with the tier's name, local first: the local tier,
/// plus every other tier when `every_tier` (`--remote`, or `--plugin`:
/// the plugins' tiers are why it was given). A tier other than the local
/// one that cannot be listed is reported and skipped.
fn rows(stages: &Stages, every_tier: bool) -> Result<Vec<(&str, Listed)>> {
    let mut all = Vec::new();
    for (tier, is_local) in stages.tiers.scope(every_tier) {
        match tier.stage.list() {
            Ok(rows) => all.extend(rows.into_iter().map(|r| (tier.name.as_str(), r))),
            Err(e) if is_local => return Err(e.into()),
            Err(e) => crate::report::eprint_warning(&format!("{}: cannot list: ", tier.name), &e),
        }
    }
    Ok(all)
}

/// An entry of the first key scheme: never served again (see
/// `identity::is_current_format`), listed and cleaned as such.
fn is_old_format(e: &ktstr_sdk::cache::CacheEntry) -> bool {
    !crate::identity::is_current_format(&e.key)
}

/// Bytes an entry takes: its directory on disk when the tier keeps one
/// here, else the sizes its metadata records (a remote tier's entry).
fn entry_size(e: &ktstr_sdk::cache::CacheEntry) -> u64 {
    if e.dir.is_dir() {
        crate::byte_size::disk_usage(&e.dir)
    } else {
        e.metadata.artifacts.values().map(|a| a.size).sum()
    }
}

fn row_size(row: &Listed) -> Option<u64> {
    match row {
        Listed::Ok(e) => Some(entry_size(e)),
        Listed::Corrupt { .. } => None,
    }
}

fn row_key(row: &Listed) -> String {
    match row {
        Listed::Ok(e) => e.key.to_string(),
        Listed::Corrupt { key, .. } => key.clone(),
    }
}

fn json_row(row: &Listed) -> serde_json::Value {
    match row {
        Listed::Ok(e) => json!({
            "key": e.key,
            "status": if is_old_format(e) { "old-format" } else { "ok" },
            "version": e.metadata.version,
            "profile": e.metadata.profile,
            "arch": e.metadata.arch,
            "source": e.metadata.source,
            "built_at": e.metadata.built_at,
            "size": entry_size(e),
            "image": e.image(),
            "vmlinux": e.vmlinux(),
            "origin": e.origin,
            "pulled_from": e.metadata.origin,
            "fragments": e.metadata.fragments,
            "kernelrelease": e.metadata.kernelrelease,
            "image_name": e.metadata.image_name,
            "config_sha256": e.metadata.config_sha256,
            "builder": e.metadata.builder,
            "toolchain": e.metadata.toolchain,
            "components": e.metadata.components,
            "strip": e.metadata.strip,
            "build": e.metadata.build,
            "log": e.log(),
        }),
        Listed::Corrupt { key, reason } => json!({
            "key": key,
            "status": "corrupt",
            "reason": reason,
            "size": null,
        }),
    }
}

/// The `kernel list` table: KEY VERSION ARCH PROFILE SIZE BUILT STATUS
/// SOURCE.
const LIST_COLUMNS: [Column; 8] = [
    Column {
        header: "KEY",
        min: 24,
        middle: true,
    },
    Column {
        header: "VERSION",
        min: 0,
        middle: false,
    },
    Column {
        header: "ARCH",
        min: 0,
        middle: false,
    },
    Column {
        header: "PROFILE",
        min: 0,
        middle: false,
    },
    Column {
        header: "SIZE",
        min: 0,
        middle: false,
    },
    Column {
        header: "BUILT",
        min: 0,
        middle: false,
    },
    Column {
        header: "STATUS",
        min: 10,
        middle: false,
    },
    Column {
        header: "SOURCE",
        min: 20,
        middle: false,
    },
];

/// Too wide: the source shortens, then goes; the status shortens; the
/// build time and profile go; only then does the key shorten (in its
/// middle, so the version in front and the digest behind stay readable:
/// keys are what people copy); then version and arch go. Key, size and
/// status always stay.
const LIST_GIVE_WAY: [GiveWay; 8] = [
    GiveWay::Shorten(7),
    GiveWay::Drop(7),
    GiveWay::Shorten(6),
    GiveWay::Drop(5),
    GiveWay::Drop(3),
    GiveWay::Shorten(0),
    GiveWay::Drop(1),
    GiveWay::Drop(2),
];

/// `2026-11-27T06:50:00Z` as `2026-11-27 06:50` (UTC): the table's width
/// is worth more than the seconds.
fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) if rfc3339.as_bytes().get(10) == Some(&b'T') => {
            format!("{day} {time}")
        }
        _ => rfc3339.to_string(),
    }
}

fn table_row(row: &Listed, note: &str) -> Vec<String> {
    match row {
        Listed::Ok(e) => {
            let m = &e.metadata;
            let source = match &m.source.path {
                Some(p) => format!("{} {} @ {}", m.source.kind, p, short_id(&m.source.identity)),
                None => format!("{} {}", m.source.kind, short_id(&m.source.identity)),
            };
            let source = match &m.origin {
                Some(from) => format!("{source} (pulled from {from})"),
                None => source,
            };
            let status = if is_old_format(e) {
                "old format"
            } else if m.fragments.is_empty() {
                "ok"
            } else {
                "ok (extra kconfig)"
            };
            vec![
                e.key.to_string(),
                m.version.clone().unwrap_or_else(|| "?".into()),
                m.arch.clone(),
                m.profile.clone(),
                human(entry_size(e)),
                short_time(&m.built_at),
                status.to_string(),
                format!("{source}{note}"),
            ]
        }
        Listed::Corrupt { key, reason } => {
            let mut cells = vec![key.clone()];
            cells.extend(["?", "?", "?", "?", "?"].map(String::from));
            cells.push(format!("corrupt: {reason}"));
            cells.push(note.trim_start().to_string());
            cells
        }
    }
}

pub fn list(args: &ListArgs) -> Result<()> {
    let stages = stage_setup::stages_with_plugins(&args.plugins)?;
    if args.remote && stages.tiers.remotes().is_empty() {
        eprintln!(
            "{LABEL}: warning: no remote cache tier is configured (add --plugin s3-cache or \
             caches = [\"s3-cache\"] in the config file); listing the local cache only"
        );
    }
    let every_tier = args.remote || !args.plugins.is_empty();
    let (tier_of, rows): (Vec<&str>, Vec<Listed>) = rows(&stages, every_tier)?.into_iter().unzip();
    if args.json {
        let all: Vec<_> = rows
            .iter()
            .zip(&tier_of)
            .map(|(r, tier)| {
                let mut row = json_row(r);
                row["tier"] = json!(tier);
                row
            })
            .collect();
        return crate::report::print_json(&all);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .zip(&tier_of)
        // With several tiers, say which one each row is from.
        .map(|(row, tier)| {
            table_row(
                row,
                &if every_tier {
                    format!(" [{tier}]")
                } else {
                    String::new()
                },
            )
        })
        .collect();
    let width = crate::table::width(args.wide);
    let (mut lines, cut) = crate::table::render(&LIST_COLUMNS, &LIST_GIVE_WAY, &cells, width);
    if !rows.is_empty() {
        // Per tier, in listing order: how many entries and how much disk.
        let mut totals: Vec<(&str, usize, u64)> = Vec::new();
        for (row, tier) in rows.iter().zip(&tier_of) {
            let size = row_size(row).unwrap_or(0);
            match totals.iter_mut().find(|t| t.0 == *tier) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += size;
                }
                None => totals.push((tier, 1, size)),
            }
        }
        for (tier, n, bytes) in totals {
            let text = format!(
                "total: {n} entr{}, {}{}",
                if n == 1 { "y" } else { "ies" },
                human(bytes),
                if every_tier {
                    format!(" [{tier}]")
                } else {
                    String::new()
                }
            );
            lines.push(crate::table::shorten(
                &text,
                width.unwrap_or(usize::MAX),
                false,
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if rows.is_empty() {
        eprintln!("{LABEL}: the cache is empty");
    } else if cut {
        eprintln!(
            "{LABEL}: shortened to fit {} columns; --wide or --json shows everything",
            width.unwrap_or(0)
        );
    }
    Ok(())
}

/// One row of a clean plan, as `--json` reports it.
#[derive(Debug, Clone, serde::Serialize)]
struct Removal {
    key: String,
    tier: String,
    /// Bytes on disk; null for a corrupt entry (its files are unknown).
    size: Option<u64>,
    /// Why it goes: `named`, `corrupt`, `old-format`, `keep` (past the N
    /// newest) or `max-size` (oldest while over the size).
    reason: &'static str,
}

/// Which rows `clean` removes from one tier (`rows` newest first): every
/// corrupt or old-format one, every usable one past the `keep` newest,
/// then the oldest kept ones while the kept ones take more than
/// `max_size`.
fn doomed(
    rows: &[Listed],
    keep: usize,
    max_size: Option<u64>,
) -> Vec<(String, Option<u64>, &'static str)> {
    let mut out = Vec::new();
    let mut kept: Vec<(String, u64)> = Vec::new();
    for row in rows {
        match row {
            Listed::Ok(e) if is_old_format(e) => {
                out.push((e.key.to_string(), Some(entry_size(e)), "old-format"))
            }
            Listed::Ok(e) if kept.len() < keep => kept.push((e.key.to_string(), entry_size(e))),
            Listed::Ok(e) => out.push((e.key.to_string(), Some(entry_size(e)), "keep")),
            Listed::Corrupt { key, .. } => out.push((key.clone(), None, "corrupt")),
        }
    }
    if let Some(limit) = max_size {
        let mut total: u64 = kept.iter().map(|k| k.1).sum();
        while total > limit {
            let Some((key, size)) = kept.pop() else { break };
            total -= size;
            out.push((key, Some(size), "max-size"));
        }
    }
    out
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{LABEL}: {question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn entries(n: usize) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

/// What `kernel clean --json` prints.
#[derive(Debug, serde::Serialize)]
struct CleanReport {
    dry_run: bool,
    /// Removed (with --dry-run: would be removed).
    removed: Vec<Removal>,
    /// Meant to be removed but kept: another process is using them.
    kept: Vec<Kept>,
    /// Bytes freed (with --dry-run: that would be freed).
    freed: u64,
    /// Lock files of entries that no longer exist, deleted.
    pruned_locks: usize,
}

#[derive(Debug, serde::Serialize)]
struct Kept {
    key: String,
    tier: String,
    reason: String,
}

pub fn clean(args: &CleanArgs) -> Result<()> {
    let stages = stage_setup::stages_with_plugins(&args.plugins)?;
    // Per tier: its cache and what to remove from it (`--keep` and
    // `--max-size` count within each tier). Read-only tiers are never
    // cleaned.
    let mut plan: Vec<(&Tier, Vec<Removal>)> = Vec::new();
    let mut unknown: Vec<&str> = args.keys.iter().map(String::as_str).collect();
    for (tier, is_local) in stages.tiers.scope(!args.plugins.is_empty()) {
        if !is_local && is_read_only(tier) {
            eprintln!("{LABEL}: not cleaning {}: it is read-only", tier.name);
            continue;
        }
        let rows = match tier.stage.list() {
            Ok(rows) => rows,
            Err(e) if is_local => return Err(e.into()),
            Err(e) => {
                crate::report::eprint_warning(&format!("{}: cannot list: ", tier.name), &e);
                continue;
            }
        };
        let doomed = if args.keys.is_empty() {
            let keep = args.keep.unwrap_or(if args.max_size.is_some() {
                usize::MAX
            } else {
                0
            });
            doomed(&rows, keep, args.max_size)
        } else {
            rows.iter()
                .filter(|r| args.keys.contains(&row_key(r)))
                .map(|r| (row_key(r), row_size(r), "named"))
                .collect()
        };
        unknown.retain(|k| !doomed.iter().any(|d| d.0 == *k));
        let removals: Vec<Removal> = doomed
            .into_iter()
            .map(|(key, size, reason)| Removal {
                key,
                tier: tier.name.clone(),
                size,
                reason,
            })
            .collect();
        if !removals.is_empty() {
            plan.push((tier, removals));
        }
    }
    if let Some(first) = unknown.first() {
        return Err(StageError::not_found(format!(
            "{first:?} is not in the {}{}",
            stages.tiers.local().stage.describe(),
            if unknown.len() > 1 {
                format!(" (nor are {} other keys given)", unknown.len() - 1)
            } else {
                String::new()
            }
        ))
        .with_hint(
            "`ktstr kernel list` shows the keys (--wide for them in full); nothing was removed",
        )
        .into());
    }
    let total: usize = plan.iter().map(|(_, d)| d.len()).sum();
    let bytes: u64 = plan
        .iter()
        .flat_map(|(_, d)| d)
        .filter_map(|r| r.size)
        .sum();
    let where_ = plan
        .iter()
        .map(|(t, _)| t.stage.describe())
        .collect::<Vec<_>>()
        .join(" and the ");
    let mut report = CleanReport {
        dry_run: args.dry_run,
        removed: Vec::new(),
        kept: Vec::new(),
        freed: 0,
        pruned_locks: 0,
    };
    if total == 0 {
        eprintln!(
            "{LABEL}: nothing to remove from the {}",
            stages.tiers.local().stage.describe()
        );
        // Lock files left by entries removed before pruning existed.
        if !args.dry_run {
            report.pruned_locks = prune_locks(&stages);
        }
        return finish(args, &report);
    }
    if args.dry_run {
        for (_, removals) in &plan {
            for r in removals {
                eprintln!("{LABEL}: would remove {} ({})", r.key, size_text(r.size));
                report.freed += r.size.unwrap_or(0);
                report.removed.push(r.clone());
            }
        }
        eprintln!(
            "{LABEL}: would remove {} from the {where_}, freeing {}; nothing removed (--dry-run)",
            entries(total),
            human(bytes)
        );
        return finish(args, &report);
    }
    if !args.force {
        let what = format!("{} ({}) from the {where_}", entries(total), human(bytes));
        if !std::io::stdin().is_terminal() {
            return Err(StageError::invalid_input(format!(
                "not removing {what}: removing needs confirmation, and stdin is not a terminal"
            ))
            .with_hint("pass --force to remove them, or --dry-run to list them")
            .into());
        }
        if !confirm(&format!("remove {what}?"))? {
            eprintln!("{LABEL}: nothing removed");
            return finish(args, &report);
        }
    }
    for (tier, removals) in &plan {
        for r in removals {
            let parsed = match ktstr_sdk::cache::CacheKey::parse(&r.key) {
                Ok(k) => k,
                Err(_) => {
                    eprintln!(
                        "{LABEL}: warning: {}: not a valid key; remove it by hand from the cache directory",
                        r.key
                    );
                    report.kept.push(Kept {
                        key: r.key.clone(),
                        tier: r.tier.clone(),
                        reason: "not a valid key".into(),
                    });
                    continue;
                }
            };
            match tier.stage.remove(&parsed) {
                Ok(_) => {
                    eprintln!("{LABEL}: removed {} ({})", r.key, size_text(r.size));
                    report.freed += r.size.unwrap_or(0);
                    report.removed.push(r.clone());
                }
                Err(e) => {
                    eprintln!("{LABEL}: warning: kept {}: {e}", r.key);
                    report.kept.push(Kept {
                        key: r.key.clone(),
                        tier: r.tier.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    report.pruned_locks = prune_locks(&stages);
    eprintln!(
        "{LABEL}: removed {}, freed {}",
        entries(report.removed.len()),
        human(report.freed)
    );
    finish(args, &report)?;
    if !report.kept.is_empty() {
        bail!(
            "{} could not be removed (see warnings above)",
            entries(report.kept.len())
        );
    }
    Ok(())
}

fn size_text(size: Option<u64>) -> String {
    size.map(human).unwrap_or_else(|| "size unknown".into())
}

fn finish(args: &CleanArgs, report: &CleanReport) -> Result<()> {
    if args.json {
        crate::report::print_json(report)?;
    }
    Ok(())
}

/// Delete the free lock files of entries that no longer exist: the host's
/// per-key build locks and the local cache's own (per-entry) locks whose
/// key is not a local entry. Safe while others lock (see
/// [`ktstr_sdk::lock::prune`]); a lock that is held is kept. Returns how
/// many were deleted.
fn prune_locks(stages: &Stages) -> usize {
    let local = stages.tiers.local();
    let Ok(rows) = local.stage.list() else {
        return 0;
    };
    let live: std::collections::HashSet<String> = rows.iter().map(row_key).collect();
    let Ok(root) = ktstr_sdk::paths::cache_root() else {
        return 0;
    };
    let dir = ktstr_sdk::paths::lock_dir(&root);
    let mut candidates =
        ktstr_sdk::lock_list::list_dir(&dir, "build", ktstr_sdk::paths::BUILD_LOCK_PREFIX);
    candidates.extend(local.stage.locks().unwrap_or_default());
    candidates
        .into_iter()
        .filter(|l| l.holders.is_empty() && !live.contains(&l.id))
        .filter(|l| match ktstr_sdk::lock::prune(&l.path) {
            Ok(pruned) => pruned,
            Err(e) => {
                crate::report::eprint_warning("", &e);
                false
            }
        })
        .count()
}

/// One entry's verdict in `kernel verify`.
#[derive(serde::Serialize)]
struct Verdict {
    key: String,
    /// `ok`, `corrupt` or `missing`.
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    /// A corrupt entry is removed so the next build of its key rebuilds it.
    removed: bool,
}

/// `ktstr kernel verify [KEY...]`: hash every artifact of the local
/// entries named (all of them without keys) against the recorded digests.
/// A corrupt entry is removed from the local cache, which is how it is
/// "marked": the next build of that key misses and rebuilds it. Exit 1 when
/// any entry was corrupt or missing.
pub fn verify(keys: &[String], as_json: bool) -> Result<()> {
    let stages = stage_setup::stages_with_plugins(&[])?;
    let (cx, _progress) = super::host_context();
    let local = stages.tiers.local();
    let mut targets: Vec<(String, Option<Listed>)> = Vec::new();
    if keys.is_empty() {
        for row in local.stage.list()? {
            let key = match &row {
                Listed::Ok(e) => e.key.to_string(),
                Listed::Corrupt { key, .. } => key.clone(),
            };
            targets.push((key, Some(row)));
        }
    } else {
        for raw in keys {
            let row = match ktstr_sdk::cache::CacheKey::parse(raw) {
                Err(e) => Some(Listed::Corrupt {
                    key: raw.clone(),
                    reason: format!("not a cache key: {e}"),
                }),
                Ok(key) => match local.stage.lookup(&key) {
                    Ok(Some(entry)) => Some(Listed::Ok(entry)),
                    Ok(None) => None,
                    Err(e) => Some(Listed::Corrupt {
                        key: raw.clone(),
                        // As `kernel list` shows it: the reason, without the key.
                        reason: e
                            .to_string()
                            .strip_prefix(&format!("cache entry {key}: "))
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string()),
                    }),
                },
            };
            targets.push((raw.clone(), row));
        }
    }
    let mut verdicts = Vec::new();
    for (key, row) in targets {
        cx.cancel.check()?;
        let problems = match &row {
            None => {
                verdicts.push(Verdict {
                    key,
                    status: "missing",
                    problems: vec!["not in the local cache".into()],
                    removed: false,
                });
                continue;
            }
            Some(Listed::Corrupt { reason, .. }) => vec![reason.clone()],
            Some(Listed::Ok(entry)) => crate::integrity::check_entry(entry, &cx.cancel)?
                .into_iter()
                .map(|m| format!("{}: {}", m.file, m.reason))
                .collect(),
        };
        let removed = !problems.is_empty()
            && ktstr_sdk::cache::CacheKey::parse(&key).is_ok_and(|k| {
                local.stage.remove(&k).unwrap_or_else(|e| {
                    eprintln!("{LABEL}: warning: could not remove corrupt entry {key}: {e}");
                    false
                })
            });
        verdicts.push(Verdict {
            key,
            status: if problems.is_empty() { "ok" } else { "corrupt" },
            problems,
            removed,
        });
    }
    if as_json {
        crate::report::print_json(&verdicts)?;
    } else {
        let mut out = std::io::stdout().lock();
        for v in &verdicts {
            match v.status {
                "ok" => writeln!(out, "{:<44} ok", v.key)?,
                status => {
                    let fate = if v.removed {
                        "; removed, the next build of it rebuilds it"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "{:<44} {status}: {}{fate}",
                        v.key,
                        v.problems.join("; ")
                    )?;
                }
            }
        }
        if verdicts.is_empty() {
            eprintln!("{LABEL}: the cache is empty");
        }
    }
    let bad = verdicts.iter().filter(|v| v.status != "ok").count();
    if bad > 0 {
        bail!(
            "{bad} of {} entr{} failed verification",
            verdicts.len(),
            if verdicts.len() == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corrupt(k: &str) -> Listed {
        Listed::Corrupt {
            key: k.into(),
            reason: "bad".into(),
        }
    }

    fn keys(d: Vec<(String, Option<u64>, &'static str)>) -> Vec<String> {
        d.into_iter().map(|(k, _, _)| k).collect()
    }

    #[test]
    fn keep_zero_removes_everything() {
        let rows = vec![corrupt("a"), corrupt("b")];
        assert_eq!(keys(doomed(&rows, 0, None)), ["a", "b"]);
        assert_eq!(
            keys(doomed(&rows, 5, Some(0))),
            ["a", "b"],
            "corrupt entries never count as kept"
        );
    }

    #[test]
    fn short_time_drops_seconds_only_from_rfc3339() {
        assert_eq!(short_time("2026-11-27T06:50:00Z"), "2026-11-27 06:50");
        assert_eq!(short_time("yesterday"), "yesterday");
    }
}
