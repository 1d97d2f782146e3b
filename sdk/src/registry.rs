//! Registration of built-in plugins through `inventory`.
//!
//! Each built-in crate submits one [`BuiltinPlugin`] per stage it provides.
//! The host iterates them at startup; a crate that is linked but never
//! referenced from the host binary registers nothing, so the host names
//! every built-in crate explicitly.

use crate::build::Builder;
use crate::cache::CacheBackend;
use crate::configure::Configurer;
use crate::error::Result;
use crate::reserve::Reserver;
use crate::source::SourceAcquirer;

/// A plugin's configuration table (from the config file), as JSON.
pub type PluginConfig = serde_json::Value;

/// The five pipeline stages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Source,
    Reserver,
    Configurer,
    Builder,
    Cache,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Reserver => "reserver",
            Self::Configurer => "configurer",
            Self::Builder => "builder",
            Self::Cache => "cache",
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a stage instance from its configuration table.
#[derive(Clone, Copy)]
pub enum Constructor {
    Source(fn(&PluginConfig) -> Result<Box<dyn SourceAcquirer>>),
    Reserver(fn(&PluginConfig) -> Result<Box<dyn Reserver>>),
    Configurer(fn(&PluginConfig) -> Result<Box<dyn Configurer>>),
    Builder(fn(&PluginConfig) -> Result<Box<dyn Builder>>),
    Cache(fn(&PluginConfig) -> Result<Box<dyn CacheBackend>>),
}

impl Constructor {
    pub fn kind(&self) -> StageKind {
        match self {
            Self::Source(_) => StageKind::Source,
            Self::Reserver(_) => StageKind::Reserver,
            Self::Configurer(_) => StageKind::Configurer,
            Self::Builder(_) => StageKind::Builder,
            Self::Cache(_) => StageKind::Cache,
        }
    }
}

/// One built-in stage implementation.
pub struct BuiltinPlugin {
    pub name: &'static str,
    pub version: &'static str,
    /// One line for `ktstr plugins list`.
    pub summary: &'static str,
    pub constructor: Constructor,
}

impl std::fmt::Debug for BuiltinPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinPlugin")
            .field("name", &self.name)
            .field("kind", &self.constructor.kind())
            .field("version", &self.version)
            .finish()
    }
}

inventory::collect!(BuiltinPlugin);

/// Every built-in linked into this binary, sorted by kind then name.
pub fn builtins() -> Vec<&'static BuiltinPlugin> {
    let mut all: Vec<_> = inventory::iter::<BuiltinPlugin>.into_iter().collect();
    all.sort_by_key(|p| (p.constructor.kind(), p.name));
    all
}
