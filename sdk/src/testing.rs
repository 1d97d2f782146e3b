//! Test doubles for stage authors: a progress sink that records what a stage
//! reported and a command runner that records what it ran.
//!
//! Built-in and third-party plugins test their stages with these instead of
//! each writing its own.

use std::sync::{Arc, Mutex};

use crate::context::{
    Cancellation, CapturedOutput, CommandOutcome, CommandRunner, CommandSpec, Progress,
    StageContext,
};
use crate::error::Result;
use crate::runner::SystemRunner;

/// One call a stage made on its progress sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    Step(String),
    Line(String),
    Finish,
    Warn(String),
    Note(String),
}

/// A [`Progress`] that keeps every event.
#[derive(Debug, Default)]
pub struct RecordingProgress(Mutex<Vec<ProgressEvent>>);

impl RecordingProgress {
    pub fn events(&self) -> Vec<ProgressEvent> {
        self.0.lock().unwrap().clone()
    }

    fn select(&self, pick: fn(ProgressEvent) -> Option<String>) -> Vec<String> {
        self.events().into_iter().filter_map(pick).collect()
    }

    pub fn steps(&self) -> Vec<String> {
        self.select(|e| match e {
            ProgressEvent::Step(s) => Some(s),
            _ => None,
        })
    }

    pub fn lines(&self) -> Vec<String> {
        self.select(|e| match e {
            ProgressEvent::Line(s) => Some(s),
            _ => None,
        })
    }

    pub fn warnings(&self) -> Vec<String> {
        self.select(|e| match e {
            ProgressEvent::Warn(s) => Some(s),
            _ => None,
        })
    }

    pub fn notes(&self) -> Vec<String> {
        self.select(|e| match e {
            ProgressEvent::Note(s) => Some(s),
            _ => None,
        })
    }

    fn push(&self, event: ProgressEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Progress for RecordingProgress {
    fn step(&self, name: &str) {
        self.push(ProgressEvent::Step(name.into()));
    }
    fn line(&self, line: &str) {
        self.push(ProgressEvent::Line(line.into()));
    }
    fn finish_step(&self) {
        self.push(ProgressEvent::Finish);
    }
    fn warn(&self, message: &str) {
        self.push(ProgressEvent::Warn(message.into()));
    }
    fn note(&self, message: &str) {
        self.push(ProgressEvent::Note(message.into()));
    }
}

/// Runs real processes (through [`SystemRunner`]) and records each spec.
#[derive(Debug, Default)]
pub struct RecordingRunner(Mutex<Vec<CommandSpec>>);

impl RecordingRunner {
    pub fn specs(&self) -> Vec<CommandSpec> {
        self.0.lock().unwrap().clone()
    }

    /// The last argument of each recorded command (for make: the target).
    pub fn last_args(&self) -> Vec<String> {
        self.specs()
            .iter()
            .map(|s| s.args.last().cloned().unwrap_or_default())
            .collect()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome> {
        self.0.lock().unwrap().push(spec.clone());
        SystemRunner.run(spec, on_line)
    }

    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput> {
        self.0.lock().unwrap().push(spec.clone());
        SystemRunner.capture(spec)
    }
}

/// A context around `runner` with a fresh [`RecordingProgress`].
pub fn context_with(runner: Arc<dyn CommandRunner>) -> (StageContext, Arc<RecordingProgress>) {
    let progress = Arc::new(RecordingProgress::default());
    let cx = StageContext {
        progress: progress.clone(),
        runner,
        cancel: Cancellation::new(),
    };
    (cx, progress)
}

/// A line for the test log that `cargo test` shows even for a passing test
/// (its capture takes only `print!`/`eprint!`): timings CI should report.
pub fn note(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Say why a test did not run, on the process's real stderr. libtest
/// captures `eprintln!` of passing tests, and a skip nobody sees reads as a
/// pass; writing to the stderr handle itself is not captured.
pub fn skip(reason: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// Whether `program` is a file in a `PATH` directory.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Whether any of `programs` is missing; if so, says that `what` is
/// skipped and which package installs them.
pub fn missing(what: &str, programs: &[&str], package: &str) -> bool {
    let gone: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if gone.is_empty() {
        return false;
    }
    skip(format!(
        "{what}: {} missing (apt-get install {package})",
        gone.join(", ")
    ));
    true
}
