//! Turning ordinary stage implementations into a loadable plugin library.
//!
//! A third-party plugin is a `cdylib` crate that depends on `ktstr-sdk`
//! only. Its author implements the same stage traits the built-ins
//! implement, describes them with a [`Plugin`], and invokes
//! [`export_plugin!`](crate::export_plugin). The macro exports the root
//! module of the plugin ABI ([`abi`]) whose entry points wrap each stage in
//! an FFI shim:
//!
//! - every call runs under `catch_unwind`: an unwinding panic crossing the
//!   `extern "C"` boundary would abort the host, so a panic becomes a
//!   `StageError` of kind `Internal` naming the plugin, the stage method and
//!   the panic message;
//! - the plugin's `tracing` events go to the host's log (the cdylib has its
//!   own `tracing` globals, which nobody would otherwise read), and its
//!   progress and commands go through the host's `StageContext`;
//! - data crosses as the JSON form of the sdk types ([`wire`] for the few
//!   types that are not serde types themselves).
//!
//! The host side of the same ABI lives in ktstr's `dynamic` module and
//! uses [`Manifest`], [`wire`] and the error conversions from here.

mod context_proxy;
mod convert;
mod guard;
mod logging;
mod manifest;
mod shims;
pub mod wire;

use std::sync::OnceLock;

pub use ktstr_plugin_abi as abi;
use ktstr_plugin_abi::abi_stable::library::RootModule;
use ktstr_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use ktstr_plugin_abi::abi_stable::std_types::{RBoxError, RStr, RString};
use ktstr_plugin_abi::{FfiResult, LoggerBox, PluginMod, PluginModRef};

pub use convert::{from_ffi, from_json, json_arg, to_ffi, to_json};
pub use manifest::{Manifest, StageManifest};
pub use shims::{Exported, NewFn};

use crate::build::Builder;
use crate::cache::CacheBackend;
use crate::configure::Configurer;
use crate::registry::{Constructor, PluginConfig, StageKind};
use crate::reserve::Reserver;
use crate::source::SourceAcquirer;
use crate::verify::Verifier;

/// The version of this SDK; the host names it in "rebuild against" hints.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The symbol [`export_plugin!`](crate::export_plugin) exports next to the
/// library header: a `u8`, 1 when the plugin was compiled with
/// `panic = "unwind"`, 0 with `panic = "abort"`. The host reads it before
/// running any of the plugin's code and refuses an aborting plugin: its
/// first panic would kill ktstr (leaking its sandbox) instead of becoming
/// an error. A separate symbol, not a root-module field, so the checked
/// layout (and the ABI version) stay as they are; a library built before
/// it existed simply lacks it.
pub const PANIC_UNWIND_SYMBOL: &str = "ktstr_plugin_panic_unwind";

/// One stage a plugin library provides.
#[derive(Clone, Copy)]
pub struct StageDef {
    pub name: &'static str,
    /// One line for `ktstr plugins list`.
    pub summary: &'static str,
    /// Keys the stage accepts in its config table (`[plugin.<name>]`).
    pub config_keys: &'static [&'static str],
    /// The same constructor a built-in registers.
    pub constructor: Constructor,
}

/// What a plugin library provides: its name, version and stages.
#[derive(Clone)]
pub struct Plugin {
    pub name: &'static str,
    pub version: &'static str,
    pub stages: Vec<StageDef>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Plugin {
    /// A plugin named `name` (what users pass to `--plugin`; the library
    /// file is `libktstr_plugin_<name with - as _>.so`).
    pub fn new(name: &'static str, version: &'static str) -> Self {
        Self {
            name,
            version,
            stages: Vec::new(),
        }
    }

    /// Add a stage.
    pub fn stage(
        mut self,
        name: &'static str,
        summary: &'static str,
        config_keys: &'static [&'static str],
        constructor: Constructor,
    ) -> Self {
        self.stages.push(StageDef {
            name,
            summary,
            config_keys,
            constructor,
        });
        self
    }

    /// The manifest the host reads after loading.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            name: self.name.to_string(),
            version: self.version.to_string(),
            abi_version: abi::ABI_VERSION.to_string(),
            sdk_version: SDK_VERSION.to_string(),
            stages: self
                .stages
                .iter()
                .map(|s| StageManifest {
                    kind: s.constructor.kind(),
                    name: s.name.to_string(),
                    summary: s.summary.to_string(),
                    config_keys: s.config_keys.iter().map(|k| k.to_string()).collect(),
                })
                .collect(),
        }
    }

    fn find(&self, kind: StageKind, name: &str) -> crate::Result<&StageDef> {
        self.stages
            .iter()
            .find(|s| s.constructor.kind() == kind && s.name == name)
            .ok_or_else(|| {
                crate::StageError::not_found(format!(
                    "plugin {} has no {kind} stage named {name:?}",
                    self.name
                ))
            })
    }
}

