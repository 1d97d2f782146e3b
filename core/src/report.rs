//! What commands report beyond their progress: warnings that carry a
//! [`StageError`]'s hint, and `--json` results.
//!
//! Every `--json` output goes through [`print_json`]: one pretty-printed
//! JSON value on stdout, ending in a newline, nothing else on stdout.
//!
//! A fatal error is printed with its `hint:` line (cli/mod.rs); a warning
//! used to print only `{e}`, so the hints that say what to do about a
//! refused credential, a corrupt remote entry or a read-only tier never
//! reached the user. Every warning built from a `StageError` goes through
//! [`warn_error`] instead.

use ktstr_sdk::StageError;
use ktstr_sdk::context::Progress;

/// Print `value` as the command's one JSON result on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    out.flush()?;
    Ok(())
}

/// Warn `{context}{e}`, then the hint as a `hint:` line.
pub fn warn_error<P: Progress + ?Sized>(progress: &P, context: &str, e: &StageError) {
    warn_error_then(progress, context, e, "");
}

/// Warn `{context}{e}{then}` (`then`: what happens next, "; rebuilding
/// it"), then the hint as a `hint:` line.
pub fn warn_error_then<P: Progress + ?Sized>(
    progress: &P,
    context: &str,
    e: &StageError,
    then: &str,
) {
    progress.warn(&format!("{context}{e}{then}"));
    if let Some(hint) = e.hint.as_deref().filter(|h| !h.trim().is_empty()) {
        progress.note(&format!("hint: {}", hint.trim()));
    }
}

/// The same for `eprintln!`-style commands that have no `Progress`.
pub fn eprint_warning(context: &str, e: &StageError) {
    eprintln!("{}: warning: {context}{e}", crate::progress::LABEL);
    if let Some(hint) = e.hint.as_deref().filter(|h| !h.trim().is_empty()) {
        eprintln!("{}: hint: {}", crate::progress::LABEL, hint.trim());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Progress for Lines {
        fn step(&self, _: &str) {}
        fn line(&self, _: &str) {}
        fn finish_step(&self) {}
        fn warn(&self, m: &str) {
            self.0.lock().unwrap().push(format!("warning: {m}"));
        }
        fn note(&self, m: &str) {
            self.0.lock().unwrap().push(m.to_string());
        }
    }

    #[test]
    fn the_hint_follows_the_warning() {
        let lines = Lines::default();
        let e = StageError::corrupt("entry k: bad digest").with_hint("push it again");
        warn_error(&lines, "s3-cache: ", &e);
        warn_error(&lines, "", &StageError::corrupt("no hint"));
        assert_eq!(
            *lines.0.lock().unwrap(),
            [
                "warning: s3-cache: entry k: bad digest",
                "hint: push it again",
                "warning: no hint"
            ]
        );
    }
}
