//! Frames: a big-endian `u32` body length, then a bincode 2 body holding one [`Message`].

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use iot_connector_proto::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::IpcError;

/// Hard upper bound of a frame body. Large enough for a batch of records carrying MQTT payloads,
/// small enough that a hostile length prefix cannot make a process allocate much.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Upper bound of one record's (estimated) encoded size. Half a frame, so that a batch of one
/// such record always fits, and under the 4 MB per message that Zerobus has documented. A
/// worker moves a larger record aside as a counted `dropped` status row instead of sending it.
pub const MAX_RECORD_BYTES: usize = MAX_FRAME_BYTES / 2;

/// Upper bound of a frame before the peer is authenticated (`Hello`, `Bind`, an operator's
/// command): an unauthenticated local process must not make a listener allocate more.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 64 * 1024;

/// How long a listener waits for a new connection's handshake (and, on the data socket, its
/// `Bind`) before it drops the connection.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type Codec = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_BYTES>>;

fn codec() -> Codec {
    config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes a message as one complete frame (length prefix included).
pub fn encode(message: &Message) -> Result<Vec<u8>, IpcError> {
    let mut frame = vec![0; 4];
    bincode::encode_into_std_write(message, &mut frame, codec()).map_err(IpcError::Encode)?;
    let body = frame.len() - 4;
    let too_large = IpcError::FrameTooLarge {
        len: body,
        limit: MAX_FRAME_BYTES,
    };
    if body > MAX_FRAME_BYTES {
        return Err(too_large);
    }
    let prefix = u32::try_from(body).map_err(|_| too_large)?.to_be_bytes();
    frame.splice(0..4, prefix);
    Ok(frame)
}

/// Decodes one frame body (without its length prefix). Any input gives a message or an error.
pub fn decode(body: &[u8]) -> Result<Message, IpcError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(IpcError::FrameTooLarge {
            len: body.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let (message, used) =
        bincode::decode_from_slice::<Message, _>(body, codec()).map_err(IpcError::Decode)?;
    match body.len() - used {
        0 => Ok(message),
        extra => Err(IpcError::TrailingBytes(extra)),
    }
}

/// A receive buffer grown past this is freed after its frame: a one-off large frame (a worker's
/// configuration with 10,000 registers is 1.5 MB) must not stay resident for the process's life.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// The receiving half of a connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
    limit: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream, taking frames up to [`MAX_FRAME_BYTES`].
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            body: Vec::new(),
            limit: MAX_FRAME_BYTES,
        }
    }

    /// Wraps a byte stream from a peer not yet authenticated, taking frames up to
    /// [`MAX_HANDSHAKE_FRAME_BYTES`] until [`FrameReader::authenticated`].
    pub fn unauthenticated(inner: R) -> Self {
        Self {
            limit: MAX_HANDSHAKE_FRAME_BYTES,
            ..Self::new(inner)
        }
    }

    /// The peer is who it must be: frames up to [`MAX_FRAME_BYTES`] from now on.
    pub fn authenticated(&mut self) {
        self.limit = MAX_FRAME_BYTES;
    }

    /// Reads the next message; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, IpcError> {
        let mut prefix = [0u8; 4];
        let mut filled = 0;
        while filled < prefix.len() {
            let n = self
                .inner
                .read(prefix.get_mut(filled..).unwrap_or_default())
                .await?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(IpcError::Truncated)
                };
            }
            filled += n;
        }
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > self.limit {
            return Err(IpcError::FrameTooLarge {
                len,
                limit: self.limit,
            });
        }
        self.body.resize(len, 0);
        let read = self.inner.read_exact(&mut self.body).await;
        let message = match read {
            Ok(_) => decode(&self.body).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(IpcError::Truncated),
            Err(e) => Err(e.into()),
        };
        if self.body.capacity() > KEEP_BUFFER_BYTES {
            self.body = Vec::new();
        }
        message
    }
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte stream.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Writes one message as one frame.
    pub async fn send(&mut self, message: &Message) -> Result<(), IpcError> {
        let frame = encode(message)?;
        self.inner.write_all(&frame).await?;
        self.inner.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use iot_connector_proto::{Detail, MqttDetail, Quality, Record, Value};
    use proptest::prelude::*;

    use super::*;

    fn batch() -> Message {
        Message::Batch(vec![Record {
            seq: 42,
            event_time_us: 1,
            ingest_time_us: 2,
            quality: Quality::Good,
            value: Value::Str("21.5".into()),
            detail: Detail::Mqtt(MqttDetail {
                topic: "plant/a".into(),
                payload: vec![1, 2, 3],
                ..Default::default()
            }),
        }])
    }

    #[test]
    fn a_message_survives_encode_and_decode() {
        let frame = encode(&batch()).unwrap();
        assert_eq!(decode(&frame[4..]).unwrap(), batch());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&Message::Ready).unwrap();
        frame.push(0);
        assert!(matches!(
            decode(&frame[4..]),
            Err(IpcError::TrailingBytes(1))
        ));
    }

    #[tokio::test]
    async fn an_oversized_length_prefix_is_refused_before_reading_the_body() {
        let prefix = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes();
        let mut reader = FrameReader::new(&prefix[..]);
        assert!(matches!(
            reader.recv().await,
            Err(IpcError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn an_unauthenticated_peer_gets_the_handshake_limit_until_authenticated() {
        let prefix = u32::try_from(MAX_HANDSHAKE_FRAME_BYTES + 1)
            .unwrap()
            .to_be_bytes();
        let mut reader = FrameReader::unauthenticated(&prefix[..]);
        match reader.recv().await {
            Err(IpcError::FrameTooLarge { len, limit }) => {
                assert_eq!(
                    (len, limit),
                    (MAX_HANDSHAKE_FRAME_BYTES + 1, MAX_HANDSHAKE_FRAME_BYTES)
                );
            }
            other => panic!("{other:?}"),
        }
        let big = Message::Refused {
            reason: "x".repeat(MAX_HANDSHAKE_FRAME_BYTES),
        };
        let mut frames = encode(&Message::Ready).unwrap();
        frames.extend(encode(&big).unwrap());
        let mut reader = FrameReader::unauthenticated(&frames[..]);
        assert_eq!(reader.recv().await.unwrap(), Some(Message::Ready));
        reader.authenticated();
        assert_eq!(reader.recv().await.unwrap(), Some(big));
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_and_a_clean_close_is_none() {
        let frame = encode(&batch()).unwrap();
        let mut cut = FrameReader::new(&frame[..frame.len() - 1]);
        assert!(matches!(cut.recv().await, Err(IpcError::Truncated)));
        let mut empty = FrameReader::new(&[][..]);
        assert!(empty.recv().await.unwrap().is_none());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn every_truncation_of_a_valid_frame_is_an_error(cut in 0usize..64) {
            let frame = encode(&batch()).unwrap();
            let body = &frame[4..];
            let cut = cut.min(body.len() - 1);
            prop_assert!(decode(&body[..cut]).is_err());
        }

        #[test]
        fn random_streams_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut reader = FrameReader::new(&bytes[..]);
                while let Ok(Some(_)) = reader.recv().await {}
            });
        }
    }
}
