//! A process plugin's stages as ordinary sdk stages.
//!
//! Each adapter implements the sdk trait by calling `<kind>.<method>` on
//! its instance, with the same serde JSON the library adapters
//! (`dynamic::adapters`) send, so the pipeline cannot tell the transports
//! apart. Infallible sdk methods log a failure and fall back to a safe
//! answer; optional methods answered `unsupported` take the trait default.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktstr_sdk::build::{BuildOutput, BuildRequest, Builder};
use ktstr_sdk::cache::{
    Artifacts, CacheBackend, CacheEntry, CacheKey, Capabilities, KeyComponent, Listed, Metadata,
    Staging,
};
use ktstr_sdk::configure::{ConfigureRequest, Configurer, ProfileInfo};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::export::wire;
use ktstr_sdk::lock_list::LockInfo;
use ktstr_sdk::registry::StageKind;
use ktstr_sdk::reserve::{Reservation, ReserveRequest, Reserver};
use ktstr_sdk::source::{AcquiredSource, KernelSpec, Resolved, SourceAcquirer, SourceState};
use ktstr_sdk::{ErrorKind, Result, StageError};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::conn::Conn;
use super::handshake::SETUP_TIMEOUT;
use super::memo::Memo;

/// One stage instance inside a plugin process, created (`stage.new`) by
/// its first call, so a stage never used never starts its plugin.
pub struct Instance {
    pub conn: Arc<Conn>,
    pub kind: StageKind,
    pub name: String,
    pub config: Value,
    /// The plugin's instance id, once created.
    pub id: Mutex<Option<Value>>,
    /// `cache stage team-cache (plugin team-cache)`, for logs.
    pub label: String,
    pub timeout: Duration,
    pub memo: Option<Arc<Memo>>,
}

impl Instance {
    /// The plugin's instance of this stage, created on first use.
    fn id(&self) -> Result<Value> {
        let mut id = self
            .id
            .lock()
            .map_err(|_| StageError::internal(format!("{}: poisoned", self.label)))?;
        if let Some(id) = id.as_ref() {
            return Ok(id.clone());
        }
        let params = json!({"kind": self.kind, "name": self.name, "config": self.config});
        let created = self.conn.call("stage.new", params, None, SETUP_TIMEOUT)?;
        let new = created.get("instance").cloned().ok_or_else(|| {
            StageError::internal(format!(
                "{}: stage.new answered {created}, which has no instance",
                self.label
            ))
            .with_hint("stage.new answers {\"instance\": N}: see `ktstr docs plugin-protocol`")
        })?;
        *id = Some(new.clone());
        Ok(new)
    }

    /// Call `<kind>.<method>` with `params` (an object) and decode the
    /// result as `what`.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        what: &str,
        params: Value,
        cx: Option<&StageContext>,
    ) -> Result<T> {
        self.call_within(method, what, params, cx, self.timeout)
    }

    /// [`Self::call`] with another silence bound than the stage's.
    fn call_within<T: DeserializeOwned>(
        &self,
        method: &str,
        what: &str,
        mut params: Value,
        cx: Option<&StageContext>,
        timeout: Duration,
    ) -> Result<T> {
        let method = format!("{}.{method}", self.kind);
        if let Some(cx) = cx {
            cx.cancel.check()?;
        }
        params["instance"] = self.id()?;
        let result = self.conn.call(&method, params, cx, timeout)?;
        serde_json::from_value(result).map_err(|e| {
            StageError::internal(format!(
                "{}: {method} answered something that is not {what}",
                self.label
            ))
            .caused_by(e)
            .with_hint("the plugin's result does not match `ktstr docs plugin-protocol`: report it to the plugin's author")
        })
    }

    /// An optional method: `unsupported` means the trait default.
    fn optional<T: DeserializeOwned>(
        &self,
        method: &str,
        what: &str,
        params: Value,
        cx: Option<&StageContext>,
        default: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.call(method, what, params, cx) {
            Err(e) if e.kind == ErrorKind::Unsupported && !self.conn.is_dead() => Ok(default()),
            other => other,
        }
    }

    /// A failure of an infallible method, logged: a plugin that died is
    /// reported once, by the call that needs an answer (a tier's lookup).
    fn fallback<T>(&self, method: &str, r: Result<T>, default: T) -> T {
        r.unwrap_or_else(|e| {
            if self.conn.is_dead() {
                tracing::debug!("{}: {method} failed: {e}", self.label);
                return default;
            }
            match e.hint.as_deref() {
                Some(hint) => tracing::warn!("{}: {method} failed: {e} (hint: {hint})", self.label),
                None => tracing::warn!("{}: {method} failed: {e}", self.label),
            }
            default
        })
    }

    fn locks(&self) -> Result<Vec<LockInfo>> {
        self.optional("locks", "a lock list", json!({}), None, Vec::new)
    }
}

