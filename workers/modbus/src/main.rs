//! `iot-connector-modbus`: the Modbus worker. It polls one device (Modbus TCP, RTU on a serial
//! port, or RTU over TCP) for the registers and coils of its `[[sources]]` entry, decodes them
//! and pushes one record per tag reading to the uplink through `iot-connector-runtime`.
//!
//! - [`decode`]: data types, byte orders, strings, scale and offset: the only place that does it.
//! - [`plan`]: the read planner, which merges tags into as few requests as the device allows.
//! - [`poll`]: the connection, the schedule, report-by-exception and status rows.
//!
//! Trust: the device and the network to it are untrusted. Every answer is checked against its
//! request (function, length) before it is decoded, and a malformed answer becomes bad-quality
//! records, never a panic. The supervisor and uplink are trusted peers reached through the
//! runtime. No `unsafe`.
#![forbid(unsafe_code)]

mod decode;
mod plan;
mod poll;

use std::{process::ExitCode, time::Duration};

use iot_connector_config::ModbusSource;
use iot_connector_ipc::ExitStatus;
use iot_connector_runtime::{Sink, SinkOptions, StartError, init_logging, start};

use crate::poll::{Device, Poller};

/// How long a stopping worker waits for its last records to become durable.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// The supervisor's control channel failed during start-up.
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    /// The configuration slice is not a Modbus source.
    #[error("source_config is not a Modbus source: {0}")]
    Parse(#[source] toml::de::Error),
    /// The source is invalid.
    #[error("invalid Modbus source {source_name:?}: {}", problems.join("; "))]
    Invalid {
        /// The source's name.
        source_name: String,
        /// Every problem, with its place.
        problems: Vec<String>,
    },
    /// The async runtime could not be built.
    #[error("cannot build the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl MainError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Start(e) => e.exit_status(),
            Self::Parse(_) | Self::Invalid { .. } => ExitStatus::Config,
            Self::Runtime(_) => ExitStatus::OsErr,
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MainError::Runtime)
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => ExitStatus::Ok.into(),
        Err(e) => {
            tracing::error!(error = %e, "Modbus worker stopped.");
            e.exit_status().into()
        }
    }
}

async fn run() -> Result<(), MainError> {
    let (mut settings, mut control) = start().await?;
    // The slice is needed once: a map of 10,000 registers is 1.5 MB of text.
    let text = std::mem::take(&mut settings.source_config);
    let source: ModbusSource = toml::from_str(&text).map_err(MainError::Parse)?;
    drop(text);
    let source_name = source.name.clone();
    let device = Device::new(source).map_err(|problems| MainError::Invalid {
        source_name: source_name.clone(),
        problems,
    })?;
    // Parsing a large register map leaves its transient data freed but resident.
    iot_connector_ipc::os::release_free_memory();
    let sink = tokio::select! {
        sink = Sink::connect(&settings, SinkOptions::default()) => sink,
        () = control.closed() => return Ok(()),
    };
    let mut poller = Poller::new(device, &sink);
    tokio::select! {
        () = poller.run() => {}
        () = control.closed() => {
            tracing::info!(
                source = %source_name,
                "The supervisor closed the control channel; stopping."
            );
        }
    }
    drop(poller);
    let _ = tokio::time::timeout(FLUSH_ON_STOP, sink.flush()).await;
    Ok(())
}
