//! `GET /metrics`: Prometheus text exposition. Every metric is declared once in [`METRICS`];
//! labels come from the configuration (source, protocol, table), never from field data.

use std::fmt::Write as _;

use iot_connector_proto::{ACK_LATENCY_BUCKETS_MS, ChildReport, Table};

use crate::board::{Board, Phase, UPLINK};

/// Every metric: name, type, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("iot_connector_up", "gauge", "1 while the supervisor runs."),
    (
        "iot_connector_uplink_up",
        "gauge",
        "1 while the uplink runs and its spool accepts writes.",
    ),
    (
        "iot_connector_source_connected",
        "gauge",
        "1 while the source's worker holds a session with it.",
    ),
    (
        "iot_connector_source_state",
        "gauge",
        "1 for the source's current state (connected, connecting, failed, stopped).",
    ),
    (
        "iot_connector_worker_restarts_total",
        "counter",
        "Restarts of the process since the supervisor started.",
    ),
    (
        "iot_connector_records_read_total",
        "counter",
        "Records the worker read from its source.",
    ),
    (
        "iot_connector_records_written_total",
        "counter",
        "Records of the source committed to the spool (re-sends included).",
    ),
    (
        "iot_connector_records_dropped_total",
        "counter",
        "Records not kept, by reason.",
    ),
    (
        "iot_connector_parse_errors_total",
        "counter",
        "Payloads that did not parse (forwarded with parse_error set).",
    ),
    (
        "iot_connector_source_reconnects_total",
        "counter",
        "Reconnects of the worker to its source.",
    ),
    (
        "iot_connector_unacked_records",
        "gauge",
        "Records the worker pushed that are not yet durable.",
    ),
    (
        "iot_connector_spool_bytes",
        "gauge",
        "Bytes held in the spool.",
    ),
    (
        "iot_connector_spool_rows",
        "gauge",
        "Rows waiting in the spool, by table.",
    ),
    (
        "iot_connector_oldest_unacked_seconds",
        "gauge",
        "Age of the oldest row not yet acknowledged by Zerobus.",
    ),
    (
        "iot_connector_duplicates_total",
        "counter",
        "Re-sent records the spool already held.",
    ),
    (
        "iot_connector_ingest_latency_seconds",
        "histogram",
        "From a batch's arrival at the uplink to its durable acknowledgement.",
    ),
    (
        "iot_connector_zerobus_acked_rows_total",
        "counter",
        "Rows Zerobus acknowledged as durable, by table.",
    ),
    (
        "iot_connector_zerobus_reconnects_total",
        "counter",
        "Zerobus streams opened, by table.",
    ),
    (
        "iot_connector_zerobus_circuit_open",
        "gauge",
        "1 while the table's stream is failing and retried with backoff.",
    ),
    (
        "iot_connector_dead_letters_total",
        "counter",
        "Rows Zerobus rejected for good, moved to the dead-letter store.",
    ),
    (
        "iot_connector_certificate_expiry_days",
        "gauge",
        "Days until the nearest certificate the source depends on expires.",
    ),
];

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub fn render(board: &Board) -> String {
    let snapshot = board.snapshot();
    let uplink = board.uplink();
    let mut samples: Vec<(&str, String, f64)> = vec![("iot_connector_up", String::new(), 1.0)];
    samples.push((
        "iot_connector_uplink_up",
        String::new(),
        f64::from(u8::from(uplink.as_ref().is_some_and(|u| u.accepting))),
    ));
    for (name, entry) in &snapshot {
        let labels = format!(
            "source=\"{}\",protocol=\"{}\"",
            escape(name),
            escape(&entry.protocol)
        );
        samples.push((
            "iot_connector_worker_restarts_total",
            labels.clone(),
            entry.restarts as f64,
        ));
        if name == UPLINK {
            continue;
        }
        for state in ["connected", "connecting", "failed", "stopped"] {
            let value = f64::from(u8::from(entry.state() == state));
            samples.push((
                "iot_connector_source_state",
                format!("{labels},state=\"{state}\""),
                value,
            ));
        }
        let worker = match &entry.report {
            Some(ChildReport::Worker(w)) if entry.phase == Phase::Running => Some(w.clone()),
            _ => None,
        };
        let worker = worker.unwrap_or_default();
        samples.push((
            "iot_connector_source_connected",
            labels.clone(),
            f64::from(u8::from(worker.connected)),
        ));
        samples.push((
            "iot_connector_records_read_total",
            labels.clone(),
            worker.records_read as f64,
        ));
        samples.push((
            "iot_connector_parse_errors_total",
            labels.clone(),
            worker.parse_errors as f64,
        ));
        samples.push((
            "iot_connector_source_reconnects_total",
            labels.clone(),
            worker.reconnects as f64,
        ));
        samples.push((
            "iot_connector_unacked_records",
            labels.clone(),
            worker.unacked as f64,
        ));
        for (reason, count) in &worker.dropped {
            samples.push((
                "iot_connector_records_dropped_total",
                format!("{labels},reason=\"{}\"", escape(reason)),
                *count as f64,
            ));
        }
        if let Some(days) = worker.certificate_days_left {
            samples.push((
                "iot_connector_certificate_expiry_days",
                labels.clone(),
                days as f64,
            ));
        }
    }
    let uplink = uplink.unwrap_or_default();
    for (source, count) in &uplink.records_written {
        samples.push((
            "iot_connector_records_written_total",
            format!("source=\"{}\"", escape(source)),
            *count as f64,
        ));
    }
    samples.push((
        "iot_connector_records_dropped_total",
        "source=\"_uplink\",protocol=\"uplink\",reason=\"spool_full\"".into(),
        uplink.dropped_full as f64,
    ));
    samples.push((
        "iot_connector_spool_bytes",
        String::new(),
        uplink.spool_bytes as f64,
    ));
    samples.push((
        "iot_connector_oldest_unacked_seconds",
        String::new(),
        uplink.oldest_unacked_seconds,
    ));
    samples.push((
        "iot_connector_duplicates_total",
        String::new(),
        uplink.duplicates as f64,
    ));
    samples.push((
        "iot_connector_dead_letters_total",
        String::new(),
        uplink.dead_letters as f64,
    ));
    for table in Table::ALL {
        let labels = format!("table=\"{}\"", table.key());
        let i = table.index();
        let at = |values: &[u64; 4]| values.get(i).copied().unwrap_or(0) as f64;
        samples.push((
            "iot_connector_spool_rows",
            labels.clone(),
            at(&uplink.spool_rows),
        ));
        samples.push((
            "iot_connector_zerobus_acked_rows_total",
            labels.clone(),
            at(&uplink.zerobus_acked),
        ));
        samples.push((
            "iot_connector_zerobus_reconnects_total",
            labels.clone(),
            at(&uplink.zerobus_reconnects),
        ));
        let open = uplink.zerobus_failing.get(i).copied().unwrap_or(false);
        samples.push((
            "iot_connector_zerobus_circuit_open",
            labels,
            f64::from(u8::from(open)),
        ));
    }

    let mut out = String::new();
    for (name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        if *kind == "histogram" {
            histogram(
                &mut out,
                name,
                &uplink.ack_latency_counts,
                uplink.ack_latency_sum_ms,
            );
            continue;
        }
        for (_, labels, value) in samples.iter().filter(|(n, _, _)| n == name) {
            let _ = if labels.is_empty() {
                writeln!(out, "{name} {value}")
            } else {
                writeln!(out, "{name}{{{labels}}} {value}")
            };
        }
    }
    out
}

fn histogram(out: &mut String, name: &str, counts: &[u64], sum_ms: f64) {
    let mut cumulative = 0u64;
    for (i, bound_ms) in ACK_LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            bound_ms / 1000.0
        );
    }
    cumulative += counts
        .get(ACK_LATENCY_BUCKETS_MS.len())
        .copied()
        .unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", sum_ms / 1000.0);
    let _ = writeln!(out, "{name}_count {cumulative}");
}
