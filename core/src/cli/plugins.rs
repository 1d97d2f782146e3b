//! `ktstr plugins list`.

use std::io::Write;

use anyhow::Result;
use ktstr_sdk::registry::builtins;
use serde_json::json;

use crate::registry;

/// Whether this host's pipeline uses the named plugin by default.
fn selected(kind: ktstr_sdk::registry::StageKind, name: &str) -> bool {
    use ktstr_sdk::registry::StageKind::*;
    match kind {
        Source => true,
        Reserver => name == registry::DEFAULT_RESERVER,
        Configurer => name == registry::DEFAULT_CONFIGURER,
        Builder => name == registry::DEFAULT_BUILDER,
        Cache => registry::DEFAULT_CACHE_TIERS.contains(&name),
    }
}

pub fn list(as_json: bool) -> Result<()> {
    let all = builtins();
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<_> = all
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "kind": p.constructor.kind(),
                    "version": p.version,
                    "summary": p.summary,
                    "origin": "builtin",
                    "selected": selected(p.constructor.kind(), p.name),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<11} {:<12} {:<8} {:<8} SUMMARY",
        "KIND", "NAME", "VERSION", "IN USE"
    )?;
    for p in all {
        let kind = p.constructor.kind();
        writeln!(
            out,
            "{:<11} {:<12} {:<8} {:<8} {}",
            kind.as_str(),
            p.name,
            p.version,
            if selected(kind, p.name) { "yes" } else { "" },
            p.summary
        )?;
    }
    Ok(())
}
