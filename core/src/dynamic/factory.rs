//! `StageFactory` for a stage of a loaded plugin: the catalog constructs
//! it exactly like a built-in, with its config table from the selection.

use std::sync::Arc;

use ktstr_sdk::Result;
use ktstr_sdk::build::Builder;
use ktstr_sdk::cache::CacheBackend;
use ktstr_sdk::configure::Configurer;
use ktstr_sdk::export::abi::{
    FfiBuilderBox, FfiCacheBox, FfiConfigurerBox, FfiReserverBox, FfiSourceBox, FfiVerifierBox,
};
use ktstr_sdk::export::{Exported, StageManifest, from_ffi, json_arg};
use ktstr_sdk::registry::{AnyStage, PluginConfig, StageKind};
use ktstr_sdk::reserve::Reserver;
use ktstr_sdk::source::SourceAcquirer;
use ktstr_sdk::verify::Verifier;

use super::adapters::{DynBuilder, DynCache, DynConfigurer, DynReserver, DynSource, DynVerifier};
use super::load::LoadedPlugin;
use crate::registry::StageFactory;

pub struct DynFactory {
    plugin: Arc<LoadedPlugin>,
    stage: StageManifest,
    origin: String,
}

impl DynFactory {
    pub fn new(plugin: Arc<LoadedPlugin>, stage: StageManifest) -> Self {
        let origin = plugin.path.display().to_string();
        Self {
            plugin,
            stage,
            origin,
        }
    }

    fn label(&self) -> String {
        format!(
            "{} stage {} (plugin {})",
            self.stage.kind, self.stage.name, self.plugin.manifest.name
        )
    }

    /// Call the plugin's constructor for kind `S` and adapt the result.
    fn make<S: Adapt + ?Sized>(&self, config: &PluginConfig) -> Result<AnyStage> {
        let config = json_arg(config)?;
        let new = S::new_fn(&self.plugin.root);
        let inner = new(self.stage.name.as_str().into(), config.as_str().into())
            .into_result()
            .map_err(from_ffi)?;
        Ok(S::into_any(S::adapt(self.label(), inner)))
    }
}

/// The host-side adapter of a stage kind's FFI object.
trait Adapt: Exported {
    fn adapt(label: String, inner: Self::Ffi) -> Box<Self>;
}

impl Adapt for dyn SourceAcquirer {
    fn adapt(label: String, inner: FfiSourceBox) -> Box<Self> {
        Box::new(DynSource { label, inner })
    }
}

impl Adapt for dyn Reserver {
    fn adapt(_label: String, inner: FfiReserverBox) -> Box<Self> {
        Box::new(DynReserver { inner })
    }
}

impl Adapt for dyn Configurer {
    fn adapt(label: String, inner: FfiConfigurerBox) -> Box<Self> {
        Box::new(DynConfigurer { label, inner })
    }
}

impl Adapt for dyn Builder {
    fn adapt(_label: String, inner: FfiBuilderBox) -> Box<Self> {
        Box::new(DynBuilder { inner })
    }
}

impl Adapt for dyn CacheBackend {
    fn adapt(label: String, inner: FfiCacheBox) -> Box<Self> {
        Box::new(DynCache { label, inner })
    }
}

impl Adapt for dyn Verifier {
    fn adapt(_label: String, inner: FfiVerifierBox) -> Box<Self> {
        Box::new(DynVerifier { inner })
    }
}

impl StageFactory for DynFactory {
    fn kind(&self) -> StageKind {
        self.stage.kind
    }
    fn name(&self) -> &str {
        &self.stage.name
    }
    fn version(&self) -> &str {
        &self.plugin.manifest.version
    }
    fn summary(&self) -> &str {
        &self.stage.summary
    }
    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn construct(&self, config: &PluginConfig) -> Result<AnyStage> {
        match self.stage.kind {
            StageKind::Source => self.make::<dyn SourceAcquirer>(config),
            StageKind::Reserver => self.make::<dyn Reserver>(config),
            StageKind::Configurer => self.make::<dyn Configurer>(config),
            StageKind::Builder => self.make::<dyn Builder>(config),
            StageKind::Cache => self.make::<dyn CacheBackend>(config),
            StageKind::Verifier => self.make::<dyn Verifier>(config),
        }
    }
}
