//! The build log: every line make printed while ktstr configured and built
//! a kernel, kept as evidence.
//!
//! The host captures it, not the builder: [`BuildLog::context`] wraps the
//! stage context's progress sink in a tee, so every line a configurer or
//! builder streams (built-in or third-party) lands in the log as well as in
//! the progress display. The log is written while make runs to
//! `<root>/scratch/buildlog-<pid>-<n>` (never into the user's tree), and:
//!
//! * after a stored build it is compressed with zstd into the entry as
//!   [`ktstr_sdk::cache::LOG_NAME`] and the plain file goes;
//! * after a failed build it is kept and named in the error, with a
//!   `.failed` marker so the scratch sweep leaves it for a day
//!   ([`ktstr_sdk::scratch::sweep_dead`]);
//! * otherwise (a kill -9) the sweep removes it once this process is gone.
//!
//! The same tee counts compiler diagnostics: lines with `warning:` or
//! `error:` in gcc/clang/ld form (see [`classify`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ktstr_sdk::context::{Progress, StageContext};
use ktstr_sdk::error::{IoResultExt, Result, StageError};
use ktstr_sdk::paths;

/// zstd level of stored logs: text compresses ~10x at this level, fast.
const ZSTD_LEVEL: i32 = 9;

/// What kind of diagnostic a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnostic {
    Warning,
    Error,
}

/// `file.c:1:2: warning: ...`, `ld: error: ...`, `warning: ...` and the
/// like; make's own `make: *** [...] Error 2` lines are not counted (they
/// repeat an error already counted).
pub fn classify(line: &str) -> Option<Diagnostic> {
    let line = line.trim_start();
    let is = |tag: &str| line.starts_with(tag) || line.contains(&format!(": {tag}"));
    if is("error:") || is("fatal error:") {
        Some(Diagnostic::Error)
    } else if is("warning:") {
        Some(Diagnostic::Warning)
    } else {
        None
    }
}

/// Shared state of one log: the file and the counts.
struct Sink {
    file: Mutex<Option<BufWriter<File>>>,
    warnings: AtomicU64,
    errors: AtomicU64,
}

impl Sink {
    fn write_line(&self, line: &str) {
        let mut guard = self.file.lock().unwrap();
        if let Some(w) = guard.as_mut()
            && let Err(e) = writeln!(w, "{line}")
        {
            // A full disk must not fail the build; the log just stops.
            tracing::warn!("build log: cannot write: {e}; not logging the rest");
            *guard = None;
        }
    }
}

/// A progress sink that also writes every line into the build log.
struct Tee {
    inner: Arc<dyn Progress>,
    sink: Arc<Sink>,
}

impl Progress for Tee {
    fn step(&self, name: &str) {
        self.sink.write_line(&format!("### ktstr: {name}"));
        self.inner.step(name);
    }

