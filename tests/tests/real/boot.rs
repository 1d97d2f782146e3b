//! Real boots of a built kernel under the `qemu` verifier, forced to TCG
//! as in CI: it boots and reports sched_ext `disabled`, BTF present and
//! both vCPUs; a forced panic (`rdinit=/nonexistent`) is a failed verdict
//! naming the panic, with the console tail; a bound shorter than the boot
//! is a "timed out" verdict and leaves no qemu behind.
//!
//! `real_kernel.rs` calls [`boot_checks`] with its x86_64 tiny build's
//! entry and [`arm64_boots`] with its arm64 cross build's (one unpacked
//! tree; the boots reuse the builds). The same functions run on any image
//! through `plugins/qemu/tests/boot.rs`
//! (`KTSTR_BOOT_IMAGE=... cargo test -p ktstr-plugin-qemu --test boot`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ktstr_plugin_qemu::{QemuVerifier, Settings};
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::runner::InterruptibleRunner;
use ktstr_sdk::testing::on_path;
use ktstr_sdk::verify::{Verdict, VerifyRequest};

/// Every check, on one x86_64 image; skipped (saying so) without qemu.
pub fn boot_checks(image: &Path, config: &Path) {
    boot_checks_for("x86_64", image, config);
}

/// Every check, on one image of kbuild arch `arch`; skipped (saying so)
/// without that arch's qemu.
pub fn boot_checks_for(arch: &str, image: &Path, config: &Path) {
    if !have_qemu_for(arch) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    boots_sched_ext_ready(arch, image, config, state.path());
    forced_panic_fails_naming_it(arch, image, config, state.path());
    hung_boot_times_out_and_leaves_no_qemu(arch, image, config, state.path());
    cancelled_boot_stops_qemu(arch, image, config, state.path());
}

/// The arm64 image boots (`virt` machine, PL011 console) sched_ext-ready:
/// one boot, the pass check only, since the failure paths do not depend
/// on the arch. Skipped (saying so) without `qemu-system-aarch64`.
pub fn arm64_boots(image: &Path, config: &Path) {
    if !have_qemu_for("arm64") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    boots_sched_ext_ready("arm64", image, config, state.path());
}

/// Whether `arch`'s qemu is on PATH; prints the skip and the package to
/// install when it is not.
fn have_qemu_for(arch: &str) -> bool {
    let machine = ktstr_plugin_qemu::machine::for_arch(arch).unwrap();
    if on_path(machine.qemu) {
        return true;
    }
    ktstr_sdk::testing::skip(format!(
        "{arch} qemu boot check: {} missing (apt-get install {})",
        machine.qemu, machine.package
    ));
    false
}

/// The kernel boots to the init, which sees sched_ext ready and BTF.
pub fn boots_sched_ext_ready(arch: &str, image: &Path, config: &Path, state: &Path) {
    let (verdict, took, _) = verify(arch, image, config, state, serde_json::json!({}), 120_000);
    assert!(verdict.passed, "{verdict:#?}");
    let seen = |key: &str| verdict.observed.get(key).map(String::as_str);
    assert_eq!(seen("sched_ext"), Some("disabled"), "{verdict:#?}");
    assert_eq!(seen("btf"), Some("present"), "{verdict:#?}");
    assert_eq!(seen("cpus"), Some("2"), "{verdict:#?}");
    assert_eq!(seen("accel"), Some("tcg"));
    assert_eq!(seen("devtmpfs"), Some("mounted"), "{verdict:#?}");
    let release = seen("release").unwrap_or_default();
    assert!(release.starts_with("6.12."), "{verdict:#?}");
    assert!(
        verdict
            .summary
            .starts_with(&format!("booted {release} in ")),
        "{}",
        verdict.summary
    );
    assert!(verdict.console_tail.is_empty());
    // Visible in CI's log: the measured TCG boot (docs/verify.md).
    ktstr_sdk::testing::note(format!(
        "{arch} qemu boot check took {took:.1?}: {}",
        verdict.summary
    ));
}

/// `rdinit=` naming nothing: the kernel panics, qemu exits (`panic=-1`,
/// `-no-reboot`), and the verdict names the panic.
pub fn forced_panic_fails_naming_it(arch: &str, image: &Path, config: &Path, state: &Path) {
    let settings = serde_json::json!({"append": "rdinit=/nonexistent"});
    let (verdict, took, _) = verify(arch, image, config, state, settings, 120_000);
    assert!(!verdict.passed, "{verdict:#?}");
    assert!(
        verdict.summary.starts_with("kernel panic: "),
        "{}",
        verdict.summary
    );
    assert!(
        verdict
            .console_tail
            .iter()
            .any(|l| l.contains("Kernel panic - not syncing")),
        "{verdict:#?}"
    );
    assert!(!verdict.observed.contains_key("release"), "init ran?");
    assert!(
        took < Duration::from_secs(100),
        "waited for the bound: {took:?}"
    );
    ktstr_sdk::testing::note(format!(
        "{arch} qemu forced panic took {took:.1?}: {}",
        verdict.summary
    ));
}

