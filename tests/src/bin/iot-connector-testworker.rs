//! A synthetic worker built on `iot-connector-runtime`'s skeleton, for end-to-end tests and
//! benchmarks of the data path: it pushes records numbered by their sequence number until
//! `count`, and keeps the highest durably acknowledged sequence number in `acked_file`, so a
//! test can check that every acknowledged record arrived.
//!
//! It takes any source's slice, and its parameters as TOML in `$IOT_CONNECTOR_TEST_WORKER`
//! ([`iot_connector_tests::TEST_WORKER_ENV`], set by the test harness): `count` (last sequence
//! number to push), `table` (a `Table` key; default: the table of the source's protocol),
//! `acked_file` (optional path), `payload_bytes` (optional MQTT payload size), `rate` (records
//! per second, unlimited when absent) and `latency_file` (optional path: the p50 and p99 of
//! push-to-durable-ack latency in ms, sampled, written once everything is acknowledged).
//! Without the variable (the supervisor's end-to-end tests run it in place of a protocol
//! worker, with a cleared environment) it streams records of its source's table at 200 per
//! second until stopped.
#![forbid(unsafe_code)]

use std::{process::ExitCode, sync::Arc, time::Duration};

use iot_connector_config::Source;
use iot_connector_proto::{Detail, ModbusDetail, MqttDetail, OpcuaDetail, Quality, Table, Value};
use iot_connector_runtime::{Context, InvalidSource, Sink, Worker, health, now_us};
use iot_connector_tests::TEST_WORKER_ENV;

#[derive(Debug, serde::Deserialize)]
struct TestSource {
    #[serde(default = "unbounded")]
    count: u64,
    table: Option<String>,
    acked_file: Option<String>,
    #[serde(default)]
    payload_bytes: usize,
    rate: Option<u64>,
    latency_file: Option<String>,
}

fn unbounded() -> u64 {
    u64::MAX
}

struct TestWorker {
    source: TestSource,
    table: Table,
}

impl Worker for TestWorker {
    type Source = Source;
    type Error = InvalidSource;
    const NAME: &'static str = "Test";

    fn prepare(source: Source, context: &Context) -> Result<Self, InvalidSource> {
        let bad = |why: String| context.invalid(vec![format!("{TEST_WORKER_ENV}: {why}")]);
        let text = std::env::var(TEST_WORKER_ENV).unwrap_or_default();
        let parameters: TestSource = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let table = match &parameters.table {
            None => source.protocol().table(),
            Some(key) => Table::ALL
                .into_iter()
                .find(|t| t.key() == key)
                .ok_or_else(|| bad(format!("table {key:?} is not a table")))?,
        };
        Ok(Self {
            source: parameters,
            table,
        })
    }

    async fn run(self, _: Context, sink: Arc<Sink>) -> Result<(), InvalidSource> {
        push(self.source, self.table, sink).await;
        std::future::pending().await
    }
}

fn main() -> ExitCode {
    iot_connector_runtime::main::<TestWorker>()
}

/// The pace of an endless stream when no `rate` is given.
const STREAMING_RATE: u64 = 200;

/// Every how many records one push-to-ack latency is sampled.
const SAMPLE_EVERY: u64 = 64;

async fn push(source: TestSource, table: Table, sink: Arc<Sink>) {
    health().set_connected(true);
    if let Some(path) = source.acked_file.clone() {
        let mut acked = sink.acked();
        tokio::spawn(async move {
            loop {
                let value = *acked.borrow_and_update();
                let tmp = format!("{path}.tmp");
                let text = value.map_or(String::new(), |v| v.to_string());
                if std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .is_err()
                {
                    tracing::warn!(path = %path, "Cannot write acked_file.");
                }
                if acked.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let samples = Arc::new(std::sync::Mutex::new(Latencies::default()));
    if source.latency_file.is_some() {
        let (mut acked, samples) = (sink.acked(), Arc::clone(&samples));
        tokio::spawn(async move {
            while acked.changed().await.is_ok() {
                let up_to = (*acked.borrow_and_update()).unwrap_or(0);
                if let Ok(mut samples) = samples.lock() {
                    samples.acked(up_to);
                }
            }
        });
    }
    let pid = std::process::id();
    let payload = vec![b'x'; source.payload_bytes];
    let started = tokio::time::Instant::now();
    let mut pushed = 0u64;
    while sink.next_seq() <= source.count {
        let rate = source
            .rate
            .or((source.count == u64::MAX).then_some(STREAMING_RATE));
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = started + Duration::from_secs_f64(pushed as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        pushed += 1;
        let seq = sink.next_seq();
        if seq.is_multiple_of(SAMPLE_EVERY)
            && let Ok(mut samples) = samples.lock()
        {
            samples.pending.push_back((seq, std::time::Instant::now()));
        }
        let detail = match table {
            Table::Opcua => Detail::Opcua(OpcuaDetail {
                node_id: format!("ns=2;i={seq}"),
                ..Default::default()
            }),
            Table::Modbus => Detail::Modbus(ModbusDetail {
                tag_name: format!("t{}", seq % 100),
                ..Default::default()
            }),
            // The status table takes no data records: a test that names it gets MQTT rows.
            Table::Mqtt | Table::Status => Detail::Mqtt(MqttDetail {
                topic: "test/seq".into(),
                payload: payload.clone(),
                ..Default::default()
            }),
        };
        // The value names the writing process, so a sequence number reused by two processes
        // would show up downstream as one record_id with two values.
        sink.push(
            now_us(),
            Quality::Good,
            Value::Str(format!("{pid}:{seq}")),
            detail,
        )
        .await;
    }
    sink.flush().await;
    tracing::info!(count = source.count, "All records acknowledged.");
    if let Some(path) = &source.latency_file {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = samples.lock().map(|s| s.percentiles()).unwrap_or_default();
        if std::fs::write(path, text).is_err() {
            tracing::warn!(path = %path, "Cannot write latency_file.");
        }
    }
}

/// Sampled push-to-durable-ack latencies.
#[derive(Debug, Default)]
struct Latencies {
    pending: std::collections::VecDeque<(u64, std::time::Instant)>,
    done_ms: Vec<f64>,
}

impl Latencies {
    fn acked(&mut self, up_to: u64) {
        while let Some((_, pushed)) = self.pending.front().filter(|(seq, _)| *seq <= up_to) {
            self.done_ms.push(pushed.elapsed().as_secs_f64() * 1000.0);
            self.pending.pop_front();
        }
    }

    /// `"<p50> <p99>"` in milliseconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a rank within the sample
    fn percentiles(&self) -> String {
        let mut sorted = self.done_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(index).copied().unwrap_or(f64::NAN)
        };
        format!("{:.3} {:.3}", at(0.50), at(0.99))
    }
}
