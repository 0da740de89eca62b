//! The worker's connection to the uplink: the I/O shell around [`crate::window`]. [`Sink`] is
//! what protocol code pushes into (backpressure through a semaphore of window permits); one
//! connection task feeds the window's batches to the socket, its acks back into the window,
//! and reconnects with backoff.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use iot_connector_ipc::{
    FrameReader, FrameWriter, IpcError, MAX_RECORD_BYTES, connect_data, expect, handshake,
};
use iot_connector_proto::{
    Detail, Message, Quality, Record, Role, StatusDetail, StatusEvent, Table, Value, WorkerSettings,
};
use tokio::{
    io::{ReadHalf, WriteHalf},
    sync::{Semaphore, mpsc, watch},
    time::Instant,
};

use crate::{
    Backoff, LogGate, now_us,
    window::{Limits, Sequence, Window, approx_len},
};

type Stream = iot_connector_ipc::DataStream;

/// Tuning of the connection to the uplink.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Records pushed but not yet durable at most; a full window makes [`Sink::push`] wait.
    pub window: usize,
    /// Records per batch at most.
    pub max_batch: usize,
    /// Approximate bytes per batch at most (well under the IPC frame limit).
    pub max_batch_bytes: usize,
    /// How long the first record of a batch waits for company.
    pub linger: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            window: 8192,
            max_batch: 512,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(5),
        }
    }
}

/// The window is full: the uplink has not yet made enough earlier records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the window of unacknowledged records is full")]
pub struct WindowFull;

/// Where a worker pushes its records. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Sink {
    window: Arc<Semaphore>,
    /// The sequence and the queue, under one lock so queue order is sequence order.
    next: Mutex<(Sequence, mpsc::UnboundedSender<Record>)>,
    acked: watch::Receiver<Option<u64>>,
    oversize_log: Mutex<LogGate>,
}

