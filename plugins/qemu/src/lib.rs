//! Built-in verifier `qemu`: boots a built kernel in a VM and reports what
//! it saw.
//!
//! The guest gets an initramfs ktstr makes itself ([`cpio`]) around a
//! small static init ([`init`], compiled once per compiler), no disk and
//! no network; its serial console carries the init's report
//! ([`console`]). KVM when the host has a usable one, else TCG
//! ([`accel`]); the per-arch qemu command line is [`machine`]'s; one run
//! and its watchdog are [`boot`]'s. Settings: [`settings`].
//!
//! A kernel that panics, hangs or never reaches init is a failed
//! [`Verdict`]; a check that cannot run (no qemu, no compiler, qemu
//! refusing its arguments) is an `Err`.

pub mod accel;
pub mod boot;
pub mod console;
pub mod cpio;
pub mod init;
pub mod machine;
pub mod settings;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ktstr_sdk::prelude::*;
use ktstr_sdk::verify::{Verdict, Verifier, VerifyRequest};

use crate::accel::{Accel, AccelChoice};
use crate::boot::Stop;
use crate::console::Ending;
use crate::machine::Plan;
pub use crate::settings::Settings;

/// The plugin's registered name.
pub const NAME: &str = "qemu";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// One line for `ktstr plugins list`.
pub const SUMMARY: &str = "boots the kernel under qemu (KVM, else TCG) with a ktstr-made initramfs; \
     checks it reaches init with sched_ext and BTF";

/// The bound when the request carries none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

ktstr_sdk::inventory::submit! {
    ktstr_sdk::registry::BuiltinPlugin {
        name: NAME,
        version: VERSION,
        summary: SUMMARY,
        constructor: ktstr_sdk::registry::Constructor::Verifier(make),
    }
}

/// Build the verifier from its `[plugin.qemu]` table.
pub fn make(config: &PluginConfig) -> Result<Box<dyn Verifier>> {
    Ok(Box::new(QemuVerifier::new(Settings::read(config)?)))
}

/// The `qemu` verifier.
#[derive(Debug, Clone)]
pub struct QemuVerifier {
    settings: Settings,
    /// Where compiled inits are kept; `<cache root>/state/qemu` unless set.
    state_dir: Option<PathBuf>,
}

impl QemuVerifier {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state_dir: None,
        }
    }

    /// Keep compiled inits in `dir` instead of under the cache root.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    fn state_dir(&self) -> Result<PathBuf> {
        match &self.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(ktstr_sdk::paths::plugin_state(
                &ktstr_sdk::paths::cache_root()?,
                NAME,
            )),
        }
    }

    /// The bound: the request's, or the `timeout` setting when shorter.
    pub fn bound(&self, request: &VerifyRequest) -> Duration {
        let asked = match request.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        self.settings.timeout.map_or(asked, |t| t.min(asked))
    }
}

impl Verifier for QemuVerifier {
    fn verify(&self, request: &VerifyRequest, cx: &StageContext) -> Result<Verdict> {
        cx.cancel.check()?;
        let started = Instant::now();
        let bound = self.bound(request);
        let deadline = started + bound;
        let arch = ktstr_sdk::arch::find(&request.arch)?;
        let machine = machine::for_arch(arch.name)?;
        if self.settings.accel == AccelChoice::Kvm && !arch.is_native() {
            return Err(StageError::invalid_input(format!(
                "qemu verifier: accel = \"kvm\", but {}",
                accel::foreign_arch(arch)
            ))
            .with_hint("set [plugin.qemu] accel = \"auto\" or \"tcg\" to boot it under TCG"));
        }
        if !request.image.is_file() {
            return Err(StageError::invalid_input(format!(
                "qemu verifier: boot image {} does not exist",
                request.image.display()
            ))
            .with_hint("verify an entry whose image is in the cache (`ktstr kernel list`)"));
        }
        let qemu = self
            .settings
            .qemu
            .clone()
            .unwrap_or_else(|| machine.qemu.to_string());
        check_qemu(&qemu, machine)?;

        let init = init::binary(arch, &self.state_dir()?, &request.scratch, cx)?;
        let initramfs = request.scratch.join("initramfs.cpio");
        std::fs::write(&initramfs, cpio::initramfs(init)).at("write", &initramfs)?;

        let (accel, no_kvm) = accel::choose(self.settings.accel, || {
            accel::probe_kvm_for(arch, Path::new(accel::KVM_DEVICE))
        });
        if let Some(why) = no_kvm {
            cx.progress
                .note(&format!("qemu: no KVM ({why}); booting under TCG"));
        }
        let vcpus = request.vcpus.max(1);
        let mut plan = Plan {
            machine,
            qemu,
            accel,
            vcpus,
            memory_mib: self.settings.memory_mib,
            firmware: self.settings.firmware.clone(),
            image: request.image.clone(),
            initramfs,
            pidfile: request.scratch.join("qemu.pid"),
            append: self.settings.append.clone(),
        };
        let auto_kvm = self.settings.accel == AccelChoice::Auto && accel == Accel::Kvm;
        let mut run = boot_once(&plan, deadline, auto_kvm, request, cx)?;
        if auto_kvm && let Some(why) = kvm_failed(&run) {
            cx.progress.warn(&format!(
                "qemu: {why}; booting again under TCG \
                 (set [plugin.qemu] accel = \"tcg\" to skip KVM on this host)"
            ));
            plan.accel = Accel::Tcg;
            run = boot_once(&plan, deadline, false, request, cx)?;
        }
        cx.cancel.check()?;
        let ending = match run.stopped {
            Some(Stop::Deadline) => Ending::TimedOut(bound),
            _ => Ending::Exited,
        };
        if run.stopped.is_none() && !run.outcome.success() {
            return Err(qemu_failed(&plan, &run.outcome));
        }
        Ok(run.transcript.verdict(
            ending,
            plan.accel.label(),
            run.booted_in,
            vcpus,
            request.kernelrelease.as_deref(),
        ))
    }
}