    fn line(&self, line: &str) {
        match classify(line) {
            Some(Diagnostic::Warning) => self.sink.warnings.fetch_add(1, Ordering::Relaxed),
            Some(Diagnostic::Error) => self.sink.errors.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        self.sink.write_line(line);
        self.inner.line(line);
    }

    fn finish_step(&self) {
        self.inner.finish_step();
    }

    fn warn(&self, message: &str) {
        self.sink
            .write_line(&format!("### ktstr: warning: {message}"));
        self.inner.warn(message);
    }

    fn note(&self, message: &str) {
        self.inner.note(message);
    }
}

/// One build's log, being written.
pub struct BuildLog {
    path: PathBuf,
    sink: Arc<Sink>,
    /// Leave the file in place on drop (a failed build names it).
    kept: bool,
}

/// What a finished log amounts to.
#[derive(Debug)]
pub struct LogSummary {
    pub warnings: u64,
    pub errors: u64,
    /// The zstd-compressed log, ready to store; removed with its directory.
    pub compressed: Option<tempfile::TempPath>,
}

impl BuildLog {
    /// Start a log under `<root>/scratch`.
    pub fn start(root: &Path) -> Result<BuildLog> {
        let dir = paths::scratch_dir(root);
        std::fs::create_dir_all(&dir).map_err(|e| {
            StageError::io("create directory", &dir, e).with_hint(format!(
                "set {} to a writable directory",
                paths::CACHE_DIR_ENV
            ))
        })?;
        let (path, file) = create_scratch_file(&dir)?;
        Ok(BuildLog {
            path,
            sink: Arc::new(Sink {
                file: Mutex::new(Some(BufWriter::new(file))),
                warnings: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
            kept: false,
        })
    }

    /// Where the plain log is being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cx` with a progress sink that also writes to this log.
    pub fn context(&self, cx: &StageContext) -> StageContext {
        StageContext {
            progress: Arc::new(Tee {
                inner: cx.progress.clone(),
                sink: self.sink.clone(),
            }),
            runner: cx.runner.clone(),
            cancel: cx.cancel.clone(),
        }
    }

    /// Write a line of ktstr's own into the log (`### ktstr: ...`).
    pub fn annotate(&self, text: &str) {
        self.sink.write_line(&format!("### ktstr: {text}"));
    }

    fn flush(&self) -> std::io::Result<()> {
        match self.sink.file.lock().unwrap().as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Keep the plain log after a failed build: it is flushed, marked so
    /// the scratch sweep leaves it for a day, and its path returned.
    pub fn keep_failed(&mut self) -> PathBuf {
        if let Err(e) = self.flush() {
            tracing::warn!("build log {}: {e}", self.path.display());
        }
        ktstr_sdk::scratch::mark_failed(&self.path);
        self.kept = true;
        self.path.clone()
    }

    /// Finish a successful build's log: the counts, and the log compressed
    /// into a temporary file beside it. A log that cannot be compressed is
    /// a warning (the entry is stored without it), never a failed build.
    pub fn finish(self, cx: &StageContext) -> LogSummary {
        let warnings = self.sink.warnings.load(Ordering::Relaxed);
        let errors = self.sink.errors.load(Ordering::Relaxed);
        let compressed = self
            .flush()
            .at("write", &self.path)
            .and_then(|()| compress(&self.path));
        let compressed = match compressed {
            Ok(tmp) => Some(tmp),
            Err(e) => {
                cx.progress.warn(&format!(
                    "could not keep the build log: {e}; storing without it"
                ));
                None
            }
        };
        LogSummary {
            warnings,
            errors,
            compressed,
        }
    }
}

impl Drop for BuildLog {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        *self.sink.file.lock().unwrap() = None;
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Create `<dir>/buildlog-<pid>-<n>` (a name the scratch sweep knows).
fn create_scratch_file(dir: &Path) -> Result<(PathBuf, File)> {
    loop {
        let path = dir.join(ktstr_sdk::scratch::entry_name("buildlog"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            // Left by an earlier process with the same pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StageError::io("create", &path, e)),
        }
    }
}

/// zstd-compress `plain` into a temporary file in the same directory.
fn compress(plain: &Path) -> Result<tempfile::TempPath> {
    let dir = plain.parent().unwrap_or(Path::new("."));
    let (path, file) = create_scratch_file(dir)?;
    let tmp = tempfile::TempPath::try_from_path(path).at("resolve", dir)?;
    let mut input = File::open(plain).at("open", plain)?;
    let out = BufWriter::new(file);
    let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL).at("compress", plain)?;
    std::io::copy(&mut input, &mut encoder).at("compress", plain)?;
    encoder
        .finish()
        .and_then(|mut w| w.flush())
        .at("compress", plain)?;
    Ok(tmp)
}

/// Decompress a stored log to `out`.
pub fn decompress_to(compressed: &Path, out: &mut dyn Write) -> Result<()> {
    let file = File::open(compressed).at("open", compressed)?;
    let mut decoder = zstd::Decoder::new(file).at("decompress", compressed)?;
    match std::io::copy(&mut decoder, out) {
        Ok(_) => Ok(()),
        // `ktstr kernel log KEY | head` closes the pipe early: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(StageError::io("decompress", compressed, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::context::NoProgress;

    #[test]
    fn diagnostics_are_counted_like_compilers_print_them() {
        use Diagnostic::*;
        for (line, want) in [
            (
                "kernel/sched/ext.c:12:5: warning: unused variable 'x'",
                Some(Warning),
            ),
            (
                "warning: the compiler differs from the one used to build",
                Some(Warning),
            ),
            ("fixture.c:1: error: deliberate failure", Some(Error)),
            ("ld: error: undefined symbol: foo", Some(Error)),
            ("x.c:1:10: fatal error: y.h: No such file", Some(Error)),
            ("  CC      kernel/fork.o", None),
            (
                "make[2]: *** [scripts/Makefile.build:229: x.o] Error 1",
                None,
            ),
            ("  CC      drivers/net/warning.o", None),
        ] {
            assert_eq!(classify(line), want, "{line}");
        }
    }

    #[test]
    fn tee_logs_lines_and_counts_then_compresses() {
        let root = tempfile::tempdir().unwrap();
        let log = BuildLog::start(root.path()).unwrap();
        let plain = log.path().to_path_buf();
        assert!(plain.starts_with(paths::scratch_dir(root.path())));
        let cx = StageContext {
            progress: Arc::new(NoProgress),
            ..StageContext::quiet()
        };
        let lcx = log.context(&cx);
        lcx.progress.step("building");
        lcx.progress.line("  CC      a.o");
        lcx.progress.line("a.c:1:1: warning: w");
        lcx.progress.line("a.c:2:1: warning: w");
        lcx.progress.line("b.c:1:1: error: e");
        lcx.progress.finish_step();
        let summary = log.finish(&cx);
        assert_eq!((summary.warnings, summary.errors), (2, 1));
        assert!(!plain.exists(), "the plain log goes once compressed");
        let zst = summary.compressed.unwrap();
        let mut text = Vec::new();
        decompress_to(&zst, &mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "### ktstr: building\n  CC      a.o\na.c:1:1: warning: w\na.c:2:1: warning: w\n\
             b.c:1:1: error: e\n"
        );
    }

    #[test]
    fn a_failed_build_keeps_the_plain_log() {
        let root = tempfile::tempdir().unwrap();
        let mut log = BuildLog::start(root.path()).unwrap();
        log.context(&StageContext::quiet())
            .progress
            .line("x.c:1: error: boom");
        let kept = log.keep_failed();
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "x.c:1: error: boom\n"
        );
        assert!(ktstr_sdk::scratch::is_marked(&kept));
    }
}
