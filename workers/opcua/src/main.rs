//! `iot-connector-opcua`: the OPC-UA worker. It keeps one session with one OPC-UA server (the
//! `[[sources]]` entry it was started for), monitors the configured and discovered variables
//! through subscriptions, and pushes one record per value change to the uplink through
//! `iot-connector-runtime`.
//!
//! - [`session`]: endpoint and security selection that fails closed, identity, connect
//!   timeout, retry forever, the async-opcua publish-stall workaround, the data watchdog, gap
//!   rows and the read of current values after each reconnect.
//! - [`pki`]: the connector's client certificate (created once) and the pinned server
//!   certificates under `<state_dir>/pki`.
//! - [`nodes`]: `ns=`, `nsu=` and browse-path node references, browse discovery, monitored-item
//!   requests grouped by publishing interval.
//! - [`mapping`]: `DataValue` → the opcua table's value columns, timestamps and quality.
//!
//! Trust: the OPC-UA server and the network to it are untrusted. Everything the server sends
//! is decoded by async-opcua's bounded decoder; this crate maps it without panicking (no
//! unwrap or indexing on server data), a server certificate is only accepted when pinned in
//! `trusted/`, and a connection is never made with weaker security than configured. The
//! supervisor and uplink are trusted peers reached through the runtime. No `unsafe`.
#![forbid(unsafe_code)]

mod mapping;
mod nodes;
mod pki;
mod session;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use iot_connector_config::OpcuaSource;
use iot_connector_ipc::ExitStatus;
use iot_connector_runtime::{Sink, SinkOptions, StartError, init_logging, start};

use crate::{
    nodes::Plan,
    session::{SessionError, Worker},
};

/// How long a stopping worker waits for its last records to become durable.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);
/// Records in flight to the uplink at most: enough for full batches, small enough that 10 000
/// monitored items fit the memory budget (8 MB + 1 KB per item).
const WINDOW: usize = 2048;
/// Where the supervisor says the state directory is.
const STATE_DIR_ENV: &str = "IOT_CONNECTOR_STATE_DIR";

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// The supervisor's control channel failed during start-up.
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    /// The configuration slice is not an OPC-UA source.
    #[error("source_config is not an OPC-UA source: {0}")]
    Parse(#[source] toml::de::Error),
    /// The source is invalid.
    #[error("invalid OPC-UA source {source_name:?}: {}", problems.join("; "))]
    Invalid {
        /// The source's name.
        source_name: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// The session could not be set up.
    #[error("OPC-UA source {source_name:?}: {error}")]
    Session {
        /// The source's name.
        source_name: String,
        /// Why.
        #[source]
        error: SessionError,
    },
    /// The async runtime could not be built.
    #[error("cannot build the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl MainError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Start(e) => e.exit_status(),
            Self::Parse(_)
            | Self::Invalid { .. }
            | Self::Session {
                error: SessionError::Config(_),
                ..
            } => ExitStatus::Config,
            Self::Session {
                error: SessionError::Pki(_),
                ..
            }
            | Self::Runtime(_) => ExitStatus::OsErr,
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
            tracing::error!(error = %e, "OPC-UA worker stopped.");
            e.exit_status().into()
        }
    }
}

/// `$IOT_CONNECTOR_STATE_DIR`, else `$STATE_DIRECTORY` (systemd), else `./state`, as the
/// supervisor resolves `[connector] state_dir`.
fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .or_else(|| std::env::var_os("STATE_DIRECTORY"))
        .map_or_else(|| PathBuf::from("state"), PathBuf::from)
}

async fn run() -> Result<(), MainError> {
    let (settings, mut control) = start().await?;
    let source: OpcuaSource = toml::from_str(&settings.source_config).map_err(MainError::Parse)?;
    let source_name = source.name.clone();
    let invalid = |problems| MainError::Invalid {
        source_name: source_name.clone(),
        problems,
    };
    let identity = session::check(&source).map_err(invalid)?;
    let plan = Plan::new(&source).map_err(invalid)?;
    let sink = tokio::select! {
        sink = Sink::connect(&settings, SinkOptions { window: WINDOW, ..SinkOptions::default() }) => Arc::new(sink),
        () = control.closed() => return Ok(()),
    };
    let state_dir = state_dir();
    let worker = tokio::select! {
        worker = Worker::new(source, plan, identity, &settings.connector_id, &state_dir, Arc::clone(&sink)) => {
            worker.map_err(|error| MainError::Session { source_name: source_name.clone(), error })?
        }
        () = control.closed() => return Ok(()),
    };
    tokio::select! {
        () = worker.run() => {}
        () = control.closed() => {
            tracing::info!(source = %source_name, "The supervisor closed the control channel; stopping.");
        }
    }
    let _ = tokio::time::timeout(FLUSH_ON_STOP, sink.flush()).await;
    Ok(())
}