pub struct ProcSource(pub Instance);

impl SourceAcquirer for ProcSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        let r = self
            .0
            .call("claims", "a bool", json!({ "spec": spec }), None);
        self.0.fallback("claims", r, false)
    }
    fn accepted_forms(&self) -> Vec<String> {
        let r = self
            .0
            .call("accepted_forms", "a list of strings", json!({}), None);
        self.0.fallback("accepted_forms", r, Vec::new())
    }
    fn resolve(&self, spec: &KernelSpec, cx: &StageContext) -> Result<Vec<Resolved>> {
        let params = json!({ "spec": spec });
        self.0
            .optional("resolve", "resolved specs", params, Some(cx), || {
                vec![Resolved::unknown(spec.clone())]
            })
    }
    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        let params = json!({ "spec": spec });
        self.0
            .call("acquire", "an acquired source", params, Some(cx))
    }
    fn probe(&self, source: &AcquiredSource, cx: &StageContext) -> Result<Option<SourceState>> {
        let params = json!({ "source": source });
        self.0
            .optional("probe", "a source state", params, Some(cx), || None)
    }
    fn locks(&self) -> Result<Vec<LockInfo>> {
        self.0.locks()
    }
}

pub struct ProcReserver(pub Instance);

/// `reserver.reserve`'s result: a grant and the plugin's guard, if any.
#[derive(serde::Deserialize)]
struct Granted {
    #[serde(flatten)]
    grant: wire::Grant,
    #[serde(default)]
    guard: Option<String>,
}

/// Releases a process plugin's reservation when dropped.
struct Guard {
    conn: Arc<Conn>,
    instance: Value,
    guard: String,
    timeout: Duration,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let params = json!({"instance": self.instance, "guard": self.guard});
        if let Err(e) = self
            .conn
            .call("reserver.release", params, None, self.timeout)
        {
            tracing::debug!("releasing reservation {}: {e}", self.guard);
        }
    }
}

impl Reserver for ProcReserver {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        let params = json!({ "request": request });
        let g: Granted = self.0.call("reserve", "a reservation", params, Some(cx))?;
        let instance = self.0.id()?;
        let guard = g.guard.map(|guard| {
            Box::new(Guard {
                conn: self.0.conn.clone(),
                instance,
                guard,
                timeout: self.0.timeout,
            }) as Box<dyn ktstr_sdk::reserve::ReservationGuard>
        });
        Ok(Reservation {
            cpus: g.grant.cpus,
            mems: g.grant.mems,
            make_jobs: g.grant.make_jobs,
            sandbox_procs: g.grant.sandbox_procs,
            guard,
        })
    }
    fn locks(&self) -> Result<Vec<LockInfo>> {
        self.0.locks()
    }
}

pub struct ProcConfigurer(pub Instance);

impl Configurer for ProcConfigurer {
    fn profiles(&self) -> Vec<ProfileInfo> {
        let r = self.0.call("profiles", "profiles", json!({}), None);
        self.0.fallback("profiles", r, Vec::new())
    }
    fn identity(&self, request: &ConfigureRequest) -> Result<Vec<KeyComponent>> {
        let params = json!({ "request": request });
        self.0.call("identity", "key components", params, None)
    }
    fn is_configured(&self, tree: &Path, request: &ConfigureRequest) -> Result<bool> {
        let params = json!({ "tree": tree, "request": request });
        self.0.call("is_configured", "a bool", params, None)
    }
    fn configure(&self, tree: &Path, request: &ConfigureRequest, cx: &StageContext) -> Result<()> {
        let params = json!({ "tree": tree, "request": request });
        self.0
            .call::<Value>("configure", "null", params, Some(cx))?;
        Ok(())
    }
    fn validate(&self, tree: &Path, request: &ConfigureRequest) -> Result<()> {
        let params = json!({ "tree": tree, "request": request });
        self.0.call::<Value>("validate", "null", params, None)?;
        Ok(())
    }
}

