//! The operator's end of the supervisor's control socket (`<runtime_dir>/control.sock`): one
//! command per connection, after the `Hello` handshake as [`Role::Operator`]. The `iot-connector`
//! command line uses it, and so will the web console, so that both reach the supervisor the same
//! way.

use std::path::Path;

use iot_connector_proto::{Message, OperatorCommand, OperatorReply, Role};
use tokio::net::UnixStream;

use crate::{FrameReader, FrameWriter, IpcError, expect, handshake};

/// Sends one command to the supervisor listening on `socket` and returns its reply. An
/// [`IpcError::Io`] from the connect means no supervisor runs there.
pub async fn send_command(
    socket: &Path,
    command: OperatorCommand,
) -> Result<OperatorReply, IpcError> {
    let stream = UnixStream::connect(socket).await?;
    let (rx, tx) = stream.into_split();
    let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
    handshake(&mut reader, &mut writer, Role::Operator, Role::Supervisor).await?;
    writer.send(&Message::Command(command)).await?;
    reader.expect(expect::REPLY).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn a_command_gets_the_supervisors_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let supervisor = async {
            let (stream, _) = listener.accept().await.unwrap();
            let (rx, tx) = stream.into_split();
            let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
            handshake(&mut reader, &mut writer, Role::Supervisor, Role::Operator)
                .await
                .unwrap();
            let command = reader.expect(expect::COMMAND).await.unwrap();
            let reply = OperatorReply::Done(format!("got {command:?}"));
            writer.send(&Message::Reply(reply)).await.unwrap();
        };
        let (reply, ()) = tokio::join!(send_command(&path, OperatorCommand::Reload), supervisor);
        assert_eq!(reply.unwrap(), OperatorReply::Done("got Reload".into()));
    }

    #[tokio::test]
    async fn no_supervisor_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let reply = send_command(&dir.path().join("control.sock"), OperatorCommand::Status).await;
        assert!(matches!(reply, Err(IpcError::Io(_))), "{reply:?}");
    }
}