/// This library's plugin, set once by the root-module loader. Each cdylib
/// has its own copy of the SDK and so its own copy of this static.
static PLUGIN: OnceLock<Plugin> = OnceLock::new();

fn plugin() -> crate::Result<&'static Plugin> {
    PLUGIN
        .get()
        .ok_or_else(|| crate::StageError::internal("plugin used before its root module loaded"))
}

/// The plugin's name for messages, `?` before it is known.
fn plugin_name() -> &'static str {
    PLUGIN.get().map_or("?", |p| p.name)
}

/// Body of the exported root-module loader (see [`export_plugin!`]).
///
/// Runs the author's `define` function under the panic guard: a panic
/// there is returned to the host as a load error with the panic message
/// rather than as abi_stable's bare "unwound".
#[doc(hidden)]
pub fn __root_module(define: fn() -> Plugin) -> Result<PluginModRef, RBoxError> {
    guard::install_panic_hook();
    let plugin = guard::catch(define).map_err(|panic| {
        RBoxError::from_fmt(&format_args!(
            "the plugin panicked while describing itself: {panic}"
        ))
    })?;
    let _ = PLUGIN.set(plugin);
    Ok(PluginMod {
        manifest: ffi_manifest,
        attach: ffi_attach,
        new_source: ffi_new::<dyn SourceAcquirer>,
        new_reserver: ffi_new::<dyn Reserver>,
        new_configurer: ffi_new::<dyn Configurer>,
        new_builder: ffi_new::<dyn Builder>,
        new_cache: ffi_new::<dyn CacheBackend>,
        new_verifier: ffi_new::<dyn Verifier>,
    }
    .leak_into_prefix())
}

/// Whether a root module with this layout is what the host expects; used
/// by tests to make sure the root type stays loadable.
#[doc(hidden)]
pub fn __root_module_name() -> &'static str {
    PluginModRef::NAME
}

extern "C" fn ffi_manifest() -> FfiResult<RString> {
    guard::ffi("plugin", "manifest", || to_json(&plugin()?.manifest()))
}

extern "C" fn ffi_attach(logger: LoggerBox) -> FfiResult<()> {
    guard::ffi("plugin", "attach", || {
        logging::attach(logger);
        Ok(())
    })
}

/// The root module's `new_*` entry point for stage kind `S`: look up the
/// stage, call its constructor with the decoded config and wrap the result.
extern "C" fn ffi_new<S: Exported + ?Sized>(name: RStr<'_>, config: RStr<'_>) -> FfiResult<S::Ffi> {
    let label = format!("{} {}", S::KIND, name.as_str());
    guard::ffi(&label, "new", || {
        let def = plugin()?.find(S::KIND, name.as_str())?;
        let config: PluginConfig = from_json("the stage config", config.as_str())?;
        let stage = S::from_any(def.constructor.construct(&config)?)
            .unwrap_or_else(|_| unreachable!("find() matched the kind"));
        Ok(S::shim(def.name, stage))
    })
}

/// Export this crate as a ktstr plugin library.
///
/// ```ignore
/// fn plugin() -> ktstr_sdk::export::Plugin {
///     ktstr_sdk::export::Plugin::new("my-cache", env!("CARGO_PKG_VERSION")).stage(
///         "my-cache",
///         "kernels kept on the team's NFS share",
///         &["dir"],
///         ktstr_sdk::registry::Constructor::Cache(|cfg| Ok(Box::new(MyCache::from_config(cfg)?))),
///     )
/// }
/// ktstr_sdk::export_plugin!(plugin);
/// ```
///
/// The crate must be built as a `cdylib` named `ktstr-plugin-<name>`.
/// `plugin` runs once, when the host loads the library.
#[macro_export]
macro_rules! export_plugin {
    ($define:path) => {
        /// 1 if this library unwinds on panic (what the host requires),
        /// 0 if it was built with `panic = "abort"`. Name:
        /// `ktstr_sdk::export::PANIC_UNWIND_SYMBOL`.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static ktstr_plugin_panic_unwind: u8 = if cfg!(panic = "unwind") { 1 } else { 0 };

        /// The plugin's library header, read by the ktstr host.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::export::abi::abi_stable::library::LibHeader = {
            extern "C" fn __ktstr_root_module()
            -> $crate::export::abi::abi_stable::library::RootModuleResult {
                $crate::export::abi::abi_stable::library::__call_root_module_loader(|| {
                    $crate::export::__root_module($define)
                })
            }
            // SAFETY: the constructor returns a `PluginModRef` erased by
            // abi_stable's own loader, as `from_constructor` requires.
            unsafe {
                $crate::export::abi::abi_stable::library::LibHeader::from_constructor::<
                    $crate::export::abi::PluginModRef,
                >(
                    __ktstr_root_module,
                    $crate::export::abi::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests;
