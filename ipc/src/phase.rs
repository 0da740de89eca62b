//! Which message is legal where. A conversation is a series of phases; every read names the
//! step it expects ([`Expect`]), which is keyed by the [`MessageKind`]s legal in that phase and
//! yields the typed payload. Anything else is a protocol error that ends the connection, never a
//! panic or a silent skip (OpenSSH's `mon_dispatch` tables are the model).

use iot_connector_proto::{
    ChildReport, Message, MessageKind, OperatorCommand, OperatorReply, PROTOCOL_VERSION, Record,
    Role, SourceGrant, UplinkSettings, WorkerSettings,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{FrameReader, FrameWriter, IpcError};

/// Where a conversation is, from the reader's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Any connection, first frame.
    Handshake,
    /// The uplink's control channel before its configuration arrived.
    UplinkAwaitingConfig,
    /// A worker's control channel before its configuration arrived.
    WorkerAwaitingConfig,
    /// The uplink's control channel once configured.
    UplinkControl,
    /// A worker's control channel once configured: the supervisor sends nothing more, and
    /// closing the channel is the order to stop.
    WorkerControl,
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

/// One phase's allow-list and what its legal message yields. `Refused` is legal in every phase
/// and ends the conversation with [`IpcError::Refused`].
#[derive(Debug, Clone, Copy)]
pub struct Expect<T> {
    /// The phase this step belongs to.
    pub phase: Phase,
    /// The message kinds legal in it.
    pub legal: &'static [MessageKind],
    take: fn(Message) -> Option<T>,
}

impl<T> Expect<T> {
    /// Lets a legal message through as its payload; turns a refusal or an illegal message into
    /// an error naming the phase.
    pub fn check(&self, message: Message) -> Result<T, IpcError> {
        if let Message::Refused { reason } = message {
            return Err(IpcError::Refused(reason));
        }
        let got = message.kind();
        let unexpected = || IpcError::Unexpected {
            phase: self.phase,
            got,
            expected: self.legal,
        };
        if !self.legal.contains(&got) {
            return Err(unexpected());
        }
        (self.take)(message).ok_or_else(unexpected)
    }
}

/// Steps whose only legal message is `Message::$kind`, each yielding `$value` bound by `$pattern`
/// (`{}` for a variant without fields).
macro_rules! steps {
    ($($(#[$doc:meta])* $name:ident: $payload:ty = $phase:ident, $kind:ident $pattern:tt => $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub const $name: Expect<$payload> = Expect {
                phase: Phase::$phase,
                legal: &[MessageKind::$kind],
                take: |m| match m {
                    Message::$kind $pattern => Some($value),
                    _ => None,
                },
            };
        )*
    };
}

/// The steps of every conversation, one per phase.
pub mod expect {
    use super::*;

    steps! {
        /// `Hello` of any connection: the peer's protocol version and role.
        HELLO: (u16, Role) = Handshake, Hello { protocol_version, role } => (protocol_version, role);
        /// The uplink's configuration.
        UPLINK_CONFIG: Box<UplinkSettings> = UplinkAwaitingConfig, ConfigureUplink(settings) => settings;
        /// A worker's configuration.
        WORKER_CONFIG: WorkerSettings = WorkerAwaitingConfig, ConfigureWorker(settings) => settings;
        /// A grant on the uplink's control channel.
        UPLINK_CONTROL: SourceGrant = UplinkControl, Grant(grant) => grant;
        /// A child's `Ready`.
        READY: () = SupervisorAwaitingReady, Ready {} => ();
        /// A child's heartbeat.
        HEARTBEAT: ChildReport = SupervisorMonitoring, Heartbeat(report) => report;
        /// An operator's command.
        COMMAND: OperatorCommand = AwaitingCommand, Command(command) => command;
        /// The supervisor's reply to an operator.
        REPLY: OperatorReply = AwaitingReply, Reply(reply) => reply;
        /// A worker's `Bind`: the source it speaks for and its per-spawn token.
        BIND: (String, Vec<u8>) = UplinkAwaitingBind, Bind { source, token } => (source, token);
        /// A batch of records from a bound worker.
        BATCH: Vec<Record> = UplinkReceiving, Batch(records) => records;
        /// The uplink's `Welcome`: the last durable sequence number of the source.
        WELCOME: Option<u64> = WorkerAwaitingWelcome, Welcome { last_durable_seq } => last_durable_seq;
        /// A durable acknowledgement: every record up to this sequence number is on disk.
        ACK: u64 = WorkerStreaming, Ack { up_to_seq } => up_to_seq;
    }

    /// Nothing is legal on a configured worker's control channel but its closing.
    pub const WORKER_CONTROL: Expect<std::convert::Infallible> = Expect {
        phase: Phase::WorkerControl,
        legal: &[],
        take: |_| None,
    };
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads the next message, which must be legal in `step`'s phase; a close is an error.
    pub async fn expect<T>(&mut self, step: Expect<T>) -> Result<T, IpcError> {
        match self.recv().await? {
            Some(message) => step.check(message),
            None => Err(IpcError::Closed(step.phase)),
        }
    }

    /// Like [`FrameReader::expect`], for phases the peer may end: `Ok(None)` when it closed
    /// cleanly between frames.
    pub async fn next<T>(&mut self, step: Expect<T>) -> Result<Option<T>, IpcError> {
        self.recv().await?.map(|m| step.check(m)).transpose()
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
    let (protocol_version, theirs) = reader.expect(expect::HELLO).await?;
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
        let err = expect::BIND.check(Message::Batch(Vec::new())).unwrap_err();
        assert!(matches!(
            err,
            IpcError::Unexpected {
                phase: Phase::UplinkAwaitingBind,
                got: MessageKind::Batch,
                expected: [MessageKind::Bind],
            }
        ));
    }

    #[test]
    fn a_legal_message_yields_its_payload() {
        let up_to = expect::ACK.check(Message::Ack { up_to_seq: 7 }).unwrap();
        assert_eq!(up_to, 7);
    }

    #[test]
    fn a_refusal_is_reported_with_its_reason() {
        let err = expect::ACK
            .check(Message::Refused {
                reason: "bad token".into(),
            })
            .unwrap_err();
        assert!(matches!(err, IpcError::Refused(r) if r == "bad token"));
    }

    #[test]
    fn a_configured_worker_takes_no_control_message() {
        let err = expect::WORKER_CONTROL.check(Message::Ready).unwrap_err();
        assert!(matches!(
            err,
            IpcError::Unexpected {
                phase: Phase::WorkerControl,
                got: MessageKind::Ready,
                expected: [],
            }
        ));
    }

    #[tokio::test]
    async fn a_clean_close_ends_a_phase_the_peer_may_end() {
        let mut reader = FrameReader::new(&[][..]);
        assert!(reader.next(expect::BATCH).await.unwrap().is_none());
        let mut reader = FrameReader::new(&[][..]);
        assert!(matches!(
            reader.expect(expect::WELCOME).await,
            Err(IpcError::Closed(Phase::WorkerAwaitingWelcome))
        ));
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
