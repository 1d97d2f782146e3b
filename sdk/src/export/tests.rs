//! The plugin side driven directly, as the host would through the ABI.

use ktstr_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use ktstr_plugin_abi::abi_stable::std_types::{RArc, ROption, RResult, RStr, RString};
use ktstr_plugin_abi::{HostCallbacks, HostCallbacks_TO, LineSinkMut};

use super::*;
use crate::cache::{CacheBackend, CacheEntry, CacheKey, Listed, Metadata, Staging};
use crate::context::StageContext;
use crate::error::{ErrorKind, StageError};

struct Boom;

impl CacheBackend for Boom {
    fn lookup(
        &self,
        _: &CacheKey,
        _: &Staging,
        _: &StageContext,
    ) -> crate::Result<Option<CacheEntry>> {
        panic!("lookup exploded")
    }
    fn store(
        &self,
        _: &CacheKey,
        _: &crate::cache::Artifacts,
        _: &Metadata,
        _: &StageContext,
    ) -> crate::Result<CacheEntry> {
        Err(StageError::invalid_input("no space").with_hint("free some"))
    }
    fn list(&self, cx: &StageContext) -> crate::Result<Vec<Listed>> {
        // What a long listing does between pages.
        cx.progress.line("page 1");
        cx.progress.bytes(512, Some(1024));
        cx.cancel.check()?;
        Ok(Vec::new())
    }
    fn remove(&self, _: &CacheKey, _: &StageContext) -> crate::Result<bool> {
        Ok(false)
    }
    fn describe(&self) -> String {
        "boom cache".into()
    }
}

/// Passes, echoing the request; panics for an image named `panic`.
struct Echo;

impl crate::verify::Verifier for Echo {
    fn verify(
        &self,
        r: &crate::verify::VerifyRequest,
        cx: &StageContext,
    ) -> crate::Result<crate::verify::Verdict> {
        if r.image.ends_with("panic") {
            panic!("verifier exploded");
        }
        cx.progress.line("booting");
        cx.cancel.check()?;
        Ok(crate::verify::Verdict {
            passed: true,
            summary: format!("{} on {} CPUs", r.image.display(), r.vcpus),
            observed: [("timeout_ms".to_string(), r.timeout_ms.to_string())].into(),
            console_tail: Vec::new(),
        })
    }
}

fn define() -> Plugin {
    Plugin::new("unit", "1.2.3")
        .stage(
            "boom",
            "panics on lookup",
            &["dir"],
            Constructor::Cache(|_| Ok(Box::new(Boom))),
        )
        .stage(
            "echo",
            "passes",
            &[],
            Constructor::Verifier(|_| Ok(Box::new(Echo))),
        )
}

/// A verifier crosses the ABI: request in, verdict out, a panic and the
/// host's interrupt as errors.
#[test]
fn a_verifier_round_trips_through_the_abi() {
    use crate::verify::{Verdict, VerifyRequest};
    let root = __root_module(define).unwrap();
    let verifier = ok((root.new_verifier())("echo".into(), "null".into()));
    let request = |image: &str| VerifyRequest {
        image: image.into(),
        vcpus: 2,
        timeout_ms: 5000,
        ..VerifyRequest::default()
    };
    let recorder = Interrupted::default();
    let calm = Calm(recorder.clone());
    let json = to_json(&request("/k/bzImage")).unwrap();
    let out = ok(verifier.verify(
        json.as_str().into(),
        HostCallbacks_TO::from_ptr(RArc::new(calm), TD_Opaque),
    ));
    let verdict: Verdict = from_json("a verdict", &out).unwrap();
    assert!(verdict.passed);
    assert_eq!(verdict.summary, "/k/bzImage on 2 CPUs");
    assert_eq!(verdict.observed["timeout_ms"], "5000");
    assert_eq!(*recorder.0.lock().unwrap(), ["booting"]);

    let json = to_json(&request("/k/bzImage")).unwrap();
    let e = err(verifier.verify(json.as_str().into(), host(&recorder)));
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    let json = to_json(&request("/k/panic")).unwrap();
    let e = err(verifier.verify(json.as_str().into(), host(&recorder)));
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(
        e.message
            .starts_with("plugin unit panicked in verifier echo verify: verifier exploded"),
        "{e}"
    );
    let e = err((root.new_verifier())("boom".into(), "null".into()));
    assert_eq!(
        e.kind,
        ErrorKind::NotFound,
        "a cache is not a verifier: {e}"
    );
}

/// [`Interrupted`]'s recorder, without the interrupt.
#[derive(Clone)]
struct Calm(Interrupted);

