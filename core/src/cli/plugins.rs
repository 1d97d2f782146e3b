//! `ktstr plugins list`, `plugins info` and `plugins new`.
//!
//! `list` shows the built-ins and every plugin library in the search
//! directories with its ABI status, loading each one: a library that does
//! not load is a row with the reason, never an error for the command.

mod new;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use ktstr_sdk::registry::StageKind;
use ktstr_sdk::registry::builtins;
use serde_json::json;

use crate::dynamic::{self, LoadError, LoadedPlugin, PluginSpec, Status};
use crate::process::ProcessPlugin;
use crate::registry::Selection;
use ktstr_sdk::export::StageManifest;

pub use new::{Lang, NewKind, new};

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List built-in plugins and every plugin library found, with its ABI
    /// status.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's stages, version, library path and config keys.
    Info {
        /// A built-in or plugin name, or a library path.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin crate that builds as is (`cargo build --release`).
    New {
        /// Plugin name (letters, digits, -): the crate is ktstr-plugin-NAME.
        name: String,
        /// The stage the plugin provides.
        #[arg(long, value_enum)]
        kind: NewKind,
        /// rust: a library crate (default); python: one executable Python
        /// file speaking the process protocol (--kind cache).
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// The ktstr-sdk crate to depend on (a path dependency). Default:
        /// the sdk of the source tree this ktstr was built from.
        #[arg(long, value_name = "DIR")]
        sdk_path: Option<PathBuf>,
        /// Where to create the crate. Default: ./ktstr-plugin-NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Whether this host's pipeline (config file included) uses the plugin.
fn in_use(selection: &Selection, kind: StageKind, name: &str) -> bool {
    match kind {
        StageKind::Source => true,
        StageKind::Reserver => name == selection.reserver,
        StageKind::Configurer => name == selection.configurer,
        StageKind::Builder => name == selection.builder,
        StageKind::Cache => selection.cache_tiers().contains(&name),
        StageKind::Verifier => name == selection.verifier,
    }
}

pub fn list(as_json: bool) -> Result<()> {
    let setup = crate::stage_setup::setup(&crate::stage_setup::Overrides::default())?;
    let selected = |kind: StageKind, name: &str| in_use(&setup.selection, kind, name);
    // A loaded source is in use only when selected (built-in ones always are).
    let dyn_selected = |kind: StageKind, name: &str| match kind {
        StageKind::Source => setup.selection.sources.iter().any(|s| s == name),
        _ => in_use(&setup.selection, kind, name),
    };
    let all = builtins();
    let libraries: Vec<Library> = dynamic::search::discover()
        .into_iter()
        .map(Library::probe)
        .collect();
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
                    "status": "ok",
                    "selected": selected(p.constructor.kind(), p.name),
                })
            })
            .chain(libraries.iter().flat_map(|l| l.json_rows(&dyn_selected)))
            .collect();
        crate::report::print_json(&rows)?;
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
    if libraries.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:<8} {:<24} STAGES / PROBLEM",
        "PLUGIN LIBRARY", "VERSION", "ABI"
    )?;
    for l in &libraries {
        l.write_row(&mut out, &dyn_selected)?;
    }
    Ok(())
}

/// A plugin that loaded (a library) or answered its handshake (a process).
enum Found {
    Library(LoadedPlugin),
    Process(ProcessPlugin),
}

impl Found {
    fn name(&self) -> &str {
        match self {
            Found::Library(p) => &p.manifest.name,
            Found::Process(p) => &p.name,
        }
    }
    fn version(&self) -> &str {
        match self {
            Found::Library(p) => &p.manifest.version,
            Found::Process(p) => &p.version,
        }
    }
    fn stages(&self) -> &[StageManifest] {
        match self {
            Found::Library(p) => &p.manifest.stages,
            Found::Process(p) => &p.stages,
        }
    }
}

/// One plugin file found in the search directories, loaded or not.
struct Library {
    path: PathBuf,
    result: std::result::Result<Found, LoadError>,
}

