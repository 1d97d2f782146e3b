//! Panic guards for everything the plugin runs on the host's behalf.
//!
//! Unwinding out of an `extern "C"` function aborts the process, so every
//! exported entry point runs its body under `catch_unwind` and turns a
//! panic into an `Internal` error: "plugin X panicked in Y: <message>",
//! with the panic location as the cause. The library's panic hook (its own
//! copy of std's) records that location and prints nothing, so the user
//! sees one structured error instead of a stray "thread panicked" line.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use ktstr_plugin_abi::FfiResult;
use ktstr_plugin_abi::abi_stable::std_types::RResult;

use super::convert::to_ffi;
use crate::error::{Result, StageError};

thread_local! {
    /// Where the last panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Inside `catch`: the panic is reported as an error, not printed.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Install the recording hook, once per library. Panics outside a guard
/// (a thread the plugin spawned) still reach the previous hook.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                return previous(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            tracing::debug!(
                "plugin {} panicked at {}: {}",
                super::plugin_name(),
                location.as_deref().unwrap_or("?"),
                payload_text(info.payload())
            );
            LOCATION.with(|l| *l.borrow_mut() = location);
        }));
    });
}

/// A panic payload as text (`panic!("...")` gives `&str` or `String`).
pub fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A caught panic: its message and, when the hook saw it, its location.
pub struct Panic {
    pub message: String,
    pub location: Option<String>,
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(at) = &self.location {
            write!(f, " (at {at})")?;
        }
        Ok(())
    }
}

/// Run `f`, catching a panic.
pub fn catch<T>(f: impl FnOnce() -> T) -> std::result::Result<T, Panic> {
    LOCATION.with(|l| l.borrow_mut().take());
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| Panic {
        message: payload_text(payload.as_ref()),
        location: LOCATION.with(|l| l.borrow_mut().take()),
    })
}

/// The structured error for a panic in `stage`'s `method`.
pub fn panic_error(stage: &str, method: &str, panic: Panic) -> StageError {
    let plugin = super::plugin_name();
    let version = super::PLUGIN.get().map_or("?", |p| p.version);
    let mut e = StageError::internal(format!(
        "plugin {plugin} panicked in {stage} {method}: {}",
        panic.message
    ))
    .with_hint(format!(
        "this is a bug in plugin {plugin} {version}; report it to its authors, or run without --plugin {plugin}"
    ));
    if let Some(at) = panic.location {
        e.causes.push(format!("panicked at {at}"));
    }
    e
}

/// Run one exported call: errors and panics become an `FfiError`.
pub fn ffi<T>(stage: &str, method: &str, f: impl FnOnce() -> Result<T>) -> FfiResult<T> {
    match catch(f) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(to_ffi(&e)),
        Err(panic) => RResult::RErr(to_ffi(&panic_error(stage, method, panic))),
    }
}

/// Run plugin code whose result the host cannot receive (a drop, a line
/// callback): a panic is logged instead of aborting the host.
pub fn quietly(stage: &str, method: &str, f: impl FnOnce()) {
    if let Err(panic) = catch(f) {
        tracing::error!("{}", panic_error(stage, method, panic));
    }
}