impl Sink {
    /// Connects to the uplink (retrying with backoff until it answers) and starts the
    /// connection task. Sequence numbers continue after the uplink's last durable one.
    pub async fn connect(settings: &WorkerSettings, options: SinkOptions) -> Self {
        let link = Link {
            path: PathBuf::from(&settings.data_socket),
            source: settings.source.clone(),
            token: settings.token.clone(),
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let (connection, last_durable) = link.connect_until_welcome(&mut backoff).await;
        let (queue, records) = mpsc::unbounded_channel();
        let (acked_tx, acked) = watch::channel(last_durable);
        let window = Arc::new(Semaphore::new(options.window));
        let client = Client {
            link,
            linger: options.linger,
            records,
            window: Window::new(Limits {
                max_batch: options.max_batch,
                max_batch_bytes: options.max_batch_bytes,
            }),
            permits: Arc::clone(&window),
            acked: acked_tx,
            backoff,
            lost_log: LogGate::default(),
        };
        tokio::spawn(client.run(connection));
        Self {
            window,
            next: Mutex::new((Sequence::after(last_durable), queue)),
            acked,
            oversize_log: Mutex::default(),
        }
    }

    /// Queues a record, waiting while the window is full (backpressure). Returns its sequence
    /// number.
    pub async fn push(
        &self,
        event_time_us: i64,
        quality: Quality,
        value: Value,
        detail: Detail,
    ) -> u64 {
        if let Ok(permit) = self.window.acquire().await {
            permit.forget();
        }
        self.enqueue(event_time_us, quality, value, detail)
    }

    /// Queues one of this source's status rows (`connected`, `gap`, …), waiting for room like
    /// [`Sink::push`].
    pub async fn status(&self, event: StatusEvent, detail: String, count: u64) -> u64 {
        let detail = Detail::Status(StatusDetail {
            event,
            detail,
            count,
        });
        self.push(now_us(), Quality::Good, Value::Null, detail)
            .await
    }

    /// Queues a record if the window has room, for sources that must not wait (a Modbus scan is
    /// skipped and counted instead).
    pub fn try_push(
        &self,
        event_time_us: i64,
        quality: Quality,
        value: Value,
        detail: Detail,
    ) -> Result<u64, WindowFull> {
        self.window.try_acquire().map_err(|_| WindowFull)?.forget();
        Ok(self.enqueue(event_time_us, quality, value, detail))
    }

    fn enqueue(&self, event_time_us: i64, quality: Quality, value: Value, detail: Detail) -> u64 {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seq = next.0.take();
        crate::health().pushed();
        let mut record = Record {
            seq,
            event_time_us,
            ingest_time_us: now_us(),
            quality,
            value,
            detail,
        };
        let size = approx_len(&record);
        if size > MAX_RECORD_BYTES {
            record = self.moved_aside(record, size);
        }
        // The connection task only ends when every sink is gone, so this cannot fail while `self` lives.
        let _ = next.1.send(record);
        seq
    }

    /// A record too large to send is replaced, under its sequence number, by a `dropped` status
    /// row naming it and its size; otherwise it would be refused by every frame and hold its
    /// source still. Counted as `oversize`, logged at most once a minute.
    fn moved_aside(&self, record: Record, size: usize) -> Record {
        let table = Table::of(&record.detail);
        // The subject itself may be what is large (a topic can be 64 KiB).
        let subject: String = record.detail.subject().chars().take(200).collect();
        let detail = format!(
            "{subject:?} ({table} table): a record of about {size} bytes, over the \
             {MAX_RECORD_BYTES}-byte limit of one record; dropped"
        );
        crate::health().dropped("oversize", 1);
        let gate = self
            .oversize_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open(Instant::now());
        if let Some(suppressed) = gate {
            tracing::warn!(suppressed, "{detail}");
        }
        Record {
            quality: Quality::Good,
            value: Value::Null,
            detail: Detail::Status(StatusDetail {
                event: StatusEvent::Dropped,
                detail,
                count: 1,
            }),
            ..record
        }
    }

    /// The sequence number the next pushed record will get.
    pub fn next_seq(&self) -> u64 {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .peek()
    }

    /// Durable-ack notifications: the highest sequence number the uplink holds durably.
    pub fn acked(&self) -> watch::Receiver<Option<u64>> {
        self.acked.clone()
    }

    /// Waits until every record pushed so far is durable.
    pub async fn flush(&self) {
        let last = self.next_seq() - 1;
        let mut acked = self.acked();
        let _ = acked
            .wait_for(|a| a.is_some_and(|a| a >= last) || last == 0)
            .await;
    }
}

/// How to reach the uplink.
#[derive(Debug, Clone)]
struct Link {
    path: PathBuf,
    source: String,
    token: Vec<u8>,
}

struct Connection {
    writer: FrameWriter<WriteHalf<Stream>>,
    acks: mpsc::UnboundedReceiver<Result<u64, IpcError>>,
}

impl Link {
    async fn connect(&self) -> Result<(Connection, Option<u64>), IpcError> {
        let stream = connect_data(&self.path).await?;
        let (rx, tx) = tokio::io::split(stream);
        let (mut reader, mut writer) = (FrameReader::new(rx), FrameWriter::new(tx));
        handshake(&mut reader, &mut writer, Role::Worker, Role::Uplink).await?;
        writer
            .send(&Message::Bind {
                source: self.source.clone(),
                token: self.token.clone(),
            })
            .await?;
        let last_durable_seq = reader.expect(expect::WELCOME).await?;
        let (ack_tx, acks) = mpsc::unbounded_channel();
        tokio::spawn(read_acks(reader, ack_tx));
        Ok((Connection { writer, acks }, last_durable_seq))
    }

