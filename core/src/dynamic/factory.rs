//! `StageFactory` for a stage of a loaded plugin: the catalog constructs
//! it exactly like a built-in, with its config table from the selection.

use std::sync::Arc;

use ktstr_sdk::Result;
use ktstr_sdk::build::Builder;
use ktstr_sdk::cache::CacheBackend;
use ktstr_sdk::configure::Configurer;
use ktstr_sdk::export::abi::FfiResult;
use ktstr_sdk::export::{StageManifest, from_ffi, json_arg};
use ktstr_sdk::registry::{PluginConfig, StageKind};
use ktstr_sdk::reserve::Reserver;
use ktstr_sdk::source::SourceAcquirer;

use super::adapters::{DynBuilder, DynCache, DynConfigurer, DynReserver, DynSource};
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

    fn make<T>(
        &self,
        config: &PluginConfig,
        ctor: impl FnOnce(
            &ktstr_sdk::export::abi::PluginModRef,
        ) -> extern "C" fn(
            ktstr_sdk::export::abi::abi_stable::std_types::RStr<'_>,
            ktstr_sdk::export::abi::abi_stable::std_types::RStr<'_>,
        ) -> FfiResult<T>,
    ) -> Result<T> {
        let config = json_arg(config)?;
        let f = ctor(&self.plugin.root);
        f(self.stage.name.as_str().into(), config.as_str().into())
            .into_result()
            .map_err(from_ffi)
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
    fn source(&self, config: &PluginConfig) -> Result<Box<dyn SourceAcquirer>> {
        let inner = self.make(config, |r| r.new_source())?;
        Ok(Box::new(DynSource {
            label: self.label(),
            inner,
        }))
    }
    fn reserver(&self, config: &PluginConfig) -> Result<Box<dyn Reserver>> {
        let inner = self.make(config, |r| r.new_reserver())?;
        Ok(Box::new(DynReserver { inner }))
    }
    fn configurer(&self, config: &PluginConfig) -> Result<Box<dyn Configurer>> {
        let inner = self.make(config, |r| r.new_configurer())?;
        Ok(Box::new(DynConfigurer {
            label: self.label(),
            inner,
        }))
    }
    fn builder(&self, config: &PluginConfig) -> Result<Box<dyn Builder>> {
        let inner = self.make(config, |r| r.new_builder())?;
        Ok(Box::new(DynBuilder { inner }))
    }
    fn cache(&self, config: &PluginConfig) -> Result<Box<dyn CacheBackend>> {
        let inner = self.make(config, |r| r.new_cache())?;
        Ok(Box::new(DynCache {
            label: self.label(),
            inner,
        }))
    }
}
