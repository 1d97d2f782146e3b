//! Progress on stderr: a live status line on a terminal, heartbeats elsewhere.
//!
//! A kernel build prints tens of thousands of lines, and some of its steps
//! (`LD vmlinux`, a slow download) print nothing for a long time. On a
//! terminal the user sees one status line, `ktstr: [elapsed] <latest line>`,
//! drawn by indicatif: it is sized to the terminal's real width (asked of
//! the tty, not `COLUMNS`), and redrawn every second by a timer, so a silent
//! step still shows its time going up. In CI logs, where carriage returns
//! turn into noise, a timer thread prints a heartbeat line every 30 s
//! instead. A download reports bytes ([`Progress::bytes`]): both forms then
//! show bytes, rate and ETA. With `-v` every line is printed as it arrives
//! ([`set_stream_output`]); either way the whole output is in the build log
//! (`ktstr kernel log KEY`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ktstr_sdk::context::{Progress, human_bytes};

/// Prefix of every diagnostic line.
pub const LABEL: &str = "ktstr";

/// How often the terminal status line is redrawn when nothing happens.
const TTY_TICK: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Overrides [`HEARTBEAT`] (milliseconds), so tests need not wait 30 s.
/// Not a user setting: undocumented outside docs/cli.md's test note.
pub const HEARTBEAT_ENV: &str = "KTSTR_HEARTBEAT_MS";

static STREAM: AtomicBool = AtomicBool::new(false);

/// The status line on screen, if any, for writers outside
/// [`StderrProgress`] (log events) to print above it: see [`suspended`].
static ON_SCREEN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// `-v`: print every output line of a step (make's lines) to stderr as it
/// arrives, as make printed it, instead of the status line or heartbeat.
pub fn set_stream_output(on: bool) {
    STREAM.store(on, Ordering::Relaxed);
}

fn streaming() -> bool {
    STREAM.load(Ordering::Relaxed)
}

/// Run `f` (which writes whole lines to stderr) with the status line
/// erased, and redraw it afterwards.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let bar = lock(&ON_SCREEN).clone();
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Erase the status line for good, if one is still drawn: before the
/// final error, when a step ended without `finish_step` (an interrupt).
pub fn clear_status() {
    if let Some(bar) = lock(&ON_SCREEN).take() {
        bar.finish_and_clear();
    }
}

/// A display state whose holder panicked is still fit to draw from; a
/// panic elsewhere must not also take every later progress line down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the status line and the heartbeat report about the current step.
#[derive(Debug, Clone)]
struct Stats {
    name: String,
    started: Instant,
    lines: u64,
    transfer: Option<Transfer>,
}

/// Bytes moved so far by the current step.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    first: Instant,
    done: u64,
    total: Option<u64>,
}

impl Transfer {
    /// `50.0 MiB of 100.0 MiB (50%), 25.0 MiB/s, ETA 2s`.
    fn summary(&self, now: Instant) -> String {
        let secs = now.duration_since(self.first).as_secs_f64();
        let rate = (secs >= 0.5).then(|| self.done as f64 / secs);
        let mut text = human_bytes(self.done);
        if let Some(total) = self.total {
            text.push_str(&format!(
                " of {} ({}%)",
                human_bytes(total),
                self.done.saturating_mul(100) / total.max(1)
            ));
        }
        if let Some(rate) = rate {
            text.push_str(&format!(", {}/s", human_bytes(rate as u64)));
            if let Some(total) = self.total
                && rate > 0.0
                && total > self.done
            {
                let eta = Duration::from_secs_f64((total - self.done) as f64 / rate);
                text.push_str(&format!(", ETA {}", status_duration(eta)));
            }
        }
        text
    }
}

/// The running step and whoever draws it.
struct Step {
    stats: Arc<Mutex<Stats>>,
    bar: Option<ProgressBar>,
    heartbeat: Option<Heartbeat>,
}

