//! Calls from a plugin back into the host.
//!
//! A plugin is a cdylib with its own copy of std and of every crate it
//! links: its own `tracing` dispatcher, its own stderr lock, its own panic
//! hook. Anything that must end up where the host's user can see it (log
//! lines, progress, make output) or must obey the host's policy (the CPU
//! sandbox applied when a command starts, test runners) therefore goes
//! through these callbacks instead of the plugin's globals.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, ROption, RStr, RString};

use crate::error::FfiResult;

/// `tracing` levels as numbers, most severe first.
pub mod level {
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// The host's log sink, handed to the plugin once after loading. The
/// plugin's `tracing` events are formatted in the plugin and logged here.
#[sabi_trait]
pub trait FfiLogger: Send + Sync {
    /// Whether the host would show an event of `level` (see [`level`]).
    fn enabled(&self, level: u8, target: RStr<'_>) -> bool;

    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

/// An owned, shareable [`FfiLogger`].
pub type LoggerBox = FfiLogger_TO<'static, RArc<()>>;

/// Receives one output line of a running command (plugin side).
#[sabi_trait]
pub trait LineSink {
    #[sabi(last_prefix_field)]
    fn line(&mut self, line: RStr<'_>);
}

/// A borrowed [`LineSink`], valid for one `run` call.
pub type LineSinkMut<'a> = LineSink_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// The host side of one stage call: `ktstr_sdk::StageContext` over FFI.
///
/// Commands are described by the JSON form of `ktstr_sdk::export::wire`
/// types (`CommandSpec` in, `CommandOutcome` / `CapturedOutput` out).
#[sabi_trait]
pub trait HostCallbacks: Send + Sync {
    fn step(&self, name: RStr<'_>);
    fn line(&self, line: RStr<'_>);
    fn finish_step(&self);
    fn warn(&self, message: RStr<'_>);
    fn note(&self, message: RStr<'_>);

    /// The user interrupted the run.
    fn is_cancelled(&self) -> bool;

    /// `CommandRunner::run`: each output line goes to `on_line`.
    fn run(&self, spec_json: RStr<'_>, on_line: LineSinkMut<'_>) -> FfiResult<RString>;

    /// `CommandRunner::capture`.
    fn capture(&self, spec_json: RStr<'_>) -> FfiResult<RString>;

    /// `Progress::bytes`: a transfer's progress (bytes done, of `total`).
    #[sabi(last_prefix_field)]
    fn bytes(&self, done: u64, total: ROption<u64>);
}

/// An owned, shareable [`HostCallbacks`]: a plugin may keep it after the
/// call returns (a reservation guard that logs on release, say).
pub type HostBox = HostCallbacks_TO<'static, RArc<()>>;
