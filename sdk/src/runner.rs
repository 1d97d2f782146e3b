//! The default [`CommandRunner`]: real processes, both pipes drained at once.
//!
//! A kernel build writes megabytes to stdout and stderr; reading one pipe
//! to the end before the other deadlocks as soon as the unread pipe fills.
//! Each pipe gets its own reader thread and lines meet in one channel, so
//! `on_line` sees them in arrival order on the caller's thread.
//!
//! [`InterruptibleRunner`] (the host's) also stops a command when the run is
//! cancelled. Its children run in their own process group, so a Ctrl-C
//! reaches ktstr alone and ktstr decides: SIGINT to the child's group (make
//! removes half-written targets and stops its jobs), SIGKILL if it lingers.
//! This works the same for a terminal's Ctrl-C and for a `kill -INT` or
//! `kill -TERM` of ktstr by a CI runner, which signals no one else.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::context::{
    Cancellation, CapturedOutput, CommandOutcome, CommandRunner, CommandSpec, OutputLine, push_tail,
};
use crate::error::{Result, StageError};

/// Lines kept for the failure report.
pub const TAIL_LINES: usize = 60;

/// Runs commands as child processes of the current process.
#[derive(Debug, Clone, Default)]
pub struct SystemRunner;

/// Like [`SystemRunner`], and stops the running command on cancellation.
#[derive(Debug, Clone)]
pub struct InterruptibleRunner {
    cancel: Cancellation,
}

impl InterruptibleRunner {
    pub fn new(cancel: Cancellation) -> Self {
        Self { cancel }
    }
}

/// How long a cancelled command gets to stop after SIGINT before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

fn command_for(spec: &CommandSpec) -> Result<(Command, Option<OwnedFd>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if spec.env_clear {
        cmd.env_clear();
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let cgroup_fd = match &spec.cgroup_procs {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| StageError::io("open cgroup", path, e))?;
            let fd: OwnedFd = file.into();
            let raw = fd.as_raw_fd();
            // SAFETY: the closure only calls write(2) on an fd the parent
            // keeps open until spawn returns; write is async-signal-safe and
            // nothing is allocated between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // "0" moves the writing process itself into the cgroup.
                    let n = nix::libc::write(raw, b"0".as_ptr().cast(), 1);
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            Some(fd)
        }
        None => None,
    };
    Ok((cmd, cgroup_fd))
}

fn spawn_error(spec: &CommandSpec, err: std::io::Error) -> StageError {
    let hint = if err.kind() == std::io::ErrorKind::NotFound {
        format!(
            "install `{}` (on Debian: apt-get install build-essential flex bison bc \
             libelf-dev libssl-dev dwarves cpio) or put it on PATH",
            spec.program
        )
    } else {
        "check the program's permissions and the working directory".to_string()
    };
    StageError::command(format!("cannot run `{}`", spec.display()))
        .caused_by(err)
        .with_hint(hint)
}

fn pump(reader: impl Read, stderr: bool, tx: mpsc::Sender<OutputLine>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if tx.send(OutputLine { text, stderr }).is_err() {
                    break;
                }
            }
        }
    }
}

/// Run `spec`, feeding lines to `on_line`; with `cancel`, in its own process
/// group, signalled when the run is cancelled.
fn run_streaming(
    spec: &CommandSpec,
    on_line: &mut dyn FnMut(&str),
    cancel: Option<&Cancellation>,
) -> Result<CommandOutcome> {
    let (mut cmd, cgroup_fd) = command_for(spec)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if cancel.is_some() {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(spec, e))?;
    drop(cgroup_fd);
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    let err = child.stderr.take().expect("stderr piped");
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || pump(out, false, tx));
    let t_err = std::thread::spawn(move || pump(err, true, tx2));
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut interrupted_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                on_line(&line.text);
                push_tail(&mut tail, line, TAIL_LINES);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let Some(cancel) = cancel else { continue };
        match interrupted_at {
            None if cancel.is_cancelled() => {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT);
                interrupted_at = Some(Instant::now());
            }
            Some(at) if !killed && at.elapsed() > GRACE => {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                killed = true;
            }
            _ => {}
        }
    }
    let _ = t_out.join();
    let _ = t_err.join();
    let status = child
        .wait()
        .map_err(|e| StageError::command(format!("wait for `{}`", spec.display())).caused_by(e))?;
    Ok(CommandOutcome {
        code: status.code(),
        tail: tail.into(),
    })
}

impl CommandRunner for InterruptibleRunner {
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome> {
        run_streaming(spec, on_line, Some(&self.cancel))
    }

    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput> {
        SystemRunner.capture(spec)
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome> {
        run_streaming(spec, on_line, None)
    }

    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput> {
        let (mut cmd, cgroup_fd) = command_for(spec)?;
        cmd.stdin(Stdio::null());
        let out = cmd.output().map_err(|e| spawn_error(spec, e))?;
        drop(cgroup_fd);
        Ok(CapturedOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_both_pipes_without_deadlock() {
        // 200k lines on each pipe overflows any pipe buffer if read serially.
        let spec = CommandSpec::new("sh").args([
            "-c",
            "i=0; while [ $i -lt 20000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; exit 3",
        ]);
        let mut n = 0usize;
        let outcome = SystemRunner.run(&spec, &mut |_| n += 1).unwrap();
        assert_eq!(n, 40000);
        assert_eq!(outcome.code, Some(3));
        assert_eq!(outcome.tail.len(), TAIL_LINES);
        assert!(
            outcome
                .tail
                .iter()
                .any(|l| l.text == "err19999" && l.stderr)
        );
    }

    /// An error on stderr followed by a burst of stdout stays in the tail.
    #[test]
    fn stderr_lines_outlive_stdout_in_the_tail() {
        let spec = CommandSpec::new("sh").args([
            "-c",
            "echo 'x.c:1: error: boom' >&2; i=0; while [ $i -lt 500 ]; do echo CC$i; i=$((i+1)); done; exit 2",
        ]);
        let outcome = SystemRunner.run(&spec, &mut |_| {}).unwrap();
        let shown = outcome.failure_tail(5);
        // Arrival order between the pipes is up to the scheduler; what must
        // hold is that the error survives next to the newest stdout lines.
        assert_eq!(shown.len(), 5);
        assert!(shown.contains(&"x.c:1: error: boom"), "{shown:?}");
        assert!(shown.contains(&"CC499"), "{shown:?}");
        assert!(!shown.contains(&"CC0"), "{shown:?}");
    }

    #[test]
    fn cancellation_stops_the_command_and_its_children() {
        let cancel = Cancellation::new();
        let runner = InterruptibleRunner::new(cancel.clone());
        let trigger = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            trigger.cancel();
        });
        let started = Instant::now();
        // The shell's child sleep must die too, or the pipes stay open.
        let spec = CommandSpec::new("sh").args(["-c", "sleep 30; echo done"]);
        let out = runner.run(&spec, &mut |_| {}).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_ne!(out.code, Some(0));
    }

    #[test]
    fn missing_program_names_it() {
        let spec = CommandSpec::new("ktstr-no-such-program-xyz");
        let err = SystemRunner.run(&spec, &mut |_| {}).unwrap_err();
        assert!(err.message.contains("ktstr-no-such-program-xyz"), "{err}");
        assert!(err.hint.unwrap().contains("install"));
    }

    #[test]
    fn capture_returns_stdout() {
        let out = SystemRunner
            .capture(&CommandSpec::new("sh").args(["-c", "echo hi; echo no >&2"]))
            .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "no\n");
        assert_eq!(out.code, Some(0));
    }
}
