//! `GET /metrics`: every metric of [`Metric::ALL`] in the Prometheus text format (0.0.4), written
//! by prometheus-client from one snapshot of the board. The registry is built per scrape: the
//! values are totals the children report, not events the supervisor counts, so nothing needs to
//! live between scrapes.

use std::fmt;

use iot_connector_proto::{
    ACK_LATENCY_BUCKETS_MS, ChildReport, SourceState, Table, UplinkReport, WorkerReport,
};
use iot_connector_supervisor::{Metric, MetricKind};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text},
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::{self, Registry},
};

use crate::board::{Board, Phase, UPLINK};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A sample's labels, in the order they are written.
type Labels = Vec<(&'static str, String)>;

/// One metric's samples in the board's order: prometheus-client's `Family` keeps its samples in
/// a hash map, whose order would change from one scrape to the next.
#[derive(Debug)]
struct Samples<M>(Vec<(Labels, M)>);

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Samples<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (labels, sample) in &self.0 {
            sample.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// The uplink's ack-latency histogram. The uplink reports counts per bucket, which
/// prometheus-client's own `Histogram` cannot take: it counts observations itself.
#[derive(Debug)]
struct AckLatency {
    sum_seconds: f64,
    count: u64,
    /// Upper bound in seconds and the count of that bucket alone, `+Inf` last.
    buckets: Vec<(f64, u64)>,
}

impl AckLatency {
    fn of(uplink: &UplinkReport) -> Self {
        let bounds = ACK_LATENCY_BUCKETS_MS
            .iter()
            .map(|ms| ms / 1000.0)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, bound)| {
                (
                    bound,
                    uplink.ack_latency_counts.get(i).copied().unwrap_or(0),
                )
            })
            .collect();
        Self {
            sum_seconds: uplink.ack_latency_sum_ms / 1000.0,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

impl EncodeMetric for AckLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A source as its samples need it.
struct SourceView {
    labels: Labels,
    state: SourceState,
    /// The running worker's last report; zeros while it does not run, so that no stale value
    /// outlives the process that reported it.
    report: WorkerReport,
}

/// What one scrape shows.
struct Scrape {
    /// Every process, the uplink included, with its restarts.
    processes: Vec<(Labels, u64)>,
    sources: Vec<SourceView>,
    accepting: bool,
    uplink: UplinkReport,
}

fn source_labels(name: &str, protocol: &str) -> Labels {
    vec![
        ("source", name.to_owned()),
        ("protocol", protocol.to_owned()),
    ]
}

fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key, value.to_owned()));
    labels
}

/// One sample per table, labelled `table`, from a per-table array of the uplink's report.
fn per_table<T: Copy + Default>(values: &[T]) -> impl Iterator<Item = (Labels, T)> + '_ {
    Table::ALL.into_iter().map(|table| {
        let value = values.get(table.index()).copied().unwrap_or_default();
        (vec![("table", table.key().to_owned())], value)
    })
}

fn register(registry: &mut Registry, metric: Metric, samples: impl registry::Metric) {
    // prometheus-client appends `_total` to a counter's name and a full stop to the help text;
    // the declaration holds both as scraped, so that a name found on /metrics is found in code.
    let (name, kind, help) = metric.declaration();
    let name = match kind {
        MetricKind::Counter => name.strip_suffix("_total").unwrap_or(name),
        MetricKind::Gauge | MetricKind::Histogram => name,
    };
    registry.register(name, help.strip_suffix('.').unwrap_or(help), samples);
}

fn counters(
    registry: &mut Registry,
    metric: Metric,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    register(registry, metric, Samples(samples.collect()));
}

fn gauges<N>(
    registry: &mut Registry,
    metric: Metric,
    samples: impl IntoIterator<Item = (Labels, N)>,
) where
    ConstGauge<N>: EncodeMetric + Send + Sync + fmt::Debug + 'static,
{
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    register(registry, metric, Samples(samples.collect()));
}

