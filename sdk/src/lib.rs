//! The ktstr SDK: what the host and every plugin share.
//!
//! A ktstr build is a fixed pipeline of six stages: a [`SourceAcquirer`]
//! finds a kernel tree, a [`Reserver`] grants CPUs, a [`Configurer`] writes
//! `.config`, a [`Builder`] runs kbuild, a [`Verifier`] (when asked) boots
//! the image, and [`CacheBackend`] tiers keep the result. Built-in plugins
//! and third-party plugins implement these same traits. Everything crossing
//! a stage boundary is plain data so each trait can be mirrored across a
//! dynamic-library boundary.
//!
//! [`SourceAcquirer`]: source::SourceAcquirer
//! [`Reserver`]: reserve::Reserver
//! [`Configurer`]: configure::Configurer
//! [`Builder`]: build::Builder
//! [`CacheBackend`]: cache::CacheBackend
//! [`Verifier`]: verify::Verifier

pub mod arch;
pub mod archive;
pub mod build;
pub mod cache;
pub mod cache_gc;
pub mod config;
pub mod configure;
pub mod conformance;
pub mod context;
pub mod cpus;
pub mod error;
pub mod export;
pub mod fsread;
pub mod hash;
pub mod lease;
pub mod lock;
pub mod lock_list;
pub mod make_env;
pub mod owned;
pub mod paths;
pub mod read_only;
pub mod registry;
pub mod reserve;
pub mod runner;
pub mod scratch;
pub mod source;
pub mod stdio;
pub mod switch;
pub mod testing;
pub mod verify;

pub use error::{ErrorKind, Result, StageError};

/// The plugin ABI crate, so a dynamic plugin depends on `ktstr-sdk` only.
pub use ktstr_plugin_abi;

/// Re-exported so built-in crates register without naming the dependency.
pub use inventory;

/// The current time as RFC 3339 UTC, seconds precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Everything a plugin implementation usually needs.
pub mod prelude {
    pub use crate::build::{BuildOutput, BuildRequest, Builder};
    pub use crate::cache::{
        ArtifactInfo, Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, KeyComponent,
        Listed, Metadata, Staging,
    };
    pub use crate::configure::{ConfigureRequest, Configurer, Fragment, ProfileInfo};
    pub use crate::context::{CommandSpec, StageContext};
    pub use crate::error::{ErrorKind, IoResultExt, Result, StageError};
    pub use crate::read_only::ReadOnly;
    pub use crate::registry::{BuiltinPlugin, Constructor, PluginConfig, StageKind};
    pub use crate::reserve::{Reservation, ReserveRequest, Reserver};
    pub use crate::source::{
        AcquiredSource, KernelSpec, Resolved, SourceAcquirer, SourceIdentity, SourceState,
    };
}
