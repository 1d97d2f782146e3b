//! Ctrl-C: stop between steps and clean up instead of dying mid-write.
//!
//! ktstr's handler only raises the shared cancellation flag. Commands run in
//! their own process group, so the host's runner passes the interrupt on
//! (SIGINT to make's group, SIGKILL after a grace period): the same for a
//! terminal's Ctrl-C and for `kill -TERM` from a CI runner. The pipeline then
//! returns a `Cancelled` error, which unwinds normally: the sandbox and locks
//! are released, scratch trees removed, nothing half-stored. SIGHUP (a closed
//! terminal or SSH session) is handled the same way. A second signal kills
//! ktstr at once (the handler is one-shot); so does `kill -9`. Then the
//! runner's safeguards take over (see `ktstr_sdk::runner`): the running
//! command is killed with its whole process group, and the build's locks
//! stay held until its last process has exited, so a killed build never
//! leaves a writer behind for the next one.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use ktstr_sdk::context::Cancellation;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Exit code for an interrupted run (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_sigint(_: nix::libc::c_int) {
    // Only an atomic load of an initialized OnceLock and an atomic store:
    // async-signal-safe.
    if let Some(flag) = FLAG.get() {
        flag.store(true, Ordering::SeqCst);
    }
}

/// Route SIGINT, SIGTERM and SIGHUP into `cancel`.
pub fn install(cancel: &Cancellation) {
    if FLAG.set(cancel.flag()).is_err() {
        return;
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        // No SA_RESTART: a blocking wait for a lock must return (EINTR).
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches atomics (see on_sigint).
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::warn!("cannot install the {signal} handler: {e}");
        }
    }
}