impl Scrape {
    fn of(board: &Board) -> Self {
        let snapshot = board.snapshot();
        let uplink = board.uplink();
        let processes = snapshot
            .iter()
            .map(|(name, e)| (source_labels(name, &e.protocol), e.restarts))
            .collect();
        let sources = snapshot
            .iter()
            .filter(|(name, _)| name.as_str() != UPLINK)
            .map(|(name, e)| SourceView {
                labels: source_labels(name, &e.protocol),
                state: e.state(),
                report: match &e.report {
                    Some(ChildReport::Worker(w)) if e.phase == Phase::Running => w.clone(),
                    _ => WorkerReport::default(),
                },
            })
            .collect();
        Self {
            processes,
            sources,
            accepting: uplink.as_ref().is_some_and(|u| u.accepting),
            uplink: uplink.unwrap_or_default(),
        }
    }

    /// Registers `metric` with its samples; the match makes every declared metric have a rule.
    fn register_metric(&self, registry: &mut Registry, metric: Metric) {
        let (sources, uplink) = (&self.sources, &self.uplink);
        let of_sources = |value: fn(&WorkerReport) -> u64| {
            sources
                .iter()
                .map(move |s| (s.labels.clone(), value(&s.report)))
        };
        match metric {
            Metric::Up => gauges(registry, metric, [(vec![], 1u64)]),
            Metric::UplinkUp => {
                gauges(registry, metric, [(vec![], u64::from(self.accepting))]);
            }
            Metric::SourceConnected => {
                gauges(registry, metric, of_sources(|w| u64::from(w.connected)));
            }
            Metric::SourceState => {
                let samples = sources.iter().flat_map(|s| {
                    SourceState::ALL.map(|state| {
                        let labels = with(&s.labels, "state", state.as_str());
                        (labels, u64::from(s.state == state))
                    })
                });
                gauges(registry, metric, samples);
            }
            Metric::WorkerRestarts => counters(registry, metric, self.processes.clone()),
            Metric::RecordsRead => counters(registry, metric, of_sources(|w| w.records_read)),
            Metric::RecordsWritten => {
                let samples = uplink
                    .records_written
                    .iter()
                    .map(|(source, n)| (vec![("source", source.clone())], *n));
                counters(registry, metric, samples);
            }
            Metric::RecordsDropped => {
                let by_workers = sources.iter().flat_map(|s| {
                    let labels = &s.labels;
                    s.report
                        .dropped
                        .iter()
                        .map(move |(reason, n)| (with(labels, "reason", reason), *n))
                });
                let by_uplink = with(&source_labels("_uplink", "uplink"), "reason", "spool_full");
                let samples = by_workers.chain([(by_uplink, uplink.dropped_full)]);
                counters(registry, metric, samples);
            }
            Metric::ParseErrors => counters(registry, metric, of_sources(|w| w.parse_errors)),
            Metric::SourceReconnects => counters(registry, metric, of_sources(|w| w.reconnects)),
            Metric::UnackedRecords => gauges(registry, metric, of_sources(|w| w.unacked)),
            Metric::SpoolBytes => gauges(registry, metric, [(vec![], uplink.spool_bytes)]),
            Metric::SpoolRows => gauges(registry, metric, per_table(&uplink.spool_rows)),
            Metric::OldestUnackedSeconds => {
                gauges(registry, metric, [(vec![], uplink.oldest_unacked_seconds)]);
            }
            Metric::Duplicates => counters(registry, metric, [(vec![], uplink.duplicates)]),
            Metric::IngestLatency => register(registry, metric, AckLatency::of(uplink)),
            Metric::ZerobusAckedRows => {
                counters(registry, metric, per_table(&uplink.zerobus_acked));
            }
            Metric::ZerobusReconnects => {
                counters(registry, metric, per_table(&uplink.zerobus_reconnects));
            }
            Metric::ZerobusCircuitOpen => {
                let samples = per_table(&uplink.zerobus_failing).map(|(l, v)| (l, u64::from(v)));
                gauges(registry, metric, samples);
            }
            Metric::DeadLetters => counters(registry, metric, [(vec![], uplink.dead_letters)]),
            Metric::CertificateExpiryDays => {
                let samples = sources.iter().filter_map(|s| {
                    let days = s.report.certificate_days_left?;
                    Some((s.labels.clone(), days))
                });
                gauges(registry, metric, samples);
            }
        }
    }
}

