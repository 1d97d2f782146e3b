//! `ktstr kernel list` and `ktstr kernel verify`; `kernel clean` is in
//! kernel_clean.rs, `kernel verify-boot` in kernel_verify.rs.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Subcommand;
use ktstr_sdk::cache::Listed;
use ktstr_sdk::source::short_id;
use serde_json::json;

pub use super::kernel_clean::{CleanArgs, clean};
use super::log::LogArgs;
use crate::byte_size::human;
use crate::progress::LABEL;
use crate::registry::Stages;
use crate::stage_setup;
use crate::table::{Column, GiveWay};

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
    /// Boot-check cached kernels with the verifier (`--verify` of `ktstr
    /// build`) and record each verdict with its entry, locally and in the
    /// writable remote tiers. Exit 3 when a kernel fails.
    VerifyBoot(super::kernel_verify::VerifyBootArgs),
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
pub(super) fn is_old_format(e: &ktstr_sdk::cache::CacheEntry) -> bool {
    !crate::identity::is_current_format(&e.key)
}

/// Bytes an entry takes: its directory on disk when the tier keeps one
/// here, else the sizes its metadata records (a remote tier's entry).
pub(super) fn entry_size(e: &ktstr_sdk::cache::CacheEntry) -> u64 {
    if e.dir.is_dir() {
        crate::byte_size::disk_usage(&e.dir)
    } else {
        e.metadata.artifacts.values().map(|a| a.size).sum()
    }
}

pub(super) fn row_size(row: &Listed) -> Option<u64> {
    match row {
        Listed::Ok(e) => Some(entry_size(e)),
        Listed::Corrupt { .. } => None,
    }
}

pub(super) fn row_key(row: &Listed) -> String {
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
            "last_used": e.last_used,
            "size": entry_size(e),
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
            "verify": e.metadata.verify,
        }),
        Listed::Corrupt { key, reason } => json!({
            "key": key,
            "status": "corrupt",
            "reason": reason,
            "size": null,
        }),
    }
}

/// The `kernel list` table: KEY VERSION ARCH PROFILE SIZE BUILT BOOT
/// STATUS SOURCE.
const LIST_COLUMNS: [Column; 9] = [
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
        header: "BOOT",
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
/// keys are what people copy); then the boot check, version and arch go.
/// Key, size and status always stay.
const LIST_GIVE_WAY: [GiveWay; 9] = [
    GiveWay::Shorten(8),
    GiveWay::Drop(8),
    GiveWay::Shorten(7),
    GiveWay::Drop(5),
    GiveWay::Drop(3),
    GiveWay::Shorten(0),
    GiveWay::Drop(6),
    GiveWay::Drop(1),
    GiveWay::Drop(2),
];

/// `2026-11-27T06:50:00Z` as `2026-11-27 06:50` (UTC): the table's width
/// is worth more than the seconds.
pub(super) fn short_time(rfc3339: &str) -> String {
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
                crate::pipeline::verify::boot_cell(m.verify.as_ref()),
                status.to_string(),
                format!("{source}{note}"),
            ]
        }
        Listed::Corrupt { key, reason } => {
            let mut cells = vec![key.clone()];
            cells.extend(["?", "?", "?", "?", "?", "?"].map(String::from));
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

    #[test]
    fn short_time_drops_seconds_only_from_rfc3339() {
        assert_eq!(short_time("2026-11-27T06:50:00Z"), "2026-11-27 06:50");
        assert_eq!(short_time("yesterday"), "yesterday");
    }
}