/// Why a run under a KVM that `auto` picked says this host's KVM does not
/// work: the guest stayed silent, or qemu failed before the guest printed
/// anything (KVM refusing the vCPU setup).
fn kvm_failed(run: &boot::Run) -> Option<String> {
    match run.stopped {
        Some(Stop::Silent) => Some(format!(
            "the guest printed nothing in {} s under KVM",
            boot::KVM_SILENCE.as_secs()
        )),
        None if !run.outcome.success() && run.transcript.guest_lines() == 0 => Some(format!(
            "qemu failed under KVM: {}",
            run.outcome.failure_tail(2).join(" / ")
        )),
        _ => None,
    }
}

fn boot_once(
    plan: &Plan,
    deadline: Instant,
    silence_check: bool,
    request: &VerifyRequest,
    cx: &StageContext,
) -> Result<boot::Run> {
    let _ = std::fs::remove_file(&plan.pidfile);
    cx.progress.step(&format!(
        "boot check: {} under qemu ({}, {} CPUs)",
        plan.image.display(),
        plan.accel.label(),
        plan.vcpus
    ));
    let run = boot::run(
        plan,
        deadline,
        silence_check.then_some(boot::KVM_SILENCE),
        request.sandbox_procs.clone(),
        cx,
    );
    cx.progress.finish_step();
    run
}

/// The emulator must exist before anything is run: the runner's own
/// missing-program hint names the kernel build's packages.
fn check_qemu(qemu: &str, machine: &machine::Machine) -> Result<()> {
    let found = if qemu.contains('/') {
        Path::new(qemu).is_file()
    } else {
        init::on_path(qemu)
    };
    if found {
        return Ok(());
    }
    Err(StageError::not_found(format!(
        "qemu verifier: {qemu} not found, needed to boot {} kernels",
        machine.arch
    ))
    .with_hint(format!(
        "install it (apt-get install {}) or set [plugin.qemu] qemu = \"/path/to/{}\"",
        machine.package, machine.qemu
    )))
}

