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
    FfiSourceBox, FfiVerifierBox,
};
use ktstr_sdk::export::{from_ffi, from_json, json_arg, wire};
use ktstr_sdk::reserve::{Reservation, ReserveRequest, Reserver};
use ktstr_sdk::source::{AcquiredSource, KernelSpec, Resolved, SourceAcquirer, SourceState};
use ktstr_sdk::verify::{Verdict, Verifier, VerifyRequest};
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

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        decode("locks", self.inner.locks())
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
            .map(|row| Listed::from(row).checked(&self.label))
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
    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        decode("locks", self.inner.locks())
    }
}

pub struct DynVerifier {
    pub(super) inner: FfiVerifierBox,
}

impl Verifier for DynVerifier {
    fn verify(&self, request: &VerifyRequest, cx: &StageContext) -> Result<Verdict> {
        let request = json_arg(request)?;
        decode(
            "a verdict",
            self.inner.verify(request.as_str().into(), host_box(cx)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use ktstr_sdk::ErrorKind;
    use ktstr_sdk::export::Plugin;
    use ktstr_sdk::registry::{Constructor, PluginConfig};
    use ktstr_sdk::testing::{RecordingRunner, context_with};

    use super::*;

    /// The outside tar-file tier of issue 17: it names its `.tar` file as
    /// `dir` everywhere (or, with `"fixed": true`, keeps `dir` empty and
    /// names the file as `location`).
    struct TarTier {
        file: PathBuf,
        fixed: bool,
    }

    impl TarTier {
        fn from_config(cfg: &PluginConfig) -> Result<Self> {
            Ok(Self {
                file: PathBuf::from(cfg["file"].as_str().unwrap()),
                fixed: cfg["fixed"].as_bool().unwrap_or(false),
            })
        }

        fn entry(&self, key: &CacheKey, metadata: Metadata) -> CacheEntry {
            CacheEntry {
                key: key.clone(),
                dir: if self.fixed {
                    PathBuf::new()
                } else {
                    self.file.clone()
                },
                metadata,
                origin: "tar".into(),
                location: Some(self.file.display().to_string()),
                last_used: None,
            }
        }
    }

    fn metadata(key: &str) -> Metadata {
        serde_json::from_value(serde_json::json!({
            "schema": 1, "key": key, "source": {"kind": "x", "identity": "y"},
            "version": null, "arch": "x86_64", "image_name": "bzImage",
            "profile": "p", "config_sha256": "", "builder": "b", "toolchain": "t",
            "built_at": "", "components": [], "artifacts": {}
        }))
        .unwrap()
    }

    impl CacheBackend for TarTier {
        fn lookup(
            &self,
            key: &CacheKey,
            _: &Staging,
            _: &StageContext,
        ) -> Result<Option<CacheEntry>> {
            Ok(Some(self.entry(key, metadata(key.as_str()))))
        }
        fn store(
            &self,
            key: &CacheKey,
            _: &Artifacts,
            m: &Metadata,
            cx: &StageContext,
        ) -> Result<CacheEntry> {
            cx.progress.step(&format!("packing {key}"));
            cx.cancel.check()?;
            Ok(self.entry(key, m.clone()))
        }
        fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
            let key = CacheKey::parse("k-1").unwrap();
            Ok(vec![Listed::Ok(self.entry(&key, metadata("k-1")))])
        }
        fn remove(&self, _: &CacheKey, _: &StageContext) -> Result<bool> {
            Ok(false)
        }
        fn describe(&self) -> String {
            "tar tier".into()
        }
    }

    fn define() -> Plugin {
        Plugin::new("tar", "0.1.0").stage(
            "tar",
            "one tar file per entry",
            &["file", "fixed"],
            Constructor::Cache(|cfg| Ok(Box::new(TarTier::from_config(cfg)?))),
        )
    }

    /// Through the real FFI shims, in process.
    fn loaded(file: &std::path::Path, fixed: bool) -> DynCache {
        let root = ktstr_sdk::export::__root_module(define).unwrap();
        let cfg = serde_json::json!({"file": file, "fixed": fixed}).to_string();
        let inner = done((root.new_cache())("tar".into(), cfg.as_str().into())).unwrap();
        DynCache {
            label: "plugin tar".into(),
            inner,
        }
    }

    #[test]
    fn a_file_as_dir_is_refused_and_an_empty_dir_with_a_location_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("k-1.tar");
        std::fs::write(&file, b"").unwrap();
        let key = CacheKey::parse("k-1").unwrap();
        let staging = Staging::new(tmp.path());
        let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
        let artifacts = Artifacts {
            image: file.clone(),
            vmlinux: None,
            config: file.clone(),
            log: None,
        };

        let broken = loaded(&file, false);
        let e = broken.lookup(&key, &staging, &cx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(
            e.message
                .starts_with("plugin tar: lookup returned entry k-1"),
            "{e}"
        );
        assert!(e.message.contains("k-1.tar that is not a directory"), "{e}");
        let e = (broken.store(&key, &artifacts, &metadata("k-1"), &cx)).unwrap_err();
        assert!(
            e.message.contains("leave dir empty and set location"),
            "{e}"
        );
        let rows = broken.list(&cx).unwrap();
        assert!(
            matches!(&rows[..], [Listed::Corrupt { key, reason }]
                if key == "k-1" && reason.contains("not a directory")),
            "{rows:?}"
        );

        let fixed = loaded(&file, true);
        let stored = (fixed.store(&key, &artifacts, &metadata("k-1"), &cx)).unwrap();
        assert!(!stored.is_local());
        assert_eq!(stored.location.as_deref(), file.to_str());
        assert!(matches!(&fixed.list(&cx).unwrap()[..], [Listed::Ok(_)]));
        let e = fixed.lookup(&key, &staging, &cx).unwrap_err();
        assert!(e.message.contains("unpack into the staging"), "{e}");
    }

    /// A store reports progress to the host and stops when the host's run
    /// is interrupted.
    #[test]
    fn a_plugin_store_sees_the_hosts_progress_and_cancellation() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("k-1.tar");
        let key = CacheKey::parse("k-1").unwrap();
        let artifacts = Artifacts {
            image: file.clone(),
            vmlinux: None,
            config: file.clone(),
            log: None,
        };
        let cache = loaded(&file, true);
        let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
        cache
            .store(&key, &artifacts, &metadata("k-1"), &cx)
            .unwrap();
        assert_eq!(progress.steps(), ["packing k-1"]);
        cx.cancel.cancel();
        let e = (cache.store(&key, &artifacts, &metadata("k-1"), &cx)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    }
}
