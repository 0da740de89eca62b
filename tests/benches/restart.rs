//! How fast a killed worker is back, and what the processes weigh at rest.
//!
//! Run: `cargo build --release --workspace && cargo bench -p iot-connector-tests --bench restart`. 100 kill -9s spread
//! over 25 running workers (4 each, 12 s apart, as a worker that had been running for a while is
//! killed): the time until `/health` shows it restarted and connected (p50, p99); then the idle
//! RSS of the supervisor, the uplink and a worker (the test worker: the shared runtime with no
//! protocol stack).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a bench binary

use std::time::{Duration, Instant};

use iot_connector_tests::{
    bench_runtime,
    connector::{Connector, kill, modbus_source, source_health},
    proc_status_kib,
};
use nix::sys::signal::Signal;

const SOURCES: usize = 25;
const ROUNDS: usize = 4;
/// Longer than the restart policy's healthy run, shorter than its intensity window per 4 kills.
const ROUND_SPACING: Duration = Duration::from_secs(12);

fn rss_kib(pid: i32) -> u64 {
    u32::try_from(pid)
        .ok()
        .and_then(|pid| proc_status_kib(pid, "VmRSS"))
        .unwrap_or(0)
}

fn source_state(c: &Connector, name: &str) -> Option<(u64, String)> {
    let (200, health) = c.health() else {
        return None;
    };
    let source = source_health(&health, name);
    Some((
        source["restarts"].as_u64()?,
        source["state"].as_str()?.to_owned(),
    ))
}

fn main() {
    bench_runtime().block_on(async {
        let names: Vec<String> = (0..SOURCES).map(|i| format!("plc{i}")).collect();
        let sources: String = names.iter().map(|n| modbus_source(n, 1502)).collect();
        let c = Connector::start(&sources).await;
        let all_connected = |c: &Connector| {
            names
                .iter()
                .all(|n| source_state(c, n).is_some_and(|(_, s)| s == "connected"))
        };
        assert!(c.wait_for(Duration::from_secs(60), all_connected).await);
        let mut samples_ms = Vec::with_capacity(SOURCES * ROUNDS);
        for round in 0..ROUNDS {
            let round_started = Instant::now();
            for name in &names {
                let pid = c.pid(name).unwrap();
                let killed = Instant::now();
                kill(pid, Signal::SIGKILL);
                let restarts = round as u64 + 1;
                loop {
                    if source_state(&c, name)
                        .is_some_and(|(r, s)| r >= restarts && s == "connected")
                    {
                        break;
                    }
                    assert!(
                        killed.elapsed() < Duration::from_secs(30),
                        "{name} did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                samples_ms.push(killed.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(ROUND_SPACING.saturating_sub(round_started.elapsed())).await;
        }
        samples_ms.sort_by(f64::total_cmp);
        let at = |q: f64| samples_ms[((samples_ms.len() - 1) as f64 * q).round() as usize];
        tokio::time::sleep(Duration::from_secs(3)).await;
        let supervisor = c.process.id().unwrap() as i32;
        let uplink = c.pid("uplink").unwrap();
        let worker = c.pid("plc0").unwrap();
        println!(
            "idle_rss_kib supervisor={} uplink={} worker={}",
            rss_kib(supervisor),
            rss_kib(uplink),
            rss_kib(worker)
        );
        println!(
            "kill9_to_reconnected_p50_ms={:.1} p99_ms={:.1} kills={}",
            at(0.5),
            at(0.99),
            samples_ms.len()
        );
    });
}
