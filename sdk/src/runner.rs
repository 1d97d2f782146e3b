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
//!
//! No process of a command outlives ktstr, whichever way ktstr ends:
//! - every command is spawned with `PR_SET_PDEATHSIG(SIGKILL)`: if ktstr
//!   dies (`kill -9`, a second Ctrl-C), the kernel kills the direct child;
//! - a command in its own process group gets a *reaper*: a tiny `sh` in a
//!   group of its own that reads a pipe only ktstr writes to. ktstr tells
//!   it "done" when the command has ended; if ktstr dies instead the pipe
//!   closes and the reaper SIGKILLs the command's whole group (make's jobs,
//!   kbuild's sub-makes, the compilers). Being outside ktstr's group, it
//!   also survives a kill of ktstr's process group;
//! - when the command's leader exits, whatever is left of its group is
//!   SIGKILLed before the leader is reaped (so the group id cannot have
//!   been reused);
//! - the locks a build holds ([`crate::lock::FileLock::inherit_into_commands`])
//!   are inherited by every command, so even a process that escapes all of
//!   the above keeps the build's lock held until it exits: no new build of
//!   that tree or key starts while it may still write.

use std::collections::VecDeque;
use std::io::Write;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::context::{
    Cancellation, CapturedOutput, CommandOutcome, CommandRunner, CommandSpec, NoProgress,
    OutputLine, StageContext, push_tail,
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

/// Spawn `cmd` (through `spawn`) so that the child inherits the build's
/// locks (unless it starts a [`CommandSpec::service`]) and is killed if
/// ktstr dies (see the module doc).
fn spawn_guarded<T>(
    spec: &CommandSpec,
    cmd: &mut Command,
    spawn: impl FnOnce(&mut Command) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use nix::libc;
    // Held across the fork: no registered fd is closed meanwhile.
    let registry = crate::lock::inherited_fds();
    let fds: Vec<RawFd> = if spec.service {
        Vec::new()
    } else {
        registry.clone()
    };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only calls fcntl, signal,
    // prctl, getppid and _exit (async-signal-safe) and reads a Vec
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // A ktstr started with these ignored (a `&` job of a script
            // without job control ignores SIGINT) must not pass that on:
            // cancelling a command is a SIGINT to its group, and a make
            // that ignored it would run until the SIGKILL after the grace.
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // ktstr died before the prctl: no signal will come.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let spawned = spawn(cmd);
    drop(registry);
    spawned
}

/// Kills a command's process group if ktstr dies while it runs.
struct Reaper {
    child: Option<std::process::Child>,
}

impl Reaper {
    /// Start watching `group`. Without `sh` there is no reaper (the
    /// parent-death signal and the inherited locks still hold).
    fn start(group: i32) -> Reaper {
        let spawned = Command::new("sh")
            .args([
                "-c",
                "trap '' HUP INT; read -r line || kill -s KILL -- \"-$1\" 2>/dev/null",
                "ktstr-reaper",
            ])
            .arg(group.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Reaper { child: Some(child) },
            Err(e) => {
                tracing::debug!("cannot start the process-group reaper: {e}");
                Reaper { child: None }
            }
        }
    }

    /// The command is over: the reaper exits without killing anything.
    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"done\n");
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Block until `pid` (our child) has exited, without reaping it: its pid,
/// and so its process group id, stays reserved until `wait`.
fn wait_exited_unreaped(pid: i32) {
    use nix::libc;
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child with a valid pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
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
    let mut child =
        spawn_guarded(spec, &mut cmd, Command::spawn).map_err(|e| spawn_error(spec, e))?;
    drop(cgroup_fd);
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut reaper = cancel.map(|_| Reaper::start(group.as_raw()));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    let err = child.stderr.take().expect("stderr piped");
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || pump(out, false, tx));
    let t_err = std::thread::spawn(move || pump(err, true, tx2));
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
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
    if let Some(reaper) = reaper.as_mut() {
        // Nothing of the group outlives its leader: kill what is left
        // (background jobs, daemons) while the group id is still ours.
        wait_exited_unreaped(group.as_raw());
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        reaper.finish();
    }
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
        let out =
            spawn_guarded(spec, &mut cmd, Command::output).map_err(|e| spawn_error(spec, e))?;
        drop(cgroup_fd);
        Ok(CapturedOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl StageContext {
    /// A context that runs real processes and prints nothing: for tests and
    /// for tools embedding a single stage.
    pub fn quiet() -> Self {
        Self {
            progress: Arc::new(NoProgress),
            runner: Arc::new(SystemRunner),
            cancel: Cancellation::new(),
        }
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
        // A unique duration names this test's sleep. Cancel once it runs:
        // a SIGINT between the shell's fork and the sleep's exec is caught
        // by the shell's handler in the child and lost at exec (dash), and
        // only the grace period's SIGKILL would end the run.
        let naptime = format!("29.{}", std::process::id());
        let wanted = format!("sleep\0{naptime}\0");
        let cancelled_at = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !running(&wanted) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            trigger.cancel();
            Instant::now()
        });
        // The shell's child sleep must die too, or the pipes stay open.
        let spec = CommandSpec::new("sh").args(["-c", &format!("sleep {naptime}; echo done")]);
        let out = runner.run(&spec, &mut |_| {}).unwrap();
        let stopped_after = cancelled_at.join().unwrap().elapsed();
        assert!(stopped_after < Duration::from_secs(5), "{stopped_after:?}");
        assert_ne!(out.code, Some(0));
    }

    /// Whether a process with exactly this NUL-separated command line runs.
    fn running(cmdline: &str) -> bool {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|d| std::fs::read(d.path().join("cmdline")).is_ok_and(|c| c == cmdline.as_bytes()))
    }

    fn pid_alive(pid: i32) -> bool {
        // Zombies count as gone: they run nothing and hold no files.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
            .is_some_and(|state| !state.starts_with('Z'))
    }

    /// What a command leaves running in its process group when it exits
    /// is killed before `run` returns.
    #[test]
    fn leftovers_of_a_commands_group_are_killed() {
        let runner = InterruptibleRunner::new(Cancellation::new());
        let spec =
            CommandSpec::new("sh").args(["-c", "sleep 30 >/dev/null 2>&1 </dev/null & echo $!"]);
        let mut pid = None;
        let out = runner
            .run(&spec, &mut |l| pid = l.trim().parse::<i32>().ok())
            .unwrap();
        assert_eq!(out.code, Some(0));
        let pid = pid.expect("the shell printed its job's pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "the background sleep {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A build's lock is held by every process its commands leave behind,
    /// after the handle that took it is gone; a plain lock is not.
    #[test]
    fn inherited_locks_outlive_the_handle_in_leftover_processes() {
        use crate::lock::{LockMode, try_lock};
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.lock");
        let build = dir.path().join("build.lock");
        let p = try_lock(&plain, LockMode::Exclusive).unwrap().unwrap();
        let b = try_lock(&build, LockMode::Exclusive)
            .unwrap()
            .unwrap()
            .inherit_into_commands();
        // SystemRunner: no process group, so nothing kills the leftover.
        let spec =
            CommandSpec::new("sh").args(["-c", "sleep 60 >/dev/null 2>&1 </dev/null & echo $!"]);
        let mut pid = None;
        SystemRunner
            .run(&spec, &mut |l| pid = l.trim().parse::<i32>().ok())
            .unwrap();
        let leftover = KillOnDrop(pid.expect("the shell printed its job's pid"));
        drop((p, b));
        assert!(
            try_lock(&build, LockMode::Exclusive).unwrap().is_none(),
            "the leftover sleep should still hold the build lock"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_lock(&plain, LockMode::Exclusive).unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the plain lock leaked into a child"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(leftover);
        while try_lock(&build, LockMode::Exclusive).unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the build lock outlived its holders"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A daemon left running by a command started as a service (as
    /// sccache's server is) has no fd of the build's lock open. The fds are
    /// looked at, not the lock: any other command spawned meanwhile (in
    /// another test thread too) inherits the lock by design.
    #[test]
    fn a_service_started_by_a_build_holds_none_of_its_locks() {
        use crate::lock::{LockMode, try_lock};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build.lock");
        let b = try_lock(&build, LockMode::Exclusive)
            .unwrap()
            .unwrap()
            .inherit_into_commands();
        let spec = CommandSpec::new("sh")
            .args(["-c", "sleep 60 >/dev/null 2>&1 </dev/null & echo $!"])
            .service();
        let mut pid = None;
        SystemRunner
            .run(&spec, &mut |l| pid = l.trim().parse::<i32>().ok())
            .unwrap();
        let pid = pid.expect("the shell printed its daemon's pid");
        let daemon = KillOnDrop(pid);
        let lock = std::fs::metadata(&build).unwrap();
        let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the daemon runs, its fds readable")
            .flatten()
            .map(|fd| fd.path())
            .collect();
        assert!(!fds.is_empty(), "the daemon has no fds at all");
        let holding: Vec<_> = fds
            .iter()
            .filter(|fd| {
                std::fs::metadata(fd).is_ok_and(|m| m.dev() == lock.dev() && m.ino() == lock.ino())
            })
            .collect();
        assert!(
            holding.is_empty(),
            "the service kept the build lock: {holding:?}"
        );
        drop((daemon, b));
    }

    /// SIGKILLs a test's leftover process when the test ends, passed or not.
    struct KillOnDrop(i32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
