//! The root module: the one symbol a plugin library exports.
//!
//! It is a prefix type, so fields can be appended in later ABI versions:
//! a host reading an older plugin sees the missing fields as absent, a
//! host reading a newer plugin ignores the extra ones. The layout of every
//! field's type is checked by `abi_stable` when the library is loaded.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RStr, RString};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

use crate::callbacks::LoggerBox;
use crate::error::FfiResult;
use crate::stages::{
    FfiBuilderBox, FfiCacheBox, FfiConfigurerBox, FfiReserverBox, FfiSourceBox, FfiVerifierBox,
};

/// A plugin library's entry points. Constructors take the stage name (one
/// of the manifest's stages of that kind) and its config table as JSON.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The manifest as JSON: `{name, version, abi_version, stages: [{kind,
    /// name, summary, config_keys}]}` (`ktstr_sdk::export::Manifest`).
    pub manifest: extern "C" fn() -> FfiResult<RString>,
    /// Called once by the host right after loading: where the plugin's
    /// log output goes.
    pub attach: extern "C" fn(logger: LoggerBox) -> FfiResult<()>,
    pub new_source: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiSourceBox>,
    pub new_reserver: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiReserverBox>,
    pub new_configurer:
        extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiConfigurerBox>,
    pub new_builder: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiBuilderBox>,
    pub new_cache: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiCacheBox>,
    /// Since ABI 0.3.
    #[sabi(last_prefix_field)]
    pub new_verifier: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> FfiResult<FfiVerifierBox>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "ktstr_plugin";
    const NAME: &'static str = crate::ROOT_MODULE_NAME;
    /// The version of this crate, i.e. the ABI version, baked into every
    /// plugin's library header at the plugin's compile time.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
