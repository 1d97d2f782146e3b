//! `ktstr kernel list`, `ktstr kernel clean` and `ktstr kernel verify`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use clap::Subcommand;
use ktstr_sdk::cache::Listed;
use ktstr_sdk::source::short_id;
use serde_json::json;

use super::log::LogArgs;
use crate::progress::LABEL;
use crate::registry::Stages;
use crate::stage_setup;
use crate::tiers::{Tier, is_read_only};

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List cached kernels.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list the entries of this plugin's cache tiers (NAME or
        /// library path); repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
        /// Also list the entries of every remote tier (config `caches`).
        #[arg(long)]
        remote: bool,
    },
    /// Print the build log of a cached kernel (make's whole output) to stdout.
    Log(LogArgs),
    /// Remove cached kernels.
    Clean {
        /// Keep the N most recently built entries.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Do not ask for confirmation (required off a terminal).
        #[arg(long)]
        force: bool,
        /// Also clean this plugin's (writable) cache tiers; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
    },
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

/// Every tier's rows with the tier's name, local first: the local tier,
/// plus every other tier when `every_tier` (`--remote`, or `--plugin`:
/// the plugins' tiers are why it was given). A tier other than the local
/// one that cannot be listed is reported and skipped.
fn rows(stages: &Stages, every_tier: bool) -> Result<Vec<(&str, Listed)>> {
    let (cx, _progress) = super::host_context();
    let mut all = Vec::new();
    for (tier, is_local) in stages.tiers.scope(every_tier) {
        match tier.stage.list(&cx) {
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
            "image": e.is_local().then(|| e.image()),
            "vmlinux": e.vmlinux().filter(|_| e.is_local()),
            "location": e.location,
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
            "log": e.log().filter(|_| e.is_local()),
        }),
        Listed::Corrupt { key, reason } => json!({
            "key": key,
            "status": "corrupt",
            "reason": reason,
        }),
    }
}

pub fn list(as_json: bool, plugins: &[String], remote: bool) -> Result<()> {
    let stages = stage_setup::stages_with_plugins(plugins)?;
    if remote && stages.tiers.remotes().is_empty() {
        eprintln!(
            "{LABEL}: warning: no remote cache tier is configured (add --plugin s3-cache or \
             caches = [\"s3-cache\"] in the config file); listing the local cache only"
        );
    }
    let every_tier = remote || !plugins.is_empty();
    let (tier_of, rows): (Vec<&str>, Vec<Listed>) = rows(&stages, every_tier)?.into_iter().unzip();
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
        "{:<44} {:<12} {:<9} {:<8} {:<20} {:<21} SOURCE",
        "KEY", "VERSION", "ARCH", "PROFILE", "BUILT", "STATUS"
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
                    "{:<44} {:<12} {:<9} {:<8} {:<20} {:<21} {source}{note}",
                    e.key,
                    m.version.as_deref().unwrap_or("?"),
                    m.arch,
                    m.profile,
                    m.built_at,
                    if is_old_format(e) {
                        "old format"
                    } else if m.fragments.is_empty() {
                        "ok"
                    } else {
                        "ok (extra kconfig)"
                    },
                )?;
            }
            Listed::Corrupt { key, reason } => {
                writeln!(
                    out,
                    "{key:<44} {:<12} {:<9} {:<8} {:<20} corrupt: {reason}{note}",
                    "?", "?", "?", "?"
                )?;
            }
        }
    }
    if rows.is_empty() {
        eprintln!("{LABEL}: the cache is empty");
    }
    Ok(())
}

/// Which rows `clean --keep N` removes: every corrupt or old-format one,
/// and every usable one past the N newest (`list` is newest first).
fn doomed(rows: &[Listed], keep: usize) -> Vec<String> {
    let mut kept = 0;
    rows.iter()
        .filter_map(|row| match row {
            Listed::Ok(e) if !is_old_format(e) && kept < keep => {
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
    let stages = stage_setup::stages_with_plugins(plugins)?;
    let (cx, _progress) = super::host_context();
    // Per tier: its cache and the keys to remove from it (`--keep` counts
    // within each tier). Read-only tiers are never cleaned.
    let mut plan: Vec<(&Tier, Vec<String>)> = Vec::new();
    for (tier, is_local) in stages.tiers.scope(!plugins.is_empty()) {
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
            stages.tiers.local().stage.describe()
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
            match tier.stage.remove(&parsed, &cx) {
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
        for row in local.stage.list(&cx)? {
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
                Ok(key) => match stages.tiers.lookup_in(local, &key, &cx) {
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
                local.stage.remove(&k, &cx).unwrap_or_else(|e| {
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
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&verdicts)?)?;
    } else {
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
