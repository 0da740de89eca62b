//! End-to-end throughput and durable-ack latency of the data path: test workers → uplink (spool,
//! group commit, fsync) → real Zerobus SDK over TLS → local Zerobus emulator.
//!
//! Run: `cargo build --release --workspace && cargo bench -p iot-connector-tests --bench pipeline`. Prints one line per
//! scenario, `records_per_second=N ack_p50_ms=X ack_p99_ms=Y workers=K`, plus the uplink's peak
//! RSS; the last line is the 8-worker run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a bench binary

use std::{path::Path, time::Duration};

use iot_connector_proto::Table;
use iot_connector_tests::{Rig, bench_runtime, proc_status_kib, wait_until};

struct Outcome {
    records_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    uplink_peak_rss_kib: u64,
}

fn latencies(dir: &Path, workers: usize) -> (f64, f64) {
    let parsed: Vec<(f64, f64)> = (0..workers)
        .filter_map(|w| std::fs::read_to_string(dir.join(format!("latency{w}"))).ok())
        .filter_map(|t| {
            let mut it = t.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
            Some((it.next()?, it.next()?))
        })
        .collect();
    let n = parsed.len().max(1) as f64;
    // The mean over workers of each worker's percentile: every worker sees the same commits.
    (
        parsed.iter().map(|p| p.0).sum::<f64>() / n,
        parsed.iter().map(|p| p.1).sum::<f64>() / n,
    )
}

async fn run(workers: usize, per_worker: u64, rate: Option<u64>) -> Outcome {
    let mut rig = Rig::start().await;
    let dir = rig.dir.path().to_owned();
    let started = std::time::Instant::now();
    for w in 0..workers {
        let config = format!(
            "count = {per_worker}\ntable = \"mqtt\"\npayload_bytes = 64\nlatency_file = {:?}\n{}",
            dir.join(format!("latency{w}")).display().to_string(),
            rate.map(|r| format!("rate = {r}\n")).unwrap_or_default(),
        );
        rig.test_worker(&format!("bench{w}"), Table::Mqtt, &config)
            .await;
    }
    let total = workers * per_worker as usize;
    let state = rig.zerobus().state().clone();
    let table = iot_connector_tests::TABLES[1];
    assert!(
        state
            .wait_until(Duration::from_secs(600), |s| s.row_count(table) >= total)
            .await
    );
    let elapsed = started.elapsed().as_secs_f64();
    wait_until(Duration::from_secs(30), || {
        (0..workers).all(|w| dir.join(format!("latency{w}")).exists())
    })
    .await;
    let (p50_ms, p99_ms) = latencies(&dir, workers);
    let uplink_peak_rss_kib = proc_status_kib(rig.uplink.process.pid(), "VmHWM").unwrap_or(0);
    rig.stop().await;
    Outcome {
        records_per_second: total as f64 / elapsed,
        p50_ms,
        p99_ms,
        uplink_peak_rss_kib,
    }
}

fn report(outcome: &Outcome, workers: usize) {
    println!(
        "uplink_peak_rss_mib={:.1} workers={workers}",
        outcome.uplink_peak_rss_kib as f64 / 1024.0
    );
    println!(
        "records_per_second={:.0} ack_p50_ms={:.2} ack_p99_ms={:.2} workers={workers}",
        outcome.records_per_second, outcome.p50_ms, outcome.p99_ms
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored: the scenarios are few.
    bench_runtime().block_on(async {
        let single = run(1, 300_000, None).await;
        let half = (single.records_per_second / 2.0) as u64;
        let paced = run(1, (half * 5).max(1000), Some(half)).await;
        println!("# half rate: {half} records/s offered by one worker");
        report(&paced, 1);
        report(&single, 1);
        let eight = run(8, 40_000, None).await;
        report(&eight, 8);
    });
}