/// The off-terminal heartbeat thread of one step; stopped by dropping
/// `stop` (the thread sees the channel close at once).
struct Heartbeat {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Heartbeat {
    fn start(stats: Arc<Mutex<Stats>>, every: Duration) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ktstr-heartbeat".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let line = heartbeat_line(&lock(&stats), Instant::now());
                    eprintln!("{LABEL}: {line}");
                }
            })
            // No thread, no heartbeat: the build itself is unaffected.
            .ok()?;
        Some(Self { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// `building (make -j2)... 1m30s elapsed, 478 lines of output`.
fn heartbeat_line(stats: &Stats, now: Instant) -> String {
    let elapsed = human_duration(now.duration_since(stats.started));
    match &stats.transfer {
        Some(t) => format!("{}... {elapsed} elapsed, {}", stats.name, t.summary(now)),
        None => format!(
            "{}... {elapsed} elapsed, {} lines of output",
            stats.name, stats.lines
        ),
    }
}

/// The host's progress display.
pub struct StderrProgress {
    tty: bool,
    heartbeat: Duration,
    step: Mutex<Option<Step>>,
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether stderr is a terminal that can redraw a line in place: not one
/// that says it cannot (`TERM=dumb`, Emacs shell buffers, some CI log
/// viewers), which gets the heartbeat instead.
pub fn redrawable() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

impl StderrProgress {
    pub fn new() -> Self {
        let heartbeat = std::env::var(HEARTBEAT_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .filter(|ms| *ms > 0)
            .map_or(HEARTBEAT, Duration::from_millis);
        Self {
            tty: redrawable(),
            heartbeat,
            step: Mutex::new(None),
        }
    }

    /// Print a whole line, above the status line if one is drawn.
    pub fn println(&self, text: &str) {
        suspended(|| eprintln!("{LABEL}: {text}"));
    }

    fn status_bar(&self, name: &str) -> ProgressBar {
        let style = ProgressStyle::with_template("{prefix}: [{since}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "since",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&status_duration(state.elapsed()));
                },
            );
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(LABEL)
            .with_message(name.to_string());
        bar.enable_steady_tick(TTY_TICK);
        bar
    }

    /// Update the current step's stats and redraw its status line.
    fn update(&self, f: impl FnOnce(&mut Stats)) {
        let guard = lock(&self.step);
        let Some(step) = guard.as_ref() else {
            return;
        };
        let mut stats = lock(&step.stats);
        f(&mut stats);
        // The numbers alone: the step's name is on the line above, and on
        // a narrow terminal a name first would push the ETA off the end.
        if let (Some(bar), Some(t)) = (&step.bar, &stats.transfer) {
            bar.set_message(t.summary(Instant::now()));
        }
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

/// Whole seconds for the status line (`7s`, `1m23s`), which is redrawn
/// once a second: tenths would only flicker.
fn status_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

impl Progress for StderrProgress {
    fn step(&self, name: &str) {
        self.finish_step_quietly();
        self.println(&format!("{name}..."));
        let stats = Arc::new(Mutex::new(Stats {
            name: name.to_string(),
            started: Instant::now(),
            lines: 0,
            transfer: None,
        }));
        let (bar, heartbeat) = if streaming() {
            (None, None)
        } else if self.tty {
            let bar = self.status_bar(name);
            *lock(&ON_SCREEN) = Some(bar.clone());
            (Some(bar), None)
        } else {
            (None, Heartbeat::start(stats.clone(), self.heartbeat))
        };
        *lock(&self.step) = Some(Step {
            stats,
            bar,
            heartbeat,
        });
    }

    fn line(&self, line: &str) {
        let guard = lock(&self.step);
        let Some(step) = guard.as_ref() else {
            return;
        };
        lock(&step.stats).lines += 1;
        if streaming() {
            drop(guard);
            eprintln!("{line}");
            return;
        }
        if let Some(bar) = &step.bar {
            bar.set_message(line.trim().to_string());
        }
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        let now = Instant::now();
        self.update(|stats| {
            let first = stats.transfer.map_or(now, |t| t.first);
            stats.transfer = Some(Transfer { first, done, total });
        });
    }

    fn finish_step(&self) {
        if let Some(stats) = self.finish_step_quietly() {
            // Neutral wording: a failed step ends here too, before its error.
            self.println(&format!(
                "{} took {}",
                stats.name,
                human_duration(stats.started.elapsed())
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

impl StderrProgress {
    /// End the current step's display; its stats, if there was one.
    fn finish_step_quietly(&self) -> Option<Stats> {
        let step = lock(&self.step).take()?;
        if let Some(bar) = step.bar {
            bar.finish_and_clear();
            *lock(&ON_SCREEN) = None;
        }
        if let Some(heartbeat) = step.heartbeat {
            heartbeat.stop();
        }
        let stats = lock(&step.stats).clone();
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(83)), "1m23s");
        assert_eq!(status_duration(Duration::from_millis(7900)), "7s");
        assert_eq!(status_duration(Duration::from_secs(83)), "1m23s");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(512), "0.5 KiB");
        assert_eq!(human_bytes(150 << 20), "150.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_transfer_shows_bytes_rate_and_eta() {
        let first = Instant::now();
        let t = Transfer {
            first,
            done: 50 << 20,
            total: Some(100 << 20),
        };
        assert_eq!(
            t.summary(first + Duration::from_secs(2)),
            "50.0 MiB of 100.0 MiB (50%), 25.0 MiB/s, ETA 2s"
        );
        // No rate from a first instant; no ETA without a size.
        assert_eq!(t.summary(first), "50.0 MiB of 100.0 MiB (50%)");
        let open = Transfer { total: None, ..t };
        assert_eq!(
            open.summary(first + Duration::from_secs(5)),
            "50.0 MiB, 10.0 MiB/s"
        );
    }

    #[test]
    fn a_heartbeat_names_the_step_and_what_it_did() {
        let started = Instant::now();
        let mut stats = Stats {
            name: "building (make -j2)".into(),
            started,
            lines: 478,
            transfer: None,
        };
        let now = started + Duration::from_secs(90);
        assert_eq!(
            heartbeat_line(&stats, now),
            "building (make -j2)... 1m30s elapsed, 478 lines of output"
        );
        stats.transfer = Some(Transfer {
            first: started,
            done: 30 << 20,
            total: Some(120 << 20),
        });
        assert_eq!(
            heartbeat_line(&stats, now),
            "building (make -j2)... 1m30s elapsed, 30.0 MiB of 120.0 MiB (25%), 341.3 KiB/s, \
             ETA 4m30s"
        );
    }

    #[test]
    fn a_panic_while_drawing_does_not_stop_later_output() {
        let progress = StderrProgress::new();
        progress.step("before");
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let step = progress.step.lock().unwrap();
                let _stats = step.as_ref().unwrap().stats.lock().unwrap();
                panic!("a progress holder panicked (expected by this test)");
            });
            assert!(holder.join().is_err());
        });
        assert!(progress.step.is_poisoned());
        progress.line("a line");
        progress.bytes(10, Some(20));
        progress.step("after");
        progress.line("a line");
        progress.finish_step();
        progress.note("still printing");
    }
}
