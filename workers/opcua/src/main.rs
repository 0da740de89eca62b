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

use std::{process::ExitCode, sync::Arc};

use iot_connector_config::OpcuaSource;
use iot_connector_ipc::ExitStatus;
use iot_connector_runtime::{Context, Failure, InvalidSource, Sink, SinkOptions, Worker};

use crate::{
    nodes::Plan,
    session::{Identity, SessionError},
};

/// Records in flight to the uplink at most: enough for full batches, small enough that 10 000
/// monitored items fit the memory budget (8 MB + 1 KB per item).
const WINDOW: usize = 2048;

/// Why the worker cannot go on.
#[derive(Debug, thiserror::Error)]
enum OpcuaError {
    /// The source is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidSource),
    /// The session could not be set up.
    #[error("OPC-UA source {source_name:?}: {error}")]
    Session {
        /// The source's name.
        source_name: String,
        /// Why.
        #[source]
        error: SessionError,
    },
}

impl Failure for OpcuaError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Invalid(_)
            | Self::Session {
                error: SessionError::Config(_),
                ..
            } => ExitStatus::Config,
            Self::Session {
                error: SessionError::Pki(_),
                ..
            } => ExitStatus::OsErr,
        }
    }
}

struct Opcua {
    source: OpcuaSource,
    plan: Plan,
    identity: Identity,
}

impl Worker for Opcua {
    type Source = OpcuaSource;
    type Error = OpcuaError;
    const NAME: &'static str = "OPC-UA";

    fn sink_options() -> SinkOptions {
        SinkOptions {
            window: WINDOW,
            ..SinkOptions::default()
        }
    }

    fn prepare(source: OpcuaSource, context: &Context) -> Result<Self, OpcuaError> {
        let invalid = |problems| context.invalid(problems);
        let identity = session::check(&source).map_err(invalid)?;
        let plan = Plan::new(&source).map_err(invalid)?;
        Ok(Self {
            source,
            plan,
            identity,
        })
    }

    async fn run(self, context: Context, sink: Arc<Sink>) -> Result<(), OpcuaError> {
        let session = |error| OpcuaError::Session {
            source_name: context.source_name.clone(),
            error,
        };
        session::Worker::new(
            self.source,
            self.plan,
            self.identity,
            &context.connector_id,
            &context.state_dir,
            sink,
        )
        .await
        .map_err(session)?
        .run()
        .await;
        Ok(())
    }
}

fn main() -> ExitCode {
    iot_connector_runtime::main::<Opcua>()
}
