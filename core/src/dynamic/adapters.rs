//! A loaded plugin's stages as ordinary sdk stages.
//!
//! Each adapter implements the sdk trait over the FFI object, encoding
//! arguments as JSON, turning `FfiError`s back into `StageError`s and
//! decoding results, so the pipeline cannot tell a dynamic stage from a
//! built-in. Infallible sdk methods (`claims`, `describe`, ...) log a
//! plugin failure and fall back to a safe answer.

use std::path::Path;

use ktstr_sdk::build::{BuildOutput, BuildRequest, Builder};
use ktstr_sdk::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, KeyComponent, Listed, Metadata,
    Staging,
};
use ktstr_sdk::configure::{ConfigureRequest, Configurer, ProfileInfo};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::export::abi::abi_stable::std_types::{ROption, RString};
use ktstr_sdk::export::abi::{
    FfiBuilderBox, FfiCacheBox, FfiConfigurerBox, FfiGuardBox, FfiReserverBox, FfiResult,
    FfiSourceBox,
};
use ktstr_sdk::export::{from_ffi, from_json, json_arg, wire};
use ktstr_sdk::reserve::{Reservation, ReserveRequest, Reserver};
use ktstr_sdk::source::{AcquiredSource, KernelSpec, Resolved, SourceAcquirer, SourceState};
use ktstr_sdk::{Result, StageError};

use super::callbacks::host_box;

fn done<T>(r: FfiResult<T>) -> Result<T> {
    r.into_result().map_err(from_ffi)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, r: FfiResult<RString>) -> Result<T> {
    from_json(what, &done(r)?)
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        StageError::invalid_input(format!(
            "{}: plugin stages only accept UTF-8 paths",
            p.display()
        ))
    })
}

/// "cache stage shared-dir-cache (plugin shared-dir-cache)", for logs.
fn fallback<T>(label: &str, method: &str, r: Result<T>, default: T) -> T {
    r.unwrap_or_else(|e| {
        match e.hint.as_deref() {
            Some(hint) => tracing::warn!("{label}: {method} failed: {e} (hint: {hint})"),
            None => tracing::warn!("{label}: {method} failed: {e}"),
        }
        default
    })
}

pub struct DynSource {
    pub(super) label: String,
    pub(super) inner: FfiSourceBox,
}

impl SourceAcquirer for DynSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        let r = json_arg(spec).and_then(|s| done(self.inner.claims(s.as_str().into())));
        fallback(&self.label, "claims", r, false)
    }
    fn accepted_forms(&self) -> Vec<String> {
        let r = decode("accepted forms", self.inner.accepted_forms());
        fallback(&self.label, "accepted_forms", r, Vec::new())
    }
    fn resolve(&self, spec: &KernelSpec, cx: &StageContext) -> Result<Vec<Resolved>> {
        let spec = json_arg(spec)?;
        decode(
            "resolved specs",
            self.inner.resolve(spec.as_str().into(), host_box(cx)),
        )
    }
    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        let spec = json_arg(spec)?;
        decode(
            "an acquired source",
            self.inner.acquire(spec.as_str().into(), host_box(cx)),
        )
    }
    fn probe(&self, source: &AcquiredSource, cx: &StageContext) -> Result<Option<SourceState>> {
        let source = json_arg(source)?;
        decode(
            "a source state",
            self.inner.probe(source.as_str().into(), host_box(cx)),
        )
    }
}

pub struct DynReserver {
    pub(super) inner: FfiReserverBox,
}

/// The plugin's reservation guard; dropping it releases the reservation
/// inside the plugin.
struct Guard(#[allow(dead_code)] FfiGuardBox);

impl Reserver for DynReserver {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        let request = json_arg(request)?;
        let r = done(self.inner.reserve(request.as_str().into(), host_box(cx)))?;
        let grant: wire::Grant = from_json("a reservation", &r.grant)?;
        let guard = match r.guard {
            ROption::RSome(g) => {
                Some(Box::new(Guard(g)) as Box<dyn ktstr_sdk::reserve::ReservationGuard>)
            }
            ROption::RNone => None,
        };
        Ok(Reservation {
            cpus: grant.cpus,
            mems: grant.mems,
            make_jobs: grant.make_jobs,
            sandbox_procs: grant.sandbox_procs,
            guard,
        })
    }
}

