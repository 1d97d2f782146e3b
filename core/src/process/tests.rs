//! The process transport against real plugin processes: the Python cache
//! scaffold (`plugins new --lang python`) must pass the SDK's cache
//! conformance suite through [`ProcCache`](super::adapters::ProcCache),
//! and a call is cancelled, timed out and reported as the protocol says.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktstr_sdk::cache::{CacheBackend, CacheKey};
use ktstr_sdk::conformance::cache::{self, Fixture, Options};
use ktstr_sdk::context::{Cancellation, Progress, StageContext};
use ktstr_sdk::registry::AnyStage;
use ktstr_sdk::testing::{RecordingProgress, RecordingRunner, context_with};
use ktstr_sdk::{ErrorKind, StageError};
use serde_json::json;

use super::factory::ProcFactory;
use super::handshake;
use crate::cli::plugins::{Lang, NewKind};
use crate::registry::StageFactory;

fn have_python() -> bool {
    !ktstr_sdk::testing::missing("Python plugin test", &["python3"], "python3")
}

/// The Python cache scaffold, generated once per test into `dir`.
fn scaffold(dir: &Path) -> PathBuf {
    let out = dir.join("scaffold");
    crate::cli::plugins::new("py-cache", NewKind::Cache, Lang::Python, None, Some(&out)).unwrap();
    out.join("ktstr-plugin-py-cache")
}

/// The metadata of a store of key `k-1` (the plugin fills in the artifacts).
fn metadata_of_k1() -> ktstr_sdk::cache::Metadata {
    serde_json::from_value(json!({
        "schema": 1, "key": "k-1", "source": {"kind": "x", "identity": "y"},
        "version": null, "arch": "x86_64", "image_name": "bzImage",
        "profile": "p", "config_sha256": "", "builder": "b", "toolchain": "t",
        "built_at": "", "components": [], "artifacts": {}
    }))
    .unwrap()
}

fn image_and_config(image: PathBuf, config: PathBuf) -> ktstr_sdk::cache::Artifacts {
    ktstr_sdk::cache::Artifacts {
        image,
        vmlinux: None,
        config,
        log: None,
    }
}

/// Join `threads` and fail the test with every failure they report.
#[track_caller]
fn assert_none_failed(threads: Vec<std::thread::ScopedJoinHandle<'_, Vec<String>>>) {
    let failures: Vec<String> = (threads.into_iter())
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}

/// A cache stage of the plugin at `exe`, in a process of its own.
fn cache_at(exe: &Path, config: serde_json::Value) -> Box<dyn CacheBackend> {
    let plugin = handshake::launch(exe, "py-cache", None).unwrap();
    let factory = ProcFactory::new(&plugin, plugin.stages[0].clone());
    match factory.construct(&config).unwrap() {
        AnyStage::Cache(c) => c,
        _ => panic!("not a cache"),
    }
}

#[test]
fn the_python_cache_scaffold_conforms_through_the_process_transport() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = scaffold(tmp.path());
    let dir = |fx: &Fixture| fx.shared.join("kernels");
    cache::run(
        &|fx: &Fixture| cache_at(&exe, json!({"dir": dir(fx)})),
        Options::default()
            .read_only(|fx: &Fixture| cache_at(&exe, json!({"dir": dir(fx), "read_only": true})))
            .corrupt(|fx: &Fixture, key: &CacheKey| {
                let image = dir(fx).join(key.as_str()).join("bzImage");
                let mut bytes = std::fs::read(&image).unwrap();
                bytes[0] ^= 0xff;
                std::fs::write(&image, bytes).unwrap();
            }),
    );
}

#[test]
fn a_bad_setting_is_the_plugins_own_error_with_its_hint() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = scaffold(tmp.path());
    let plugin = handshake::launch(&exe, "py-cache", None).unwrap();
    let factory = ProcFactory::new(&plugin, plugin.stages[0].clone());
    let AnyStage::Cache(c) = factory
        .construct(&json!({"dir": "relative", "call_timeout": 5}))
        .unwrap()
    else {
        panic!("not a cache")
    };
    // The instance is created, and refused, at its first call.
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    let e = c.list(&cx).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(
        e.message.contains("[plugin.py-cache] dir = 'relative'"),
        "{e}"
    );
    assert!(e.hint.unwrap().contains("dir = \"/srv/kernels\""));
}

