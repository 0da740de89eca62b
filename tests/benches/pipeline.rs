//! End-to-end throughput and durable-ack latency of the data path: test workers → uplink (spool,
//! group commit, fsync) → real Zerobus SDK over TLS → local Zerobus emulator.
//!
//! Run: `cargo build --release --workspace && cargo bench -p iot-connector-tests --bench pipeline`. Prints one line per
//! scenario, `records_per_second=N ack_p50_ms=X ack_p99_ms=Y workers=K
//! uplink_cpu_us_per_record=X worker_cpu_us_per_record=Y emulator_cpu_us_per_record=Z`, plus the
//! uplink's peak RSS; the last line is the 8-worker run. The emulator runs in a process of its
//! own; the CPU figures are user plus system time from `/proc` over the run divided by the
//! records (the workers' summed), so a loaded host changes the time but not the cost.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a bench binary

use std::{path::Path, time::Duration};

use iot_connector_proto::Table;
use iot_connector_tests::{
    Rig, bench_runtime,
    emulator::{EmulatorProcess, cpu_us},
    proc_status_kib, wait_until,
};

struct Outcome {
    records_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    uplink_peak_rss_kib: u64,
    uplink_cpu_us_per_record: f64,
    worker_cpu_us_per_record: f64,
    emulator_cpu_us_per_record: f64,
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
    let mut zerobus = EmulatorProcess::start();
    let mut rig = Rig::builder()
        .forwarding_to(zerobus.settings())
        .start()
        .await;
    let dir = rig.dir.path().to_owned();
    let uplink = rig.uplink.process.pid();
    let cpu = |pid: u32| cpu_us(pid).expect("the process is running");
    let (uplink_before, emulator_before) = (cpu(uplink), cpu(zerobus.pid()));
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
    let table = iot_connector_tests::TABLES[1];
    while zerobus.rows(table) < total {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {total} rows arrived",
            zerobus.rows(table)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_record = |us: u64| us as f64 / total as f64;
    let uplink_cpu_us_per_record = per_record(cpu(uplink) - uplink_before);
    let emulator_cpu_us_per_record = per_record(cpu(zerobus.pid()) - emulator_before);
    // A worker that has pushed all its records has exited; its zombie keeps its times.
    let worker_cpu_us_per_record =
        per_record(rig.workers.iter().map(|w| cpu(w.pid())).sum::<u64>());
    wait_until(Duration::from_secs(30), || {
        (0..workers).all(|w| dir.join(format!("latency{w}")).exists())
    })
    .await;
    let (p50_ms, p99_ms) = latencies(&dir, workers);
    let uplink_peak_rss_kib = proc_status_kib(uplink, "VmHWM").unwrap_or(0);
    rig.stop().await;
    Outcome {
        records_per_second: total as f64 / elapsed,
        p50_ms,
        p99_ms,
        uplink_peak_rss_kib,
        uplink_cpu_us_per_record,
        worker_cpu_us_per_record,
        emulator_cpu_us_per_record,
    }
}

fn report(outcome: &Outcome, workers: usize) {
    println!(
        "uplink_peak_rss_mib={:.1} workers={workers}",
        outcome.uplink_peak_rss_kib as f64 / 1024.0
    );
    println!(
        "records_per_second={:.0} ack_p50_ms={:.2} ack_p99_ms={:.2} workers={workers} \
         uplink_cpu_us_per_record={:.2} worker_cpu_us_per_record={:.2} emulator_cpu_us_per_record={:.2}",
        outcome.records_per_second,
        outcome.p50_ms,
        outcome.p99_ms,
        outcome.uplink_cpu_us_per_record,
        outcome.worker_cpu_us_per_record,
        outcome.emulator_cpu_us_per_record
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
