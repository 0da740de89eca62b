//! `iot-connector-mqtt`: the MQTT worker, one process per broker source. It subscribes to the
//! configured topic filters (MQTT 3.1.1 or 5, `mqtt://` or `mqtts://` with rustls on ring),
//! turns every message into records of the mqtt table (`json`, `text`, `binary` or
//! `sparkplug_b` payloads), pushes them to the uplink through `iot-connector-runtime`, and
//! sends PUBACK/PUBREC only once the uplink holds them durably. With a persistent session a crash
//! anywhere means the broker redelivers: at least once, never lost.
//!
//! Trust: the broker and every publisher behind it are untrusted. Topics, payloads, Sparkplug
//! births and packet ids are decoded without panics, with bounded memory (payload size, bytes
//! in flight, Sparkplug state) and rate-limited logging; a payload that does not parse is kept
//! raw and flagged, never dropped. The supervisor and the uplink are trusted peers. The worker
//! never publishes to the broker. No `unsafe`.
#![forbid(unsafe_code)]

mod payload;
mod session;

use std::process::ExitCode;

use iot_connector_config::MqttSource;
use iot_connector_ipc::ExitStatus;
use iot_connector_runtime::{Sink, SinkOptions, StartError, init_logging, start};

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    #[error("the MQTT source configuration does not parse: {0}")]
    Parse(#[source] toml::de::Error),
    #[error("the MQTT source configuration is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl MainError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Runtime(_) => ExitStatus::OsErr,
            Self::Start(e) => e.exit_status(),
            Self::Parse(_) | Self::Invalid(_) => ExitStatus::Config,
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    // rustls wants one process-wide crypto provider before any TLS configuration is built:
    // ring, the project's one crypto stack (aws-lc is not even compiled in). An error only
    // means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run() {
        Ok(()) => ExitStatus::Ok.into(),
        Err(e) => {
            tracing::error!(error = %e, "The MQTT worker stopped.");
            e.exit_status().into()
        }
    }
}

fn run() -> Result<(), MainError> {
    // One source per process: a single thread is enough, and keeps the worker small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MainError::Runtime)?
        .block_on(serve())
}

async fn serve() -> Result<(), MainError> {
    let (settings, mut control) = start().await?;
    let source: MqttSource = toml::from_str(&settings.source_config).map_err(MainError::Parse)?;
    let plan = session::Plan::new(&source, &settings.connector_id, &settings.source)
        .map_err(MainError::Invalid)?;
    let decoder = payload::Decoder::new(&source.topics);
    tracing::info!(source = %settings.source, plan = ?plan, "Starting.");
    let sink = Sink::connect(&settings, SinkOptions::default()).await;
    tokio::select! {
        () = control.closed() => {
            // Unacknowledged messages are redelivered by the broker to the next worker.
            tracing::info!(source = %settings.source, "The supervisor closed the control channel; stopping.");
        }
        () = session::run(plan, decoder, sink) => {}
    }
    Ok(())
}