    async fn connect_until_welcome(&self, backoff: &mut Backoff) -> (Connection, Option<u64>) {
        let mut unreachable = LogGate::default();
        loop {
            match self.connect().await {
                Ok(connected) => {
                    // The pauses start again once the connection has also stayed up.
                    backoff.connected();
                    return connected;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if let IpcError::Io(io) = &e
                        && io.kind() == std::io::ErrorKind::PermissionDenied
                    {
                        // Someone else's socket: what status and /health must show.
                        crate::health().error(io.to_string());
                    }
                    if let Some(suppressed) = unreachable.open(Instant::now()) {
                        tracing::warn!(source = %self.source, error = %e, retry_ms = delay.as_millis(), suppressed, "Uplink not reachable.");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

async fn read_acks(
    mut reader: FrameReader<ReadHalf<Stream>>,
    acks: mpsc::UnboundedSender<Result<u64, IpcError>>,
) {
    loop {
        let ack = reader.expect(expect::ACK).await;
        let failed = ack.is_err();
        if acks.send(ack).is_err() || failed {
            return;
        }
    }
}

struct Client {
    link: Link,
    linger: Duration,
    records: mpsc::UnboundedReceiver<Record>,
    window: Window,
    permits: Arc<Semaphore>,
    acked: watch::Sender<Option<u64>>,
    backoff: Backoff,
    lost_log: LogGate,
}

impl Client {
    async fn run(mut self, first: Connection) {
        let mut connection = Some(first);
        let mut deadline: Option<Instant> = None;
        loop {
            let Some(conn) = connection.as_mut() else {
                let (conn, last_durable) = self.link.connect_until_welcome(&mut self.backoff).await;
                let released = self.window.reconnected(last_durable);
                self.released(released, last_durable);
                tracing::info!(source = %self.link.source, resend = self.window.len(), "Reconnected to the uplink.");
                connection = Some(conn);
                deadline = (!self.window.is_empty()).then(Instant::now);
                continue;
            };
            let linger = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                record = self.records.recv() => match record {
                    Some(record) => {
                        self.window.push(record);
                        deadline.get_or_insert_with(|| Instant::now() + self.linger);
                    }
                    None if self.window.is_empty() => return,
                    None => deadline = Some(Instant::now()),
                },
                ack = conn.acks.recv() => match ack.map(|a| a.map(|up_to| (up_to, self.window.acked(up_to)))) {
                    Some(Ok((up_to, Ok(released)))) => self.released(released, Some(up_to)),
                    Some(Ok((_, Err(e)))) => {
                        tracing::error!(source = %self.link.source, error = %e, "The uplink broke the protocol; reconnecting.");
                        connection = None;
                    }
                    Some(Err(e)) => {
                        if let Some(suppressed) = self.lost_log.open(Instant::now()) {
                            tracing::warn!(source = %self.link.source, error = %e, suppressed, "Lost the uplink; will resend the unacknowledged window.");
                        }
                        if matches!(e, IpcError::Refused(_)) {
                            // The spool refused (a full disk, a failing device): give it time
                            // instead of resending the window at once, again and again.
                            tokio::time::sleep(self.backoff.next_delay()).await;
                        }
                        connection = None;
                    }
                    None => connection = None,
                },
                () = tokio::time::sleep_until(linger), if deadline.is_some() => {
                    if self.send_batches(conn, true).await.is_err() {
                        connection = None;
                    }
                    deadline = None;
                }
            }
            if let Some(conn) = connection.as_mut()
                && self.window.has_full_batch()
            {
                if self.send_batches(conn, false).await.is_err() {
                    connection = None;
                }
                deadline = (self.window.unsent() > 0).then(|| Instant::now() + self.linger);
            }
        }
    }

    /// Sends the window's batches; a partial last batch only when `flush`.
    async fn send_batches(&mut self, conn: &mut Connection, flush: bool) -> Result<(), IpcError> {
        while let Ok(record) = self.records.try_recv() {
            self.window.push(record);
        }
        while let Some(batch) = self.window.next_batch(flush) {
            conn.writer.send(&Message::Batch(batch)).await?;
        }
        Ok(())
    }

    /// Hands the permits of `released` records back and tells the waiters what is durable.
    fn released(&mut self, released: usize, up_to: Option<u64>) {
        self.permits.add_permits(released);
        crate::health().acked(released as u64);
        let Some(up_to) = up_to else { return };
        self.acked.send_if_modified(|acked| {
            let newer = acked.is_none_or(|a| up_to > a);
            if newer {
                *acked = Some(up_to);
            }
            newer
        });
    }
}
