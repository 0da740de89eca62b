//! A synthetic worker built on `iot-connector-runtime`, for end-to-end tests and benchmarks of
//! the data path: it pushes records numbered by their sequence number until `count`, and keeps the
//! highest durably acknowledged sequence number in `acked_file`, so a test can check that every
//! acknowledged record arrived.
//!
//! Its `source_config` (TOML): `count` (last sequence number to push), `table` (`opcua`, `mqtt`,
//! `modbus`), `acked_file` (optional path), `payload_bytes` (optional MQTT payload size).
#![forbid(unsafe_code)]

use std::{process::ExitCode, time::Duration};

use iot_connector_proto::{Detail, ModbusDetail, MqttDetail, OpcuaDetail, Quality, Value};
use iot_connector_runtime::{Sink, SinkOptions, init_logging, now_us, start};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSource {
    count: u64,
    table: String,
    acked_file: Option<String>,
    #[serde(default)]
    payload_bytes: usize,
}

fn main() -> ExitCode {
    init_logging();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(71);
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let (settings, mut control) = match start().await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            return e.exit_status().into();
        }
    };
    let source: TestSource = match toml::from_str(&settings.source_config) {
        Ok(source) => source,
        Err(e) => {
            tracing::error!(error = %e, "Bad source_config.");
            return iot_connector_ipc::ExitStatus::Config.into();
        }
    };
    let sink = std::sync::Arc::new(Sink::connect(&settings, SinkOptions::default()).await);
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
    let pid = std::process::id();
    let payload = vec![b'x'; source.payload_bytes];
    while sink.next_seq() <= source.count {
        let seq = sink.next_seq();
        let detail = match source.table.as_str() {
            "opcua" => Detail::Opcua(OpcuaDetail {
                node_id: format!("ns=2;i={seq}"),
                ..Default::default()
            }),
            "modbus" => Detail::Modbus(ModbusDetail {
                tag_name: format!("t{}", seq % 100),
                ..Default::default()
            }),
            _ => Detail::Mqtt(MqttDetail {
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
    tokio::select! {
        () = control.closed() => {}
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
    ExitCode::SUCCESS
}
