//! What every protocol worker shares, so that a worker is only "connect, read, map to `Record`,
//! push": the control channel to the supervisor, the connection to the uplink with its handshake,
//! sequence numbers that continue after the uplink's last durable one, batching by size and time,
//! a bounded window of unacknowledged records (the backpressure signal), durable-ack
//! notifications, and reconnection with backoff.
//!
//! Trust: the uplink and supervisor are trusted peers, but every frame is still decoded with the
//! bounded decoder of `iot-connector-ipc`. No `unsafe`.
#![forbid(unsafe_code)]

mod uplink;

pub use iot_connector_ipc::Backoff;
pub use uplink::{Sink, SinkOptions, WindowFull};

use iot_connector_ipc::{ExitStatus, FrameReader, FrameWriter, IpcError, Phase, handshake, os};
use iot_connector_proto::{Message, Role, WorkerSettings};

/// Microseconds since the epoch, UTC.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The control channel failed or spoke out of turn.
    #[error("control channel: {0}")]
    Control(#[from] IpcError),
}

impl StartError {
    /// The exit status a worker should end with.
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::Protocol
    }
}

/// Sets up logging (stderr, `RUST_LOG`, every line tagged with the source once known).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Adopts the control channel, handshakes with the supervisor, receives this worker's settings
/// and reports ready. The returned guard keeps the channel open; when the supervisor goes away,
/// [`Control::closed`] resolves.
pub async fn start() -> Result<(WorkerSettings, Control), StartError> {
    let control = os::inherited_control().map_err(IpcError::Io)?;
    let (rx, tx) = control.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    handshake(&mut reader, &mut writer, Role::Worker, Role::Supervisor).await?;
    let Message::ConfigureWorker(settings) = reader.recv_in(Phase::ChildAwaitingConfig).await?
    else {
        return Err(IpcError::Handshake("expected ConfigureWorker".into()).into());
    };
    writer.send(&Message::Ready).await?;
    Ok((
        settings,
        Control {
            reader,
            _writer: writer,
        },
    ))
}

/// The worker's end of its control channel.
#[derive(Debug)]
pub struct Control {
    reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
    _writer: FrameWriter<tokio::net::unix::OwnedWriteHalf>,
}

impl Control {
    /// Resolves when the supervisor closes the channel (or breaks the protocol): time to stop.
    pub async fn closed(&mut self) {
        while let Ok(Some(message)) = self.reader.recv().await {
            tracing::warn!(
                kind = message.kind(),
                "Ignored a control message a worker does not take."
            );
        }
    }
}
