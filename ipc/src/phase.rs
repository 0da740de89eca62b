//! Which message is legal where. Every read names the phase the reader is in; anything else is a
//! protocol error that ends the connection, never a panic or a silent skip.

use iot_connector_proto::{Message, PROTOCOL_VERSION, Role};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{FrameReader, FrameWriter, IpcError};

/// Where a conversation is, from the reader's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Any connection, first frame.
    Handshake,
    /// A child's control channel before its configuration arrived.
    ChildAwaitingConfig,
    /// The uplink's control channel once configured.
    UplinkControl,
    /// The supervisor waiting for a child to report ready.
    SupervisorAwaitingReady,
    /// The supervisor watching a ready child.
    SupervisorMonitoring,
    /// The supervisor's side of an operator connection.
    AwaitingCommand,
    /// The operator CLI waiting for the answer.
    AwaitingReply,
    /// The uplink's side of a data connection before it is bound to a source.
    UplinkAwaitingBind,
    /// The uplink's side of a bound data connection.
    UplinkReceiving,
    /// A worker's side of a data connection before the uplink accepted the binding.
    WorkerAwaitingWelcome,
    /// A worker's side of a bound data connection.
    WorkerStreaming,
}

impl Phase {
    /// The message kinds legal in this phase. `Refused` is legal everywhere and ends the
    /// conversation.
    pub fn legal(self) -> &'static [&'static str] {
        match self {
            Self::Handshake => &["Hello"],
            Self::ChildAwaitingConfig => &["ConfigureUplink", "ConfigureWorker"],
            Self::UplinkControl => &["Grant"],
            Self::SupervisorAwaitingReady => &["Ready"],
            Self::SupervisorMonitoring => &["Heartbeat"],
            Self::AwaitingCommand => &["Command"],
            Self::AwaitingReply => &["Reply"],
            Self::UplinkAwaitingBind => &["Bind"],
            Self::UplinkReceiving => &["Batch"],
            Self::WorkerAwaitingWelcome => &["Welcome"],
            Self::WorkerStreaming => &["Ack"],
        }
    }

    /// Lets a legal message through; turns a refusal or an illegal message into an error.
    pub fn check(self, message: Message) -> Result<Message, IpcError> {
        if let Message::Refused { reason } = message {
            return Err(IpcError::Refused(reason));
        }
        let expected = self.legal();
        if expected.contains(&message.kind()) {
            Ok(message)
        } else {
            Err(IpcError::Unexpected {
                phase: self,
                got: message.kind(),
                expected,
            })
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads the next message and checks that it is legal in `phase`.
    pub async fn recv_in(&mut self, phase: Phase) -> Result<Message, IpcError> {
        match self.recv().await? {
            Some(message) => phase.check(message),
            None => Err(IpcError::Closed(phase)),
        }
    }
}

/// Exchanges `Hello` in both directions and checks the peer's version and role.
pub async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role: Role,
    peer_role: Role,
) -> Result<(), IpcError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer
        .send(&Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role,
        })
        .await?;
    let Message::Hello {
        protocol_version,
        role: theirs,
    } = reader.recv_in(Phase::Handshake).await?
    else {
        return Err(IpcError::Handshake("first message was not Hello".into()));
    };
    let problem = if protocol_version != PROTOCOL_VERSION {
        Some(format!(
            "peer speaks protocol {protocol_version}, this binary {PROTOCOL_VERSION}: install one release of all connector binaries"
        ))
    } else if theirs != peer_role {
        Some(format!("peer is a {theirs:?}, expected a {peer_role:?}"))
    } else {
        None
    };
    match problem {
        Some(reason) => {
            // Best effort: the peer learns why before the connection closes.
            let _ = writer
                .send(&Message::Refused {
                    reason: reason.clone(),
                })
                .await;
            Err(IpcError::Handshake(reason))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_before_binding_is_a_protocol_error() {
        let err = Phase::UplinkAwaitingBind
            .check(Message::Batch(Vec::new()))
            .unwrap_err();
        assert!(matches!(err, IpcError::Unexpected { got: "Batch", .. }));
    }

    #[test]
    fn a_refusal_is_reported_with_its_reason() {
        let err = Phase::WorkerStreaming
            .check(Message::Refused {
                reason: "bad token".into(),
            })
            .unwrap_err();
        assert!(matches!(err, IpcError::Refused(r) if r == "bad token"));
    }

    #[tokio::test]
    async fn handshake_refuses_the_wrong_role() {
        let (a, b) = tokio::io::duplex(1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (mut ar, mut aw) = (FrameReader::new(ar), FrameWriter::new(aw));
        let (mut br, mut bw) = (FrameReader::new(br), FrameWriter::new(bw));
        let (left, right) = tokio::join!(
            handshake(&mut ar, &mut aw, Role::Worker, Role::Uplink),
            handshake(&mut br, &mut bw, Role::Worker, Role::Uplink),
        );
        assert!(matches!(left, Err(IpcError::Handshake(_))));
        assert!(matches!(right, Err(IpcError::Handshake(_))));
    }

    #[tokio::test]
    async fn handshake_accepts_matching_peers() {
        let (a, b) = tokio::io::duplex(1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (mut ar, mut aw) = (FrameReader::new(ar), FrameWriter::new(aw));
        let (mut br, mut bw) = (FrameReader::new(br), FrameWriter::new(bw));
        let (left, right) = tokio::join!(
            handshake(&mut ar, &mut aw, Role::Worker, Role::Uplink),
            handshake(&mut br, &mut bw, Role::Uplink, Role::Worker),
        );
        left.unwrap();
        right.unwrap();
    }
}