/// Write the executable script `exe` (replacing it if it exists). Spawning
/// it at once is safe although other test threads fork meanwhile: a fork
/// that inherited the write descriptor makes exec fail with ETXTBSY until
/// that child execs, and `Process::spawn` retries that.
fn write_script(exe: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(exe, text).unwrap();
    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const SILENT: &str = r#"#!/bin/sh
read hello
echo '{"id":0,"result":{"protocol":1,"name":"silent","version":"1.0.0","stages":[{"kind":"cache","name":"silent","summary":"s"}]}}'
read new
echo '{"id":1,"result":{"instance":7}}'
read call
echo '{"method":"progress.line","params":{"line":"thinking"}}'
exec sleep 600
"#;

/// A plugin that reads its requests but never answers `cache.list`, and
/// ignores `cancel`: written with `sh` so the test needs nothing else.
fn silent_plugin(dir: &Path) -> PathBuf {
    let exe = dir.join("ktstr-plugin-silent");
    write_script(&exe, SILENT);
    exe
}

/// A progress sink that records, and cancels the call at the first event
/// `fires` picks (the plugin's own progress: the call is in flight then).
struct CancelOn {
    inner: Arc<RecordingProgress>,
    cancel: Cancellation,
    fires: fn(&str) -> bool,
    at: Mutex<Option<Instant>>,
}

impl CancelOn {
    /// A context whose call is cancelled at the first step or line
    /// `fires` accepts (steps are seen as `step:NAME`).
    fn context(fires: fn(&str) -> bool) -> (StageContext, Arc<Self>) {
        let (cx, inner) = context_with(Arc::new(RecordingRunner::default()));
        let me = Arc::new(Self {
            inner,
            cancel: cx.cancel.clone(),
            fires,
            at: Mutex::new(None),
        });
        let cx = StageContext {
            progress: me.clone(),
            ..cx
        };
        (cx, me)
    }

    fn seen(&self, event: &str) {
        let mut at = self.at.lock().unwrap();
        if at.is_none() && (self.fires)(event) {
            *at = Some(Instant::now());
            self.cancel.cancel();
        }
    }

    /// When the cancel fired.
    fn fired(&self) -> Instant {
        self.at.lock().unwrap().expect("the cancel never fired")
    }
}

impl Progress for CancelOn {
    fn step(&self, name: &str) {
        self.inner.step(name);
        self.seen(&format!("step:{name}"));
    }
    fn line(&self, line: &str) {
        self.inner.line(line);
        self.seen(line);
    }
    fn finish_step(&self) {
        self.inner.finish_step();
    }
    fn warn(&self, message: &str) {
        self.inner.warn(message);
    }
    fn note(&self, message: &str) {
        self.inner.note(message);
    }
}

#[test]
fn a_silent_plugin_times_out_and_every_later_call_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = silent_plugin(tmp.path());
    let plugin = handshake::launch(&exe, "silent", None).unwrap();
    let pid = plugin.conn.pid().unwrap();
    let factory = ProcFactory::new(&plugin, plugin.stages[0].clone());
    let AnyStage::Cache(c) = factory.construct(&json!({"call_timeout": 2})).unwrap() else {
        panic!("not a cache")
    };
    let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
    let e = c.list(&cx).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(
        e.message.starts_with("plugin silent (")
            && e.message
                .contains("sent nothing for 2 s during cache.list; killed it"),
        "{e}"
    );
    assert!(progress.lines().contains(&"thinking".to_string()));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the silent plugin was killed and reaped"
    );
    let again: StageError = c.list(&cx).unwrap_err();
    assert_eq!(
        again, e,
        "a dead plugin fails every later call the same way"
    );
}

#[test]
fn a_cancelled_call_sends_cancel_and_a_plugin_that_ignores_it_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = silent_plugin(tmp.path());
    let plugin = handshake::launch(&exe, "silent", None).unwrap();
    let factory = ProcFactory::new(&plugin, plugin.stages[0].clone());
    let AnyStage::Cache(c) = factory.construct(&json!(null)).unwrap() else {
        panic!("not a cache")
    };
    // Cancelled once the plugin is inside the call (it said "thinking").
    let (cx, progress) = CancelOn::context(|event| event == "thinking");
    let e = c.list(&cx).unwrap_err();
    let took = progress.fired().elapsed();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    assert!(
        took >= super::conn::CANCEL_GRACE && took < super::conn::CANCEL_GRACE * 2,
        "killed after the grace period, not before: {took:?}"
    );
    // Nothing new starts under a cancelled context.
    assert_eq!(c.list(&cx).unwrap_err().kind, ErrorKind::Cancelled);
}

