//! `ktstr kernel list` and `ktstr kernel clean`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use ktstr_sdk::cache::Listed;
use ktstr_sdk::source::short_id;
use serde_json::json;

use crate::progress::LABEL;
use crate::registry::Stages;

fn rows() -> Result<Vec<Listed>> {
    let stages = Stages::builtin()?;
    Ok(stages.local_cache().stage.list()?)
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
            "fragments": e.metadata.fragments,
        }),
        Listed::Corrupt { key, reason } => json!({
            "key": key,
            "status": "corrupt",
            "reason": reason,
        }),
    }
}

pub fn list(as_json: bool) -> Result<()> {
    let rows = rows()?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let all: Vec<_> = rows.iter().map(json_row).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<44} {:<12} {:<8} {:<20} {:<21} SOURCE",
        "KEY", "VERSION", "PROFILE", "BUILT", "STATUS"
    )?;
    for row in &rows {
        match row {
            Listed::Ok(e) => {
                let m = &e.metadata;
                let source = match &m.source.path {
                    Some(p) => {
                        format!("{} {} @ {}", m.source.kind, p, short_id(&m.source.identity))
                    }
                    None => format!("{} {}", m.source.kind, short_id(&m.source.identity)),
                };
                writeln!(
                    out,
                    "{:<44} {:<12} {:<8} {:<20} {:<21} {source}",
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
                    "{key:<44} {:<12} {:<8} {:<20} corrupt: {reason}",
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

pub fn clean(keep: Option<usize>, force: bool) -> Result<()> {
    let stages = Stages::builtin()?;
    let cache = &stages.local_cache().stage;
    let rows = cache.list()?;
    let doomed = doomed(&rows, keep.unwrap_or(0));
    if doomed.is_empty() {
        eprintln!("{LABEL}: nothing to remove from the {}", cache.describe());
        return Ok(());
    }
    let question = format!(
        "remove {} entr{} from the {}?",
        doomed.len(),
        if doomed.len() == 1 { "y" } else { "ies" },
        cache.describe()
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
    for key in &doomed {
        let parsed = match ktstr_sdk::cache::CacheKey::parse(key) {
            Ok(k) => k,
            Err(_) => {
                eprintln!(
                    "{LABEL}: warning: {key}: not a valid key; remove it by hand from the cache directory"
                );
                continue;
            }
        };
        match cache.remove(&parsed) {
            Ok(_) => removed += 1,
            Err(e) => {
                in_use += 1;
                eprintln!("{LABEL}: warning: kept {key}: {e}");
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
