//! Forwarding: one long-lived Zerobus stream per table, fed from the spool in position order.
//! Rows leave the spool only after the server's durability acknowledgement covers them; on any
//! stream failure the stream is dropped and the spool is replayed from its head (duplicates, never
//! loss). A row the server rejects for good is found by bisection and moved to the dead-letter
//! store with the server's reason.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use databricks_zerobus_ingest_sdk::{
    GrpcCode, OffsetId, ProxyConnector, TlsSettings, ZerobusError, ZerobusSdk, ZerobusStream,
};
use iot_connector_ipc::Backoff;
use iot_connector_proto::{StatusEvent, Table, ZerobusSettings};
use tokio::sync::Notify;

use crate::{
    auth::{self, AuthError, TableTokens},
    spool::{Spool, SpoolError, Spooled},
    stats::Stats,
};

/// Rows per ingest call at most.
const BATCH_ROWS: usize = 2000;
/// Bytes per ingest call at most, far below the 10 MiB server limit.
const BATCH_BYTES: usize = 1 << 20;
/// Ingest calls awaiting their durability ack at most.
const INFLIGHT_BATCHES: usize = 16;
/// How long an idle forwarder sleeps between looks at the spool when nothing notifies it.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Why a forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The token client could not be built.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The SDK rejected the endpoint, CA or proxy.
    #[error("zerobus client: {0}")]
    Sdk(#[source] Box<ZerobusError>),
}

/// The SDK client shared by every table's stream.
pub fn sdk(settings: &ZerobusSettings) -> Result<ZerobusSdk, ForwardError> {
    let mut tls = TlsSettings::new();
    if let Some(pem) = &settings.ca_pem {
        tls = tls.with_ca_certificate_pem(pem.as_bytes().to_vec());
    }
    let proxy = settings.proxy.clone();
    let no_proxy = settings.no_proxy.clone();
    ZerobusSdk::builder()
        .endpoint(settings.endpoint.clone())
        .unity_catalog_url(settings.workspace_url.clone())
        .tls_config(Arc::new(tls))
        // Only the configured proxy: the environment a service inherits must not reroute data.
        .connector_factory(Arc::new(move |host: &str| {
            let bypass = no_proxy
                .iter()
                .any(|suffix| host == suffix || host.ends_with(&format!(".{suffix}")));
            proxy
                .as_deref()
                .filter(|_| !bypass)
                .and_then(|p| ProxyConnector::new(p).ok())
        }))
        .build()
        .map_err(|e| ForwardError::Sdk(Box::new(e)))
}

/// What every table's forwarder shares.
#[derive(Debug)]
pub struct Shared {
    /// `[connector] id`, for the uplink's own status rows.
    pub connector_id: String,
    /// The spool.
    pub spool: Arc<Spool>,
    /// Notified after every commit.
    pub committed: Arc<Notify>,
    /// Counters for the heartbeat.
    pub stats: Arc<Stats>,
}

/// One table's forwarder.
pub struct Forwarder {
    shared: Arc<Shared>,
    sdk: Arc<ZerobusSdk>,
    table: Table,
    table_name: String,
    tokens: Arc<TableTokens>,
    settings_summary: String,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("table", &self.table_name)
            .finish_non_exhaustive()
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The server rejected a row of the window for good.
    Poison(String),
    /// Credentials refused: alert, retry slowly.
    Auth(String),
    /// Anything else: retry with backoff.
    Retry(String),
    /// The spool failed.
    Spool(SpoolError),
}

fn classify(error: ZerobusError) -> StreamEnd {
    let text = error.to_string();
    match &error {
        ZerobusError::InvalidArgument(message) => StreamEnd::Poison(message.clone()),
        ZerobusError::InvalidUCTokenError(_) => StreamEnd::Auth(text),
        ZerobusError::CreateStreamError(status) | ZerobusError::StreamClosedError(status)
            if matches!(
                status.code(),
                GrpcCode::Unauthenticated | GrpcCode::PermissionDenied
            ) =>
        {
            StreamEnd::Auth(text)
        }
        ZerobusError::StreamClosedError(status) if status.code() == GrpcCode::InvalidArgument => {
            StreamEnd::Poison(status.message().to_owned())
        }
        _ => StreamEnd::Retry(text),
    }
}