#[test]
fn a_plugin_that_stops_reading_its_stdin_cannot_block_ktstr() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = silent_plugin(tmp.path());
    // The silent plugin without its last `read`: it never reads again.
    write_script(&exe, &SILENT.replace("read call\n", ""));
    let plugin = handshake::launch(&exe, "silent", None).unwrap();
    plugin
        .conn
        .call("stage.new", json!({}), None, Duration::from_secs(5))
        .unwrap();
    // More than a pipe holds.
    let big = json!({ "pad": "x".repeat(4 << 20) });
    let start = std::time::Instant::now();
    let e = plugin
        .conn
        .call("cache.store", big, None, Duration::from_millis(300))
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "{e}");
    assert!(
        e.message.starts_with("plugin silent (")
            && e.message.contains(
                "broke the protocol during cache.store: did not read its stdin; killed it"
            ),
        "{e}"
    );
    assert!(plugin.conn.is_dead());
}

#[test]
fn a_cancel_mid_store_stops_the_python_cache_which_stores_nothing_and_keeps_serving() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = scaffold(tmp.path());
    let dir = tmp.path().join("kernels");
    let c = cache_at(&exe, json!({ "dir": dir }));
    let image = tmp.path().join("bzImage");
    let config = tmp.path().join("config");
    // Large enough that the copy is still running when the cancel arrives
    // (sparse: it costs hashing time, not disk; and only until the cancel).
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 30))
        .unwrap();
    std::fs::write(&config, "CONFIG_X=y\n").unwrap();
    let key = CacheKey::parse("k-1").unwrap();
    let metadata = metadata_of_k1();
    let artifacts = image_and_config(image, config);
    // Cancelled as the store begins its copy (its first step).
    let (cx, progress) = CancelOn::context(|event| event.starts_with("step:storing k-1"));
    let e = c.store(&key, &artifacts, &metadata, &cx).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    assert_eq!(progress.inner.steps().len(), 1, "the store had begun");
    assert!(
        !dir.join("k-1").exists(),
        "a cancelled store stores nothing"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join(".tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "and leaves no temp dir: {leftovers:?}"
    );
    // The plugin answered the cancel: it is alive and still serves.
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    assert!(c.list(&cx).unwrap().is_empty());
}

