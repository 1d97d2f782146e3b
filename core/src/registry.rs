//! Which stage implementation runs each pipeline stage.
//!
//! Built-ins come from `inventory`; every built-in crate is named below
//! because a linked crate that nothing references is dropped by the linker
//! together with its registrations.

use std::collections::BTreeMap;
use std::sync::Arc;

use ktstr_sdk::build::Builder;
use ktstr_sdk::configure::Configurer;
use ktstr_sdk::registry::{AnyStage, BuiltinPlugin, PluginConfig, Stage, StageKind, builtins};
use ktstr_sdk::reserve::Reserver;
use ktstr_sdk::source::{KernelSpec, SourceAcquirer};
use ktstr_sdk::{Result, StageError};

use crate::tiers::Tiers;

use ktstr_plugin_git as _;
use ktstr_plugin_kbuild as _;
use ktstr_plugin_kconfig as _;
use ktstr_plugin_llc as _;
use ktstr_plugin_local as _;
use ktstr_plugin_local_cache as _;
use ktstr_plugin_none as _;
use ktstr_plugin_qemu as _;
use ktstr_plugin_remote_cache as _;
use ktstr_plugin_tarball as _;

/// Default implementation per stage until a config file says otherwise.
pub const DEFAULT_RESERVER: &str = "llc";
pub const DEFAULT_CONFIGURER: &str = "kconfig";
pub const DEFAULT_BUILDER: &str = "kbuild";
pub const DEFAULT_CACHE_TIERS: &[&str] = &["local-cache"];
/// The boot check `--verify` runs (built in: `plugins/qemu`).
pub const DEFAULT_VERIFIER: &str = "qemu";
/// The authoritative first tier; every other tier comes after it.
pub const LOCAL_CACHE: &str = "local-cache";

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
    /// Cache tiers: the local one and the remotes.
    pub tiers: Tiers,
    /// The boot check, when this run verifies (`--verify`); constructed
    /// only then, so a host without the verifier still builds.
    pub verifier: Option<crate::pipeline::verify::BootCheck>,
}

/// One stage implementation the host can construct, built in or from a
/// loaded plugin library. Only the constructor matching [`Self::kind`]
/// is called.
pub trait StageFactory: Send + Sync {
    fn kind(&self) -> StageKind;
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    fn summary(&self) -> &str;
    /// `built-in`, or the path of the plugin library.
    fn origin(&self) -> String;
    /// Construct the stage from its config table; a stage of [`Self::kind`].
    fn construct(&self, config: &PluginConfig) -> Result<AnyStage>;
}

impl StageFactory for &'static BuiltinPlugin {
    fn kind(&self) -> StageKind {
        self.constructor.kind()
    }
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        self.version
    }
    fn summary(&self) -> &str {
        self.summary
    }
    fn origin(&self) -> String {
        "built-in".into()
    }
    fn construct(&self, config: &PluginConfig) -> Result<AnyStage> {
        self.constructor.construct(config)
    }
}

/// Every stage implementation this run can choose from: the built-ins,
/// then the stages of plugin libraries loaded with `--plugin`.
pub struct Catalog {
    factories: Vec<Arc<dyn StageFactory>>,
}

impl Catalog {
    /// The built-ins linked into this binary.
    pub fn builtin() -> Self {
        Self {
            factories: builtins()
                .into_iter()
                .map(|p| Arc::new(p) as Arc<dyn StageFactory>)
                .collect(),
        }
    }

    /// Add a loaded plugin's stage. A (kind, name) already present is an
    /// error naming both origins.
    pub fn add(&mut self, factory: Arc<dyn StageFactory>) -> Result<()> {
        if let Some(existing) = self.get(factory.kind(), factory.name()) {
            return Err(StageError::invalid_input(format!(
                "{} plugin {:?} from {} clashes with the one from {}",
                factory.kind(),
                factory.name(),
                factory.origin(),
                existing.origin()
            ))
            .with_hint("remove one of them or rename the plugin's stage"));
        }
        self.factories.push(factory);
        Ok(())
    }

    pub fn all(&self) -> &[Arc<dyn StageFactory>] {
        &self.factories
    }

    pub fn get(&self, kind: StageKind, name: &str) -> Option<&Arc<dyn StageFactory>> {
        self.factories
            .iter()
            .find(|f| f.kind() == kind && f.name() == name)
    }

    /// The factory for (kind, name), or an error listing the alternatives.
    pub fn find(&self, kind: StageKind, name: &str) -> Result<&Arc<dyn StageFactory>> {
        self.get(kind, name).ok_or_else(|| {
            let known: Vec<_> = self
                .factories
                .iter()
                .filter(|f| f.kind() == kind)
                .map(|f| f.name().to_string())
                .collect();
            let guess = crate::suggest::did_you_mean(name, known.iter().map(String::as_str));
            StageError::not_found(unknown_stage(kind, name)).with_hint(format!(
                "{guess}available {kind} plugins: {}; a plugin is loaded with --plugin NAME, \
                 plugins = [\"NAME\"] in the config file, or by selecting its stage when \
                 {} or {} is in a plugin directory (`ktstr plugins list` shows them)",
                known.join(", "),
                crate::dynamic::search::file_name(name),
                crate::dynamic::search::exe_name(name)
            ))
        })
    }
}

/// The message of [`Catalog::find`]'s error for a (kind, name) it lacks,
/// so a caller can tell that failure from others.
pub fn unknown_stage(kind: StageKind, name: &str) -> String {
    format!("no {kind} plugin named {name:?}")
}

