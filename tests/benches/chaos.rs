//! kill -9 under load, at scale: `cargo build --release --workspace && cargo bench -p iot-connector-tests --bench chaos`.
//! One source fed by a real peer (`CHAOS_SOURCE`: `mqtt`, the default, QoS 1 from mosquitto at
//! 2,000 messages/s; `modbus`, a counting tokio-modbus device polled 100 times a second;
//! `opcua`, an async-opcua server changing a value 100 times a second; `CHAOS_RATE` overrides
//! the rate) with random kill -9s of the worker, the uplink and the supervisor (`CHAOS_KILLS` of
//! each, 1,000 by default); then every value the peer gave must have reached the emulator or be
//! one a kill may take. Prints `kills_worker=N kills_uplink=N kills_supervisor=N published=N
//! lost=N duplicates=N max_recovery_ms=N window_lost=N gap=N` and fails when anything was lost.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::panic)] // a bench binary

use iot_connector_tests::{
    bench_runtime,
    chaos::{self, Modbus, Mqtt, Opcua},
};

fn main() {
    let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let kills = usize::try_from(setting("CHAOS_KILLS").unwrap_or(1000)).unwrap();
    let source = std::env::var("CHAOS_SOURCE").unwrap_or_else(|_| "mqtt".into());
    let runtime = bench_runtime();
    let report = match source.as_str() {
        "mqtt" => {
            let rate = setting("CHAOS_RATE").unwrap_or(2000);
            runtime.block_on(async { chaos::run(Mqtt::start().await, kills, rate).await })
        }
        "modbus" => {
            let rate = setting("CHAOS_RATE").unwrap_or(100);
            runtime.block_on(async { chaos::run(Modbus::start(rate).await, kills, rate).await })
        }
        "opcua" => {
            let rate = setting("CHAOS_RATE").unwrap_or(100);
            runtime.block_on(async { chaos::run(Opcua::start().await, kills, rate).await })
        }
        other => panic!("CHAOS_SOURCE={other}: use mqtt, modbus or opcua"),
    };
    println!("source={source} {report}");
    assert_eq!(report.account.lost, 0, "{report}");
}
