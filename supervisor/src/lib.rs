//! The part of `iot-connector`'s outside interface that tests walk: the metrics of `/metrics`,
//! declared once. The binary (`src/main.rs`) renders them from what its children report; this
//! library holds only the declaration, so that the end-to-end tests iterate the same list as the
//! renderer instead of a copy of it.
//!
//! Trust: constants only, no I/O. No `unsafe`.
#![forbid(unsafe_code)]

/// What a metric's `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (from zero when its process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Counts per bucket, a sum and a count.
    Histogram,
}

/// Every metric of `/metrics`. The renderer registers exactly [`Metric::ALL`], in that order, and
/// a unit test of it and the end-to-end test fail when one of them has no sample (Firecracker's
/// unused-metrics test). Each one's help text is its documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Up,
    UplinkUp,
    SourceConnected,
    SourceState,
    WorkerRestarts,
    RecordsRead,
    RecordsWritten,
    RecordsDropped,
    ParseErrors,
    SourceReconnects,
    UnackedRecords,
    SpoolBytes,
    SpoolRows,
    OldestUnackedSeconds,
    Duplicates,
    IngestLatency,
    ZerobusAckedRows,
    ZerobusReconnects,
    ZerobusCircuitOpen,
    DeadLetters,
    CertificateExpiryDays,
}

impl Metric {
    /// Every metric, in the order `/metrics` lists them.
    pub const ALL: [Self; 21] = [
        Self::Up,
        Self::UplinkUp,
        Self::SourceConnected,
        Self::SourceState,
        Self::WorkerRestarts,
        Self::RecordsRead,
        Self::RecordsWritten,
        Self::RecordsDropped,
        Self::ParseErrors,
        Self::SourceReconnects,
        Self::UnackedRecords,
        Self::SpoolBytes,
        Self::SpoolRows,
        Self::OldestUnackedSeconds,
        Self::Duplicates,
        Self::IngestLatency,
        Self::ZerobusAckedRows,
        Self::ZerobusReconnects,
        Self::ZerobusCircuitOpen,
        Self::DeadLetters,
        Self::CertificateExpiryDays,
    ];

    /// Name, type and help text, exactly as scraped: a counter's name ends in `_total`, and a
    /// histogram's samples add `_bucket`, `_sum` and `_count` to its name. Labels come from the
    /// configuration (`source`, `protocol`, `table`) or a closed set (`state`, `reason`, `le`),
    /// never from field data.
    pub const fn declaration(self) -> (&'static str, MetricKind, &'static str) {
        use MetricKind::{Counter, Gauge, Histogram};
        match self {
            Self::Up => ("iot_connector_up", Gauge, "1 while the supervisor runs."),
            Self::UplinkUp => (
                "iot_connector_uplink_up",
                Gauge,
                "1 while the uplink runs and its spool accepts writes.",
            ),
            Self::SourceConnected => (
                "iot_connector_source_connected",
                Gauge,
                "1 while the source's worker holds a session with it.",
            ),
            Self::SourceState => (
                "iot_connector_source_state",
                Gauge,
                "1 for the source's current state (connected, connecting, failed, stopped).",
            ),
            Self::WorkerRestarts => (
                "iot_connector_worker_restarts_total",
                Counter,
                "Restarts of the process since the supervisor started.",
            ),
            Self::RecordsRead => (
                "iot_connector_records_read_total",
                Counter,
                "Records the worker read from its source.",
            ),
            Self::RecordsWritten => (
                "iot_connector_records_written_total",
                Counter,
                "Records of the source committed to the spool (re-sends included).",
            ),
            Self::RecordsDropped => (
                "iot_connector_records_dropped_total",
                Counter,
                "Records not kept, by reason.",
            ),
            Self::ParseErrors => (
                "iot_connector_parse_errors_total",
                Counter,
                "Payloads that did not parse (forwarded with parse_error set).",
            ),
            Self::SourceReconnects => (
                "iot_connector_source_reconnects_total",
                Counter,
                "Reconnects of the worker to its source.",
            ),
            Self::UnackedRecords => (
                "iot_connector_unacked_records",
                Gauge,
                "Records the worker pushed that are not yet durable.",
            ),
            Self::SpoolBytes => (
                "iot_connector_spool_bytes",
                Gauge,
                "Bytes held in the spool.",
            ),
            Self::SpoolRows => (
                "iot_connector_spool_rows",
                Gauge,
                "Rows waiting in the spool, by table.",
            ),
            Self::OldestUnackedSeconds => (
                "iot_connector_oldest_unacked_seconds",
                Gauge,
                "Age of the oldest row not yet acknowledged by Zerobus.",
            ),
            Self::Duplicates => (
                "iot_connector_duplicates_total",
                Counter,
                "Re-sent records the spool already held.",
            ),
            Self::IngestLatency => (
                "iot_connector_ingest_latency_seconds",
                Histogram,
                "From a batch's arrival at the uplink to its durable acknowledgement.",
            ),
            Self::ZerobusAckedRows => (
                "iot_connector_zerobus_acked_rows_total",
                Counter,
                "Rows Zerobus acknowledged as durable, by table.",
            ),
            Self::ZerobusReconnects => (
                "iot_connector_zerobus_reconnects_total",
                Counter,
                "Zerobus streams opened, by table.",
            ),
            Self::ZerobusCircuitOpen => (
                "iot_connector_zerobus_circuit_open",
                Gauge,
                "1 while the table's stream is failing and retried with backoff.",
            ),
            Self::DeadLetters => (
                "iot_connector_dead_letters_total",
                Counter,
                "Rows moved to the dead-letter store: rejected by Zerobus for good, or damaged on disk.",
            ),
            Self::CertificateExpiryDays => (
                "iot_connector_certificate_expiry_days",
                Gauge,
                "Days until the nearest certificate the source depends on expires.",
            ),
        }
    }

    /// The name as scraped.
    pub const fn name(self) -> &'static str {
        self.declaration().0
    }

    /// The type.
    pub const fn kind(self) -> MetricKind {
        self.declaration().1
    }

    /// The help text.
    pub const fn help(self) -> &'static str {
        self.declaration().2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_holds_every_metric_once_in_declaration_order() {
        for (i, metric) in Metric::ALL.into_iter().enumerate() {
            assert_eq!(metric as usize, i, "{metric:?}");
        }
    }

    #[test]
    fn names_follow_the_convention_and_only_counters_end_in_total() {
        for metric in Metric::ALL {
            let name = metric.name();
            assert!(name.starts_with("iot_connector_"), "{name}");
            assert_eq!(
                name.ends_with("_total"),
                metric.kind() == MetricKind::Counter,
                "{name}"
            );
            assert!(metric.help().ends_with('.'), "{name}");
        }
    }
}
