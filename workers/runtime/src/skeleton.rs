//! The one life every worker process lives (Postfix's `single_server.c`: one skeleton, many
//! daemons). [`main`] owns it from `fn main` to the exit code; a protocol implements
//! [`Worker`] and nothing else:
//!
//! 1. logging, a single-threaded async runtime (one source per process needs no more);
//! 2. the control channel: handshake with the supervisor, the configuration slice received and
//!    decoded once into the protocol's own source type, `Ready`, then a heartbeat carrying
//!    [`crate::health()`] every [`crate::HEARTBEAT_INTERVAL`];
//! 3. [`Worker::prepare`]: the protocol's plan from its source, without field I/O;
//! 4. the place where the process sandbox is installed: after start-up, before the first byte
//!    from the field network or the uplink;
//! 5. the uplink connection, raced against the control channel closing;
//! 6. [`Worker::run`], raced against the order to stop: the control channel closing, or
//!    SIGTERM;
//! 7. on stop, up to [`FLUSH_ON_STOP`] for the records in flight to become durable;
//! 8. the exit code of the shared contract ([`ExitStatus`]): 0 after a stop, 78 for a source
//!    the worker cannot use (wait for a configuration change), 76 for a control channel that
//!    broke the protocol, 71 for a resource the OS refused.

use std::{future::Future, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use iot_connector_config::{FromSource, Protocol, SliceError, Source};
use iot_connector_ipc::{ExitStatus, IpcError, init_logging, os};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    Sink, SinkOptions,
    control::{self, Control},
};

/// How long a stopping worker waits for its last records to become durable.
pub const FLUSH_ON_STOP: Duration = Duration::from_secs(2);

/// What every worker knows about itself besides its source.
#[derive(Debug, Clone)]
pub struct Context {
    /// `[connector] id`, the first part of every `record_id`.
    pub connector_id: String,
    /// This worker's source name.
    pub source_name: String,
    /// `[connector] state_dir`: what must outlive the process (OPC-UA PKI) lives below it.
    pub state_dir: PathBuf,
}

/// A protocol worker: connect, read, map to records, describe its state through
/// [`crate::health()`]. Everything else is [`main`]'s.
pub trait Worker: Sized {
    /// The protocol's `[[sources]]` entry, as the supervisor validated it.
    type Source: FromSource;
    /// Why the worker cannot go on; its [`Failure::exit_status`] tells the supervisor whether
    /// a restart can help.
    type Error: Failure;
    /// The protocol's name in log lines (`Modbus`, `MQTT`, `OPC-UA`).
    const NAME: &'static str;

    /// How the worker's records travel to the uplink (the window, batch sizes).
    fn sink_options() -> SinkOptions {
        SinkOptions::default()
    }

    /// Turns the source into the worker's plan. No I/O with the field network.
    fn prepare(source: Self::Source, context: &Context) -> Result<Self, Self::Error>;

