//! The worker's end of its control channel: the handshake, the configuration, `Ready`, then a
//! heartbeat every [`HEARTBEAT_INTERVAL`] (sooner when the connection state changes) while
//! the supervisor keeps the channel open.

use iot_connector_ipc::{FrameReader, FrameWriter, IpcError, expect, handshake, os};
use iot_connector_proto::{ChildReport, Message, Role, WorkerSettings};

use crate::health;

/// How often a worker tells the supervisor it is alive.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Adopts the control channel, handshakes with the supervisor, receives this worker's settings
/// and reports ready; from then on a heartbeat carries [`health()`] to the supervisor.
pub(crate) async fn start() -> Result<(WorkerSettings, Control), IpcError> {
    let control = os::inherited_control()?;
    let (rx, tx) = control.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    handshake(&mut reader, &mut writer, Role::Worker, Role::Supervisor).await?;
    let settings = reader.expect(expect::WORKER_CONFIG).await?;
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

/// The worker's end of its control channel once configured.
#[derive(Debug)]
pub(crate) struct Control {
    reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
}

impl Control {
    /// Resolves when the supervisor closes the channel (`Ok`: time to stop), or sends anything
    /// at all, which a configured worker does not take (`Err`: a protocol error).
    pub(crate) async fn closed(&mut self) -> Result<(), IpcError> {
        match self.reader.next(expect::WORKER_CONTROL).await? {
            None => Ok(()),
            Some(never) => match never {},
        }
    }
}