/// Which implementation runs each stage, and each one's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub reserver: String,
    pub configurer: String,
    pub builder: String,
    /// Cache tiers; `local-cache` is always first whether listed or not.
    pub caches: Vec<String>,
    /// Extra source acquirers asked before the built-in ones, in order.
    pub sources: Vec<String>,
    /// The verifier `--verify` and `kernel verify-boot` run.
    pub verifier: String,
    /// Per-plugin settings (`[plugin.<name>]`); a missing entry is `null`.
    pub configs: BTreeMap<String, PluginConfig>,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            reserver: DEFAULT_RESERVER.into(),
            configurer: DEFAULT_CONFIGURER.into(),
            builder: DEFAULT_BUILDER.into(),
            caches: DEFAULT_CACHE_TIERS.iter().map(|s| s.to_string()).collect(),
            sources: Vec::new(),
            verifier: DEFAULT_VERIFIER.into(),
            configs: BTreeMap::new(),
        }
    }
}

impl Selection {
    pub fn config(&self, name: &str) -> &PluginConfig {
        static NULL: PluginConfig = PluginConfig::Null;
        self.configs.get(name).unwrap_or(&NULL)
    }

    /// Use `name` for a stage of `kind`: a cache joins the tiers, a source
    /// is asked first, a reserver, configurer, builder or verifier
    /// replaces the current one.
    pub fn select(&mut self, kind: StageKind, name: &str) {
        let push = |list: &mut Vec<String>| {
            if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        };
        match kind {
            StageKind::Cache => push(&mut self.caches),
            StageKind::Source => push(&mut self.sources),
            StageKind::Reserver => self.reserver = name.to_string(),
            StageKind::Configurer => self.configurer = name.to_string(),
            StageKind::Builder => self.builder = name.to_string(),
            StageKind::Verifier => self.verifier = name.to_string(),
        }
    }

    /// Cache tiers in lookup order: the local tier first, no duplicates.
    pub fn cache_tiers(&self) -> Vec<&str> {
        let mut tiers = vec![LOCAL_CACHE];
        for name in &self.caches {
            if !tiers.contains(&name.as_str()) {
                tiers.push(name);
            }
        }
        tiers
    }
}

/// Construct `factory`'s stage, of kind `S`, with `config`.
pub(crate) fn named<S: Stage + ?Sized>(
    factory: &Arc<dyn StageFactory>,
    config: &PluginConfig,
) -> Result<Named<S>> {
    let stage = factory
        .construct(config)
        .and_then(|stage| {
            S::from_any(stage).map_err(|_| {
                StageError::internal(format!(
                    "{} plugin {} was asked for another kind of stage",
                    factory.kind(),
                    factory.name()
                ))
            })
        })
        .map_err(|e| e.context(format!("{} plugin {}", factory.kind(), factory.name())))?;
    Ok(Named {
        name: factory.name().to_string(),
        stage,
    })
}

/// The stage of kind `S` selected as `name`.
fn selected<S: Stage + ?Sized>(
    catalog: &Catalog,
    selection: &Selection,
    name: &str,
) -> Result<Named<S>> {
    named(catalog.find(S::KIND, name)?, selection.config(name))
}

impl Stages {
    /// Construct the selected stages from `catalog`.
    pub fn select(catalog: &Catalog, selection: &Selection) -> Result<Self> {
        let mut sources = Vec::new();
        for name in &selection.sources {
            sources.push(selected(catalog, selection, name)?);
        }
        for f in catalog.all() {
            if f.kind() == StageKind::Source
                && f.origin() == "built-in"
                && !selection.sources.iter().any(|s| s == f.name())
            {
                sources.push(named(f, selection.config(f.name()))?);
            }
        }
        let local = selected(catalog, selection, LOCAL_CACHE)?;
        let remotes = (selection.cache_tiers().into_iter())
            .filter(|name| *name != LOCAL_CACHE)
            .map(|name| selected(catalog, selection, name))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            sources,
            reserver: selected(catalog, selection, &selection.reserver)?,
            configurer: selected(catalog, selection, &selection.configurer)?,
            builder: selected(catalog, selection, &selection.builder)?,
            tiers: Tiers::new(local, remotes),
            verifier: None,
        })
    }

    /// The acquirer that claims `spec`, or an error listing accepted forms.
    pub fn acquirer_for(&self, spec: &KernelSpec) -> Result<&Named<dyn SourceAcquirer>> {
        let claimers: Vec<&Named<dyn SourceAcquirer>> = self
            .sources
            .iter()
            .filter(|s| s.stage.claims(spec))
            .collect();
        if let Some(err) = crate::spec_claim::ambiguity(spec, &claimers) {
            return Err(err);
        }
        claimers.into_iter().next().ok_or_else(|| {
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
    fn local_cache_is_always_the_first_tier() {
        let selection = Selection {
            caches: vec!["s3-cache".into(), "local-cache".into(), "s3-cache".into()],
            ..Selection::default()
        };
        assert_eq!(selection.cache_tiers(), ["local-cache", "s3-cache"]);
    }

    #[test]
    fn a_second_stage_with_a_taken_name_is_refused() {
        let mut catalog = Catalog::builtin();
        let kbuild = *builtins().iter().find(|p| p.name == "kbuild").unwrap();
        let err = catalog.add(Arc::new(kbuild)).unwrap_err();
        assert!(err.message.contains("\"kbuild\""), "{err}");
    }

    #[test]
    fn unknown_plugin_lists_alternatives() {
        let err = Catalog::builtin()
            .find(StageKind::Builder, "nope")
            .err()
            .unwrap();
        assert!(err.message.contains("\"nope\""));
        assert!(err.hint.unwrap().contains("kbuild"));
        let err = Catalog::builtin()
            .find(StageKind::Reserver, "lcc")
            .err()
            .unwrap();
        assert!(
            err.hint.unwrap().starts_with("did you mean \"llc\"? "),
            "a near miss is named first"
        );
    }
}
