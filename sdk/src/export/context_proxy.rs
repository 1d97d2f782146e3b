//! The plugin's view of a host call: a `StageContext` whose progress and
//! command runner forward to the host.
//!
//! Cancellation is a flag the plugin owns: it starts as the host's and is
//! refreshed whenever the plugin reports progress or runs a command, which
//! long stages do continually. A stage that loops without either should
//! call `cx.progress.line` now and then (or check `cx.cancel` after one).

use std::sync::Arc;

use ktstr_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use ktstr_plugin_abi::abi_stable::std_types::{RResult, RStr};
use ktstr_plugin_abi::{HostBox, LineSink, LineSink_TO};

use super::convert::{from_ffi, from_json, json_arg};
use super::guard::{Panic, catch};
use crate::context::{
    Cancellation, CapturedOutput, CommandOutcome, CommandRunner, CommandSpec, Progress,
    StageContext,
};
use crate::error::Result;

struct Host {
    host: HostBox,
    cancel: Cancellation,
}

impl Host {
    fn poll(&self) {
        if self.host.is_cancelled() {
            self.cancel.cancel();
        }
    }
}

struct HostProgress(Arc<Host>);

impl Progress for HostProgress {
    fn step(&self, name: &str) {
        self.0.host.step(name.into());
        self.0.poll();
    }
    fn line(&self, line: &str) {
        self.0.host.line(line.into());
        self.0.poll();
    }
    fn finish_step(&self) {
        self.0.host.finish_step();
        self.0.poll();
    }
    fn warn(&self, message: &str) {
        self.0.host.warn(message.into());
    }
    fn note(&self, message: &str) {
        self.0.host.note(message.into());
    }
    fn bytes(&self, done: u64, total: Option<u64>) {
        self.0.host.bytes(done, total.into());
        self.0.poll();
    }
}

/// Feeds host output lines to the plugin's callback. A panic in the
/// callback is kept and re-raised in the plugin once the host returns.
struct Sink<'a> {
    on_line: &'a mut dyn FnMut(&str),
    panic: Option<Panic>,
}

impl LineSink for Sink<'_> {
    fn line(&mut self, line: RStr<'_>) {
        if self.panic.is_some() {
            return;
        }
        let on_line = &mut self.on_line;
        if let Err(p) = catch(|| on_line(line.as_str())) {
            self.panic = Some(p);
        }
    }
}

struct HostRunner(Arc<Host>);

impl CommandRunner for HostRunner {
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome> {
        let json = json_arg(spec)?;
        let mut sink = Sink {
            on_line,
            panic: None,
        };
        let result = self.0.host.run(
            json.as_str().into(),
            LineSink_TO::from_ptr(&mut sink, TD_Opaque),
        );
        if let Some(p) = sink.panic {
            std::panic::panic_any(p.message);
        }
        self.0.poll();
        match result {
            RResult::ROk(outcome) => from_json("a command outcome", &outcome),
            RResult::RErr(e) => Err(from_ffi(e)),
        }
    }

    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput> {
        let json = json_arg(spec)?;
        let result = self.0.host.capture(json.as_str().into());
        self.0.poll();
        match result {
            RResult::ROk(out) => from_json("captured command output", &out),
            RResult::RErr(e) => Err(from_ffi(e)),
        }
    }
}

/// The `StageContext` for one call from the host.
pub fn context(host: HostBox) -> StageContext {
    let host = Arc::new(Host {
        host,
        cancel: Cancellation::new(),
    });
    host.poll();
    StageContext {
        progress: Arc::new(HostProgress(host.clone())),
        runner: Arc::new(HostRunner(host.clone())),
        cancel: host.cancel.clone(),
    }
}
