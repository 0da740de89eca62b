//! The compressed outage, short: Zerobus down for a few seconds while two sources stream into a
//! 1 MiB spool, which fills; then Zerobus returns and the backlog drains while they go on
//! (`cargo bench -p iot-connector-tests --bench outage` runs it for minutes with 200 MiB).
#![allow(clippy::print_stdout)] // the figures of the run

use std::time::Duration;

use iot_connector_tests::outage::{self, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_exactly_what_it_reports_and_drains_when_zerobus_returns() {
    let report = outage::run(Settings {
        outage: Duration::from_secs(8),
        rate: 2000,
        spool_bytes: 1 << 20,
    })
    .await;
    println!("{report}");
    assert!(
        report.dropped_counted > 0,
        "the spool never filled: {report}"
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.dropped_reported, report.dropped_counted, "{report}");
    // The forwarder's window: 16 ingest calls of at most 2,000 rows.
    assert!(report.evicted_in_flight <= 16 * 2000, "{report}");
    assert!(report.live_records_per_second > 0.0, "{report}");
    // One report per interval while the spool stays full, not one per commit.
    let every = iot_connector_uplink::spool::DROP_REPORT_EVERY.as_secs_f64();
    assert!(
        report
            .drop_rows_min_gap_s
            .is_none_or(|gap| gap >= every - 1.0),
        "{:?} s between two dropped rows: {report}",
        report.drop_rows_min_gap_s
    );
}