/// The exposition text.
pub fn render(board: &Board) -> String {
    let scrape = Scrape::of(board);
    let mut registry = Registry::default();
    for metric in Metric::ALL {
        scrape.register_metric(&mut registry, metric);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// One running worker that reports everything a worker can, and an uplink report.
    fn board() -> Board {
        let board = Board::default();
        board.add(UPLINK, UPLINK);
        board.add("plc1", "modbus");
        let uplink = UplinkReport {
            accepting: true,
            records_written: vec![("plc1".into(), 5)],
            ack_latency_counts: vec![1; ACK_LATENCY_BUCKETS_MS.len() + 1],
            ack_latency_sum_ms: 30.0,
            ..UplinkReport::default()
        };
        board.update(UPLINK, |e| {
            e.phase = Phase::Running;
            e.report = Some(ChildReport::Uplink(uplink));
            e.heartbeat_at = Some(Instant::now());
        });
        let worker = WorkerReport {
            connected: true,
            records_read: 5,
            dropped: vec![("window_full".into(), 2)],
            certificate_days_left: Some(30),
            ..WorkerReport::default()
        };
        board.update("plc1", |e| {
            e.phase = Phase::Running;
            e.report = Some(ChildReport::Worker(worker));
        });
        board
    }

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    #[test]
    fn every_declared_metric_has_a_sample() {
        let scrape = parse(&render(&board()));
        for metric in Metric::ALL {
            assert!(
                scrape.samples.iter().any(|s| s.metric == metric.name()),
                "{} has no sample",
                metric.name()
            );
        }
    }

    #[test]
    fn every_metric_has_its_declared_type_and_help() {
        let scrape = parse(&render(&board()));
        for metric in Metric::ALL {
            let (name, kind, help) = metric.declaration();
            assert_eq!(scrape.docs.get(name).map(String::as_str), Some(help));
            for sample in scrape.samples.iter().filter(|s| s.metric == name) {
                let found = match sample.value {
                    prometheus_parse::Value::Counter(_) => MetricKind::Counter,
                    prometheus_parse::Value::Gauge(_) => MetricKind::Gauge,
                    prometheus_parse::Value::Histogram(_) => MetricKind::Histogram,
                    _ => panic!("{name} is neither a counter, a gauge nor a histogram"),
                };
                assert_eq!(found, kind, "{name}");
            }
        }
    }

    #[test]
    fn samples_are_written_as_before() {
        let text = render(&board());
        for line in [
            "# HELP iot_connector_up 1 while the supervisor runs.",
            "# TYPE iot_connector_up gauge",
            "iot_connector_up 1",
            "# TYPE iot_connector_records_read_total counter",
            "iot_connector_records_read_total{source=\"plc1\",protocol=\"modbus\"} 5",
            "iot_connector_worker_restarts_total{source=\"uplink\",protocol=\"uplink\"} 0",
            "iot_connector_source_state{source=\"plc1\",protocol=\"modbus\",state=\"connected\"} 1",
            "iot_connector_source_state{source=\"plc1\",protocol=\"modbus\",state=\"stopped\"} 0",
            "iot_connector_records_dropped_total{source=\"plc1\",protocol=\"modbus\",reason=\"window_full\"} 2",
            "iot_connector_records_dropped_total{source=\"_uplink\",protocol=\"uplink\",reason=\"spool_full\"} 0",
            "iot_connector_records_written_total{source=\"plc1\"} 5",
            "iot_connector_spool_rows{table=\"opcua\"} 0",
            "iot_connector_ingest_latency_seconds_bucket{le=\"0.001\"} 1",
            "iot_connector_ingest_latency_seconds_bucket{le=\"0.0025\"} 2",
            "iot_connector_ingest_latency_seconds_bucket{le=\"5\"} 10",
            "iot_connector_ingest_latency_seconds_bucket{le=\"+Inf\"} 11",
            "iot_connector_ingest_latency_seconds_sum 0.03",
            "iot_connector_ingest_latency_seconds_count 11",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
    }
}