pub struct DynConfigurer {
    pub(super) label: String,
    pub(super) inner: FfiConfigurerBox,
}

impl Configurer for DynConfigurer {
    fn profiles(&self) -> Vec<ProfileInfo> {
        let r = decode("profiles", self.inner.profiles());
        fallback(&self.label, "profiles", r, Vec::new())
    }
    fn identity(&self, request: &ConfigureRequest) -> Result<Vec<KeyComponent>> {
        let request = json_arg(request)?;
        decode(
            "key components",
            self.inner.identity(request.as_str().into()),
        )
    }
    fn is_configured(&self, tree: &Path, request: &ConfigureRequest) -> Result<bool> {
        let (tree, request) = (path_arg(tree)?, json_arg(request)?);
        done(
            self.inner
                .is_configured(tree.as_str().into(), request.as_str().into()),
        )
    }
    fn configure(&self, tree: &Path, request: &ConfigureRequest, cx: &StageContext) -> Result<()> {
        let (tree, request) = (path_arg(tree)?, json_arg(request)?);
        done(
            self.inner
                .configure(tree.as_str().into(), request.as_str().into(), host_box(cx)),
        )
    }
    fn validate(&self, tree: &Path, request: &ConfigureRequest) -> Result<()> {
        let (tree, request) = (path_arg(tree)?, json_arg(request)?);
        done(
            self.inner
                .validate(tree.as_str().into(), request.as_str().into()),
        )
    }
}

pub struct DynBuilder {
    pub(super) inner: FfiBuilderBox,
}

impl Builder for DynBuilder {
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>> {
        decode("key components", self.inner.identity(host_box(cx)))
    }
    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()> {
        let tree = path_arg(tree)?;
        done(self.inner.clean(tree.as_str().into(), host_box(cx)))
    }
    fn build(&self, request: &BuildRequest, cx: &StageContext) -> Result<BuildOutput> {
        let request = json_arg(request)?;
        decode(
            "a build output",
            self.inner.build(request.as_str().into(), host_box(cx)),
        )
    }
}

pub struct DynCache {
    pub(super) label: String,
    pub(super) inner: FfiCacheBox,
}

/// Every entry a plugin returns is checked against the `dir` rules
/// ([`CacheEntry::check_returned`]) here, at the boundary to outside code,
/// so a path that is not a directory never reaches `kernel list` or a VM.
impl CacheBackend for DynCache {
    fn lookup(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        let staging_arg = path_arg(staging.path())?;
        let found: Option<CacheEntry> = decode(
            "a cache entry",
            self.inner.lookup(
                key.as_str().into(),
                staging_arg.as_str().into(),
                host_box(cx),
            ),
        )?;
        if let Some(e) = &found {
            e.check_returned("lookup", Some(key), &self.label)?;
        }
        Ok(found)
    }
    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        let artifacts = json_arg(artifacts)?;
        let metadata = json_arg(metadata)?;
        let stored: CacheEntry = decode(
            "a cache entry",
            self.inner.store(
                key.as_str().into(),
                artifacts.as_str().into(),
                metadata.as_str().into(),
                host_box(cx),
            ),
        )?;
        stored.check_returned("store", Some(key), &self.label)?;
        Ok(stored)
    }
    fn list(&self, cx: &StageContext) -> Result<Vec<Listed>> {
        let rows: Vec<wire::Listed> = decode("a cache listing", self.inner.list(host_box(cx)))?;
        Ok(rows
            .into_iter()
            .map(|row| match Listed::from(row) {
                Listed::Ok(e) => match e.check_returned("list", None, &self.label) {
                    Ok(()) => Listed::Ok(e),
                    Err(why) => Listed::Corrupt {
                        key: e.key.to_string(),
                        reason: why.to_string(),
                    },
                },
                corrupt => corrupt,
            })
            .collect())
    }
    fn remove(&self, key: &CacheKey, cx: &StageContext) -> Result<bool> {
        done(self.inner.remove(key.as_str().into(), host_box(cx)))
    }
    fn describe(&self) -> String {
        let r = done(self.inner.describe()).map(RString::into_string);
        fallback(&self.label, "describe", r, self.label.clone())
    }
    fn capabilities(&self) -> Capabilities {
        let r = decode("capabilities", self.inner.capabilities());
        fallback(&self.label, "capabilities", r, Capabilities::default())
    }
}
