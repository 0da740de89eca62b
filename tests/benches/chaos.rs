//! kill -9 under load, at scale: `cargo build --release --workspace && cargo bench -p iot-connector-tests --bench chaos`.
//! MQTT QoS 1 from a real mosquitto at 2,000 messages/s into the whole connector, with random
//! kill -9s of the worker, the uplink and the supervisor (`CHAOS_KILLS` of each, 1,000 by
//! default; `CHAOS_RATE` messages/s); then every published message must have reached the
//! emulator. Prints `kills_worker=N kills_uplink=N kills_supervisor=N published=N lost=N
//! duplicates=N max_recovery_ms=N` and fails when anything was lost.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a bench binary

use iot_connector_tests::{bench_runtime, chaos};

fn main() {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let kills = usize::try_from(setting("CHAOS_KILLS", 1000)).unwrap();
    let rate = setting("CHAOS_RATE", 2000);
    let report = bench_runtime().block_on(chaos::run(kills, rate));
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
}
