//! FFI mirrors of the six `ktstr-sdk` stage traits.
//!
//! One method per sdk method, same name, same order. Arguments and results
//! that are sdk data types are their JSON form (see the crate docs); every
//! method returns an [`FfiResult`] even where the sdk method is infallible,
//! because a panic in the plugin must come back as an error.
//!
//! Methods that get a `StageContext` in the sdk get a [`HostBox`] here.

use abi_stable::std_types::{RBox, ROption, RStr, RString};
use abi_stable::{StableAbi, sabi_trait};

use crate::callbacks::HostBox;
use crate::error::FfiResult;

/// `ktstr_sdk::source::SourceAcquirer`.
#[sabi_trait]
pub trait FfiSource: Send + Sync {
    /// `spec`: `KernelSpec`.
    fn claims(&self, spec: RStr<'_>) -> FfiResult<bool>;
    /// → `Vec<String>`.
    fn accepted_forms(&self) -> FfiResult<RString>;
    /// `spec`: `KernelSpec` → `Vec<Resolved>`.
    fn resolve(&self, spec: RStr<'_>, host: HostBox) -> FfiResult<RString>;
    /// `spec`: `KernelSpec` → `AcquiredSource`.
    fn acquire(&self, spec: RStr<'_>, host: HostBox) -> FfiResult<RString>;
    /// `source`: `AcquiredSource` → `Option<SourceState>`.
    #[sabi(last_prefix_field)]
    fn probe(&self, source: RStr<'_>, host: HostBox) -> FfiResult<RString>;
}

pub type FfiSourceBox = FfiSource_TO<'static, RBox<()>>;

/// Holds a reservation; dropping it (in the plugin) releases it.
#[sabi_trait]
pub trait FfiGuard: Send {
    /// One line for diagnostics ("LLC 0 + cpuset sandbox").
    #[sabi(last_prefix_field)]
    fn describe(&self) -> RString;
}

pub type FfiGuardBox = FfiGuard_TO<'static, RBox<()>>;

/// `ktstr_sdk::reserve::Reservation`.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiReservation {
    /// `{cpus, mems, make_jobs, sandbox_procs}` as JSON.
    pub grant: RString,
    pub guard: ROption<FfiGuardBox>,
}

/// `ktstr_sdk::reserve::Reserver`.
#[sabi_trait]
pub trait FfiReserver: Send + Sync {
    /// `request`: `ReserveRequest`.
    fn reserve(&self, request: RStr<'_>, host: HostBox) -> FfiResult<FfiReservation>;
    /// → `Vec<LockInfo>`, for `ktstr locks`.
    #[sabi(last_prefix_field)]
    fn locks(&self) -> FfiResult<RString>;
}

pub type FfiReserverBox = FfiReserver_TO<'static, RBox<()>>;

/// `ktstr_sdk::configure::Configurer`. `tree` is a path.
#[sabi_trait]
pub trait FfiConfigurer: Send + Sync {
    /// → `Vec<ProfileInfo>`.
    fn profiles(&self) -> FfiResult<RString>;
    /// `request`: `ConfigureRequest` → `Vec<KeyComponent>`.
    fn identity(&self, request: RStr<'_>) -> FfiResult<RString>;
    fn is_configured(&self, tree: RStr<'_>, request: RStr<'_>) -> FfiResult<bool>;
    fn configure(&self, tree: RStr<'_>, request: RStr<'_>, host: HostBox) -> FfiResult<()>;
    #[sabi(last_prefix_field)]
    fn validate(&self, tree: RStr<'_>, request: RStr<'_>) -> FfiResult<()>;
}

pub type FfiConfigurerBox = FfiConfigurer_TO<'static, RBox<()>>;

/// `ktstr_sdk::build::Builder`.
#[sabi_trait]
pub trait FfiBuilder: Send + Sync {
    /// → `Vec<KeyComponent>`.
    fn identity(&self, host: HostBox) -> FfiResult<RString>;
    fn clean(&self, tree: RStr<'_>, host: HostBox) -> FfiResult<()>;
    /// `request`: `BuildRequest` → `BuildOutput`.
    #[sabi(last_prefix_field)]
    fn build(&self, request: RStr<'_>, host: HostBox) -> FfiResult<RString>;
}

pub type FfiBuilderBox = FfiBuilder_TO<'static, RBox<()>>;

/// `ktstr_sdk::cache::CacheBackend`. `key` is a validated `CacheKey`
/// string; entries are `CacheEntry` JSON. Every call but the three
/// context-free ones gets a [`HostBox`] (since ABI 0.2).
#[sabi_trait]
pub trait FfiCache: Send + Sync {
    /// `staging`: the path of the host's `Staging` → `Option<CacheEntry>`.
    fn lookup(&self, key: RStr<'_>, staging: RStr<'_>, host: HostBox) -> FfiResult<RString>;
    /// `artifacts`: `Artifacts`, `metadata`: `Metadata` → `CacheEntry`.
    fn store(
        &self,
        key: RStr<'_>,
        artifacts: RStr<'_>,
        metadata: RStr<'_>,
        host: HostBox,
    ) -> FfiResult<RString>;
    /// → `Vec<wire::Listed>`.
    fn list(&self, host: HostBox) -> FfiResult<RString>;
    fn remove(&self, key: RStr<'_>, host: HostBox) -> FfiResult<bool>;
    fn describe(&self) -> FfiResult<RString>;
    /// → `Capabilities`.
    fn capabilities(&self) -> FfiResult<RString>;
    /// → `Vec<LockInfo>`, for `ktstr locks`.
    #[sabi(last_prefix_field)]
    fn locks(&self) -> FfiResult<RString>;
}

pub type FfiCacheBox = FfiCache_TO<'static, RBox<()>>;

/// `ktstr_sdk::verify::Verifier` (since ABI 0.3).
#[sabi_trait]
pub trait FfiVerifier: Send + Sync {
    /// `request`: `VerifyRequest` → `Verdict`.
    #[sabi(last_prefix_field)]
    fn verify(&self, request: RStr<'_>, host: HostBox) -> FfiResult<RString>;
}

pub type FfiVerifierBox = FfiVerifier_TO<'static, RBox<()>>;
