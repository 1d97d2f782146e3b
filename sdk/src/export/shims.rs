//! Plugin-side FFI shims: each wraps a boxed sdk stage and implements the
//! matching `#[sabi_trait]` of the ABI, decoding JSON arguments, calling
//! the stage under the panic guard and encoding the result.
//!
//! Each stage kind's [`Exported`] impl is its row in the ABI: its FFI
//! object, the root-module constructor returning it and its shim.
//!
//! Stages are dropped under a guard too: the host drops them through the
//! FFI vtable, where a panicking `Drop` would abort the process.

use std::mem::ManuallyDrop;
use std::path::PathBuf;

use ktstr_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use ktstr_plugin_abi::abi_stable::std_types::{ROption, RStr, RString};
use ktstr_plugin_abi::{
    FfiBuilder, FfiBuilder_TO, FfiBuilderBox, FfiCache, FfiCache_TO, FfiCacheBox, FfiConfigurer,
    FfiConfigurer_TO, FfiConfigurerBox, FfiGuard, FfiGuard_TO, FfiReservation, FfiReserver,
    FfiReserver_TO, FfiReserverBox, FfiResult, FfiSource, FfiSource_TO, FfiSourceBox, FfiVerifier,
    FfiVerifier_TO, FfiVerifierBox, HostBox, PluginModRef,
};

use super::context_proxy::context;
use super::convert::{from_json, to_json};
use super::guard::{ffi, quietly};
use super::wire;
use crate::build::{BuildRequest, Builder};
use crate::cache::{Artifacts, CacheBackend, CacheKey, Metadata, Staging};
use crate::configure::{ConfigureRequest, Configurer};
use crate::registry::{Stage, StageKind};
use crate::reserve::{ReservationGuard, ReserveRequest, Reserver};
use crate::source::{AcquiredSource, KernelSpec, SourceAcquirer};
use crate::verify::{Verifier, VerifyRequest};

/// A root-module entry point constructing a stage: `(name, config JSON)`.
pub type NewFn<F> = extern "C" fn(RStr<'_>, RStr<'_>) -> FfiResult<F>;

/// A stage kind's place in the plugin ABI, for code written once for
/// every kind: the plugin's `new_*` entry points and the host's factory.
pub trait Exported: Stage {
    /// The FFI object (`FfiSourceBox`, ...) the plugin hands the host.
    type Ffi;
    /// The root module's constructor for this kind.
    fn new_fn(root: &PluginModRef) -> NewFn<Self::Ffi>;
    /// Wrap a constructed stage for the host.
    fn shim(name: &str, stage: Box<Self>) -> Self::Ffi;
}

/// A stage value dropped under the panic guard.
struct Shim<T: ?Sized> {
    label: String,
    inner: ManuallyDrop<Box<T>>,
}

impl<T: ?Sized> Shim<T> {
    fn new(kind: StageKind, name: &str, inner: Box<T>) -> Self {
        Self {
            label: format!("{kind} {name}"),
            inner: ManuallyDrop::new(inner),
        }
    }

    fn call<R>(&self, method: &str, f: impl FnOnce(&T) -> crate::Result<R>) -> FfiResult<R> {
        ffi(&self.label, method, || f(&self.inner))
    }
}

impl<T: ?Sized> Drop for Shim<T> {
    fn drop(&mut self) {
        let inner = &mut self.inner;
        // SAFETY: dropped exactly once, here; never used afterwards.
        quietly(&self.label, "drop", || unsafe { ManuallyDrop::drop(inner) });
    }
}

fn path(tree: RStr<'_>) -> PathBuf {
    PathBuf::from(tree.as_str())
}