impl Library {
    fn probe(path: PathBuf) -> Self {
        // `--plugin NAME` selects a built-in of that name, so a library
        // called like one is never loaded by name: say so, do not load it.
        if let Some(name) = dynamic::search::name_of(&path)
            && builtins().iter().any(|b| b.name == name)
        {
            let error = ktstr_sdk::StageError::invalid_input(format!(
                "shadowed by the built-in {name}: --plugin {name} and config names select the \
                 built-in, never this library"
            ))
            .with_hint(format!(
                "rename the plugin, or load this library by its path (--plugin {})",
                path.display()
            ));
            return Self {
                path,
                result: Err(LoadError {
                    status: Status::Shadowed,
                    abi_version: None,
                    error,
                }),
            };
        }
        let result = match dynamic::search::check_trusted(&path) {
            Ok(trusted) if dynamic::search::is_process(&path) => {
                let name = dynamic::search::name_of(&path).unwrap_or_default();
                crate::process::probe(&trusted, &name)
                    .map(Found::Process)
                    .map_err(|error| LoadError {
                        status: Status::Broken,
                        abi_version: None,
                        error,
                    })
            }
            Ok(trusted) => dynamic::load::load(&trusted, None).map(Found::Library),
            Err(error) => Err(LoadError {
                status: Status::Broken,
                abi_version: None,
                error,
            }),
        };
        Self { path, result }
    }

    fn name(&self) -> String {
        match &self.result {
            Ok(p) => p.name().to_string(),
            Err(_) => dynamic::search::name_of(&self.path).unwrap_or_default(),
        }
    }

    fn abi(&self) -> String {
        match &self.result {
            Ok(Found::Library(p)) => format!("ok ({})", p.manifest.abi_version),
            Ok(Found::Process(p)) => format!("process (protocol {})", p.protocol),
            Err(e) => match (&e.status, &e.abi_version) {
                (Status::AbiMismatch, Some(v)) => {
                    format!("mismatch ({v}, needs {})", dynamic::abi_requirement())
                }
                (status, _) => status.as_str().to_string(),
            },
        }
    }

    fn json_rows(&self, selected: &dyn Fn(StageKind, &str) -> bool) -> Vec<serde_json::Value> {
        let path = self.path.display().to_string();
        match &self.result {
            Ok(p) => p
                .stages()
                .iter()
                .map(|s| {
                    let (abi, protocol) = match p {
                        Found::Library(l) => (Some(l.manifest.abi_version.as_str()), None),
                        Found::Process(x) => (None, Some(x.protocol)),
                    };
                    json!({
                        "name": s.name,
                        "kind": s.kind,
                        "version": p.version(),
                        "summary": s.summary,
                        "origin": "dynamic",
                        "transport": if protocol.is_some() { "process" } else { "library" },
                        "status": "ok",
                        "selected": selected(s.kind, &s.name),
                        "plugin": p.name(),
                        "path": path,
                        "abi_version": abi,
                        "protocol": protocol,
                        "config_keys": s.config_keys,
                    })
                })
                .collect(),
            Err(e) => vec![json!({
                "name": self.name(),
                "kind": null,
                "version": null,
                "summary": null,
                "origin": "dynamic",
                "transport": if dynamic::search::is_process(&self.path) { "process" } else { "library" },
                "status": e.status.as_str(),
                "selected": false,
                "plugin": self.name(),
                "path": path,
                "abi_version": e.abi_version,
                "error": e.error.to_string(),
            })],
        }
    }