pub struct ProcBuilder(pub Instance);

impl Builder for ProcBuilder {
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>> {
        self.0
            .call("identity", "key components", json!({}), Some(cx))
    }
    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()> {
        let params = json!({ "tree": tree });
        self.0.call::<Value>("clean", "null", params, Some(cx))?;
        Ok(())
    }
    fn build(&self, request: &BuildRequest, cx: &StageContext) -> Result<BuildOutput> {
        let params = json!({ "request": request });
        self.0.call("build", "a build output", params, Some(cx))
    }
}

pub struct ProcCache(pub Instance);

/// Every entry the plugin returns is checked against the `dir` rules
/// ([`CacheEntry::check_returned`]), as for library plugins.
impl CacheBackend for ProcCache {
    fn lookup(
        &self,
        key: &CacheKey,
        staging: &Staging,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        let params = json!({ "key": key, "staging": staging.path() });
        let found: Option<CacheEntry> = self.0.call("lookup", "a cache entry", params, Some(cx))?;
        if let Some(e) = &found {
            e.check_returned("lookup", Some(key), &self.0.label)?;
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
        let params = json!({ "key": key, "artifacts": artifacts, "metadata": metadata });
        let stored: CacheEntry = self.0.call("store", "a cache entry", params, Some(cx))?;
        stored.check_returned("store", Some(key), &self.0.label)?;
        Ok(stored)
    }
    fn list(&self, cx: &StageContext) -> Result<Vec<Listed>> {
        let rows: Vec<wire::Listed> =
            self.0
                .call("list", "a cache listing", json!({}), Some(cx))?;
        Ok(rows
            .into_iter()
            .map(|row| Listed::from(row).checked(&self.0.label))
            .collect())
    }
    fn remove(&self, key: &CacheKey, cx: &StageContext) -> Result<bool> {
        self.0
            .call("remove", "a bool", json!({ "key": key }), Some(cx))
    }
    fn describe(&self) -> String {
        let r = self.0.call("describe", "a string", json!({}), None);
        self.0.fallback("describe", r, self.0.label.clone())
    }
    /// Asked when the tiers are set up, on every run: answered from the
    /// memo when the plugin said it before (for this config), so a run
    /// that needs no remote tier does not start the plugin.
    fn capabilities(&self) -> Capabilities {
        let i = &self.0;
        if let Some(c) = i
            .memo
            .as_ref()
            .and_then(|m| m.capabilities(&i.name, &i.config))
        {
            return c;
        }
        let r = i.optional(
            "capabilities",
            "capabilities",
            json!({}),
            None,
            Capabilities::default,
        );
        if let (Ok(c), Some(m)) = (&r, &i.memo) {
            m.record_capabilities(&i.name, &i.config, *c);
        }
        i.fallback("capabilities", r, Capabilities::default())
    }
    fn locks(&self) -> Result<Vec<LockInfo>> {
        self.0.locks()
    }
}

/// The verifier kind's adapter (`verifier.verify`, docs/plugin-protocol.md).
/// A boot check may be silent for as long as its own bound, so the call
/// may too.
pub struct ProcVerifier(pub Instance);

impl ktstr_sdk::verify::Verifier for ProcVerifier {
    fn verify(
        &self,
        request: &ktstr_sdk::verify::VerifyRequest,
        cx: &StageContext,
    ) -> Result<ktstr_sdk::verify::Verdict> {
        let bound = Duration::from_millis(request.timeout_ms) + Duration::from_secs(30);
        let params = json!({ "request": request });
        self.0.call_within(
            "verify",
            "a verdict",
            params,
            Some(cx),
            self.0.timeout.max(bound),
        )
    }
}