/// Three processes of the Python scaffold store one key over and over at
/// once: every store succeeds. Its publish once gave up when another
/// writer moved the old entry aside between its rename and its look
/// ("Directory not empty"), which failed the conformance suite's
/// atomic-replace rule in a CI-like run.
#[test]
fn concurrent_stores_of_one_key_through_the_python_cache_all_succeed() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = scaffold(tmp.path());
    let dir = tmp.path().join("kernels");
    let image = tmp.path().join("bzImage");
    let config = tmp.path().join("config");
    std::fs::write(&image, "an image").unwrap();
    std::fs::write(&config, "CONFIG_X=y\n").unwrap();
    let key = CacheKey::parse("k-1").unwrap();
    let metadata = metadata_of_k1();
    let artifacts = image_and_config(image, config);
    let writers: Vec<_> = (0..3)
        .map(|_| cache_at(&exe, json!({ "dir": dir })))
        .collect();
    std::thread::scope(|scope| {
        let running: Vec<_> = (writers.iter())
            .map(|c| {
                let (key, artifacts, metadata) = (&key, &artifacts, &metadata);
                scope.spawn(move || {
                    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
                    (0..60)
                        .filter_map(|_| c.store(key, artifacts, metadata, &cx).err())
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        assert_none_failed(running);
    });
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    let listed = writers[0].list(&cx).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// Lookups through the Python scaffold while two other processes keep
/// replacing the entry with versions of different content: every lookup
/// is served one whole version. Its lookup once re-read the entry by path
/// after reading the metadata, so under steady replacement it read files
/// of another version three times running and failed ("it keeps changing
/// while it is read"), which failed the conformance suite in a CI-like run.
#[test]
fn lookups_through_the_python_cache_during_replacements_see_whole_versions() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = scaffold(tmp.path());
    let dir = tmp.path().join("kernels");
    let key = CacheKey::parse("k-1").unwrap();
    let metadata = metadata_of_k1();
    // Two versions whose files differ in content and size.
    let version = |n: usize| {
        let d = tmp.path().join(format!("v{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bzImage"), vec![b'a' + n as u8; 200_000 + n * 1000]).unwrap();
        std::fs::write(d.join("config"), format!("CONFIG_V{n}=y\n")).unwrap();
        image_and_config(d.join("bzImage"), d.join("config"))
    };
    let versions = [version(0), version(1)];
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    let first = cache_at(&exe, json!({ "dir": dir }));
    first.store(&key, &versions[0], &metadata, &cx).unwrap();
    let writers: Vec<_> = (0..2)
        .map(|_| cache_at(&exe, json!({ "dir": dir })))
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| cache_at(&exe, json!({ "dir": dir })))
        .collect();
    let writing = std::sync::atomic::AtomicUsize::new(writers.len());
    std::thread::scope(|scope| {
        for (w, artifacts) in writers.iter().zip(&versions) {
            let (key, metadata, writing) = (&key, &metadata, &writing);
            scope.spawn(move || {
                let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
                for _ in 0..40 {
                    w.store(key, artifacts, metadata, &cx).unwrap();
                }
                writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let running: Vec<_> = (readers.iter())
            .map(|r| {
                let (key, writing, tmp) = (&key, &writing, tmp.path());
                scope.spawn(move || {
                    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
                    let mut failed = Vec::new();
                    while writing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        let staging_dir = tempfile::tempdir_in(tmp).unwrap();
                        let staging = ktstr_sdk::cache::Staging::new(staging_dir.path());
                        match r.lookup(key, &staging, &cx) {
                            Ok(Some(entry)) => {
                                let image = std::fs::read(entry.image()).unwrap();
                                let whole = (image.iter().all(|&b| b == image[0]))
                                    && image.len() == 200_000 + (image[0] - b'a') as usize * 1000;
                                if !whole {
                                    failed.push(format!("a mixed image of {} bytes", image.len()));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    failed
                })
            })
            .collect();
        assert_none_failed(running);
    });
}

#[test]
fn a_remembered_plugin_starts_on_first_use_and_is_forgotten_when_it_answers_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = silent_plugin(tmp.path());
    let broken = tmp.path().join("broken");
    write_script(
        &exe,
        &SILENT.replacen(
            "\n",
            &format!(
                "\n[ -e {} ] && {{ echo 'broken now' >&2; exit 3; }}\n",
                broken.display()
            ),
            1,
        ),
    );
    let memo = Arc::new(super::memo::Memo::at(&tmp.path().join("memo.json"), &exe));
    drop(handshake::launch(&exe, "silent", Some(memo.clone())).unwrap());
    assert!(memo.hello().is_some(), "the handshake is remembered");

    let plugin = super::start_or_defer(&exe, "silent", Some(memo.clone())).unwrap();
    assert_eq!(plugin.conn.pid(), None, "not started: no stage was called");
    assert_eq!(plugin.stages[0].name, "silent");
    let factory = ProcFactory::new(&plugin, plugin.stages[0].clone());
    let AnyStage::Cache(c) = factory.construct(&json!(null)).unwrap() else {
        panic!("not a cache")
    };
    std::fs::write(&broken, "").unwrap();
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    let e = c.list(&cx).unwrap_err();
    assert!(
        e.message
            .contains("exited during the handshake (exit status 3)")
            && e.message.contains("broken now"),
        "{e}"
    );
    assert!(
        memo.hello().is_none(),
        "a plugin that answers otherwise is asked again next run"
    );
}

/// The failure message quotes the plugin's real last stderr line even when
/// a burst of output before it is still being read as the plugin dies
/// (the reader is waited for, not given a fixed moment).
#[test]
fn a_dying_plugins_last_words_survive_a_burst_of_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("ktstr-plugin-noisy");
    // More than a pipe holds: up to 64 KiB of it is unread at the exit.
    write_script(
        &exe,
        "#!/bin/sh\nread hello\nyes x | head -n 60000 >&2\necho 'broken now' >&2\nexit 3\n",
    );
    let Err(e) = handshake::launch(&exe, "noisy", None) else {
        panic!("the handshake of a plugin that exits succeeded")
    };
    assert!(
        e.message
            .contains("exited during the handshake (exit status 3)")
            && e.message.ends_with("its stderr ended with: broken now"),
        "{e}"
    );
}
