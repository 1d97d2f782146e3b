//! How `tracing` events look on stderr: like every other ktstr line,
//! `ktstr: warning: ...`, `ktstr: debug: ktstr::pipeline: ...`.
//!
//! tracing-subscriber's default format (`  WARN target: message`) neither
//! carries the `ktstr:` prefix nor matches the wording of warnings printed
//! by the progress display, so a log and a `-v` run read as two tools.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::progress::LABEL;

/// `ktstr: <level>: [<target>: ]<message> <fields>`; the target only for
/// debug and trace events, which are for whoever reads the source.
pub struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from `log` records (reqwest, rustls) carry their real
        // target only in their normalized metadata.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let (word, colour) = match *meta.level() {
            Level::ERROR => ("error", "31"),
            Level::WARN => ("warning", "33"),
            Level::INFO => ("info", "32"),
            Level::DEBUG => ("debug", "34"),
            Level::TRACE => ("trace", "35"),
        };
        write!(writer, "{LABEL}: ")?;
        if writer.has_ansi_escapes() {
            write!(writer, "\x1b[{colour}m{word}\x1b[0m: ")?;
        } else {
            write!(writer, "{word}: ")?;
        }
        if *meta.level() >= Level::DEBUG {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