impl Forwarder {
    /// A forwarder for `table`, sending to the table name configured for it.
    pub fn new(
        shared: Arc<Shared>,
        sdk: Arc<ZerobusSdk>,
        settings: &ZerobusSettings,
        http: reqwest::Client,
        table: Table,
    ) -> Self {
        let table_name = settings
            .tables
            .get(table.index())
            .cloned()
            .unwrap_or_default();
        let tokens = Arc::new(TableTokens::new(http, settings, &table_name));
        let settings_summary = format!(
            "client id {:?} at workspace {}",
            settings.client_id, settings.workspace_url
        );
        Self {
            shared,
            sdk,
            table,
            table_name,
            tokens,
            settings_summary,
        }
    }

    /// Forwards until the process ends.
    pub async fn run(self) {
        let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut auth_retry = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
        loop {
            if !self.has_rows().await {
                self.idle().await;
                continue;
            }
            let end = match self.open().await {
                Ok(stream) => {
                    self.shared.stats.stream_opened(self.table);
                    self.pump(&stream, &mut retry, &mut auth_retry).await
                }
                Err(e) => classify(e),
            };
            let delay = match end {
                StreamEnd::Poison(reason) => match self.isolate(&reason).await {
                    Ok(()) => Duration::ZERO,
                    Err(end) => self.report(end, &mut retry, &mut auth_retry),
                },
                other => self.report(other, &mut retry, &mut auth_retry),
            };
            tokio::time::sleep(delay).await;
        }
    }

    fn report(&self, end: StreamEnd, retry: &mut Backoff, auth_retry: &mut Backoff) -> Duration {
        let reason = match &end {
            StreamEnd::Auth(r) | StreamEnd::Retry(r) | StreamEnd::Poison(r) => r.clone(),
            StreamEnd::Spool(e) => e.to_string(),
        };
        self.shared
            .stats
            .stream_failed(self.table, format!("{}: {reason}", self.table_name));
        match end {
            StreamEnd::Auth(reason) => {
                let delay = auth_retry.next_delay();
                tracing::error!(table = %self.table_name, reason = %reason, retry_s = delay.as_secs(),
                    "Zerobus refused the credentials of {}; records stay in the spool.", self.settings_summary);
                delay
            }
            StreamEnd::Retry(reason) | StreamEnd::Poison(reason) => {
                let delay = retry.next_delay();
                tracing::warn!(table = %self.table_name, reason = %reason, retry_ms = delay.as_millis(),
                    "Zerobus stream failed; replaying from the spool.");
                delay
            }
            StreamEnd::Spool(e) => {
                let delay = retry.next_delay();
                tracing::error!(table = %self.table_name, error = %e, "Spool read failed.");
                delay
            }
        }
    }

    async fn has_rows(&self) -> bool {
        self.read(None, 1, 1)
            .await
            .is_ok_and(|rows| !rows.is_empty())
    }

