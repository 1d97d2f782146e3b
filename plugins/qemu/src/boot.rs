//! One qemu run: started through the stage context's runner (so the CPU
//! sandbox and Ctrl-C apply), its console fed to a [`Transcript`] and to
//! the progress display, and stopped by a watchdog.
//!
//! The runner only returns when qemu exits, so the watchdog is a thread
//! that SIGKILLs qemu (found by its `-pidfile`, checked against its
//! command line so a reused pid is never hit) when:
//! - the wall-clock bound passes;
//! - the init reported `done` but the guest is still up [`AFTER_DONE`]
//!   later (its reboot did not end qemu);
//! - with KVM picked automatically, the guest printed nothing for
//!   [`KVM_SILENCE`]: a kernel prints its banner within a second under
//!   KVM, so that much silence means this host's KVM cannot run it (some
//!   nested setups pass every probe and then hang) and the caller retries
//!   under TCG;
//! - the run is cancelled (the host's runner also stops it; this covers
//!   runners that do not).
//!
//! Once qemu's leader is dead the runner kills the rest of its group,
//! and `PR_SET_PDEATHSIG` covers ktstr dying: no qemu outlives the check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktstr_sdk::Result;
use ktstr_sdk::context::{CommandOutcome, CommandSpec};
use ktstr_sdk::prelude::StageContext;

use crate::console::Transcript;
use crate::machine::Plan;

/// How long a guest that reported `done` may take to go away.
pub const AFTER_DONE: Duration = Duration::from_secs(3);
/// Silence after which an automatically chosen KVM counts as unusable.
pub const KVM_SILENCE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(50);

/// Why the watchdog stopped qemu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Deadline,
    AfterDone,
    Silent,
    Cancelled,
}

/// What one run produced.
#[derive(Debug)]
pub struct Run {
    pub transcript: Transcript,
    pub outcome: CommandOutcome,
    /// Set when the watchdog killed qemu.
    pub stopped: Option<Stop>,
    /// From qemu's start to the init's `done`.
    pub booted_in: Option<Duration>,
}

#[derive(Debug, Default)]
struct Shared {
    done: bool,
    guest_output: bool,
    finished: bool,
    stopped: Option<Stop>,
}

/// Run `plan` until qemu exits or the watchdog stops it. `silence`
/// enables the KVM silence check.
pub fn run(
    plan: &Plan,
    deadline: Instant,
    silence: Option<Duration>,
    sandbox: Option<PathBuf>,
    cx: &StageContext,
) -> Result<Run> {
    let mut spec = CommandSpec::new(&plan.qemu).args(plan.args());
    spec.cgroup_procs = sandbox;
    let qemu_prefix = format!(
        "{}:",
        Path::new(&plan.qemu)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let started = Instant::now();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let watchdog = {
        let shared = shared.clone();
        let pidfile = plan.pidfile.clone();
        let cancel = cx.cancel.clone();
        std::thread::spawn(move || {
            watch(&shared, &pidfile, started, deadline, silence, || {
                cancel.is_cancelled()
            })
        })
    };
    let mut transcript = Transcript::default();
    let mut booted_in = None;
    let outcome = cx.runner.run(&spec, &mut |line| {
        cx.progress.line(line);
        let from_qemu = line.starts_with(&qemu_prefix);
        transcript.feed(line, from_qemu);
        if transcript.done() && booted_in.is_none() {
            booted_in = Some(started.elapsed());
        }
        let mut s = shared.lock().unwrap();
        s.guest_output |= !from_qemu;
        s.done = transcript.done();
    });
    shared.lock().unwrap().finished = true;
    let _ = watchdog.join();
    let stopped = shared.lock().unwrap().stopped;
    Ok(Run {
        transcript,
        outcome: outcome?,
        stopped,
        booted_in,
    })
}

/// The watchdog loop (see the module doc).
fn watch(
    shared: &Mutex<Shared>,
    pidfile: &Path,
    started: Instant,
    deadline: Instant,
    silence: Option<Duration>,
    cancelled: impl Fn() -> bool,
) {
    let mut done_at: Option<Instant> = None;
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let mut s = shared.lock().unwrap();
        if s.finished || s.stopped.is_some() {
            return;
        }
        if s.done && done_at.is_none() {
            done_at = Some(now);
        }
        let reason = if cancelled() {
            Some(Stop::Cancelled)
        } else if now >= deadline {
            Some(Stop::Deadline)
        } else if done_at.is_some_and(|at| now >= at + AFTER_DONE) {
            Some(Stop::AfterDone)
        } else if silence.is_some_and(|q| !s.guest_output && now >= started + q) {
            Some(Stop::Silent)
        } else {
            None
        };
        // Before qemu wrote its pidfile there is nothing to kill yet: try
        // again next tick.
        if let Some(reason) = reason
            && kill_qemu(pidfile)
        {
            s.stopped = Some(reason);
        }
    }
}

