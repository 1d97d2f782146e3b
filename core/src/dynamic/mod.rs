//! Third-party plugins loaded from shared libraries (`--plugin`).
//!
//! A plugin library is found ([`search`]), checked and opened ([`load`]),
//! and each stage its manifest lists becomes a [`StageFactory`] in the
//! [`Catalog`] ([`factory`]), whose stages are [`adapters`] implementing
//! the ordinary sdk traits — the pipeline never knows a stage is dynamic.
//!
//! Selection rule ([`apply`]): a loaded cache stage is appended to the
//! cache tiers and a source stage to the acquirers (asked before the
//! built-ins); a reserver, configurer, builder or verifier replaces the selection's
//! choice for its stage (`--plugin` and `plugins = [...]` come after the
//! config file's per-host tables; `--reserver` still wins). A built-in
//! name given to `--plugin` selects that built-in the same way.
//!
//! A name that [`search`] finds as an executable (`ktstr-plugin-NAME`) is
//! a process plugin: `apply` and `load_selected` hand it to
//! [`crate::process`], which adds its stages to the same catalog.
//!
//! Libraries are never unloaded (abi_stable leaks them too): a stage, or a
//! reservation guard it returned, may be alive until the process exits.

mod adapters;
mod callbacks;
mod factory;
pub mod load;
pub mod search;

use std::path::PathBuf;
use std::sync::Arc;

use ktstr_sdk::registry::StageKind;
use ktstr_sdk::{Result, StageError};

use crate::registry::{Catalog, Selection, StageFactory};
pub use load::{LoadError, LoadedPlugin, Status, abi_requirement};

/// One `--plugin` argument: a library path, or a name with an optional
/// version requirement (`shared-dir-cache@^1.2`).
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSpec {
    Path(PathBuf),
    Name {
        name: String,
        req: Option<semver::VersionReq>,
    },
}

impl PluginSpec {
    /// Anything with a `/` or ending in `.so` is a path; otherwise a name.
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        if raw.contains('/') || raw.ends_with(".so") {
            return Ok(Self::Path(PathBuf::from(raw)));
        }
        let (name, req) = match raw.split_once('@') {
            Some((n, r)) => {
                let req = semver::VersionReq::parse(r).map_err(|e| {
                    StageError::invalid_input(format!(
                        "--plugin {raw}: {r:?} is not a version requirement"
                    ))
                    .caused_by(e)
                    .with_hint("write e.g. --plugin my-cache@^1.2 or --plugin my-cache@=1.2.3")
                })?;
                (n, Some(req))
            }
            None => (raw, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(StageError::invalid_input(format!(
                "--plugin {raw}: {name:?} is not a plugin name"
            ))
            .with_hint(
                "plugin names use letters, digits, - and _; pass a path (containing /) to load a file",
            ));
        }
        Ok(Self::Name {
            name: name.to_string(),
            req,
        })
    }
}

/// Load `path`, turning a load failure into its error.
pub fn load_path(path: &std::path::Path, asked: Option<&str>) -> Result<LoadedPlugin> {
    let trusted = search::check_trusted(path)?;
    load::load(&trusted, asked).map_err(StageError::from)
}

/// Resolve and load one `--plugin` argument that is not a built-in.
pub fn resolve(spec: &PluginSpec) -> Result<LoadedPlugin> {
    match spec {
        PluginSpec::Path(p) => load_path(p, None),
        PluginSpec::Name { name, req } => {
            let path = search::find(name)?;
            let loaded = load_path(&path, Some(name))?;
            if loaded.manifest.name != *name {
                tracing::warn!(
                    "{} declares plugin name {:?}, not {name:?}; using it as {:?}",
                    path.display(),
                    loaded.manifest.name,
                    loaded.manifest.name
                );
            }
            if let Some(req) = req {
                check_version(
                    name,
                    &loaded.manifest.version,
                    req,
                    &path.display().to_string(),
                )?;
            }
            Ok(loaded)
        }
    }
}

/// The executable when `spec` names a process plugin (docs/plugin-protocol.md).
fn process_path(spec: &PluginSpec) -> Result<Option<PathBuf>> {
    let path = match spec {
        PluginSpec::Path(p) => p.clone(),
        PluginSpec::Name { name, .. } => search::find(name)?,
    };
    Ok(search::is_process(&path).then_some(path))
}