/// Kernel parameters that hang the boot before init without a panic: no
/// init in the initramfs, so the kernel goes on to mount a root device
/// and first sleeps `rootdelay` seconds. A bound alone is no hang: the
/// tiny arm64 kernel reaches init in under a second under TCG.
const HANG: &str = "rdinit=/nonexistent rootdelay=3600";

/// A hung boot and a 3 s bound: the verdict says "timed out", init never
/// ran, and no process of the run (qemu's command line names the scratch
/// dir) is left.
pub fn hung_boot_times_out_and_leaves_no_qemu(
    arch: &str,
    image: &Path,
    config: &Path,
    state: &Path,
) {
    let settings = serde_json::json!({ "append": HANG });
    let (verdict, took, scratch) = verify(arch, image, config, state, settings, 3_000);
    assert!(!verdict.passed, "{verdict:#?}");
    assert!(
        verdict.summary.starts_with("timed out after 3 s: "),
        "{}",
        verdict.summary
    );
    assert!(!verdict.observed.contains_key("release"), "init ran?");
    assert!(took < Duration::from_secs(13), "{took:?}");
    ktstr_sdk::testing::note(format!(
        "{arch} qemu hung boot took {took:.1?}: {}",
        verdict.summary
    ));
    let left = processes_naming(&scratch);
    assert!(left.is_empty(), "qemu left running: {left:?}");
}

/// Ctrl-C (the run's cancellation) mid-boot (a hung one, so the boot
/// cannot finish first): the check ends as cancelled, promptly, and takes
/// its qemu with it.
pub fn cancelled_boot_stops_qemu(arch: &str, image: &Path, config: &Path, state: &Path) {
    let cancel = Cancellation::new();
    let cx = StageContext {
        progress: Arc::new(ktstr_sdk::testing::RecordingProgress::default()),
        runner: Arc::new(InterruptibleRunner::new(cancel.clone())),
        cancel: cancel.clone(),
    };
    let verifier = verifier(serde_json::json!({ "append": HANG }), state);
    let scratch = tempfile::Builder::new()
        .prefix("ktstr-boot-")
        .tempdir()
        .unwrap();
    let request = request(arch, image, config, scratch.path(), 120_000);
    let pidfile = scratch.path().join("qemu.pid");
    let trigger = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while !pidfile.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        cancel.cancel();
        Instant::now()
    });
    let err = ktstr_sdk::verify::Verifier::verify(&verifier, &request, &cx).unwrap_err();
    let stopped_after = trigger.join().unwrap().elapsed();
    assert_eq!(err.kind, ktstr_sdk::ErrorKind::Cancelled, "{err}");
    assert!(stopped_after < Duration::from_secs(5), "{stopped_after:?}");
    let left = processes_naming(scratch.path());
    assert!(left.is_empty(), "qemu left running: {left:?}");
}

/// Run the verifier (TCG, 2 vCPUs) with `settings` added; the verdict,
/// how long it took and the request's scratch directory (removed when
/// this returns, as the host does).
fn verify(
    arch: &str,
    image: &Path,
    config: &Path,
    state: &Path,
    settings: serde_json::Value,
    timeout_ms: u64,
) -> (Verdict, Duration, PathBuf) {
    let verifier = verifier(settings, state);
    let scratch = tempfile::Builder::new()
        .prefix("ktstr-boot-")
        .tempdir()
        .unwrap();
    let request = request(arch, image, config, scratch.path(), timeout_ms);
    let runner = Arc::new(InterruptibleRunner::new(Cancellation::new()));
    let (cx, _progress) = ktstr_sdk::testing::context_with(runner);
    let started = Instant::now();
    let verdict = ktstr_sdk::verify::Verifier::verify(&verifier, &request, &cx)
        .unwrap_or_else(|e| panic!("the verifier could not run: {e} (hint: {:?})", e.hint));
    (verdict, started.elapsed(), scratch.path().to_path_buf())
}

/// The verifier with `settings`, forced to TCG (as CI runs it).
fn verifier(mut settings: serde_json::Value, state: &Path) -> QemuVerifier {
    settings["accel"] = "tcg".into();
    QemuVerifier::new(Settings::read(&settings).unwrap()).with_state_dir(state)
}

/// A request for 2 vCPUs of kbuild arch `arch`.
fn request(
    arch: &str,
    image: &Path,
    config: &Path,
    scratch: &Path,
    timeout_ms: u64,
) -> VerifyRequest {
    VerifyRequest {
        image: image.to_path_buf(),
        vmlinux: None,
        config: config.to_path_buf(),
        arch: arch.into(),
        kernelrelease: None,
        vcpus: 2,
        timeout_ms,
        sandbox_procs: None,
        scratch: scratch.to_path_buf(),
    }
}

/// Live (non-zombie) processes whose command line mentions `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(proc_dir.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}
