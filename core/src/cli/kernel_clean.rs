//! `ktstr kernel clean`: remove named entries, all but the newest, or the
//! oldest until the cache fits a size; say what went and how much space
//! that freed; then prune the lock files of entries that no longer exist.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use ktstr_sdk::StageError;
use ktstr_sdk::cache::Listed;

use super::kernel::{entry_size, is_old_format, row_key, row_size};
use crate::byte_size::human;
use crate::progress::LABEL;
use crate::registry::Stages;
use crate::stage_setup;
use crate::tiers::{Tier, is_read_only};

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
    let (cx, _progress) = super::host_context();
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
        let rows = match tier.stage.list(&cx) {
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
            report.pruned_locks = prune_locks(&stages, &cx);
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
            match tier.stage.remove(&parsed, &cx) {
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
    report.pruned_locks = prune_locks(&stages, &cx);
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
pub(super) fn prune_locks(stages: &Stages, cx: &ktstr_sdk::context::StageContext) -> usize {
    let local = stages.tiers.local();
    let Ok(rows) = local.stage.list(cx) else {
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
}
