//! The ktstr plugin ABI: what crosses the boundary between the `ktstr` host
//! and a plugin loaded from a shared library.
//!
//! A plugin and the host are compiled separately, possibly by different
//! compilers, so nothing here may depend on Rust's unstable layout: every
//! type is `#[derive(StableAbi)]`, every trait a `#[sabi_trait]`, and the
//! library's entry point a prefix-type root module ([`PluginModRef`]) that
//! `abi_stable` checks field by field when the host loads it.
//!
//! **Plain data travels as JSON strings.** Each stage method takes and
//! returns the serde form of the `ktstr-sdk` data types (`KernelSpec`,
//! `BuildRequest`, `Metadata`, ...). That keeps this ABI small (one string
//! type instead of a mirror of every struct) and lets the data model grow
//! additively: a new optional field in an sdk type changes the JSON, not the
//! layout `abi_stable` checks. Errors are the exception: they are a fixed
//! structured type ([`FfiError`]) so a panic or a broken payload can always
//! be reported.
//!
//! **The crate version is the ABI version** ([`ABI_VERSION`]); the host
//! compares it with its own before anything else (see docs/plugin-abi.md
//! for what is additive and what is breaking). Plugin authors never use
//! this crate directly: `ktstr_sdk::export_plugin!` generates everything.

// abi_stable 0.11's `sabi_trait` expands to impls inside a const block.
#![allow(non_local_definitions)]

mod callbacks;
mod error;
mod root;
mod stages;

pub use abi_stable;

pub use callbacks::{
    FfiLogger, FfiLogger_TO, HostBox, HostCallbacks, HostCallbacks_TO, LineSink, LineSink_TO,
    LineSinkMut, LoggerBox, level,
};
pub use error::{FfiError, FfiResult};
pub use root::{PluginMod, PluginModRef};
pub use stages::{
    FfiBuilder, FfiBuilder_TO, FfiBuilderBox, FfiCache, FfiCache_TO, FfiCacheBox, FfiConfigurer,
    FfiConfigurer_TO, FfiConfigurerBox, FfiGuard, FfiGuard_TO, FfiGuardBox, FfiReservation,
    FfiReserver, FfiReserver_TO, FfiReserverBox, FfiSource, FfiSource_TO, FfiSourceBox,
    FfiVerifier, FfiVerifier_TO, FfiVerifierBox,
};

/// The plugin ABI version: this crate's version. A plugin records the
/// version it was compiled against in its library header.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `RootModule::NAME` of every ktstr plugin library. A library whose root
/// module has another name belongs to some other abi_stable application.
pub const ROOT_MODULE_NAME: &str = "ktstr_plugin";

/// Every type the host checks a plugin's layout against, for tests.
#[doc(hidden)]
pub fn __layout() -> &'static abi_stable::type_layout::TypeLayout {
    <PluginModRef as abi_stable::StableAbi>::LAYOUT
}

/// The symbol name of a plugin's library header (`abi_stable`'s mangled
/// root-module loader name). `export_plugin!` needs it as a literal.
pub const LIB_HEADER_SYMBOL: &str = abi_stable::library::ROOT_MODULE_LOADER_NAME;

#[cfg(test)]
mod tests {
    #[test]
    fn abi_version_is_this_crate_version() {
        assert_eq!(super::ABI_VERSION, env!("CARGO_PKG_VERSION"));
        let v = abi_stable::sabi_types::VersionNumber::new(
            <super::PluginModRef as abi_stable::library::RootModule>::VERSION_STRINGS,
        )
        .unwrap();
        assert_eq!(
            format!("{}.{}.{}", v.major, v.minor, v.patch),
            super::ABI_VERSION
        );
    }

    /// `export_plugin!` spells the header symbol as a literal.
    #[test]
    fn header_symbol_is_stable() {
        assert_eq!(
            super::LIB_HEADER_SYMBOL,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
