//! The chaos runs, short: a few kill -9s of each process kind while a real peer feeds the
//! source; nothing is lost beyond what a kill may take (`cargo bench -p iot-connector-tests
//! --bench chaos` runs them with 1,000 of each).
#![allow(clippy::print_stdout)] // the figures of the run

use iot_connector_tests::chaos::{self, Modbus, Mqtt, Opcua, Report};

const KILLS: usize = 3;

fn check(report: &Report) {
    println!("{report}");
    assert_eq!(report.account.lost, 0, "{report}");
    assert_eq!(
        (
            report.kills_worker,
            report.kills_uplink,
            report.kills_supervisor
        ),
        (KILLS, KILLS, KILLS),
        "{report}"
    );
    assert!(report.published > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_process_kind_under_mqtt_load_loses_no_message() {
    let report = chaos::run(Mqtt::start().await, KILLS, 500).await;
    check(&report);
    assert_eq!(
        report.account.window_lost + report.account.gap,
        0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_process_kind_loses_only_the_killed_modbus_workers_window() {
    check(&chaos::run(Modbus::start(100).await, KILLS, 100).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_process_kind_loses_only_the_killed_opcua_workers_window_and_gap() {
    check(&chaos::run(Opcua::start().await, KILLS, 100).await);
}
