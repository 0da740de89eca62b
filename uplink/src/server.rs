//! Data connections: one per worker, bound to one source by the supervisor's per-spawn token and
//! the kernel's peer credentials, never by the worker's word alone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, mpsc},
};

use iot_connector_ipc::{
    Admission, DataListener, DataStream, FrameReader, FrameWriter, HANDSHAKE_TIMEOUT, IpcError,
    LogGate, PeerIdentity, expect, handshake, tokens_match,
};
use iot_connector_proto::{
    Detail, Message, Record, Role, SourceGrant, Start, StatusEvent, Table, table::encode_row,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc as channel, oneshot};

use crate::{spool::Incoming, stats::Stats, writer::WriterRequest};

/// A batch waiting for its commit: its last seq, when it arrived, and the writer's answer.
type PendingAck = (
    u64,
    std::time::Instant,
    oneshot::Receiver<Result<(), String>>,
);

/// Connections not yet bound to a source at most; more are closed at once. Each may hold one
/// frame of at most `MAX_HANDSHAKE_FRAME_BYTES` for at most `HANDSHAKE_TIMEOUT`.
const MAX_HANDSHAKING: usize = 64;
/// Batches of one connection waiting for their commit at most. A worker that sends faster than
/// the spool commits waits (its socket is not read) instead of growing the uplink's queues; with
/// one bound connection per source, this bounds the writer's queue too.
const MAX_PENDING_BATCHES: usize = 256;

/// How long a bound connection whose source or token the uplink does not know yet waits for the
/// grant. The supervisor passes a new worker's grant while that worker starts, and after an
/// uplink restart the grant can arrive after the worker's first connect.
const GRANT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Shared by every connection.
#[derive(Debug)]
pub struct Hub {
    connector_id: String,
    grants: Mutex<HashMap<String, SourceGrant>>,
    /// Notified after every grant.
    granted: tokio::sync::Notify,
    /// The writer's queue, behind the same lock as the per-source generation counters: a batch is
    /// queued only by the connection currently bound to its source, so that a new connection's
    /// barrier sees every batch of the connection it replaced.
    routes: Mutex<Routes>,
    stats: Arc<Stats>,
    /// Log lines about connections that never bound a source: any local process with access to
    /// the socket can cause them, as fast as it likes.
    unbound_log: Mutex<LogGate>,
    refused_log: Mutex<LogGate>,
}

#[derive(Debug)]
struct Routes {
    writer: mpsc::Sender<WriterRequest>,
    generations: HashMap<String, u64>,
}

