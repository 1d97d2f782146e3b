//! From config file and command line to the stages one run uses.
//!
//! Precedence, lowest first: built-in defaults → the config file's top
//! level → its matching `[hosts."…"]` tables → `plugins = [...]` and
//! `--plugin` → `--reserver`. A selected stage that no built-in or listed
//! library provides is loaded from the plugin library of that name, and a
//! `[plugin.<name>]` table that configures nothing is a warning. Every
//! subcommand that touches stages goes through [`setup`], so `ktstr
//! plugins list` shows exactly what `ktstr build` would use.

use ktstr_sdk::Result;
use ktstr_sdk::registry::StageKind;

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
    pub effective: Effective,
    pub catalog: Catalog,
    pub selection: Selection,
}

impl Setup {
    pub fn stages(&self) -> Result<Stages> {
        Stages::select(&self.catalog, &self.selection).map_err(|e| self.locate(e))
    }

    /// A plugin that refuses its settings names a key at best; add where
    /// in the config file its table (or that key) is.
    fn locate(&self, e: ktstr_sdk::StageError) -> ktstr_sdk::StageError {
        let Some(path) = &self.config.path else {
            return e;
        };
        if e.kind != ktstr_sdk::ErrorKind::InvalidInput {
            return e;
        }
        let Some(text) = &self.config.text else {
            return e;
        };
        let found = self.effective.settings.plugin.keys().find_map(|name| {
            e.message
                .contains(&format!("plugin {name}"))
                .then(|| config::locate_plugin_setting(text, name, &e.message))
                .flatten()
        });
        match found {
            Some(at) => e.context(format!("config file {} {at}", path.display())),
            None => e,
        }
    }
}

/// The stages of a command whose only stage option is `--plugin`.
pub fn stages_with_plugins(plugins: &[String]) -> Result<Stages> {
    setup(&Overrides {
        plugins: plugins.to_vec(),
        reserver: None,
    })?
    .stages()
}

/// Load the config file and apply `overrides`.
pub fn setup(overrides: &Overrides) -> Result<Setup> {
    let config = Config::load()?;
    let effective = config.for_host(&config::hostname());
    let mut selection = effective.selection()?;
    let mut catalog = Catalog::builtin();
    let mut plugins = effective.settings.plugins.clone().unwrap_or_default();
    plugins.extend(overrides.plugins.iter().cloned());
    // Built-in names select the built-in; anything else is a plugin
    // library, loaded and added to the catalog (see `dynamic`).
    crate::dynamic::apply(&plugins, &mut catalog, &mut selection)?;
    if let Some(r) = &overrides.reserver {
        selection.reserver = r.clone();
    }
    // A stage named in the config file (or by --reserver) whose plugin
    // library is installed but not listed in `plugins`: load it.
    crate::dynamic::load_selected(&selection, &mut catalog)?;
    if let Some(r) = &overrides.reserver {
        catalog.find(StageKind::Reserver, r)?;
    }
    for name in crate::dynamic::unused_config_tables(effective.settings.plugin.keys(), &catalog) {
        eprintln!(
            "{}: warning: [plugin.{name}] in {} configures no stage of a built-in or loaded \
             plugin; its settings are ignored (a typo, or a plugin that is not loaded: \
             `ktstr plugins list` shows the names)",
            crate::progress::LABEL,
            config
                .path
                .as_ref()
                .map_or("the config file".to_string(), |p| p.display().to_string())
        );
    }
    Ok(Setup {
        config,
        effective,
        catalog,
        selection,
    })
}
