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
use crate::verify::Verifier;

/// A plugin's configuration table (from the config file), as JSON.
pub type PluginConfig = serde_json::Value;

/// Builds a stage whose trait object is `S` from its configuration table.
pub type Make<S> = fn(&PluginConfig) -> Result<Box<S>>;

/// The stage kinds, listed once. [`StageKind`], [`Constructor`],
/// [`AnyStage`] and the [`Stage`] impls are generated from this list, and
/// code written for every kind (the host's catalog, the plugin export)
/// is generic over [`Stage`], so a new kind is one line here plus its
/// trait, FFI object and adapters; exhaustive matches name the rest.
macro_rules! stage_kinds {
    ($($kind:ident($object:ident) = $name:literal),* $(,)?) => {
        /// The pipeline stages.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum StageKind {
            $($kind,)*
        }

        impl StageKind {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$kind => $name,)*
                }
            }
        }

        /// Builds a stage instance from its configuration table.
        #[derive(Clone, Copy)]
        pub enum Constructor {
            $($kind(Make<dyn $object>),)*
        }

        impl Constructor {
            pub fn kind(&self) -> StageKind {
                match self {
                    $(Self::$kind(_) => StageKind::$kind,)*
                }
            }

            /// Run the constructor on `config`.
            pub fn construct(&self, config: &PluginConfig) -> Result<AnyStage> {
                match self {
                    $(Self::$kind(make) => make(config).map(AnyStage::$kind),)*
                }
            }
        }

        /// A constructed stage of any kind.
        pub enum AnyStage {
            $($kind(Box<dyn $object>),)*
        }

        impl AnyStage {
            pub fn kind(&self) -> StageKind {
                match self {
                    $(Self::$kind(_) => StageKind::$kind,)*
                }
            }
        }

        $(
            impl Stage for dyn $object {
                const KIND: StageKind = StageKind::$kind;

                fn into_any(stage: Box<Self>) -> AnyStage {
                    AnyStage::$kind(stage)
                }

                #[allow(unreachable_patterns)]
                fn from_any(stage: AnyStage) -> std::result::Result<Box<Self>, AnyStage> {
                    match stage {
                        AnyStage::$kind(s) => Ok(s),
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

stage_kinds! {
    Source(SourceAcquirer) = "source",
    Reserver(Reserver) = "reserver",
    Configurer(Configurer) = "configurer",
    Builder(Builder) = "builder",
    Cache(CacheBackend) = "cache",
    Verifier(Verifier) = "verifier",
}

/// The trait object of one stage kind (`dyn Builder`, ...): lets code
/// that does the same thing for every kind be written once.
pub trait Stage: 'static {
    const KIND: StageKind;
    fn into_any(stage: Box<Self>) -> AnyStage;
    /// The stage, or `Err` with it unchanged when it is of another kind.
    fn from_any(stage: AnyStage) -> std::result::Result<Box<Self>, AnyStage>;
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