impl Hub {
    /// A hub feeding `writer`.
    pub fn new(
        connector_id: String,
        writer: mpsc::Sender<WriterRequest>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            connector_id,
            stats,
            grants: Mutex::default(),
            granted: tokio::sync::Notify::new(),
            routes: Mutex::new(Routes {
                writer,
                generations: HashMap::new(),
            }),
            unbound_log: Mutex::default(),
            refused_log: Mutex::default(),
        }
    }

    /// Authorises (or re-authorises, with a new token) a source.
    pub fn grant(&self, grant: SourceGrant) {
        lock(&self.grants).insert(grant.source.clone(), grant);
        self.granted.notify_waiters();
    }

    /// Writes the status rows of a process start (a grant's, or the uplink's own).
    pub fn started(&self, source: &str, start: &Start) {
        self.write_status(source, crate::start_rows(&self.connector_id, source, start));
    }

    /// Records one event of `source` (the uplink's own, say) in the status table.
    pub fn status(&self, source: &str, event: StatusEvent, detail: String, count: u64) {
        let now = iot_connector_proto::now_us();
        let row = crate::row_about(&self.connector_id, source, now, event, detail, count);
        self.write_status(source, vec![row]);
    }

    fn write_status(&self, source: &str, rows: Vec<Vec<u8>>) {
        if lock(&self.routes)
            .writer
            .send(WriterRequest::Status(rows))
            .is_err()
        {
            tracing::warn!(source = %source, "The spool writer is gone; a status row was not recorded.");
        }
    }

    /// Accepts connections for the life of the process: a failing `accept` pauses the loop,
    /// never ends it.
    pub async fn serve(self: Arc<Self>, listener: DataListener) {
        let mut admission = Admission::new("data socket", MAX_HANDSHAKING);
        loop {
            let ((stream, peer), permit) = admission.admit(|| listener.accept()).await;
            let hub = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = hub.connection(stream, peer, permit).await {
                    tracing::warn!(pid = ?peer.pid, error = %e, "Data connection ended.");
                }
            });
        }
    }

    /// Hello and Bind within [`HANDSHAKE_TIMEOUT`], in small frames; then the source's batches.
    async fn connection(
        &self,
        stream: DataStream,
        peer: PeerIdentity,
        handshaking: OwnedSemaphorePermit,
    ) -> Result<(), IpcError> {
        let (mut reader, mut writer) = (
            FrameReader::unauthenticated(&stream),
            FrameWriter::new(&stream),
        );
        let bind = async {
            handshake(&mut reader, &mut writer, Role::Uplink, Role::Worker).await?;
            reader.expect(expect::BIND).await
        };
        let bound = tokio::time::timeout(HANDSHAKE_TIMEOUT, bind)
            .await
            .unwrap_or_else(|_| {
                Err(IpcError::Handshake(format!(
                    "no Hello and Bind within {HANDSHAKE_TIMEOUT:?}"
                )))
            });
        let (source, token) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                if let Some(suppressed) = lock(&self.unbound_log).open(tokio::time::Instant::now())
                {
                    tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, error = %e, suppressed,
                        "Dropped a data connection before it bound a source.");
                }
                return Ok(());
            }
        };
        let table = match self.authorised(&source, &token, peer).await {
            Ok(table) => table,
            Err(reason) => {
                if let Some(suppressed) = lock(&self.refused_log).open(tokio::time::Instant::now())
                {
                    tracing::error!(source = %source, pid = ?peer.pid, uid = ?peer.uid, reason = %reason, suppressed, "Refused a data connection.");
                }
                let _ = writer.send(&Message::Refused { reason }).await;
                return Ok(());
            }
        };
        reader.authenticated();
        drop(handshaking);
        let generation = self.supersede(&source);
        let last_durable_seq = self.barrier(&source, generation).await?;
        writer.send(&Message::Welcome { last_durable_seq }).await?;
        tracing::info!(source = %source, pid = ?peer.pid, ?last_durable_seq, "Worker connected.");

        // Acks go out in commit order from their own task, so reading never waits for a commit.
        let (ack_tx, mut ack_rx) = channel::channel::<PendingAck>(MAX_PENDING_BATCHES);
        let stats = &self.stats;
        let acker = async move {
            while let Some((up_to_seq, received, done)) = ack_rx.recv().await {
                let message = match done.await {
                    Ok(Ok(())) => {
                        stats.ack_latency(received.elapsed());
                        Message::Ack { up_to_seq }
                    }
                    Ok(Err(reason)) => Message::Refused { reason },
                    Err(_) => Message::Refused {
                        reason: "uplink is shutting down".into(),
                    },
                };
                let refused = matches!(message, Message::Refused { .. });
                if writer.send(&message).await.is_err() || refused {
                    break;
                }
            }
        };
        let receiving = async {
            let result = self
                .receive(&mut reader, &source, table, generation, &ack_tx)
                .await;
            drop(ack_tx);
            result
        };
        tokio::join!(receiving, acker).0
    }

    /// The table `source` may write when the peer runs as the connector's user and `token` is
    /// the source's current grant. A source or token not (yet) granted waits up to
    /// [`GRANT_WAIT`] for a grant that makes it so.
    async fn authorised(
        &self,
        source: &str,
        token: &[u8],
        peer: PeerIdentity,
    ) -> Result<Table, String> {
        let own_uid = nix::unistd::geteuid().as_raw();
        if peer.uid != Some(own_uid) && peer.uid != Some(0) {
            return Err(format!(
                "peer uid {:?} is not the connector's uid {own_uid}",
                peer.uid
            ));
        }
        let deadline = tokio::time::Instant::now() + GRANT_WAIT;
        loop {
            // Registered before the look, so that a grant in between is not missed.
            let granted = self.granted.notified();
            tokio::pin!(granted);
            granted.as_mut().enable();
            match self.granted_table(source, token) {
                Ok(table) => return Ok(table),
                Err(reason) => {
                    if tokio::time::timeout_at(deadline, granted).await.is_err() {
                        return Err(reason);
                    }
                }
            }
        }
    }

    fn granted_table(&self, source: &str, token: &[u8]) -> Result<Table, String> {
        match lock(&self.grants).get(source) {
            Some(grant) if tokens_match(&grant.token, token) => Ok(grant.table),
            Some(_) => Err(format!(
                "wrong token for source {source:?}: only the supervisor's current worker may connect"
            )),
            None => Err(format!("unknown source {source:?}")),
        }
    }

    /// Waits until every batch queued so far is committed (for a clean stop).
    pub async fn drain(&self) {
        let (reply, answer) = oneshot::channel();
        let sent = lock(&self.routes)
            .writer
            .send(WriterRequest::Barrier(String::new(), reply));
        if sent.is_ok() {
            let _ = answer.await;
        }
    }

    /// Makes this connection the source's only one; an older one stops queueing batches.
    fn supersede(&self, source: &str) -> u64 {
        let mut routes = lock(&self.routes);
        let generation = routes.generations.entry(source.to_owned()).or_default();
        *generation += 1;
        *generation
    }

    async fn barrier(&self, source: &str, generation: u64) -> Result<Option<u64>, IpcError> {
        let (reply, answer) = oneshot::channel();
        self.route(
            source,
            generation,
            WriterRequest::Barrier(source.to_owned(), reply),
        )?;
        answer
            .await
            .map_err(|_| IpcError::Refused("uplink is shutting down".into()))?
            .map_err(IpcError::Refused)
    }

    fn route(&self, source: &str, generation: u64, request: WriterRequest) -> Result<(), IpcError> {
        let routes = lock(&self.routes);
        if routes.generations.get(source) != Some(&generation) {
            return Err(IpcError::Refused(format!(
                "a newer connection took over source {source:?}"
            )));
        }
        routes
            .writer
            .send(request)
            .map_err(|_| IpcError::Refused("uplink is shutting down".into()))
    }

    async fn receive<R: tokio::io::AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        source: &str,
        table: Table,
        generation: u64,
        acks: &channel::Sender<PendingAck>,
    ) -> Result<(), IpcError> {
        let mut last_seq: Option<u64> = None;
        while let Some(records) = reader.next(expect::BATCH).await? {
            let received = std::time::Instant::now();
            let Some(up_to_seq) = records.last().map(|r| r.seq) else {
                continue;
            };
            let rows = self.rows(source, table, &records, &mut last_seq)?;
            let (done, ack) = oneshot::channel();
            self.route(
                source,
                generation,
                WriterRequest::Append(
                    Incoming {
                        source: source.to_owned(),
                        rows,
                    },
                    done,
                ),
            )?;
            if acks.send((up_to_seq, received, ack)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Checks a batch (increasing sequence numbers, the granted table) and encodes its rows.
    fn rows(
        &self,
        source: &str,
        table: Table,
        records: &[Record],
        last_seq: &mut Option<u64>,
    ) -> Result<Vec<(u64, Table, Vec<u8>)>, IpcError> {
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            if let Some(last) = last_seq.filter(|last| record.seq <= *last) {
                return Err(IpcError::OutOfOrder {
                    source_name: source.to_owned(),
                    seq: record.seq,
                    last,
                });
            }
            *last_seq = Some(record.seq);
            let record_table = Table::of(&record.detail);
            if record_table != table && !matches!(record.detail, Detail::Status(_)) {
                return Err(IpcError::WrongTable {
                    source_name: source.to_owned(),
                    allowed: table,
                    got: record_table,
                });
            }
            let (row_table, row) = encode_row(&self.connector_id, source, record);
            rows.push((record.seq, row_table, row));
        }
        Ok(rows)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
