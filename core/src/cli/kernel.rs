//! `ktstr kernel list` and `ktstr kernel clean`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use ktstr_sdk::cache::{CacheBackend, Listed};
use ktstr_sdk::source::short_id;
use serde_json::json;

use crate::host;
use crate::progress::LABEL;
use crate::registry::{Named, Stages};

/// The tiers a command works on: the local cache, plus every other tier
/// when `--plugin` was given (the plugins' tiers are why it was given).
fn tiers(stages: &Stages, every_tier: bool) -> &[Named<dyn CacheBackend>] {
    if !every_tier {
        &stages.caches[..1]
    } else {
        &stages.caches
    }
}

/// Every tier's rows, local first. A tier other than the local one that
/// cannot be listed is reported and skipped.
fn rows(stages: &Stages, every_tier: bool) -> Result<Vec<(usize, Listed)>> {
    let mut all = Vec::new();
    for (i, tier) in tiers(stages, every_tier).iter().enumerate() {
        match tier.stage.list() {
            Ok(rows) => all.extend(rows.into_iter().map(|r| (i, r))),
            Err(e) if i == 0 => return Err(e.into()),
            Err(e) => crate::report::eprint_warning(&format!("{}: cannot list: ", tier.name), &e),
        }
    }
    Ok(all)
}

fn json_row(row: &Listed) -> serde_json::Value {
    match row {
        Listed::Ok(e) => json!({
            "key": e.key,
            "status": "ok",
            "version": e.metadata.version,
            "profile": e.metadata.profile,
            "arch": e.metadata.arch,
            "source": e.metadata.source,
            "built_at": e.metadata.built_at,
            "image": e.image(),
            "vmlinux": e.vmlinux(),
            "origin": e.origin,
            "pulled_from": e.metadata.origin,
            "fragments": e.metadata.fragments,
        }),
        Listed::Corrupt { key, reason } => json!({
            "key": key,
            "status": "corrupt",
            "reason": reason,
        }),
    }
}

