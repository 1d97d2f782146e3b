//! The host's half of the callbacks a plugin makes: its `StageContext`
//! and its log, behind the ABI's `#[sabi_trait]`s.
//!
//! Commands a plugin runs go through the host's own `CommandRunner`, so the
//! CPU sandbox, output streaming and test substitutes apply to plugins
//! exactly as to built-ins. Plugin log events are re-emitted as host
//! `tracing` events with target `ktstr::plugin`, so `RUST_LOG` filters them
//! like everything else.

use std::sync::Arc;

use ktstr_sdk::context::{Cancellation, CommandRunner, CommandSpec, Progress, StageContext};
use ktstr_sdk::export::abi::abi_stable::sabi_trait::TD_Opaque;
use ktstr_sdk::export::abi::abi_stable::std_types::{RArc, ROption, RResult, RStr, RString};
use ktstr_sdk::export::abi::{
    FfiLogger, FfiLogger_TO, FfiResult, HostBox, HostCallbacks, HostCallbacks_TO, LineSinkMut,
    LoggerBox, level,
};
use ktstr_sdk::export::{from_json, to_ffi, to_json};

struct HostCx {
    progress: Arc<dyn Progress>,
    runner: Arc<dyn CommandRunner>,
    cancel: Cancellation,
}

fn result<T>(r: ktstr_sdk::Result<T>) -> FfiResult<T> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(to_ffi(&e)),
    }
}

impl HostCallbacks for HostCx {
    fn step(&self, name: RStr<'_>) {
        self.progress.step(name.as_str());
    }
    fn line(&self, line: RStr<'_>) {
        self.progress.line(line.as_str());
    }
    fn finish_step(&self) {
        self.progress.finish_step();
    }
    fn warn(&self, message: RStr<'_>) {
        self.progress.warn(message.as_str());
    }
    fn note(&self, message: RStr<'_>) {
        self.progress.note(message.as_str());
    }
    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    fn run(&self, spec_json: RStr<'_>, mut on_line: LineSinkMut<'_>) -> FfiResult<RString> {
        result((|| {
            let spec: CommandSpec = from_json("a command", spec_json.as_str())?;
            let outcome = self.runner.run(&spec, &mut |l| on_line.line(l.into()))?;
            to_json(&outcome)
        })())
    }
    fn capture(&self, spec_json: RStr<'_>) -> FfiResult<RString> {
        result((|| {
            let spec: CommandSpec = from_json("a command", spec_json.as_str())?;
            to_json(&self.runner.capture(&spec)?)
        })())
    }
    fn bytes(&self, done: u64, total: ROption<u64>) {
        self.progress.bytes(done, total.into_option());
    }
}

/// The callbacks for one stage call made with `cx`.
pub fn host_box(cx: &StageContext) -> HostBox {
    HostCallbacks_TO::from_ptr(
        RArc::new(HostCx {
            progress: cx.progress.clone(),
            runner: cx.runner.clone(),
            cancel: cx.cancel.clone(),
        }),
        TD_Opaque,
    )
}

struct HostLogger {
    plugin: String,
}

impl FfiLogger for HostLogger {
    fn enabled(&self, lvl: u8, _target: RStr<'_>) -> bool {
        match lvl {
            level::ERROR => tracing::enabled!(target: "ktstr::plugin", tracing::Level::ERROR),
            level::WARN => tracing::enabled!(target: "ktstr::plugin", tracing::Level::WARN),
            level::INFO => tracing::enabled!(target: "ktstr::plugin", tracing::Level::INFO),
            level::DEBUG => tracing::enabled!(target: "ktstr::plugin", tracing::Level::DEBUG),
            _ => tracing::enabled!(target: "ktstr::plugin", tracing::Level::TRACE),
        }
    }

    fn log(&self, lvl: u8, target: RStr<'_>, message: RStr<'_>) {
        let (plugin, target, message) = (&self.plugin, target.as_str(), message.as_str());
        match lvl {
            level::ERROR => {
                tracing::error!(target: "ktstr::plugin", "plugin {plugin} ({target}): {message}")
            }
            level::WARN => {
                tracing::warn!(target: "ktstr::plugin", "plugin {plugin} ({target}): {message}")
            }
            level::INFO => {
                tracing::info!(target: "ktstr::plugin", "plugin {plugin} ({target}): {message}")
            }
            level::DEBUG => {
                tracing::debug!(target: "ktstr::plugin", "plugin {plugin} ({target}): {message}")
            }
            _ => tracing::trace!(target: "ktstr::plugin", "plugin {plugin} ({target}): {message}"),
        }
    }
}

/// The log sink handed to the plugin at load time.
pub fn logger_box(plugin: &str) -> LoggerBox {
    FfiLogger_TO::from_ptr(
        RArc::new(HostLogger {
            plugin: plugin.to_string(),
        }),
        TD_Opaque,
    )
}