impl HostCallbacks for Calm {
    fn step(&self, _: RStr<'_>) {}
    fn line(&self, line: RStr<'_>) {
        self.0.line(line)
    }
    fn finish_step(&self) {}
    fn warn(&self, _: RStr<'_>) {}
    fn note(&self, _: RStr<'_>) {}
    fn is_cancelled(&self) -> bool {
        false
    }
    fn run(&self, _: RStr<'_>, _: LineSinkMut<'_>) -> FfiResult<RString> {
        unreachable!("no commands here")
    }
    fn capture(&self, _: RStr<'_>) -> FfiResult<RString> {
        unreachable!("no commands here")
    }
    fn bytes(&self, _: u64, _: ROption<u64>) {}
}

/// A host that has been interrupted and records progress lines.
#[derive(Default, Clone)]
struct Interrupted(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl HostCallbacks for Interrupted {
    fn step(&self, _: RStr<'_>) {}
    fn line(&self, line: RStr<'_>) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn finish_step(&self) {}
    fn warn(&self, _: RStr<'_>) {}
    fn note(&self, _: RStr<'_>) {}
    fn is_cancelled(&self) -> bool {
        true
    }
    fn run(&self, _: RStr<'_>, _: LineSinkMut<'_>) -> FfiResult<RString> {
        unreachable!("no commands here")
    }
    fn capture(&self, _: RStr<'_>) -> FfiResult<RString> {
        unreachable!("no commands here")
    }
    fn bytes(&self, done: u64, total: ROption<u64>) {
        let total = total
            .into_option()
            .map_or("?".to_string(), |t| t.to_string());
        self.0
            .lock()
            .unwrap()
            .push(format!("{done} of {total} bytes"));
    }
}

fn host(h: &Interrupted) -> abi::HostBox {
    HostCallbacks_TO::from_ptr(RArc::new(h.clone()), TD_Opaque)
}

/// A cache call gets the host's progress and cancellation.
#[test]
fn cache_calls_see_the_hosts_progress_and_cancellation() {
    let root = __root_module(define).unwrap();
    let cache = ok((root.new_cache())("boom".into(), "null".into()));
    let h = Interrupted::default();
    let e = err(cache.list(host(&h)));
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    assert_eq!(*h.0.lock().unwrap(), ["page 1", "512 of 1024 bytes"]);
}

fn ok<T>(r: FfiResult<T>) -> T {
    match r {
        RResult::ROk(v) => v,
        RResult::RErr(e) => panic!("unexpected error: {}", from_ffi(e)),
    }
}

fn err<T>(r: FfiResult<T>) -> StageError {
    match r {
        RResult::ROk(_) => panic!("expected an error"),
        RResult::RErr(e) => from_ffi(e),
    }
}

#[test]
fn manifest_names_the_stages_and_abi() {
    let root = __root_module(define).unwrap();
    let json = ok((root.manifest())());
    let m: Manifest = from_json("manifest", &json).unwrap();
    assert_eq!(m.name, "unit");
    assert_eq!(m.version, "1.2.3");
    assert_eq!(m.abi_version, abi::ABI_VERSION);
    assert_eq!(m.stages.len(), 2);
    assert_eq!(m.stages[0].kind, StageKind::Cache);
    assert_eq!(m.stages[1].kind, StageKind::Verifier);
    assert_eq!(m.stages[0].config_keys, ["dir"]);
}

#[test]
fn panics_and_errors_come_back_structured() {
    let root = __root_module(define).unwrap();
    let cache = ok((root.new_cache())("boom".into(), "null".into()));
    let h = Interrupted::default();
    let e = err(cache.lookup("k1".into(), "/nonexistent".into(), host(&h)));
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(
        e.message
            .starts_with("plugin unit panicked in cache boom lookup: lookup exploded"),
        "{e}"
    );
    assert!(e.causes.iter().any(|c| c.contains("tests.rs")), "{e:?}");
    let e = err(cache.store("k1".into(), "{}".into(), "{}".into(), host(&h)));
    assert_eq!(e.kind, ErrorKind::Internal, "malformed artifacts: {e}");
    assert_eq!(ok(cache.describe()).as_str(), "boom cache");
    let e = err((root.new_cache())("nope".into(), "null".into()));
    assert_eq!(e.kind, ErrorKind::NotFound);
    let e = err((root.new_source())("boom".into(), "null".into()));
    assert_eq!(e.kind, ErrorKind::NotFound, "wrong kind: {e}");
}

#[test]
fn errors_round_trip_and_unknown_kinds_degrade() {
    let e = StageError::invalid_input("bad")
        .with_hint("fix")
        .caused_by(std::io::Error::other("io"));
    assert_eq!(from_ffi(to_ffi(&e)), e);
    let mut f = to_ffi(&e);
    f.kind = "from-the-future".into();
    assert_eq!(from_ffi(f).kind, ErrorKind::Internal);
}

#[test]
fn header_symbol_matches_abi_stable() {
    assert_eq!(
        abi::LIB_HEADER_SYMBOL,
        "_1as_0lib_1header_0root_bmodule_bloader",
        "export_plugin! spells this symbol literally; update it"
    );
}

/// The sdk types that replaced the `wire` mirrors read the JSON the
/// mirrors wrote, so plugins built against an older SDK still talk to us.
#[test]
fn sdk_types_read_the_old_wire_forms() {
    use crate::cache::Artifacts;
    use crate::context::{CapturedOutput, CommandOutcome, CommandSpec};

    let spec: CommandSpec = from_json(
        "a command",
        r#"{"program":"make","args":["-j2"],"cwd":"/t","env":[["A","1"]],"cgroup_procs":null,"env_clear":true}"#,
    )
    .unwrap();
    assert_eq!(spec.args, ["-j2"]);
    assert!(spec.env_clear);
    let bare: CommandSpec = from_json("a command", r#"{"program":"gcc"}"#).unwrap();
    assert_eq!(bare, CommandSpec::new("gcc"));

    let o: CommandOutcome = from_json(
        "an outcome",
        r#"{"code":2,"tail":[{"text":"oops","stderr":true}]}"#,
    )
    .unwrap();
    assert_eq!((o.code, o.tail[0].stderr), (Some(2), true));
    let c: CapturedOutput =
        from_json("output", r#"{"code":null,"stdout":"a","stderr":""}"#).unwrap();
    assert_eq!(c.stdout, "a");

    let a: Artifacts = from_json(
        "artifacts",
        r#"{"image":"/b/bzImage","vmlinux":null,"config":"/b/.config"}"#,
    )
    .unwrap();
    assert_eq!(a.log, None);
    let json = to_json(&a).unwrap();
    assert!(!json.contains("log"), "{json}");
}
