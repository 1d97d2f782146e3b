//! The plugin's `tracing` output, forwarded to the host's log.
//!
//! A cdylib has its own `tracing` dispatcher; without a subscriber every
//! `tracing::warn!` in the plugin (and in the sdk code it links) would
//! vanish. `attach` installs a minimal subscriber that asks the host
//! whether a level is wanted (the host's `RUST_LOG` decides) and hands each
//! formatted event to it. Spans are accepted and ignored.

use std::fmt::Write as _;
use std::sync::OnceLock;

use ktstr_plugin_abi::LoggerBox;
use ktstr_plugin_abi::level;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

static LOGGER: OnceLock<LoggerBox> = OnceLock::new();

/// Route this library's `tracing` events to `logger` (first call wins).
pub fn attach(logger: LoggerBox) {
    if LOGGER.set(logger).is_ok() {
        let _ = tracing::subscriber::set_global_default(Forward);
    }
}

fn level_number(l: &Level) -> u8 {
    match *l {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARN,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        _ => level::TRACE,
    }
}

struct Forward;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The host's filter can change per run; ask on every event.
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        LOGGER.get().is_some_and(|l| {
            meta.is_event() && l.enabled(level_number(meta.level()), meta.target().into())
        })
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(logger) = LOGGER.get() else {
            return;
        };
        let mut message = Message::default();
        event.record(&mut message);
        let meta = event.metadata();
        logger.log(
            level_number(meta.level()),
            meta.target().into(),
            message.0.trim_start().into(),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
