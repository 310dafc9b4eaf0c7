//! Logging: plain readable lines on a terminal; under systemd (when
//! JOURNAL_STREAM is set) no timestamps, and each line starts with its
//! syslog priority (`<3>` error ... `<7>` debug) so the journal files it.

use crate::config::{LogConfig, LogFormat};
use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Prefixes each line with `<N>` and drops the timestamp.
struct JournalFormat {
    inner: Format<Full, ()>,
}

impl<S, N> FormatEvent<S, N> for JournalFormat
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
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = match config.format {
        LogFormat::Journal => true,
        LogFormat::Plain => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if journal {
        let inner = Format::default()
            .without_time()
            .with_level(false)
            .with_target(false);
        builder
            .with_ansi(false)
            .fmt_fields(DefaultFields::new())
            .event_format(JournalFormat { inner })
            .try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    let _ = result;
}