impl Exported for dyn SourceAcquirer {
    type Ffi = FfiSourceBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiSourceBox> {
        root.new_source()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiSourceBox {
        FfiSource_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

impl FfiSource for Shim<dyn SourceAcquirer> {
    fn claims(&self, spec: RStr<'_>) -> FfiResult<bool> {
        self.call("claims", |s| {
            Ok(s.claims(&from_json::<KernelSpec>("a kernel spec", spec.as_str())?))
        })
    }
    fn accepted_forms(&self) -> FfiResult<RString> {
        self.call("accepted_forms", |s| to_json(&s.accepted_forms()))
    }
    fn resolve(&self, spec: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("resolve", |s| {
            let spec: KernelSpec = from_json("a kernel spec", spec.as_str())?;
            to_json(&s.resolve(&spec, &context(host))?)
        })
    }
    fn acquire(&self, spec: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("acquire", |s| {
            let spec: KernelSpec = from_json("a kernel spec", spec.as_str())?;
            to_json(&s.acquire(&spec, &context(host))?)
        })
    }
    fn probe(&self, source: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("probe", |s| {
            let source: AcquiredSource = from_json("an acquired source", source.as_str())?;
            to_json(&s.probe(&source, &context(host))?)
        })
    }
}

impl Exported for dyn Reserver {
    type Ffi = FfiReserverBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiReserverBox> {
        root.new_reserver()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiReserverBox {
        FfiReserver_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

impl FfiGuard for Shim<dyn ReservationGuard> {
    fn describe(&self) -> RString {
        self.label.as_str().into()
    }
}

impl FfiReserver for Shim<dyn Reserver> {
    fn reserve(&self, request: RStr<'_>, host: HostBox) -> FfiResult<FfiReservation> {
        let label = self.label.clone();
        self.call("reserve", |s| {
            let request: ReserveRequest = from_json("a reserve request", request.as_str())?;
            let r = s.reserve(&request, &context(host))?;
            let grant = wire::Grant {
                cpus: r.cpus,
                mems: r.mems,
                make_jobs: r.make_jobs,
                sandbox_procs: r.sandbox_procs,
            };
            let guard = r.guard.map(|g| {
                let shim: Shim<dyn ReservationGuard> = Shim {
                    label: format!("{label} reservation"),
                    inner: ManuallyDrop::new(g),
                };
                FfiGuard_TO::from_value(shim, TD_Opaque)
            });
            Ok(FfiReservation {
                grant: to_json(&grant)?,
                guard: ROption::from(guard),
            })
        })
    }
    fn locks(&self) -> FfiResult<RString> {
        self.call("locks", |s| to_json(&s.locks()?))
    }
}

impl Exported for dyn Configurer {
    type Ffi = FfiConfigurerBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiConfigurerBox> {
        root.new_configurer()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiConfigurerBox {
        FfiConfigurer_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

fn configure_request(json: RStr<'_>) -> crate::Result<ConfigureRequest> {
    from_json("a configure request", json.as_str())
}

impl FfiConfigurer for Shim<dyn Configurer> {
    fn profiles(&self) -> FfiResult<RString> {
        self.call("profiles", |s| to_json(&s.profiles()))
    }
    fn identity(&self, request: RStr<'_>) -> FfiResult<RString> {
        self.call("identity", |s| {
            to_json(&s.identity(&configure_request(request)?)?)
        })
    }
    fn is_configured(&self, tree: RStr<'_>, request: RStr<'_>) -> FfiResult<bool> {
        self.call("is_configured", |s| {
            s.is_configured(&path(tree), &configure_request(request)?)
        })
    }
    fn configure(&self, tree: RStr<'_>, request: RStr<'_>, host: HostBox) -> FfiResult<()> {
        self.call("configure", |s| {
            s.configure(&path(tree), &configure_request(request)?, &context(host))
        })
    }
    fn validate(&self, tree: RStr<'_>, request: RStr<'_>) -> FfiResult<()> {
        self.call("validate", |s| {
            s.validate(&path(tree), &configure_request(request)?)
        })
    }
}

impl Exported for dyn Builder {
    type Ffi = FfiBuilderBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiBuilderBox> {
        root.new_builder()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiBuilderBox {
        FfiBuilder_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

impl FfiBuilder for Shim<dyn Builder> {
    fn identity(&self, host: HostBox) -> FfiResult<RString> {
        self.call("identity", |s| to_json(&s.identity(&context(host))?))
    }
    fn clean(&self, tree: RStr<'_>, host: HostBox) -> FfiResult<()> {
        self.call("clean", |s| s.clean(&path(tree), &context(host)))
    }
    fn build(&self, request: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("build", |s| {
            let request: BuildRequest = from_json("a build request", request.as_str())?;
            to_json(&s.build(&request, &context(host))?)
        })
    }
}

impl Exported for dyn CacheBackend {
    type Ffi = FfiCacheBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiCacheBox> {
        root.new_cache()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiCacheBox {
        FfiCache_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

fn key(raw: RStr<'_>) -> crate::Result<CacheKey> {
    CacheKey::parse(raw.as_str())
}

impl FfiCache for Shim<dyn CacheBackend> {
    fn lookup(&self, k: RStr<'_>, staging: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("lookup", |s| {
            let staging = Staging::lent(PathBuf::from(staging.as_str()));
            to_json(&s.lookup(&key(k)?, &staging, &context(host))?)
        })
    }
    fn store(
        &self,
        k: RStr<'_>,
        artifacts: RStr<'_>,
        metadata: RStr<'_>,
        host: HostBox,
    ) -> FfiResult<RString> {
        self.call("store", |s| {
            let artifacts: Artifacts = from_json("cache artifacts", artifacts.as_str())?;
            let metadata: Metadata = from_json("cache metadata", metadata.as_str())?;
            to_json(&s.store(&key(k)?, &artifacts, &metadata, &context(host))?)
        })
    }
    fn list(&self, host: HostBox) -> FfiResult<RString> {
        self.call("list", |s| {
            let rows: Vec<wire::Listed> = (s.list(&context(host))?.iter())
                .map(wire::Listed::from)
                .collect();
            to_json(&rows)
        })
    }
    fn remove(&self, k: RStr<'_>, host: HostBox) -> FfiResult<bool> {
        self.call("remove", |s| s.remove(&key(k)?, &context(host)))
    }
    fn describe(&self) -> FfiResult<RString> {
        self.call("describe", |s| Ok(s.describe().into()))
    }
    fn capabilities(&self) -> FfiResult<RString> {
        self.call("capabilities", |s| to_json(&s.capabilities()))
    }
    fn locks(&self) -> FfiResult<RString> {
        self.call("locks", |s| to_json(&s.locks()?))
    }
}

impl Exported for dyn Verifier {
    type Ffi = FfiVerifierBox;
    fn new_fn(root: &PluginModRef) -> NewFn<FfiVerifierBox> {
        root.new_verifier()
    }
    fn shim(name: &str, stage: Box<Self>) -> FfiVerifierBox {
        FfiVerifier_TO::from_value(Shim::new(Self::KIND, name, stage), TD_Opaque)
    }
}

impl FfiVerifier for Shim<dyn Verifier> {
    fn verify(&self, request: RStr<'_>, host: HostBox) -> FfiResult<RString> {
        self.call("verify", |s| {
            let request: VerifyRequest = from_json("a verify request", request.as_str())?;
            to_json(&s.verify(&request, &context(host))?)
        })
    }
}
