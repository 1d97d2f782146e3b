//! A closed stdout ends ktstr quietly, like any well-behaved CLI.
//!
//! `ktstr plugins list | head -1` closes the pipe after one line. Rust
//! ignores SIGPIPE, so the next write fails with EPIPE: `println!` panics
//! ("failed printing to stdout: Broken pipe") and `writeln!` returns an
//! error that would be reported as a failure. Neither is one: the reader
//! has all it wanted. So the panic hook turns that one panic into exit 0,
//! and [`is_broken_pipe`] lets the command's error path do the same.
//! SIGPIPE is not restored to its default because a killed-by-signal exit
//! (status 141) is a failure under `set -o pipefail`.

use std::io::ErrorKind;

/// Install the panic hook (once, at startup, before any output).
pub fn install() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_stdout_epipe_panic(text) {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Whether a panic message is std's report of a write to a closed stdout.
fn is_stdout_epipe_panic(text: &str) -> bool {
    text.starts_with("failed printing to stdout") && text.contains("Broken pipe")
}

/// Whether `err` is (caused by) writing to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_epipe_only() {
        assert!(is_stdout_epipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_stdout_epipe_panic(
            "failed printing to stdout: No space left"
        ));
        assert!(!is_stdout_epipe_panic("index out of bounds"));
        let e = anyhow::Error::from(std::io::Error::from(ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e.context("writing the table")));
        let e = anyhow::Error::from(std::io::Error::from(ErrorKind::NotFound));
        assert!(!is_broken_pipe(&e));
    }
}
