//! Starting a plugin process so that it can never outlive ktstr, and
//! stopping it with everything it started.
//!
//! The child gets its own process group (Ctrl-C reaches ktstr only, which
//! then cancels the call; killing the group takes the plugin's own children
//! with it) and `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when
//! ktstr dies, however ktstr dies. The death signal fires when the *thread*
//! that forked exits, so every plugin is forked by one thread that lives as
//! long as ktstr.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Lines of the plugin's stderr kept for failure messages.
const STDERR_TAIL: usize = 20;

/// How long a plugin may take to exit once its stdin is closed.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a failure message waits, once the plugin is reaped, for the
/// stderr reader to reach end of file while it reads nothing new: bounded,
/// because a grandchild that left the process group may hold the pipe
/// open for ever. A reader still catching up (a starved thread, 64 KiB of
/// unread lines) is waited for, up to [`STDERR_DRAIN_MAX`].
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// The longest wait for the stderr reader, however busy it is (a
/// grandchild that keeps writing to the plugin's stderr).
const STDERR_DRAIN_MAX: Duration = Duration::from_secs(10);

/// The environment variable naming the protocol version a plugin is run with.
pub const PROTOCOL_ENV: &str = "KTSTR_PLUGIN_PROTOCOL";

/// How long a start failing with ETXTBSY is retried (see
/// [`spawn_when_not_busy`]).
const TEXT_BUSY_WAIT: Duration = Duration::from_secs(2);

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The thread every plugin is forked from (see the module docs).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("ktstr-plugin-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_when_not_busy(&mut cmd));
                }
            })
            .expect("start the plugin spawner thread");
        Mutex::new(tx)
    })
}

/// `cmd.spawn()`, retried for a while on ETXTBSY ("Text file busy"). A
/// plugin just written (a scaffold, a script a build produced) is busy
/// while any process still holds it open for writing, and that includes
/// a child some other thread of ours forked while the file was open:
/// the inherited descriptor closes only when that child execs, moments
/// later.
fn spawn_when_not_busy(cmd: &mut Command) -> std::io::Result<Child> {
    let deadline = Instant::now() + TEXT_BUSY_WAIT;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            spawned => return spawned,
        }
    }
}

/// A running plugin process: its stdin, its stdout, and the last lines of
/// its stderr (also logged at debug level as `plugin LABEL: LINE`).
pub struct Process {
    child: Child,
    /// The write end of the plugin's stdin (a `File`, so a write can be
    /// handed to a thread of its own: see `framing::send`).
    pub stdin: Option<std::fs::File>,
    pub stdout: Option<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Lines the stderr reader has read so far.
    stderr_read: Arc<AtomicU64>,
    /// Disconnected when the stderr reader has read to end of file (its
    /// sender is dropped then); `None` once waited for.
    stderr_eof: Option<mpsc::Receiver<()>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Start `path` with piped stdio, in its own process group, to die
    /// with ktstr.
    pub fn spawn(path: &Path, label: &str, protocol: u32) -> std::io::Result<Self> {
        let ktstr = nix::unistd::getpid();
        let mut cmd = Command::new(path);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(PROTOCOL_ENV, protocol.to_string())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // ktstr died before the death signal was armed.
                if nix::unistd::getppid() != ktstr {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| std::io::Error::other("the plugin spawner thread is gone"))?
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("the plugin spawner thread is gone"))?;
        let mut child = rx
            .recv()
            .map_err(|_| std::io::Error::other("the plugin spawner thread is gone"))??;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_read = Arc::new(AtomicU64::new(0));
        let mut stderr_eof = None;
        if let Some(stderr) = child.stderr.take() {
            let (tail, read, label) = (stderr_tail.clone(), stderr_read.clone(), label.to_string());
            let (eof_tx, eof_rx) = mpsc::channel::<()>();
            let started = std::thread::Builder::new()
                .name("ktstr-plugin-stderr".into())
                .spawn(move || {
                    let _eof = eof_tx;
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        tracing::debug!(target: "ktstr::plugin", "plugin {label}: {line}");
                        if let Ok(mut t) = tail.lock() {
                            if t.len() == STDERR_TAIL {
                                t.pop_front();
                            }
                            t.push_back(line);
                        }
                        read.fetch_add(1, Ordering::Relaxed);
                    }
                });
            stderr_eof = started.is_ok().then_some(eof_rx);
        }
        Ok(Self {
            stdin: child
                .stdin
                .take()
                .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s))),
            stdout: child.stdout.take(),
            child,
            stderr_tail,
            stderr_read,
            stderr_eof,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last line the plugin wrote to stderr, if any. Call it after
    /// [`Self::kill`]: it waits for the stderr reader to read everything
    /// the dead plugin wrote (see [`STDERR_DRAIN`]).
    pub fn last_stderr_line(&mut self) -> Option<String> {
        if let Some(eof) = self.stderr_eof.take() {
            self.drain_stderr(&eof);
        }
        let tail = self.stderr_tail.lock().ok()?;
        tail.iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    }

    /// Wait until the stderr reader hit end of file, or read nothing for
    /// [`STDERR_DRAIN`], or [`STDERR_DRAIN_MAX`] passed.
    fn drain_stderr(&self, eof: &mpsc::Receiver<()>) {
        let started = Instant::now();
        let (mut read, mut progressed) = (self.stderr_read.load(Ordering::Relaxed), started);
        loop {
            match eof.recv_timeout(Duration::from_millis(100)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let now = self.stderr_read.load(Ordering::Relaxed);
            if now != read {
                (read, progressed) = (now, Instant::now());
            }
            if progressed.elapsed() >= STDERR_DRAIN || started.elapsed() >= STDERR_DRAIN_MAX {
                tracing::debug!(
                    "plugin process {}: its stderr stayed open {:?} after it was reaped \
                     (a child of its own outside its process group?)",
                    self.child.id(),
                    started.elapsed()
                );
                return;
            }
        }
    }

    /// Wait up to `grace` for the plugin to exit on its own; `None` if it
    /// is still running. The process is not reaped here (see [`Self::kill`]).
    pub fn exited_within(&mut self, grace: Duration) -> Option<String> {
        let deadline = Instant::now() + grace;
        loop {
            match self.peek_exit() {
                Some(status) => return Some(status),
                None if Instant::now() >= deadline => return None,
                // A plugin usually exits within milliseconds of end of
                // input, and ktstr's own exit waits on this.
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// The exit status, without reaping (so the process group id stays
    /// the plugin's until [`Self::kill`] has signalled it).
    fn peek_exit(&mut self) -> Option<String> {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        if let Some(s) = self.status {
            return Some(describe(s));
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(self.child.id() as i32)), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status {code}")),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("killed by signal {sig}")),
            _ => None,
        }
    }

    /// Kill the plugin's whole process group and reap the plugin.
    pub fn kill(&mut self) {
        self.stdin = None;
        if self.status.is_some() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.status = self.child.wait().ok();
    }

    /// Close stdin, let the plugin exit on its own for [`EXIT_GRACE`],
    /// then kill whatever is left of its process group.
    pub fn shut_down(&mut self) {
        self.stdin = None;
        if self.exited_within(EXIT_GRACE).is_none() {
            tracing::debug!(
                "plugin process {} did not exit within {EXIT_GRACE:?} of end of input; killing it",
                self.child.id()
            );
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// "exit status 1", "killed by signal SIGSEGV".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "an unknown status".into(),
    }
}