/// qemu itself failed (bad firmware, an option it does not know): the
/// check could not run, which says nothing about the kernel.
fn qemu_failed(plan: &Plan, outcome: &ktstr_sdk::context::CommandOutcome) -> StageError {
    let status = match outcome.code {
        Some(code) => format!("exit status {code}"),
        None => "a signal".to_string(),
    };
    let said = outcome.failure_tail(3).join(" / ");
    StageError::command(format!(
        "qemu verifier: {} ended with {status}: {said}",
        plan.qemu
    ))
    .with_hint(
        "check the [plugin.qemu] settings; x86_64 boots with qboot.rom from \
             qemu-system-data (`firmware = \"default\"` uses qemu's own firmware)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path, image: &Path) -> VerifyRequest {
        VerifyRequest {
            image: image.to_path_buf(),
            config: dir.join("config"),
            arch: "x86_64".into(),
            vcpus: 1,
            timeout_ms: 5_000,
            scratch: dir.to_path_buf(),
            ..VerifyRequest::default()
        }
    }

    #[test]
    fn the_bound_is_the_shorter_of_request_and_setting() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = request(dir.path(), Path::new("/x"));
        let plain = QemuVerifier::new(Settings::read(&serde_json::Value::Null).unwrap());
        assert_eq!(plain.bound(&r), Duration::from_secs(5));
        r.timeout_ms = 0;
        assert_eq!(plain.bound(&r), DEFAULT_TIMEOUT);
        let short =
            QemuVerifier::new(Settings::read(&serde_json::json!({"timeout": "2s"})).unwrap());
        assert_eq!(short.bound(&r), Duration::from_secs(2));
        r.timeout_ms = 1_000;
        assert_eq!(short.bound(&r), Duration::from_secs(1));
    }

    /// Forcing KVM for a kernel of another arch than the host's is bad
    /// input, said before anything is compiled or run.
    #[test]
    fn forced_kvm_refuses_a_foreign_arch_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = ktstr_sdk::arch::ARCHES
            .iter()
            .find(|a| !a.is_native() && machine::for_arch(a.name).is_ok())
            .unwrap();
        let mut r = request(dir.path(), Path::new("/nonexistent/Image"));
        r.arch = foreign.name.into();
        let kvm = QemuVerifier::new(Settings::read(&serde_json::json!({"accel": "kvm"})).unwrap())
            .with_state_dir(dir.path());
        let runner = std::sync::Arc::new(ktstr_sdk::testing::RecordingRunner::default());
        let (cx, _) = ktstr_sdk::testing::context_with(runner.clone());
        let err = kvm.verify(&r, &cx).unwrap_err();
        assert!(runner.specs().is_empty(), "ran {:?}", runner.specs());
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
        assert!(
            err.message.contains(&format!("not {}", foreign.name)),
            "{err}"
        );
        assert!(err.hint.unwrap().contains("accel = \"auto\""));
        assert!(!dir.path().join("initramfs.cpio").exists());
    }

    #[test]
    fn when_an_auto_picked_kvm_counts_as_broken() {
        use ktstr_sdk::context::{CommandOutcome, OutputLine};
        let run = |stopped, code, guest: &str| {
            let mut transcript = console::Transcript::default();
            if !guest.is_empty() {
                transcript.feed(guest, false);
            }
            let said = "qemu-system-x86_64: error: failed to set MSR 0x10a";
            boot::Run {
                transcript,
                outcome: CommandOutcome {
                    code,
                    tail: vec![OutputLine {
                        text: said.into(),
                        stderr: true,
                    }],
                },
                stopped,
                booted_in: None,
            }
        };
        let why = kvm_failed(&run(Some(Stop::Silent), None, "")).unwrap();
        assert!(why.contains("printed nothing in 10 s under KVM"), "{why}");
        let why = kvm_failed(&run(None, Some(1), "")).unwrap();
        assert!(why.contains("failed to set MSR"), "{why}");
        // The guest ran: a kernel matter (or qemu's), not KVM's.
        assert_eq!(kvm_failed(&run(None, Some(1), "Linux version 6.12")), None);
        assert_eq!(kvm_failed(&run(None, Some(0), "")), None);
        assert_eq!(kvm_failed(&run(Some(Stop::Deadline), None, "")), None);
    }

    #[test]
    fn missing_qemu_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        std::fs::write(&image, b"not a kernel").unwrap();
        let v = make(&serde_json::json!({"qemu": "ktstr-no-such-qemu"})).unwrap();
        let err = v
            .verify(&request(dir.path(), &image), &StageContext::quiet())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(
            err.message.contains("ktstr-no-such-qemu not found"),
            "{err}"
        );
        assert!(
            err.hint
                .unwrap()
                .contains("apt-get install qemu-system-x86")
        );

        let mut r = request(dir.path(), &image);
        r.arch = "arm64".into();
        let v = make(&serde_json::json!({"qemu": "/nonexistent/qemu"})).unwrap();
        let err = v.verify(&r, &StageContext::quiet()).unwrap_err();
        assert!(
            err.hint.clone().unwrap().contains("qemu-system-arm"),
            "{err}"
        );
    }

    #[test]
    fn bad_requests_are_errors_not_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let v = make(&serde_json::Value::Null).unwrap();
        let err = v
            .verify(
                &request(dir.path(), &dir.path().join("gone")),
                &StageContext::quiet(),
            )
            .unwrap_err();
        assert!(err.message.contains("does not exist"), "{err}");
        let mut r = request(dir.path(), &dir.path().join("gone"));
        r.arch = "s390".into();
        let err = v.verify(&r, &StageContext::quiet()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        let err = make(&serde_json::json!({"acel": "tcg"})).err().unwrap();
        assert!(err.message.contains("acel"), "{err}");
    }

    /// qemu refusing to start (here: firmware it cannot load) is an
    /// error, not a failed kernel.
    #[test]
    fn qemu_refusing_to_start_is_an_error() {
        if !init::on_path("qemu-system-x86_64") || !init::on_path("gcc") {
            ktstr_sdk::testing::skip("qemu start failure: qemu-system-x86_64 or gcc missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        std::fs::write(&image, b"not a kernel").unwrap();
        let v = QemuVerifier::new(
            Settings::read(&serde_json::json!({"accel": "tcg", "firmware": "/nonexistent.rom"}))
                .unwrap(),
        )
        .with_state_dir(dir.path().join("state"));
        let err = v
            .verify(&request(dir.path(), &image), &StageContext::quiet())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Command, "{err}");
        assert!(
            err.message
                .contains("qemu-system-x86_64 ended with exit status 1"),
            "{err}"
        );
    }
}
