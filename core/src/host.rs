//! From config file and command line to the stages one run uses.
//!
//! Precedence, lowest first: built-in defaults → the config file's top
//! level → its matching `[hosts."…"]` tables → `plugins = [...]` and
//! `--plugin` → `--reserver`. Every subcommand that touches stages goes
//! through [`setup`], so `ktstr plugins list` shows exactly what
//! `ktstr build` would use.

use ktstr_sdk::registry::StageKind;
use ktstr_sdk::{Result, StageError};

use crate::config::{self, Config, Effective};
use crate::registry::{Catalog, Selection, Stages};

/// Command-line choices that affect stage selection.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub plugins: Vec<String>,
    pub reserver: Option<String>,
}

/// The resolved setup of one run.
pub struct Setup {
    pub config: Config,
    pub host: String,
    pub effective: Effective,
    pub catalog: Catalog,
    pub selection: Selection,
}

impl Setup {
    pub fn stages(&self) -> Result<Stages> {
        Stages::select(&self.catalog, &self.selection)
    }
}

/// Load the config file and apply `overrides`.
pub fn setup(overrides: &Overrides) -> Result<Setup> {
    let config = Config::load()?;
    let host = config::hostname();
    let effective = config.for_host(&host);
    let mut selection = effective.selection()?;
    let mut catalog = Catalog::builtin();
    let mut plugins = effective.settings.plugins.clone().unwrap_or_default();
    plugins.extend(overrides.plugins.iter().cloned());
    apply_plugins(&plugins, &mut catalog, &mut selection)?;
    if let Some(r) = &overrides.reserver {
        catalog.find(StageKind::Reserver, r)?;
        selection.reserver = r.clone();
    }
    Ok(Setup {
        config,
        host,
        effective,
        catalog,
        selection,
    })
}

/// Select the stages named by `--plugin`/`plugins = [...]`: a cache joins
/// the tiers, a source is asked first, a reserver, configurer or builder
/// replaces the default for its stage.
pub fn apply_plugins(
    plugins: &[String],
    catalog: &mut Catalog,
    selection: &mut Selection,
) -> Result<()> {
    for name in plugins {
        let provided: Vec<_> = catalog
            .all()
            .iter()
            .filter(|f| f.name() == name)
            .map(|f| f.kind())
            .collect();
        if provided.is_empty() {
            return Err(
                StageError::not_found(format!("--plugin {name}: no such plugin"))
                    .with_hint("`ktstr plugins list` shows the plugins this ktstr can use"),
            );
        }
        for kind in provided {
            select_stage(selection, kind, name);
        }
    }
    Ok(())
}

/// Make `name` the selection's stage of `kind` (appending for lists).
pub fn select_stage(selection: &mut Selection, kind: StageKind, name: &str) {
    let push = |list: &mut Vec<String>| {
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    };
    match kind {
        StageKind::Source => push(&mut selection.sources),
        StageKind::Cache => push(&mut selection.caches),
        StageKind::Reserver => selection.reserver = name.to_string(),
        StageKind::Configurer => selection.configurer = name.to_string(),
        StageKind::Builder => selection.builder = name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builtin_plugin_name_selects_it() {
        let mut catalog = Catalog::builtin();
        let mut sel = Selection::default();
        apply_plugins(&["none".into()], &mut catalog, &mut sel).unwrap();
        assert_eq!(sel.reserver, "none");
        let err = apply_plugins(&["nope".into()], &mut catalog, &mut sel).unwrap_err();
        assert!(err.message.contains("nope"));
    }
}
