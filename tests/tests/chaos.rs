//! The chaos run, short: a few kill -9s of each process kind under QoS 1 load; nothing the
//! broker took is lost (`cargo bench -p iot-connector-tests --bench chaos` runs it with 1,000 of each).
#![allow(clippy::print_stdout)] // the figures of the run

use iot_connector_tests::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_process_kind_under_load_loses_no_message() {
    let report = chaos::run(3, 500).await;
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(
        (
            report.kills_worker,
            report.kills_uplink,
            report.kills_supervisor
        ),
        (3, 3, 3),
        "{report}"
    );
    assert!(report.published > 0, "{report}");
}