    /// Reads the source and pushes its records into `sink`, reconnecting by itself, until it
    /// fails for good (returns) or the process is told to stop (the future is dropped).
    fn run(
        self,
        context: Context,
        sink: Arc<Sink>,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// An error that ends a worker, with the exit status it ends with.
pub trait Failure: std::error::Error {
    /// The exit status of the shared contract.
    fn exit_status(&self) -> ExitStatus;
}

/// The source cannot be used as configured: the plan a worker makes from it fails. Exit 78, so
/// that the supervisor waits for a configuration change instead of restarting the worker.
#[derive(Debug, thiserror::Error)]
#[error("invalid source {source_name:?}: {}", problems.join("; "))]
pub struct InvalidSource {
    /// The source's name.
    pub source_name: String,
    /// Every problem found.
    pub problems: Vec<String>,
}

impl Failure for InvalidSource {
    fn exit_status(&self) -> ExitStatus {
        ExitStatus::Config
    }
}

impl Context {
    /// The worker's source cannot be used, for these reasons.
    pub fn invalid(&self, problems: Vec<String>) -> InvalidSource {
        InvalidSource {
            source_name: self.source_name.clone(),
            problems,
        }
    }
}

/// Why a worker process ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError<E: Failure> {
    /// The async runtime could not be built.
    #[error("cannot build the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The control channel failed or broke the protocol.
    #[error("control channel: {0}")]
    Control(#[from] IpcError),
    /// The slice does not decode: the supervisor is of another release.
    #[error("{0}")]
    Slice(#[from] SliceError),
    /// The supervisor sent the slice of another protocol's source.
    #[error("the configuration slice is a {got} source, not one for this worker")]
    WrongProtocol {
        /// The protocol of the slice.
        got: Protocol,
    },
    /// The protocol's own failure.
    #[error(transparent)]
    Worker(E),
}

impl<E: Failure> WorkerError<E> {
    /// The exit status of the shared contract.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Runtime(_) => ExitStatus::OsErr,
            Self::Control(_) | Self::Slice(_) | Self::WrongProtocol { .. } => ExitStatus::Protocol,
            Self::Worker(e) => e.exit_status(),
        }
    }
}

/// The whole life of a worker process; a worker's `fn main` returns this.
pub fn main<W: Worker>() -> ExitCode {
    init_logging();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)
        .and_then(|runtime| runtime.block_on(serve::<W>()));
    match result {
        Ok(()) => ExitStatus::Ok.into(),
        Err(e) => {
            tracing::error!(error = %e, "{} worker stopped.", W::NAME);
            e.exit_status().into()
        }
    }
}

async fn serve<W: Worker>() -> Result<(), WorkerError<W::Error>> {
    // The supervisor stops a worker with SIGTERM (SIGKILL after a grace period): a stop like
    // the channel closing, so that the records in flight get their chance to become durable.
    let mut terminate = signal(SignalKind::terminate()).map_err(WorkerError::Runtime)?;
    let (mut settings, mut control) = control::start().await?;
    // Decoded once; the slice of a large source (10,000 registers) is not kept.
    let slice = std::mem::take(&mut settings.source_config);
    let source = W::Source::from_source(Source::from_slice(&slice)?)
        .map_err(|got| WorkerError::WrongProtocol { got })?;
    drop(slice);
    let context = Context {
        connector_id: settings.connector_id.clone(),
        source_name: settings.source.clone(),
        state_dir: PathBuf::from(&settings.state_dir),
    };
    let worker = W::prepare(source, &context).map_err(WorkerError::Worker)?;
    // A large source (10,000 registers or nodes) leaves its transient start-up data freed but
    // resident: hand it back before the long run.
    os::release_free_memory();

    // The process sandbox is installed here: everything the worker needed from the filesystem
    // and its configuration is read, and nothing from the field network or the uplink has
    // arrived yet.

    let sink = tokio::select! {
        sink = Sink::connect(&settings, W::sink_options()) => Arc::new(sink),
        stopped = stop_order(&mut control, &mut terminate) => return stopped.map_err(WorkerError::Control),
    };
    let outcome = tokio::select! {
        ended = worker.run(context.clone(), Arc::clone(&sink)) => ended.map_err(WorkerError::Worker),
        stopped = stop_order(&mut control, &mut terminate) => {
            tracing::info!(source = %context.source_name, "Told to stop; stopping.");
            stopped.map_err(WorkerError::Control)
        }
    };
    let _ = tokio::time::timeout(FLUSH_ON_STOP, sink.flush()).await;
    outcome
}

/// Resolves when the supervisor tells the worker to stop: it closes the control channel or
/// sends SIGTERM (`Ok`), or it breaks the control protocol (`Err`).
async fn stop_order(control: &mut Control, terminate: &mut Signal) -> Result<(), IpcError> {
    tokio::select! {
        closed = control.closed() => closed,
        _ = terminate.recv() => Ok(()),
    }
}
