//! Process plugins: stage plugins that are executables ktstr talks to over
//! their stdin and stdout (docs/plugin-protocol.md), in any language.
//!
//! Found and selected like plugin libraries (`dynamic`): an executable
//! `ktstr-plugin-NAME` in a plugin directory. [`launch`] starts it and
//! shakes hands ([`handshake`]); each stage it offers becomes a
//! [`ProcFactory`] in the catalog whose stages are [`adapters`] over the
//! process ([`conn`], [`framing`]), so the pipeline cannot tell the
//! transports apart. The process cannot take ktstr down: it runs in its
//! own process group and dies with ktstr ([`spawn`]), and whatever it does
//! wrong ends in one `StageError` naming it, handled by the stage's usual
//! policy (a cache tier is marked down for the run).

mod adapters;
mod conn;
mod factory;
mod framing;
mod handshake;
mod memo;
mod spawn;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use ktstr_sdk::registry::StageKind;
use ktstr_sdk::{Result, StageError};

pub use factory::{DEFAULT_CALL_TIMEOUT, ProcFactory, TIMEOUT_KEY};
pub use handshake::ProcessPlugin;
pub use spawn::PROTOCOL_ENV;

use crate::dynamic::{PluginSpec, search};
use crate::registry::{Catalog, Selection, StageFactory};
use conn::Conn;
use memo::Memo;

/// The protocol version ktstr prefers, and every version it speaks.
pub const PROTOCOL: u32 = 1;
pub const PROTOCOLS: &[u32] = &[1];

/// A plugin started in this run; the process lives as long as a stage or
/// factory holds its connection, so ktstr shuts it down cleanly (end of
/// input) when the catalog goes, and the kernel kills it if ktstr exits
/// first.
struct Started {
    hello: memo::Hello,
    conn: Weak<Conn>,
    memo: Option<Arc<Memo>>,
}

impl Started {
    fn of(p: &ProcessPlugin) -> Self {
        Self {
            hello: memo::Hello {
                protocol: p.protocol,
                name: p.name.clone(),
                version: p.version.clone(),
                stages: p.stages.clone(),
            },
            conn: Arc::downgrade(&p.conn),
            memo: p.memo.clone(),
        }
    }

    /// The plugin, if its process is still in use.
    fn plugin(&self) -> Option<ProcessPlugin> {
        let conn = self.conn.upgrade()?;
        Some(ProcessPlugin::new(
            self.hello.clone(),
            conn,
            self.memo.clone(),
        ))
    }
}

/// Plugins started in this run, by path: a plugin named twice (by
/// `--plugin` and by a config selection) is started once, and one that
/// failed is not started again (its failure is reported once).
fn started() -> &'static Mutex<BTreeMap<PathBuf, Result<Started>>> {
    static STARTED: Mutex<BTreeMap<PathBuf, Result<Started>>> = Mutex::new(BTreeMap::new());
    &STARTED
}

/// Start the trusted executable at `path` (plugin `name`) and shake
/// hands, once per run.
pub fn launch(path: &Path, name: &str) -> Result<ProcessPlugin> {
    let mut started = started()
        .lock()
        .map_err(|_| StageError::internal("process plugin table poisoned"))?;
    match started.get(path) {
        Some(Err(e)) => return Err(e.clone()),
        Some(Ok(s)) => {
            if let Some(plugin) = s.plugin() {
                return Ok(plugin);
            }
        }
        None => {}
    }
    let result = start_or_defer(path, name, Memo::of(path).map(Arc::new));
    started.insert(
        path.to_path_buf(),
        result.as_ref().map(Started::of).map_err(Clone::clone),
    );
    result
}

/// Shake hands with the plugin now, or, when `memo` remembers its
/// handshake from an earlier run, only when a stage of it is called.
fn start_or_defer(path: &Path, name: &str, memo: Option<Arc<Memo>>) -> Result<ProcessPlugin> {
    match memo.as_ref().and_then(|m| m.hello()) {
        Some(hello) => {
            tracing::debug!(
                "plugin {} ({}): handshake remembered, started on first use",
                hello.name,
                path.display()
            );
            let conn = Arc::new(Conn::lazy(path, &hello.name, memo.clone()));
            Ok(ProcessPlugin::new(hello, conn, memo))
        }
        None => handshake::launch(path, name, memo),
    }
}