pub(crate) fn check_version(
    name: &str,
    version: &str,
    req: &semver::VersionReq,
    origin: &str,
) -> Result<()> {
    let ok = semver::Version::parse(version).is_ok_and(|v| req.matches(&v));
    if ok {
        Ok(())
    } else {
        Err(StageError::invalid_input(format!(
            "--plugin {name}@{req}: {origin} is version {version}, which does not match {req}"
        ))
        .with_hint(format!(
            "install a matching version of {name}, or relax the requirement"
        )))
    }
}

/// Load every `--plugin` argument, add its stages to `catalog` and select
/// them in `selection` (see the module docs). Returns the loaded libraries.
pub fn apply(
    plugins: &[String],
    catalog: &mut Catalog,
    selection: &mut Selection,
) -> Result<Vec<LoadedPlugin>> {
    let mut loaded: Vec<LoadedPlugin> = Vec::new();
    for raw in plugins {
        let spec = PluginSpec::parse(raw)?;
        if let PluginSpec::Name { name, req } = &spec {
            let builtins: Vec<(StageKind, String)> = catalog
                .all()
                .iter()
                .filter(|f| f.origin() == "built-in" && f.name() == name)
                .map(|f| (f.kind(), f.version().to_string()))
                .collect();
            if !builtins.is_empty() {
                for (kind, version) in builtins {
                    if let Some(req) = req {
                        check_version(name, &version, req, "the built-in")?;
                    }
                    selection.select(kind, name);
                }
                continue;
            }
        }
        if let Some(path) = process_path(&spec)? {
            crate::process::apply(&path, &spec, catalog, selection)?;
            continue;
        }
        let plugin = resolve(&spec)?;
        if loaded.iter().any(|p| p.path == plugin.path) {
            continue;
        }
        let shared = Arc::new(plugin.clone());
        for stage in &plugin.manifest.stages {
            let factory = factory::DynFactory::new(shared.clone(), stage.clone());
            catalog.add(Arc::new(factory) as Arc<dyn StageFactory>)?;
            selection.select(stage.kind, &stage.name);
        }
        tracing::debug!(
            "loaded plugin {} {} from {}",
            plugin.manifest.name,
            plugin.manifest.version,
            plugin.path.display()
        );
        loaded.push(plugin);
    }
    Ok(loaded)
}

/// Load the plugin library of every stage `selection` names that no
/// built-in or loaded library provides (`reserver = "fixed-cpus"` in a
/// `[hosts."…"]` table): selecting a plugin's stage is enough, as long as
/// its library is in a plugin directory under the stage's name. The
/// stages are added to `catalog`, not selected: only the named stage is
/// used. A name with no library is left for `Stages::select` to report.
/// The verifier is not among them: it runs only when asked for, and
/// [`load_stage`] loads it then.
pub fn load_selected(selection: &Selection, catalog: &mut Catalog) -> Result<Vec<LoadedPlugin>> {
    let mut wanted: Vec<(StageKind, String)> = vec![
        (StageKind::Reserver, selection.reserver.clone()),
        (StageKind::Configurer, selection.configurer.clone()),
        (StageKind::Builder, selection.builder.clone()),
    ];
    wanted.extend(
        selection
            .cache_tiers()
            .into_iter()
            .map(|n| (StageKind::Cache, n.to_string())),
    );
    wanted.extend(
        selection
            .sources
            .iter()
            .map(|n| (StageKind::Source, n.clone())),
    );
    let mut loaded: Vec<LoadedPlugin> = Vec::new();
    for (kind, name) in wanted {
        if let Some(plugin) = load_stage(kind, &name, catalog)?
            && !loaded.iter().any(|p| p.path == plugin.path)
        {
            loaded.push(plugin);
        }
    }
    Ok(loaded)
}

