//! `ktstr plugins list`.

use std::io::Write;

use anyhow::Result;
use ktstr_sdk::registry::builtins;
use serde_json::json;

use ktstr_sdk::registry::StageKind;

use crate::registry::Selection;

/// Whether this host's pipeline (config file included) uses the plugin.
fn in_use(selection: &Selection, kind: StageKind, name: &str) -> bool {
    match kind {
        StageKind::Source => true,
        StageKind::Reserver => name == selection.reserver,
        StageKind::Configurer => name == selection.configurer,
        StageKind::Builder => name == selection.builder,
        StageKind::Cache => selection.cache_tiers().contains(&name),
    }
}

pub fn list(as_json: bool) -> Result<()> {
    let setup = crate::host::setup(&crate::host::Overrides::default())?;
    let selected = |kind, name| in_use(&setup.selection, kind, name);
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