/// Start `path` without remembering it (`ktstr plugins list` and `info`,
/// which shake hands with a plugin and use none of its stages).
pub fn probe(path: &Path, name: &str) -> Result<ProcessPlugin> {
    handshake::launch(path, name, Memo::of(path).map(Arc::new))
}

/// Add every stage of `plugin` to `catalog`; `select` is called for each.
pub fn add_stages(
    plugin: &ProcessPlugin,
    catalog: &mut Catalog,
    mut select: impl FnMut(StageKind, &str),
) -> Result<()> {
    for stage in &plugin.stages {
        if catalog.get(stage.kind, &stage.name).is_some() && was_added(catalog, plugin, stage) {
            continue;
        }
        let factory = ProcFactory::new(plugin, stage.clone());
        catalog.add(Arc::new(factory) as Arc<dyn StageFactory>)?;
        select(stage.kind, &stage.name);
    }
    Ok(())
}

/// The same plugin's stage is already in the catalog (named twice).
fn was_added(
    catalog: &Catalog,
    plugin: &ProcessPlugin,
    stage: &ktstr_sdk::export::StageManifest,
) -> bool {
    catalog
        .get(stage.kind, &stage.name)
        .is_some_and(|f| f.origin() == plugin.conn.path().display().to_string())
}

/// `--plugin` (or `plugins = [...]`) named the process plugin at `path`:
/// start it, add its stages to `catalog` and select them. A plugin that
/// fails to start is not used in this run: one warning, and the run goes
/// on with the other stages (docs/plugin-protocol.md).
pub fn apply(
    path: &Path,
    spec: &PluginSpec,
    catalog: &mut Catalog,
    selection: &mut Selection,
) -> Result<()> {
    let trusted = search::check_trusted(path)?;
    let (name, req) = match spec {
        PluginSpec::Name { name, req } => (name.clone(), req.as_ref()),
        PluginSpec::Path(_) => (file_name(path), None),
    };
    let already = was_launched(&trusted);
    let plugin = match launch(&trusted, &name) {
        Ok(p) => p,
        Err(e) => {
            if !already {
                let mut e = e;
                e.message.push_str("; going on without it");
                crate::report::eprint_warning("", &e);
            }
            return Ok(());
        }
    };
    if let Some(req) = req {
        crate::dynamic::check_version(&name, &plugin.version, req, &path.display().to_string())?;
    }
    add_stages(&plugin, catalog, |kind, stage| {
        selection.select(kind, stage)
    })
}

/// A stage named by the selection (`reserver = "NAME"`, a name in
/// `caches`) is the process plugin at `path`: start it and add its stages
/// (unselected: the selection already names the one it wants). If it does
/// not start, the selected stage is still there and fails on first use
/// with why (a cache tier is then marked down).
pub fn load_selected(
    path: &Path,
    kind: StageKind,
    name: &str,
    catalog: &mut Catalog,
) -> Result<()> {
    let trusted = search::check_trusted(path)?;
    match launch(&trusted, name) {
        Ok(plugin) => add_stages(&plugin, catalog, |_, _| {}),
        Err(e) => {
            tracing::debug!("{kind} {name}: {e}");
            if catalog.get(kind, name).is_none() {
                catalog.add(Arc::new(ProcFactory::failed(kind, name, &trusted, e)))?;
            }
            Ok(())
        }
    }
}

/// Whether `launch(path)` already ran in this run.
fn was_launched(path: &Path) -> bool {
    started().lock().is_ok_and(|s| s.contains_key(path))
}

/// What a plugin given by path is called until its handshake names it.
fn file_name(path: &Path) -> String {
    search::name_of(path).unwrap_or_else(|| {
        path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
    })
}

#[cfg(test)]
mod tests;
