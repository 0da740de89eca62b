//! The wire rules every connector process shares: length-prefixed frames with a hard size limit,
//! the `Hello` handshake, which message is legal in which phase, peer identity on the data socket,
//! the inherited control channel, and the exit-code contract.
//!
//! Trust: every byte read here may come from a compromised or buggy peer. Decoding returns an
//! error for any input and never panics; frames over [`MAX_FRAME_BYTES`] are refused before they
//! are buffered. `unsafe` is confined to [`os`] (adopting an inherited descriptor and preparing a
//! child between fork and exec), each block with its `SAFETY:` argument.
#![deny(unsafe_code)]

mod accept;
mod backoff;
mod exit;
mod frame;
mod logging;
mod operator;
pub mod os;
mod phase;
mod socket;

pub use accept::Admission;
pub use backoff::Backoff;
pub use exit::ExitStatus;
pub use frame::{
    FrameReader, FrameWriter, HANDSHAKE_TIMEOUT, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES,
    MAX_RECORD_BYTES, decode, encode,
};
pub use logging::{FORMAT_ENV, LOG_EVERY, LogGate, SOURCE_ENV, init_logging};
pub use operator::send_command;
pub use phase::{Expect, Phase, expect, handshake};
pub use socket::{DataListener, DataStream, PeerIdentity, connect_data, new_token, tokens_match};

use std::io;

use iot_connector_proto::{MessageKind, Table};

/// Everything that can go wrong on a connector IPC connection.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// Reading or writing the socket failed.
    #[error("IPC socket I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than the limit of where the conversation is.
    #[error("IPC frame of {len} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The announced (or encoded) length.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// The frame body is not a valid message.
    #[error("IPC frame does not decode: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The frame decoded but left bytes over.
    #[error("IPC frame has {0} trailing bytes after its message")]
    TrailingBytes(usize),
    /// A message could not be encoded (never expected for well-formed types).
    #[error("IPC message does not encode: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("IPC peer closed the connection mid-frame")]
    Truncated,
    /// The peer closed the connection where a message was required.
    #[error("IPC peer closed the connection while {0:?} expected a message")]
    Closed(Phase),
    /// A message arrived that is not legal in the current phase.
    #[error("IPC protocol error: {got} is not legal while {phase:?} (legal: {expected:?})")]
    Unexpected {
        /// Where the conversation was.
        phase: Phase,
        /// What arrived.
        got: MessageKind,
        /// What would have been legal.
        expected: &'static [MessageKind],
    },
    /// The peer speaks another protocol version or role.
    #[error("IPC handshake refused: {0}")]
    Handshake(String),
    /// A worker sent a sequence number that does not increase.
    #[error("source {source_name:?} sent seq {seq} after {last}: sequence numbers must increase")]
    OutOfOrder {
        /// The source the connection is bound to.
        source_name: String,
        /// The offending sequence number.
        seq: u64,
        /// The previous one on this connection.
        last: u64,
    },
    /// A worker sent a record for a table its grant does not allow.
    #[error("source {source_name:?} may write to {allowed} only, not {got}")]
    WrongTable {
        /// The source the connection is bound to.
        source_name: String,
        /// The table of its grant.
        allowed: Table,
        /// The table of the record.
        got: Table,
    },
    /// The peer refused us, with its reason.
    #[error("IPC peer refused the connection: {0}")]
    Refused(String),
}
