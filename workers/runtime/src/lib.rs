//! What every protocol worker shares, so that a worker is only "connect, read, map to `Record`,
//! push": the control channel to the supervisor, the connection to the uplink with its handshake,
//! sequence numbers that continue after the uplink's last durable one, batching by size and time,
//! a bounded window of unacknowledged records (the backpressure signal), durable-ack
//! notifications, and reconnection with backoff.
//!
//! Trust: the uplink and supervisor are trusted peers, but every frame is still decoded with the
//! bounded decoder of `iot-connector-ipc`. No `unsafe`.
#![forbid(unsafe_code)]

mod health;
mod uplink;

pub use health::{Health, health};
pub use iot_connector_ipc::Backoff;
pub use iot_connector_proto::now_us;
pub use uplink::{Sink, SinkOptions, WindowFull};

use iot_connector_ipc::{ExitStatus, FrameReader, FrameWriter, IpcError, Phase, handshake, os};
use iot_connector_proto::{ChildReport, Message, Role, WorkerSettings};

/// How often a worker tells the supervisor it is alive.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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

pub use iot_connector_ipc::init_logging;

/// Adopts the control channel, handshakes with the supervisor, receives this worker's settings
/// and reports ready; from then on a heartbeat carries [`health()`] to the supervisor every
/// [`HEARTBEAT_INTERVAL`]. When the supervisor goes away, [`Control::closed`] resolves.
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
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = health().changed() => {}
            }
            let report = ChildReport::Worker(health().report());
            if writer.send(&Message::Heartbeat(report)).await.is_err() {
                return;
            }
        }
    });
    Ok((settings, Control { reader }))
}

/// The worker's end of its control channel.
#[derive(Debug)]
pub struct Control {
    reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
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
