//! Which stage implementation runs each pipeline stage.
//!
//! Built-ins come from `inventory`; every built-in crate is named below
//! because a linked crate that nothing references is dropped by the linker
//! together with its registrations.

use ktstr_sdk::build::Builder;
use ktstr_sdk::cache::CacheBackend;
use ktstr_sdk::configure::Configurer;
use ktstr_sdk::registry::{BuiltinPlugin, Constructor, PluginConfig, StageKind, builtins};
use ktstr_sdk::reserve::Reserver;
use ktstr_sdk::source::{KernelSpec, SourceAcquirer};
use ktstr_sdk::{Result, StageError};

use ktstr_plugin_kbuild as _;
use ktstr_plugin_kconfig as _;
use ktstr_plugin_local as _;
use ktstr_plugin_local_cache as _;
use ktstr_plugin_git as _;
use ktstr_plugin_llc as _;
use ktstr_plugin_none as _;
use ktstr_plugin_remote_cache as _;
use ktstr_plugin_tarball as _;

/// Default implementation per stage until a config file says otherwise.
pub const DEFAULT_RESERVER: &str = "none";
pub const DEFAULT_CONFIGURER: &str = "kconfig";
pub const DEFAULT_BUILDER: &str = "kbuild";
pub const DEFAULT_CACHE_TIERS: &[&str] = &["local-cache"];

/// A stage instance with the name it was registered under.
pub struct Named<T: ?Sized> {
    pub name: String,
    pub stage: Box<T>,
}

/// The stages one `ktstr` run uses.
pub struct Stages {
    pub sources: Vec<Named<dyn SourceAcquirer>>,
    pub reserver: Named<dyn Reserver>,
    pub configurer: Named<dyn Configurer>,
    pub builder: Named<dyn Builder>,
    /// Cache tiers, authoritative (local) first.
    pub caches: Vec<Named<dyn CacheBackend>>,
}

fn find(kind: StageKind, name: &str) -> Result<&'static BuiltinPlugin> {
    let all = builtins();
    all.iter()
        .find(|p| p.constructor.kind() == kind && p.name == name)
        .copied()
        .ok_or_else(|| {
            let known: Vec<_> = all
                .iter()
                .filter(|p| p.constructor.kind() == kind)
                .map(|p| p.name)
                .collect();
            StageError::not_found(format!("no {kind} plugin named {name:?}"))
                .with_hint(format!("available {kind} plugins: {}", known.join(", ")))
        })
}

macro_rules! construct {
    ($variant:ident, $kind:expr, $name:expr, $config:expr) => {{
        let plugin = find($kind, $name)?;
        match plugin.constructor {
            Constructor::$variant(make) => Named {
                name: plugin.name.to_string(),
                stage: make($config)
                    .map_err(|e| e.context(format!("{} plugin {}", $kind, plugin.name)))?,
            },
            _ => unreachable!("find() filtered on the stage kind"),
        }
    }};
}

impl Stages {
    /// The built-in pipeline with default settings.
    pub fn builtin() -> Result<Self> {
        let empty = PluginConfig::Null;
        let mut sources = Vec::new();
        for plugin in builtins() {
            if let Constructor::Source(make) = plugin.constructor {
                sources.push(Named {
                    name: plugin.name.to_string(),
                    stage: make(&empty)?,
                });
            }
        }
        let mut caches = Vec::new();
        for name in DEFAULT_CACHE_TIERS {
            caches.push(construct!(Cache, StageKind::Cache, name, &empty));
        }
        Ok(Self {
            sources,
            reserver: construct!(Reserver, StageKind::Reserver, DEFAULT_RESERVER, &empty),
            configurer: construct!(
                Configurer,
                StageKind::Configurer,
                DEFAULT_CONFIGURER,
                &empty
            ),
            builder: construct!(Builder, StageKind::Builder, DEFAULT_BUILDER, &empty),
            caches,
        })
    }

    /// The acquirer that claims `spec`, or an error listing accepted forms.
    pub fn acquirer_for(&self, spec: &KernelSpec) -> Result<&Named<dyn SourceAcquirer>> {
        self.sources
            .iter()
            .find(|s| s.stage.claims(spec))
            .ok_or_else(|| {
                let forms: Vec<String> = self
                    .sources
                    .iter()
                    .flat_map(|s| s.stage.accepted_forms())
                    .collect();
                StageError::invalid_input(format!(
                    "--kernel {}: not a kernel spec ktstr understands",
                    spec.raw
                ))
                .with_hint(format!("accepted forms: {}", forms.join("; ")))
            })
    }

    /// The authoritative local tier.
    pub fn local_cache(&self) -> &Named<dyn CacheBackend> {
        &self.caches[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_is_registered() {
        let names: Vec<(StageKind, &str)> = builtins()
            .iter()
            .map(|p| (p.constructor.kind(), p.name))
            .collect();
        for want in [
            (StageKind::Source, "local"),
            (StageKind::Reserver, "none"),
            (StageKind::Configurer, "kconfig"),
            (StageKind::Builder, "kbuild"),
            (StageKind::Cache, "local-cache"),
        ] {
            assert!(names.contains(&want), "{want:?} missing from {names:?}");
        }
    }

    #[test]
    fn unknown_plugin_lists_alternatives() {
        let err = find(StageKind::Builder, "nope").unwrap_err();
        assert!(err.message.contains("\"nope\""));
        assert!(err.hint.unwrap().contains("kbuild"));
    }
}
