//! A day-long Zerobus outage, compressed: `cargo build --release --workspace && cargo bench -p
//! iot-connector-tests --bench outage`. Two sources stream `OUTAGE_RATE` records a second
//! (10,000 by default) into a spool of `OUTAGE_SPOOL_MB` (200) while Zerobus is down for
//! `OUTAGE_S` seconds (150): the spool fills and `drop_oldest` makes room, as it would after
//! hours; then Zerobus returns and the backlog drains while the sources go on. Prints
//! `acked=N delivered=N dropped_reported=N dropped_counted=N drop_rows=N lost=N
//! evicted_in_flight=N backlog_rows=N resume_s=X drain_s=X drain_records_per_second=N
//! live_records_per_second=N` and fails when a record is neither delivered nor reported dropped,
//! or the status rows and the counter disagree.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a bench binary

use std::time::Duration;

use iot_connector_tests::{bench_runtime, outage};

fn main() {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let settings = outage::Settings {
        outage: Duration::from_secs(setting("OUTAGE_S", 150)),
        rate: setting("OUTAGE_RATE", 10_000),
        spool_bytes: setting("OUTAGE_SPOOL_MB", 200) << 20,
    };
    let report = bench_runtime().block_on(outage::run(settings));
    println!(
        "outage_s={} rate={} spool_mb={} {report}",
        settings.outage.as_secs(),
        settings.rate,
        settings.spool_bytes >> 20
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.dropped_reported, report.dropped_counted, "{report}");
    assert!(
        report.dropped_counted > 0,
        "the spool never filled: {report}"
    );
}