    fn write_row(
        &self,
        out: &mut impl Write,
        selected: &dyn Fn(StageKind, &str) -> bool,
    ) -> std::io::Result<()> {
        let (version, detail) = match &self.result {
            Ok(p) => (
                p.version().to_string(),
                p.stages()
                    .iter()
                    .map(|s| {
                        let used = if selected(s.kind, &s.name) {
                            " (in use)"
                        } else {
                            ""
                        };
                        format!("{} {}{used}", s.kind, s.name)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(e) => ("?".to_string(), e.error.message.clone()),
        };
        writeln!(
            out,
            "{:<18} {:<8} {:<24} {detail}",
            self.name(),
            version,
            self.abi()
        )?;
        writeln!(out, "  {}", self.path.display())
    }
}

/// `ktstr plugins info NAME|PATH`.
pub fn info(raw: &str, as_json: bool) -> Result<()> {
    let spec = PluginSpec::parse(raw)?;
    if let PluginSpec::Name { name, .. } = &spec {
        let found: Vec<_> = builtins().into_iter().filter(|p| p.name == name).collect();
        if !found.is_empty() {
            let mut out = std::io::stdout().lock();
            if as_json {
                let stages: Vec<_> = found
                    .iter()
                    .map(|p| json!({"kind": p.constructor.kind(), "name": p.name, "summary": p.summary}))
                    .collect();
                let row = json!({"name": name, "version": found[0].version, "origin": "builtin", "stages": stages});
                crate::report::print_json(&row)?;
            } else {
                writeln!(out, "plugin   {name} {} (built in)", found[0].version)?;
                for p in &found {
                    writeln!(
                        out,
                        "stage    {} {}: {}",
                        p.constructor.kind(),
                        p.name,
                        p.summary
                    )?;
                }
            }
            return Ok(());
        }
    }
    let process = match &spec {
        PluginSpec::Path(p) => dynamic::search::is_process(p).then(|| p.clone()),
        PluginSpec::Name { name, .. } => {
            Some(dynamic::search::find(name)?).filter(|p| dynamic::search::is_process(p))
        }
    };
    if let Some(path) = process {
        let trusted = dynamic::search::check_trusted(&path)?;
        let name = dynamic::search::name_of(&path).unwrap_or_default();
        let p = crate::process::probe(&trusted, &name)?;
        return info_process(&trusted, &p, as_json);
    }
    let p = dynamic::resolve(&spec)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let row = json!({
            "name": p.manifest.name,
            "version": p.manifest.version,
            "origin": "dynamic",
            "transport": "library",
            "path": p.path,
            "abi_version": p.manifest.abi_version,
            "abi_required": dynamic::abi_requirement().to_string(),
            "sdk_version": p.manifest.sdk_version,
            "stages": p.manifest.stages,
        });
        crate::report::print_json(&row)?;
        return Ok(());
    }
    write_info(&mut out, &p.path, &p)?;
    Ok(())
}

/// `plugins info` of a process plugin: what its handshake said.
fn info_process(path: &Path, p: &ProcessPlugin, as_json: bool) -> Result<()> {
    if as_json {
        let row = json!({
            "name": p.name,
            "version": p.version,
            "origin": "dynamic",
            "transport": "process",
            "path": path,
            "protocol": p.protocol,
            "protocols_supported": crate::process::PROTOCOLS,
            "stages": p.stages,
        });
        crate::report::print_json(&row)?;
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "plugin   {} {}", p.name, p.version)?;
    writeln!(
        out,
        "process  {} (protocol {}: `ktstr docs plugin-protocol`)",
        path.display(),
        p.protocol
    )?;
    write_stages(&mut out, &p.stages)?;
    Ok(())
}

fn write_stages(out: &mut impl Write, stages: &[StageManifest]) -> std::io::Result<()> {
    for s in stages {
        writeln!(out, "stage    {} {}: {}", s.kind, s.name, s.summary)?;
        if !s.config_keys.is_empty() {
            writeln!(
                out,
                "         config keys ([plugin.{}]): {}",
                s.name,
                s.config_keys.join(", ")
            )?;
        }
    }
    Ok(())
}

fn write_info(out: &mut impl Write, path: &Path, p: &LoadedPlugin) -> std::io::Result<()> {
    let m = &p.manifest;
    writeln!(out, "plugin   {} {}", m.name, m.version)?;
    writeln!(out, "library  {}", path.display())?;
    writeln!(
        out,
        "abi      {} (this ktstr accepts {}): ok",
        m.abi_version,
        dynamic::abi_requirement()
    )?;
    if !m.sdk_version.is_empty() {
        writeln!(out, "sdk      ktstr-sdk {}", m.sdk_version)?;
    }
    write_stages(out, &m.stages)
}