/// SIGKILL the qemu that wrote `pidfile`; false when there is none (yet).
pub fn kill_qemu(pidfile: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // qemu's command line names the pidfile: a recycled pid does not.
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|arg| arg == pidfile.as_os_str().as_encoded_bytes())
    });
    ours && nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in qemu: `sh -c` writing its pidfile, then `script`
    /// (`tail -f` of the pidfile: its path on the command line, as qemu's).
    fn fake_qemu(pidfile: &Path, script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("echo $$ > \"$0\"; {script}")])
            .arg(pidfile)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Wait until the fake qemu has written its pid to `pidfile`: the
    /// shell creates the file (empty) before `echo` fills it, so the file
    /// existing is not enough. One `echo` is one write, of a whole line.
    fn wait_for_pid(pidfile: &Path) -> i32 {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(pidfile).unwrap_or_default();
            if let Some(pid) = text.strip_suffix('\n').and_then(|t| t.parse().ok()) {
                return pid;
            }
            assert!(
                Instant::now() < until,
                "{} holds no pid: {text:?}",
                pidfile.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn kills_only_the_process_named_by_its_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        assert!(!kill_qemu(&pidfile), "no pidfile yet");
        let mut child = fake_qemu(&pidfile, "exec tail -f \"$0\"");
        assert_eq!(wait_for_pid(&pidfile), child.id() as i32);
        // Another pidfile naming the same pid: not ours, left alone.
        let other = dir.path().join("other.pid");
        std::fs::copy(&pidfile, &other).unwrap();
        assert!(!kill_qemu(&other));
        assert!(child.try_wait().unwrap().is_none());
        assert!(kill_qemu(&pidfile));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    fn watch_with(
        shared: Shared,
        deadline_in: Duration,
        silence: Option<Duration>,
    ) -> (Option<Stop>, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("qemu.pid");
        let mut child = fake_qemu(&pidfile, "exec tail -f \"$0\"");
        assert_eq!(wait_for_pid(&pidfile), child.id() as i32);
        let shared = Mutex::new(shared);
        let started = Instant::now();
        watch(
            &shared,
            &pidfile,
            started,
            started + deadline_in,
            silence,
            || false,
        );
        let took = started.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        (shared.into_inner().unwrap().stopped, took)
    }

    #[test]
    fn the_deadline_kills() {
        let (stop, took) = watch_with(Shared::default(), Duration::from_millis(300), None);
        assert_eq!(stop, Some(Stop::Deadline));
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn silence_kills_only_a_silent_guest() {
        let (stop, _) = watch_with(
            Shared::default(),
            Duration::from_secs(5),
            Some(Duration::from_millis(200)),
        );
        assert_eq!(stop, Some(Stop::Silent));
        let talking = Shared {
            guest_output: true,
            ..Shared::default()
        };
        let (stop, _) = watch_with(
            talking,
            Duration::from_millis(600),
            Some(Duration::from_millis(200)),
        );
        assert_eq!(stop, Some(Stop::Deadline));
    }
}
