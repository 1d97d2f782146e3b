//! A process that ignores SIGINT or SIGTERM (a `&` job of a script without
//! job control ignores SIGINT) must not pass that on to the commands it
//! runs: cancelling a command is a SIGINT to its group, and a make that
//! ignored it would run until the SIGKILL after the grace.
//!
//! Ignoring the signals is process-wide, so this test has a binary (a
//! process) of its own.

use std::time::{Duration, Instant};

use ktstr_sdk::context::{Cancellation, CommandRunner, CommandSpec};
use ktstr_sdk::runner::{InterruptibleRunner, SystemRunner};
use nix::sys::signal::{SigHandler, Signal, signal};

fn ignore_interrupts() {
    // SAFETY: no handler is installed; SIG_IGN is a plain disposition.
    unsafe {
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT] {
            signal(sig, SigHandler::SigIgn).unwrap();
        }
    }
}

#[test]
fn commands_do_not_inherit_ignored_interrupts_and_stop_when_cancelled() {
    ignore_interrupts();
    let out = SystemRunner
        .capture(&CommandSpec::new("grep").args(["^SigIgn", "/proc/self/status"]))
        .unwrap();
    let mask = u64::from_str_radix(out.stdout.trim_start_matches("SigIgn:").trim(), 16)
        .unwrap_or_else(|e| panic!("{:?}: {e}", out.stdout));
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT] {
        assert_eq!(
            mask & (1 << (sig as i32 - 1)),
            0,
            "the command ignores {sig}: {}",
            out.stdout
        );
    }

    // And so a cancelled command stops at the interrupt, well before the
    // runner's 10 s grace ends in a SIGKILL.
    let cancel = Cancellation::new();
    let runner = InterruptibleRunner::new(cancel.clone());
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
            Instant::now()
        })
    };
    let out = runner
        .run(&CommandSpec::new("sleep").args(["30"]), &mut |_| {})
        .unwrap();
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(out.code, None, "killed by a signal: {out:?}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(8),
        "the command outlived the interrupt by {:?}",
        cancelled_at.elapsed()
    );
}
