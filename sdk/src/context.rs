//! What the host hands every stage call: progress, cancellation and a
//! command runner.
//!
//! Stages never spawn processes or print on their own. Going through the
//! context lets the host stream make's output into its progress display,
//! put children into a CPU sandbox, and lets tests substitute processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, StageError};

/// Progress sink. The host decides how to render (TTY line, heartbeat).
pub trait Progress: Send + Sync {
    /// A new named step began ("configuring", "building").
    fn step(&self, name: &str);
    /// One line of output from the current step (e.g. a make line).
    fn line(&self, line: &str);
    /// The current step finished.
    fn finish_step(&self);
    /// A user-facing warning: printed once, never throttled.
    fn warn(&self, message: &str);
    /// A user-facing informational note.
    fn note(&self, message: &str);
    /// The current step has moved `done` bytes of `total` (a download):
    /// the host shows bytes, rate and time left. Call it a few times a
    /// second at most. The default, for sinks that only know lines, reports
    /// it as a line; a plugin library's calls reach the host over the ABI.
    fn bytes(&self, done: u64, total: Option<u64>) {
        self.line(&match total {
            Some(t) => format!("{} of {}", human_bytes(done), human_bytes(t)),
            None => human_bytes(done),
        });
    }
}

/// A byte count for progress lines: `0.5 KiB`, `144.9 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1} MiB", n / (KIB * KIB))
    } else {
        format!("{:.1} GiB", n / (KIB * KIB * KIB))
    }
}

/// A progress sink that discards everything (tests, quiet callers).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str) {}
    fn line(&self, _: &str) {}
    fn finish_step(&self) {}
    fn warn(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// One external command to run. Its JSON form crosses the plugin ABI:
/// new fields must be `#[serde(default)]` (docs/plugin-abi.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandSpec {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables (added to the inherited environment).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Start from an empty environment: only `env` reaches the command
    /// (`make_env::controlled` fills it for every kbuild `make`).
    #[serde(default)]
    pub env_clear: bool,
    /// A `cgroup.procs` file the child joins before exec (CPU sandbox).
    #[serde(default)]
    pub cgroup_procs: Option<PathBuf>,
    /// Starts a service that outlives every build by design (the `sccache`
    /// server): the command does not inherit the build's locks, which a
    /// long-lived daemon would otherwise hold for ever, keeping the next
    /// build of the tree waiting. For nothing else: a build's own processes
    /// must hold its locks.
    #[serde(default)]
    pub service: bool,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Mark the command as starting a service ([`CommandSpec::service`]).
    pub fn service(mut self) -> Self {
        self.service = true;
        self
    }

    /// `program arg arg` for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One line of a command's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputLine {
    pub text: String,
    /// It came from stderr (where compilers and make report errors).
    pub stderr: bool,
}

/// How a command ended (crosses the plugin ABI as JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandOutcome {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The last lines of output in arrival order, kept by [`push_tail`]:
    /// stderr lines outlive stdout lines.
    #[serde(default)]
    pub tail: Vec<OutputLine>,
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last `n` tail lines to show after a failure, stdout lines
    /// dropped first (see [`push_tail`]).
    pub fn failure_tail(&self, n: usize) -> Vec<&str> {
        let mut lines: std::collections::VecDeque<&OutputLine> = self.tail.iter().collect();
        while lines.len() > n {
            evict_one(&mut lines, |l| l.stderr);
        }
        lines.iter().map(|l| l.text.as_str()).collect()
    }
}

/// Append `line` to a tail of at most `cap` lines, evicting the oldest
/// stdout line first. Both pipes are read concurrently, so a compiler error
/// on stderr can arrive ahead of a burst of buffered stdout (`CC ...`)
/// lines; a plain last-N window would then lose the one line that matters.
pub fn push_tail(tail: &mut std::collections::VecDeque<OutputLine>, line: OutputLine, cap: usize) {
    if cap == 0 {
        return;
    }
    if tail.len() >= cap {
        evict_one(tail, |l| l.stderr);
    }
    tail.push_back(line);
}

fn evict_one<T>(q: &mut std::collections::VecDeque<T>, is_stderr: impl Fn(&T) -> bool) {
    match q.iter().position(|l| !is_stderr(l)) {
        Some(i) => {
            q.remove(i);
        }
        None => {
            q.pop_front();
        }
    }
}

/// Captured output of a short command (`gcc --version`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapturedOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs external commands on behalf of stages.
pub trait CommandRunner: Send + Sync {
    /// Run to completion, draining stdout and stderr concurrently and feeding
    /// each line to `on_line`. A missing program is an `Err`; a non-zero exit
    /// is an `Ok` outcome the caller inspects.
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome>;

    /// Run and capture stdout/stderr whole (for short, quiet commands).
    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput>;
}

/// Cooperative cancellation flag shared by the host and stages.
#[derive(Debug, Clone, Default)]
pub struct Cancellation(Arc<AtomicBool>);

impl Cancellation {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled; call between long steps.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(StageError::cancelled())
        } else {
            Ok(())
        }
    }

    /// The shared flag, for handing to signal handlers.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// Everything a stage call may use besides its own inputs.
/// `StageContext::quiet()` (real processes, no output) is defined beside
/// its runner, in `runner.rs`.
#[derive(Clone)]
pub struct StageContext {
    pub progress: Arc<dyn Progress>,
    pub runner: Arc<dyn CommandRunner>,
    pub cancel: Cancellation,
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}