/// Load the library of the selected stage `name` of `kind` from the plugin
/// directories, unless a built-in or loaded library provides it; its
/// stages join `catalog` (not selected). `None` when nothing was loaded (a
/// name with no library is left for the catalog to report).
pub fn load_stage(
    kind: StageKind,
    name: &str,
    catalog: &mut Catalog,
) -> Result<Option<LoadedPlugin>> {
    if catalog.get(kind, name).is_some() || PluginSpec::parse(name).is_err() {
        return Ok(None);
    }
    let path = match search::find(name) {
        Ok(p) => p,
        Err(e) if e.kind == ktstr_sdk::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.context(format!("{kind} {name:?} is selected"))),
    };
    if search::is_process(&path) {
        crate::process::load_selected(&path, kind, name, catalog)
            .map_err(|e| e.context(format!("{kind} {name:?} is selected")))?;
        return Ok(None);
    }
    let plugin = load_path(&path, Some(name))
        .map_err(|e| e.context(format!("{kind} {name:?} is selected")))?;
    let shared = Arc::new(plugin.clone());
    for stage in &plugin.manifest.stages {
        if catalog.get(stage.kind, &stage.name).is_none() {
            let factory = factory::DynFactory::new(shared.clone(), stage.clone());
            catalog.add(Arc::new(factory) as Arc<dyn StageFactory>)?;
        }
    }
    tracing::debug!(
        "loaded plugin {} from {} for the selected {kind} {name}",
        plugin.manifest.name,
        plugin.path.display()
    );
    Ok(Some(plugin))
}

/// `[plugin.<name>]` tables that name no stage this run knows: a typo, or
/// a plugin that is not loaded. Their settings are ignored; say so.
pub fn unused_config_tables<'a>(
    tables: impl IntoIterator<Item = &'a String>,
    catalog: &Catalog,
) -> Vec<String> {
    tables
        .into_iter()
        .filter(|name| !catalog.all().iter().any(|f| f.name() == name.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_paths_or_names_with_requirements() {
        assert_eq!(
            PluginSpec::parse("./libx.so").unwrap(),
            PluginSpec::Path("./libx.so".into())
        );
        assert_eq!(
            PluginSpec::parse("libktstr_plugin_x.so").unwrap(),
            PluginSpec::Path("libktstr_plugin_x.so".into())
        );
        match PluginSpec::parse("shared-dir-cache@^1.2").unwrap() {
            PluginSpec::Name { name, req } => {
                assert_eq!(name, "shared-dir-cache");
                assert!(req.unwrap().matches(&semver::Version::new(1, 3, 0)));
            }
            other => panic!("{other:?}"),
        }
        let e = PluginSpec::parse("x@not-a-req").unwrap_err();
        assert!(e.message.contains("not a version requirement"), "{e}");
        let e = PluginSpec::parse("bad name").unwrap_err();
        assert!(e.message.contains("not a plugin name"), "{e}");
    }

    #[test]
    fn a_builtin_name_selects_the_builtin() {
        let mut catalog = Catalog::builtin();
        let mut selection = Selection::default();
        let loaded = apply(&["local-cache".into()], &mut catalog, &mut selection).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(selection.cache_tiers(), ["local-cache"]);
        let e = apply(&["kbuild@>=99".into()], &mut catalog, &mut selection).unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
    }

    #[test]
    fn config_tables_of_unknown_stages_are_reported() {
        let catalog = Catalog::builtin();
        let tables = ["s3-cache".to_string(), "s3-cahce".to_string()];
        assert_eq!(unused_config_tables(&tables, &catalog), ["s3-cahce"]);
    }

    #[test]
    fn loaded_stages_join_or_replace_the_selection() {
        let mut selection = Selection {
            reserver: "llc".into(),
            ..Selection::default()
        };
        selection.select(StageKind::Reserver, "fixed-cpus");
        assert_eq!(selection.reserver, "fixed-cpus");
        selection.select(StageKind::Cache, "shared-dir-cache");
        selection.select(StageKind::Cache, "shared-dir-cache");
        assert_eq!(selection.cache_tiers(), ["local-cache", "shared-dir-cache"]);
        selection.select(StageKind::Source, "my-src");
        assert_eq!(selection.sources, ["my-src"]);
        selection.select(StageKind::Verifier, "acme-smoke");
        assert_eq!(selection.verifier, "acme-smoke");
    }
}