    /// Runs a spool operation where blocking is allowed: a redb read, or a commit with its
    /// fsync, must not hold one of the runtime's threads that serve the workers.
    async fn spool<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = Arc::clone(&self.shared.spool);
        tokio::task::spawn_blocking(move || operation(&spool))
            .await
            .unwrap_or_else(|e| Err(SpoolError::Task(e.to_string())))
    }

    /// Reads the table's next rows after `after`. A row that does not decrypt can never be
    /// sent (the spool checked its key at open, so the row itself was damaged on disk): it is
    /// moved to the dead-letter store, counted and reported, and reading goes on.
    async fn read(
        &self,
        after: Option<u64>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let table = self.table;
        loop {
            match self
                .spool(move |spool| spool.read(table, after, max_rows, max_bytes))
                .await
            {
                Err(SpoolError::Decrypt(position)) => {
                    let reason = SpoolError::Decrypt(position).to_string();
                    self.move_aside(position, reason).await?;
                }
                other => return other,
            }
        }
    }

    /// Deletes the table's rows through `position`: Zerobus holds them durably.
    async fn remove_through(&self, position: u64) -> Result<u64, SpoolError> {
        let table = self.table;
        self.spool(move |spool| spool.remove_through(table, position))
            .await
    }

    /// Moves the row at `position` to the dead-letter store with `reason`, and writes a status
    /// row saying so in the same transaction.
    async fn move_aside(&self, position: u64, reason: String) -> Result<(), SpoolError> {
        tracing::error!(table = %self.table_name, position, reason = %reason,
            "A row cannot be delivered; moved to the dead-letter store.");
        // A status row about a dead-lettered status row could be dead-lettered in turn.
        let status = (self.table != Table::Status).then(|| {
            let detail = format!("{}: {reason}", self.table_name);
            crate::status_row(
                &self.shared.connector_id,
                StatusEvent::DeadLettered,
                detail,
                1,
            )
        });
        let table = self.table;
        self.spool(move |spool| spool.dead_letter(table, position, &reason, status.as_deref()))
            .await?;
        self.shared.stats.dead_lettered();
        Ok(())
    }

    async fn idle(&self) {
        let _ = tokio::time::timeout(IDLE_POLL, self.shared.committed.notified()).await;
    }

    async fn open(&self) -> Result<ZerobusStream, ZerobusError> {
        self.sdk
            .stream_builder()
            .table(self.table_name.clone())
            .headers_provider(
                Arc::clone(&self.tokens) as Arc<dyn databricks_zerobus_ingest_sdk::HeadersProvider>
            )
            .compiled_proto(self.table.descriptor())
            .max_inflight_requests(INFLIGHT_BATCHES * 4)
            .server_lack_of_ack_timeout_ms(30_000)
            .flush_timeout_ms(60_000)
            .recovery(true)
            .recovery_timeout_ms(15_000)
            .build()
            .await
    }

    /// Streams the spool until the stream fails; returns how it ended.
    async fn pump(
        &self,
        stream: &ZerobusStream,
        retry: &mut Backoff,
        auth_retry: &mut Backoff,
    ) -> StreamEnd {
        let mut cursor: Option<u64> = None;
        // (offset, last position, rows) of every ingest call not yet acknowledged.
        let mut inflight: VecDeque<(OffsetId, u64, u64)> = VecDeque::new();
        loop {
            if inflight.len() < INFLIGHT_BATCHES {
                let rows = match self.read(cursor, BATCH_ROWS, BATCH_BYTES).await {
                    Ok(rows) => rows,
                    Err(e) => return StreamEnd::Spool(e),
                };
                if let Some(last) = rows.last().map(|r| r.position) {
                    let count = rows.len() as u64;
                    match stream
                        .ingest_records_offset(rows.into_iter().map(|r| r.row))
                        .await
                    {
                        Ok(Some(offset)) => inflight.push_back((offset, last, count)),
                        Ok(None) => {}
                        Err(e) => return classify(e),
                    }
                    cursor = Some(last);
                    continue;
                }
            }
            let Some(&(offset, last, count)) = inflight.front() else {
                self.idle().await;
                continue;
            };
            if let Err(e) = stream.wait_for_offset(offset).await {
                return classify(e);
            }
            inflight.pop_front();
            self.shared.stats.zerobus_acked(self.table, count);
            if let Err(e) = self.remove_through(last).await {
                return StreamEnd::Spool(e);
            }
            retry.reset();
            auth_retry.reset();
        }
    }

    /// Finds the rows the server rejects for good by bisecting the spool's head on fresh streams,
    /// dead-letters each with `reason`, and delivers the rest.
    async fn isolate(&self, reason: &str) -> Result<(), StreamEnd> {
        let window = self
            .read(None, BATCH_ROWS * INFLIGHT_BATCHES, usize::MAX)
            .await
            .map_err(StreamEnd::Spool)?;
        tracing::warn!(table = %self.table_name, rows = window.len(), reason = %reason,
            "Zerobus rejected a row; isolating it.");
        let mut chunks: VecDeque<Vec<Spooled>> = VecDeque::from([window]);
        let mut stream: Option<ZerobusStream> = None;
        while let Some(chunk) = chunks.pop_front() {
            let Some(last) = chunk.last().map(|r| r.position) else {
                continue;
            };
            let open = match stream.take() {
                Some(s) => s,
                None => self.open().await.map_err(classify)?,
            };
            let rows: Vec<Vec<u8>> = chunk.iter().map(|r| r.row.clone()).collect();
            let sent = match open.ingest_records_offset(rows).await {
                Ok(Some(offset)) => open.wait_for_offset(offset).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            match sent.map_err(classify) {
                Ok(()) => {
                    self.remove_through(last).await.map_err(StreamEnd::Spool)?;
                    self.shared
                        .stats
                        .zerobus_acked(self.table, chunk.len() as u64);
                    stream = Some(open);
                }
                Err(StreamEnd::Poison(message)) => match chunk.as_slice() {
                    [single] => self
                        .move_aside(single.position, message)
                        .await
                        .map_err(StreamEnd::Spool)?,
                    _ => {
                        let mut left = chunk;
                        let right = left.split_off(left.len() / 2);
                        chunks.push_front(right);
                        chunks.push_front(left);
                    }
                },
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }
}

/// Starts one forwarder per table.
pub fn start(shared: &Arc<Shared>, settings: &ZerobusSettings) -> Result<(), ForwardError> {
    let sdk = Arc::new(sdk(settings)?);
    let http = auth::http_client(settings)?;
    for table in Table::ALL {
        let forwarder = Forwarder::new(
            Arc::clone(shared),
            Arc::clone(&sdk),
            settings,
            http.clone(),
            table,
        );
        tokio::spawn(forwarder.run());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    };

    use iot_connector_proto::SpoolPolicy;

    use super::*;
    use crate::spool::Incoming;

    /// Rows the test spools before the forwarder starts.
    const ROWS: usize = 50;

    /// The forwarder's deletes commit with an fsync that waits for the test to let it go. The
    /// runtime has one thread: if the fsync held it, the test could never run to let it go, and
    /// the fsync goes on by itself after a while, remembering that it was not released.
    #[test]
    fn the_forwarders_spool_commits_leave_the_runtime_free() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let zerobus = iot_connector_sim_zerobus::start(Default::default())
                .await
                .unwrap();
            let (armed, unreleased) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (entered, mut fsync_waiting) = tokio::sync::mpsc::unbounded_channel();
            let (release, released) = mpsc::channel::<()>();
            let released = Arc::new(Mutex::new(released));
            let before_sync: crate::fault::BeforeSync = {
                let (armed, unreleased) = (Arc::clone(&armed), Arc::clone(&unreleased));
                Arc::new(move || {
                    if armed.swap(false, Ordering::SeqCst) {
                        let _ = entered.send(());
                        let waited = released
                            .lock()
                            .unwrap()
                            .recv_timeout(Duration::from_secs(20));
                        unreleased.store(waited.is_err(), Ordering::SeqCst);
                    }
                    Ok(())
                })
            };
            let dir = tempfile::tempdir().unwrap();
            let spool = Arc::new(
                Spool::open_with(
                    dir.path(),
                    None,
                    1 << 30,
                    SpoolPolicy::Block,
                    crate::fault::opener(before_sync),
                )
                .unwrap(),
            );
            let row = crate::status_row("c", StatusEvent::Started, "probe".into(), 0);
            let batch = Incoming {
                source: "plc".into(),
                rows: (1..=ROWS as u64)
                    .map(|seq| (seq, Table::Status, row.clone()))
                    .collect(),
            };
            spool.append(&[batch], &|_, _| Vec::new()).unwrap();

            let settings = ZerobusSettings {
                endpoint: zerobus.grpc_url().to_owned(),
                workspace_url: zerobus.oauth_url().to_owned(),
                client_id: "id".into(),
                client_secret: "secret".into(),
                ca_pem: Some(zerobus.ca_pem().to_owned()),
                proxy: None,
                no_proxy: Vec::new(),
                tables: Table::ALL.map(|t| format!("main.bronze.{t:?}").to_lowercase()),
            };
            let shared = Arc::new(Shared {
                connector_id: "c".into(),
                spool: Arc::clone(&spool),
                committed: Arc::new(Notify::new()),
                stats: Arc::new(Stats::default()),
            });
            armed.store(true, Ordering::SeqCst);
            let forwarder = Forwarder::new(
                shared,
                Arc::new(sdk(&settings).unwrap()),
                &settings,
                auth::http_client(&settings).unwrap(),
                Table::Status,
            );
            let forwarding = tokio::spawn(forwarder.run());

            fsync_waiting
                .recv()
                .await
                .expect("the forwarder never deleted a row");
            release.send(()).unwrap();
            let table = &settings.tables[Table::Status.index()];
            let delivered = zerobus
                .state()
                .wait_until(Duration::from_secs(60), |s| s.row_count(table) >= ROWS)
                .await;
            forwarding.abort();
            assert!(delivered, "the spooled rows never reached Zerobus");
            assert!(
                !unreleased.load(Ordering::SeqCst),
                "the forwarder's fsync held the runtime's only thread"
            );
        });
    }
}
