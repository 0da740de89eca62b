//! Logging set-up shared by every child process: `tracing` to stderr (the supervisor's stdout and
//! stderr both reach journald), text or JSON as `[connector] log_format` says, filtered by
//! `[connector] log_level`, and every line tagged with the process's source name, so that one
//! journal holds every process and stays searchable per source.

use std::fmt;

use tokio::time::{Duration, Instant};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Set by the supervisor for each child: its source name (`uplink` for the uplink).
pub const SOURCE_ENV: &str = "IOT_CONNECTOR_SOURCE";
/// Set by the supervisor for each child: `text` or `json`.
pub const FORMAT_ENV: &str = "IOT_CONNECTOR_LOG_FORMAT";

/// Prefixes text lines with `source=<name>` and adds `"source"` to JSON objects.
struct Tagged<F> {
    source: String,
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{').filter(|_| self.json) {
            Some(rest) => write!(writer, "{{\"source\":{:?},{rest}", self.source),
            None => write!(writer, "source={} {line}", self.source),
        }
    }
}

/// Installs the subscriber. Without the supervisor's variables it logs plain text at `info`.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let source = std::env::var(SOURCE_ENV).unwrap_or_default();
    let json = std::env::var(FORMAT_ENV).is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if source.is_empty() {
        builder.init();
    } else if json {
        let inner = tracing_subscriber::fmt::format().json();
        builder
            .event_format(Tagged {
                source,
                json,
                inner,
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .init();
    } else {
        let inner = tracing_subscriber::fmt::format().with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(Tagged {
                source,
                json,
                inner,
            })
            .init();
    }
}

/// How often a log line caused by field data or a peer (a bad payload, an exception answer, an
/// oversize value, a refused connection) may be written per kind; the rest are counted and
/// reported with the next line.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Lets one log line through per [`LOG_EVERY`] and counts the rest, so that a device or
/// broker sending the same bad data many times a second, or a local process opening
/// connections in a loop, cannot flood the journal.
#[derive(Debug, Default)]
pub struct LogGate {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub fn open(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}