pub fn list(as_json: bool, plugins: &[String], remote: bool) -> Result<()> {
    let stages = host::stages_with_plugins(plugins)?;
    if remote && stages.caches.len() < 2 {
        eprintln!(
            "{LABEL}: warning: no remote cache tier is configured (add --plugin s3-cache or \
             caches = [\"s3-cache\"] in the config file); listing the local cache only"
        );
    }
    let every_tier = remote || !plugins.is_empty();
    let tagged = rows(&stages, every_tier)?;
    let tier_of: Vec<&str> = tagged
        .iter()
        .map(|(i, _)| stages.caches[*i].name.as_str())
        .collect();
    let rows: Vec<Listed> = tagged.into_iter().map(|(_, r)| r).collect();
    let mut out = std::io::stdout().lock();
    if as_json {
        let all: Vec<_> = rows
            .iter()
            .zip(&tier_of)
            .map(|(r, tier)| {
                let mut row = json_row(r);
                row["tier"] = json!(tier);
                row
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<44} {:<12} {:<8} {:<20} {:<21} SOURCE",
        "KEY", "VERSION", "PROFILE", "BUILT", "STATUS"
    )?;
    for (row, tier) in rows.iter().zip(&tier_of) {
        // With several tiers, say which one each row is from.
        let note = if !every_tier {
            String::new()
        } else {
            format!(" [{tier}]")
        };
        match row {
            Listed::Ok(e) => {
                let m = &e.metadata;
                let source = match &m.source.path {
                    Some(p) => {
                        format!("{} {} @ {}", m.source.kind, p, short_id(&m.source.identity))
                    }
                    None => format!("{} {}", m.source.kind, short_id(&m.source.identity)),
                };
                let source = match &m.origin {
                    Some(from) => format!("{source} (pulled from {from})"),
                    None => source,
                };
                writeln!(
                    out,
                    "{:<44} {:<12} {:<8} {:<20} {:<21} {source}{note}",
                    e.key,
                    m.version.as_deref().unwrap_or("?"),
                    m.profile,
                    m.built_at,
                    if m.fragments.is_empty() {
                        "ok"
                    } else {
                        "ok (extra kconfig)"
                    },
                )?;
            }
            Listed::Corrupt { key, reason } => {
                writeln!(
                    out,
                    "{key:<44} {:<12} {:<8} {:<20} corrupt: {reason}{note}",
                    "?", "?", "?"
                )?;
            }
        }
    }
    if rows.is_empty() {
        eprintln!("{LABEL}: the cache is empty");
    }
    Ok(())
}

/// Which rows `clean --keep N` removes: every corrupt one, and every
/// usable one past the N newest (`list` is newest first).
fn doomed(rows: &[Listed], keep: usize) -> Vec<String> {
    let mut kept = 0;
    rows.iter()
        .filter_map(|row| match row {
            Listed::Ok(_) if kept < keep => {
                kept += 1;
                None
            }
            Listed::Ok(e) => Some(e.key.to_string()),
            Listed::Corrupt { key, .. } => Some(key.clone()),
        })
        .collect()
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{LABEL}: {question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn clean(keep: Option<usize>, force: bool, plugins: &[String]) -> Result<()> {
    let stages = host::stages_with_plugins(plugins)?;
    // Per tier: its cache and the keys to remove from it (`--keep` counts
    // within each tier). Read-only tiers are never cleaned.
    let mut plan: Vec<(&Named<dyn CacheBackend>, Vec<String>)> = Vec::new();
    for (i, tier) in tiers(&stages, !plugins.is_empty()).iter().enumerate() {
        if i > 0 && tier.stage.capabilities().read_only {
            eprintln!("{LABEL}: not cleaning {}: it is read-only", tier.name);
            continue;
        }
        let rows = match tier.stage.list() {
            Ok(rows) => rows,
            Err(e) if i == 0 => return Err(e.into()),
            Err(e) => {
                crate::report::eprint_warning(&format!("{}: cannot list: ", tier.name), &e);
                continue;
            }
        };
        let doomed = doomed(&rows, keep.unwrap_or(0));
        if !doomed.is_empty() {
            plan.push((tier, doomed));
        }
    }
    let where_ = plan
        .iter()
        .map(|(t, _)| t.stage.describe())
        .collect::<Vec<_>>()
        .join(" and the ");
    let total: usize = plan.iter().map(|(_, d)| d.len()).sum();
    if total == 0 {
        eprintln!(
            "{LABEL}: nothing to remove from the {}",
            stages.local_cache().stage.describe()
        );
        return Ok(());
    }
    let question = format!(
        "remove {total} entr{} from the {where_}?",
        if total == 1 { "y" } else { "ies" },
    );
    if !force {
        if !std::io::stdin().is_terminal() {
            bail!(
                "{question} refusing without confirmation; pass --force to remove them non-interactively"
            );
        }
        if !confirm(&question)? {
            eprintln!("{LABEL}: nothing removed");
            return Ok(());
        }
    }
    let mut in_use = 0;
    let mut removed = 0;
    for (tier, doomed) in &plan {
        for key in doomed {
            let parsed = match ktstr_sdk::cache::CacheKey::parse(key) {
                Ok(k) => k,
                Err(_) => {
                    eprintln!(
                        "{LABEL}: warning: {key}: not a valid key; remove it by hand from the cache directory"
                    );
                    continue;
                }
            };
            match tier.stage.remove(&parsed) {
                Ok(_) => removed += 1,
                Err(e) => {
                    in_use += 1;
                    eprintln!("{LABEL}: warning: kept {key}: {e}");
                }
            }
        }
    }
    eprintln!(
        "{LABEL}: removed {removed} entr{}",
        if removed == 1 { "y" } else { "ies" }
    );
    if in_use > 0 {
        bail!(
            "{in_use} entr{} could not be removed (see warnings above)",
            if in_use == 1 { "y" } else { "ies" }
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

    #[test]
    fn keep_zero_removes_everything() {
        let rows = vec![corrupt("a"), corrupt("b")];
        assert_eq!(doomed(&rows, 0), ["a", "b"]);
        assert_eq!(
            doomed(&rows, 5),
            ["a", "b"],
            "corrupt entries never count as kept"
        );
    }
}
