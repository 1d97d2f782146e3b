//! Progress on stderr: a live status line on a terminal, heartbeats elsewhere.
//!
//! A kernel build prints tens of thousands of lines. On a terminal the
//! user sees one updating line (elapsed time + latest make line); in CI
//! logs, where carriage returns turn into noise, a throttled heartbeat line
//! shows the job is alive without burying the log. With `-v` every line is
//! printed as it arrives instead ([`set_stream_output`]); either way the
//! whole output is in the build log (`ktstr kernel log KEY`).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ktstr_sdk::context::Progress;

/// Prefix of every diagnostic line.
pub const LABEL: &str = "ktstr";

const TTY_REFRESH: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(30);

static STREAM: AtomicBool = AtomicBool::new(false);

/// `-v`: print every output line of a step (make's lines) to stderr as it
/// arrives, as make printed it, instead of the status line or heartbeat.
pub fn set_stream_output(on: bool) {
    STREAM.store(on, Ordering::Relaxed);
}

fn streaming() -> bool {
    STREAM.load(Ordering::Relaxed)
}

struct Step {
    name: String,
    started: Instant,
    lines: u64,
    last_draw: Option<Instant>,
}

/// A display state whose holder panicked is still fit to draw from; a
/// panic elsewhere must not also take every later progress line down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The host's progress display.
pub struct StderrProgress {
    tty: bool,
    width: usize,
    step: Mutex<Option<Step>>,
    /// Whether a status line is on screen and must be erased first.
    drawn: Mutex<bool>,
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl StderrProgress {
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100usize);
        Self {
            tty,
            width,
            step: Mutex::new(None),
            drawn: Mutex::new(false),
        }
    }

    fn clear_status(&self) {
        let mut drawn = lock(&self.drawn);
        if *drawn {
            eprint!("\r\x1b[K");
            *drawn = false;
        }
    }

    /// Print a whole line, erasing the status line first.
    pub fn println(&self, text: &str) {
        self.clear_status();
        eprintln!("{LABEL}: {text}");
    }
}

/// `1m23s` / `4.2s`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl Progress for StderrProgress {
    fn step(&self, name: &str) {
        self.println(&format!("{name}..."));
        *lock(&self.step) = Some(Step {
            name: name.to_string(),
            started: Instant::now(),
            lines: 0,
            last_draw: None,
        });
    }

    fn line(&self, line: &str) {
        let mut guard = lock(&self.step);
        let Some(step) = guard.as_mut() else {
            return;
        };
        step.lines += 1;
        if streaming() {
            drop(guard);
            self.clear_status();
            eprintln!("{line}");
            return;
        }
        let now = Instant::now();
        let interval = if self.tty { TTY_REFRESH } else { HEARTBEAT };
        let due = match step.last_draw {
            Some(t) => now.duration_since(t) >= interval,
            None => self.tty || now.duration_since(step.started) >= HEARTBEAT,
        };
        if !due {
            return;
        }
        step.last_draw = Some(now);
        let elapsed = human_duration(now.duration_since(step.started));
        if self.tty {
            let mut text = format!("[{elapsed}] {}", line.trim());
            if text.chars().count() > self.width.saturating_sub(1) {
                text = text.chars().take(self.width.saturating_sub(1)).collect();
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{text}");
            let _ = err.flush();
            *lock(&self.drawn) = true;
        } else {
            eprintln!(
                "{LABEL}: {}... {elapsed} elapsed, {} lines of output",
                step.name, step.lines
            );
        }
    }

    fn finish_step(&self) {
        let step = lock(&self.step).take();
        if let Some(step) = step {
            // Neutral wording: a failed step ends here too, before its error.
            self.println(&format!(
                "{} took {}",
                step.name,
                human_duration(step.started.elapsed())
            ));
        }
    }

    fn warn(&self, message: &str) {
        self.println(&format!("warning: {message}"));
    }

    fn note(&self, message: &str) {
        self.println(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(83)), "1m23s");
    }

    #[test]
    fn a_panic_while_drawing_does_not_stop_later_output() {
        let progress = StderrProgress::new();
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let _step = progress.step.lock().unwrap();
                let _drawn = progress.drawn.lock().unwrap();
                panic!("a progress holder panicked (expected by this test)");
            });
            assert!(holder.join().is_err());
        });
        assert!(progress.step.is_poisoned() && progress.drawn.is_poisoned());
        progress.step("after");
        progress.line("a line");
        progress.finish_step();
        progress.note("still printing");
    }
}
