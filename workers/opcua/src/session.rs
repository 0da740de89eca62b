//! The connection to one OPC-UA server and its subscriptions, kept alive for the life of the
//! worker.
//!
//! - **Endpoint**: discovered with GetEndpoints (under `connect_timeout_ms`: the crate
//!   otherwise retries silently); the endpoint with exactly the configured policy and mode
//!   and the configured kind of user token is used, never a weaker one ([`select_endpoint`]).
//!   The worker always connects to the configured address, whatever host the server
//!   advertises (NAT and DMZ proxies rewrite it). A password is never sent in clear text.
//! - **Server certificate**: pinned in `<state_dir>/pki/trusted`; an unknown one is refused
//!   before connecting and reported with its thumbprint and the `mv` that trusts it
//!   ([`crate::pki`]); every retry looks again, so no restart is needed.
//! - **Retry**: the first connection is retried by this module with backoff (1 s → 15 s)
//!   forever, each failure classified (security and identity failures are errors the operator
//!   must act on; the rest are transient) and shown in `status` and `/health`. Once
//!   connected, the crate reconnects by itself, forever, at least every 4 s (so data resumes
//!   within about 5 s of the server coming back, however long it was away), and transfers or
//!   recreates the subscriptions.
//! - **Publish stall** (async-opcua 0.19): after every reconnect the crate stops sending
//!   Publish requests; the event loop driver calls `trigger_publish_now()` on every
//!   `Reconnected`, which restarts them.
//! - **Watchdog**: a subscription from which nothing (data or keep-alive) arrives for
//!   `watchdog_intervals` publishing intervals (at least 5 s) while the session is up is
//!   deleted and created again, with a gap row.
//! - **Gaps**: every reconnect writes a `disconnected` and then a `gap` status row and reads
//!   every monitored value once, so a value that changed while we were away is not missed.
//! - **Backpressure**: notifications wait in a bounded queue for the uplink's window; when it is
//!   full the event loop is not polled, so no Publish is sent and the server's monitored-item
//!   queues hold the rest.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use iot_connector_config::{OpcuaSource, SecurityMode, SecurityPolicy};
use iot_connector_proto::{Detail, OpcuaDetail, StatusEvent};
use iot_connector_runtime::{Backoff, Sink, health, now_us};
use opcua::{
    client::{
        Client, ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore,
        Session, SessionConnectMode, SessionPollResult,
    },
    crypto::SecurityPolicy as Policy,
    types::{
        AttributeId, DataChangeNotification, DataValue, EndpointDescription, MessageSecurityMode,
        NotificationMessage, ReadValueId, StatusCode, TimestampsToReturn, UserTokenType,
    },
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    mapping::Mapper,
    nodes::{self, Monitored, Plan, index_of},
    pki::Pki,
};

/// Notifications waiting for the uplink's window at most before the event loop pauses.
const HIGH_WATER: usize = 1024;
/// Values read or monitored items created per request.
const CHUNK: usize = 1000;
/// Incoming message limits. The crate's defaults (1000-element arrays, 320 KiB messages) drop
/// the session on any publish of more than 1000 changes or any larger array value, and the
/// reconnect then fails the same way; these bound what an untrusted server can make us
/// allocate per message while fitting real subscriptions.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
const MAX_CHUNKS: usize = 256;
const MAX_ARRAY_LENGTH: usize = 1 << 20;
/// Notifications per Publish response at most: big changes arrive in several responses.
const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 1000;
/// How long a failed subscription setup on a live session waits before it is tried again.
const SETUP_RETRY: Duration = Duration::from_secs(10);
/// The shortest silence the watchdog acts on.
const WATCHDOG_FLOOR: Duration = Duration::from_secs(5);
/// Set (by a test, never by the supervisor, whose allow-list does not pass it) to leave out the
/// publish-stall workaround, so that the test proves the watchdog alone recovers a stall.
const NO_WORKAROUND_ENV: &str = "IOT_CONNECTOR_OPCUA_TEST_NO_PUBLISH_WORKAROUND";

/// Why the worker cannot run at all (not: why a connection failed, which is retried).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The PKI directory could not be prepared.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// How the worker identifies its user to the server.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No user.
    Anonymous,
    /// User name and password.
    UserName(String),
    /// X.509 user certificate and key files.
    Certificate(PathBuf, PathBuf),
}

impl Identity {
    fn token_type(&self) -> UserTokenType {
        match self {
            Self::Anonymous => UserTokenType::Anonymous,
            Self::UserName(_) => UserTokenType::UserName,
            Self::Certificate(..) => UserTokenType::Certificate,
        }
    }
}

/// Checks what the config validator cannot know about OPC-UA; every problem at once.
pub fn check(source: &OpcuaSource) -> Result<Identity, Vec<String>> {
    let mut problems = Vec::new();
    if matches!(
        source.security_policy,
        SecurityPolicy::Basic128Rsa15 | SecurityPolicy::Basic256
    ) && !source.allow_deprecated_security
    {
        problems.push(format!(
            "security_policy {:?} is deprecated (SHA-1): use Basic256Sha256 or an Aes policy, \
             or set allow_deprecated_security = true if the server offers nothing else",
            source.security_policy
        ));
    }
    if (source.security_policy == SecurityPolicy::None)
        != (source.security_mode == SecurityMode::None)
    {
        problems
            .push("security_policy and security_mode must both be None or both be set".to_owned());
    }
    let identity = match (
        &source.username,
        &source.user_certificate_file,
        &source.user_private_key_file,
    ) {
        (None, None, None) => Identity::Anonymous,
        (Some(user), None, None) => Identity::UserName(user.clone()),
        (None, Some(cert), Some(key)) => Identity::Certificate(cert.into(), key.into()),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            problems
                .push("username and user_certificate_file are two identities: keep one".to_owned());
            Identity::Anonymous
        }
        (None, _, _) => {
            problems.push("user_certificate_file and user_private_key_file go together".to_owned());
            Identity::Anonymous
        }
    };
    if problems.is_empty() {
        Ok(identity)
    } else {
        Err(problems)
    }
}

fn policy(p: SecurityPolicy) -> Policy {
    match p {
        SecurityPolicy::None => Policy::None,
        SecurityPolicy::Basic256Sha256 => Policy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => Policy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => Policy::Aes256Sha256RsaPss,
        SecurityPolicy::Basic128Rsa15 => Policy::Basic128Rsa15,
        SecurityPolicy::Basic256 => Policy::Basic256,
    }
}

fn mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

fn describe(endpoint: &EndpointDescription) -> String {
    format!(
        "{}/{:?}",
        Policy::from_uri(endpoint.security_policy_uri.as_ref()),
        endpoint.security_mode
    )
}

/// The server endpoint to use: exactly the configured policy and mode, offering the
/// configured kind of user token; its URL replaced by the configured one. Fails closed: a
/// server offering only weaker (or other) security is refused, and so is a password that
/// would travel in clear text.
pub fn select_endpoint(
    endpoints: &[EndpointDescription],
    url: &str,
    wanted_policy: Policy,
    wanted_mode: MessageSecurityMode,
    token: UserTokenType,
) -> Result<EndpointDescription, String> {
    let offered = || {
        let list: Vec<String> = endpoints.iter().map(describe).collect();
        if list.is_empty() {
            "nothing".to_owned()
        } else {
            list.join(", ")
        }
    };
    let same_security: Vec<&EndpointDescription> = endpoints
        .iter()
        .filter(|e| {
            e.security_mode == wanted_mode
                && Policy::from_uri(e.security_policy_uri.as_ref()) == wanted_policy
        })
        .collect();
    if same_security.is_empty() {
        return Err(format!(
            "the server offers no endpoint with {wanted_policy}/{wanted_mode:?} (it offers {}); \
             refusing to connect with other security",
            offered()
        ));
    }
    let path = |u: &str| {
        u.split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, p)| p.trim_end_matches('/').to_owned())
            .unwrap_or_default()
    };
    let chosen = same_security
        .iter()
        .filter(|e| {
            e.user_identity_tokens
                .as_ref()
                .is_some_and(|t| t.iter().any(|p| p.token_type == token))
                || (token == UserTokenType::Anonymous && e.user_identity_tokens.is_none())
        })
        .min_by_key(|e| path(e.endpoint_url.as_ref()) != path(url))
        .ok_or_else(|| {
            format!("the {wanted_policy}/{wanted_mode:?} endpoint does not accept {token:?} users")
        })?;
    if token == UserTokenType::UserName && wanted_policy == Policy::None {
        let token_policy_secure = chosen
            .user_identity_tokens
            .iter()
            .flatten()
            .filter(|p| p.token_type == UserTokenType::UserName)
            .any(|p| {
                !p.security_policy_uri.is_empty()
                    && Policy::from_uri(p.security_policy_uri.as_ref()) != Policy::None
            });
        if !token_policy_secure {
            return Err(
                "the server would receive the password in clear text (security None and no \
                 user token encryption): configure a security policy"
                    .to_owned(),
            );
        }
    }
    let mut endpoint = (*chosen).clone();
    endpoint.endpoint_url = url.into();
    Ok(endpoint)
}

/// What kind of failure a status code from connecting is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server refused this connector's certificate or security settings.
    Security,
    /// The server refused the user identity.
    Identity,
    /// Anything else: network, server down, timeouts.
    Transient,
}

/// Classifies a connect or reconnect failure.
pub fn classify(code: StatusCode) -> FailureKind {
    match code {
        StatusCode::BadIdentityTokenRejected
        | StatusCode::BadIdentityTokenInvalid
        | StatusCode::BadUserAccessDenied
        | StatusCode::BadUserSignatureInvalid => FailureKind::Identity,
        StatusCode::BadSecurityChecksFailed
        | StatusCode::BadSecurityPolicyRejected
        | StatusCode::BadSecurityModeRejected
        | StatusCode::BadCertificateInvalid
        | StatusCode::BadCertificateUntrusted
        | StatusCode::BadCertificateTimeInvalid
        | StatusCode::BadCertificateIssuerTimeInvalid
        | StatusCode::BadCertificateHostNameInvalid
        | StatusCode::BadCertificateUriInvalid
        | StatusCode::BadCertificateUseNotAllowed
        | StatusCode::BadCertificateIssuerUseNotAllowed
        | StatusCode::BadCertificateRevoked
        | StatusCode::BadCertificateIssuerRevoked
        | StatusCode::BadCertificateRevocationUnknown
        | StatusCode::BadNonceInvalid
        | StatusCode::BadApplicationSignatureInvalid => FailureKind::Security,
        _ => FailureKind::Transient,
    }
}

/// Subscription timing for a publishing interval: keep-alive about every 5 s (1..=10
/// intervals), lifetime of at least a minute, and the watchdog's silence threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Max keep-alive count.
    pub keep_alive: u32,
    /// Lifetime count.
    pub lifetime: u32,
    /// Silence after which the watchdog recreates the subscription.
    pub watchdog: Duration,
}

impl Timing {
    /// For a subscription with this interval and the source's `watchdog_intervals`.
    pub fn new(publishing_ms: u64, watchdog_intervals: u32) -> Self {
        let publishing_ms = publishing_ms.max(1);
        let keep_alive = u32::try_from(5_000u64.div_ceil(publishing_ms).clamp(1, 10)).unwrap_or(10);
        let lifetime = u32::try_from(60_000u64.div_ceil(publishing_ms))
            .unwrap_or(u32::MAX)
            .max(keep_alive * 3);
        let intervals = u64::from(watchdog_intervals.max(keep_alive * 2));
        let watchdog =
            Duration::from_millis(publishing_ms.saturating_mul(intervals)).max(WATCHDOG_FLOOR);
        Self {
            keep_alive,
            lifetime,
            watchdog,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications: from the crate's synchronous callback to the forwarder task.

/// One value for one monitored item.
#[derive(Debug)]
struct Notice {
    handle: u32,
    value: DataValue,
}

/// Notifications in flight; the event loop is paused while there are too many.
#[derive(Debug, Default)]
struct Gate {
    pending: AtomicUsize,
}

impl Gate {
    fn add(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    async fn open(&self) {
        while self.pending.load(Ordering::Relaxed) > HIGH_WATER {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// When a subscription was last heard from (ms since `base`).
#[derive(Debug)]
struct Heard {
    base: Instant,
    ms: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            ms: AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(self.ms.load(Ordering::Relaxed)))
    }
}

/// The crate calls this inside its event loop for every NotificationMessage (keep-alives
/// included): it only queues, never blocks.
struct Notifications {
    tx: mpsc::UnboundedSender<Notice>,
    gate: Arc<Gate>,
    heard: Arc<Heard>,
}

impl OnSubscriptionNotificationCore for Notifications {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        self.heard.now();
        for data in notification.notification_data.into_iter().flatten() {
            let Some(change) = data.into_inner_as::<DataChangeNotification>() else {
                continue;
            };
            for item in change.monitored_items.into_iter().flatten() {
                self.gate.add();
                let notice = Notice {
                    handle: item.client_handle,
                    value: item.value,
                };
                if self.tx.send(notice).is_err() {
                    self.gate.done();
                }
            }
        }
    }
}

/// Turns notices into records, in arrival order.
async fn forward(
    mut rx: mpsc::UnboundedReceiver<Notice>,
    nodes: Arc<RwLock<Vec<Monitored>>>,
    sink: Arc<Sink>,
    gate: Arc<Gate>,
    endpoint: String,
) {
    let mapper = Mapper::default();
    while let Some(notice) = rx.recv().await {
        let detail = {
            let nodes = nodes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            index_of(notice.handle)
                .and_then(|i| nodes.get(i))
                .map(|n| OpcuaDetail {
                    endpoint: endpoint.clone(),
                    node_id: n.node_id.to_string(),
                    namespace_uri: n.namespace_uri.to_string(),
                    browse_path: n.browse_path.to_string(),
                    display_name: n.display_name.to_string(),
                    ..Default::default()
                })
        };
        if let Some(mut detail) = detail {
            let mapped = mapper.map(notice.value, now_us());
            detail.status_code = mapped.status_code;
            detail.source_time_us = mapped.source_time_us;
            detail.server_time_us = mapped.server_time_us;
            sink.push(
                mapped.event_time_us,
                mapped.quality,
                mapped.value,
                Detail::Opcua(detail),
            )
            .await;
        }
        gate.done();
    }
}

// ---------------------------------------------------------------------------------------------
// The session.

/// What the event loop driver reports.
#[derive(Debug)]
enum Event {
    Connected(SessionConnectMode),
    Lost(StatusCode),
    Failed(StatusCode),
    Ended(StatusCode),
}

/// Polls the crate's event loop, applies the publish-stall workaround and the backpressure
/// gate, and reports what matters.
async fn drive<S>(
    events: S,
    session: Arc<Session>,
    tx: mpsc::UnboundedSender<Event>,
    gate: Arc<Gate>,
    workaround: bool,
) where
    S: futures::Stream<Item = Result<SessionPollResult, StatusCode>>,
{
    let mut events = std::pin::pin!(events);
    loop {
        gate.open().await;
        let event = match events.next().await {
            Some(Ok(SessionPollResult::Reconnected(how))) => {
                // async-opcua 0.19 consumes its publish trigger before the new subscription
                // loop exists, so no Publish would ever be sent again: trigger it now.
                if workaround {
                    session.trigger_publish_now();
                }
                Event::Connected(how)
            }
            Some(Ok(SessionPollResult::ConnectionLost(code))) => Event::Lost(code),
            Some(Ok(SessionPollResult::ReconnectFailed(code))) => Event::Failed(code),
            Some(Ok(other)) => {
                debug!(event = ?other, "Session event.");
                continue;
            }
            Some(Err(code)) => Event::Ended(code),
            None => Event::Ended(StatusCode::Good),
        };
        let ended = matches!(event, Event::Ended(_));
        if tx.send(event).is_err() || ended {
            return;
        }
    }
}

/// One subscription: the nodes sharing a publishing interval.
#[derive(Debug)]
struct Group {
    publishing_ms: u64,
    handles: Vec<u32>,
    heard: Arc<Heard>,
    timing: Timing,
}

/// An established session and its driver.
struct Connection {
    session: Arc<Session>,
    events: mpsc::UnboundedReceiver<Event>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A failed connection attempt.
struct Failure {
    kind: FailureKind,
    message: String,
}

/// The worker's state across connections.
pub struct Worker {
    source: OpcuaSource,
    plan: Plan,
    identity: Identity,
    pki: Pki,
    client: Client,
    sink: Arc<Sink>,
    nodes: Arc<RwLock<Vec<Monitored>>>,
    notices: mpsc::UnboundedSender<Notice>,
    gate: Arc<Gate>,
    groups: Vec<Group>,
    subscribed: bool,
    connected_at: Instant,
    lost: Option<(Instant, StatusCode)>,
    last_report: Option<(String, Instant)>,
    publish_workaround: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("source", &self.source.name)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Prepares the PKI (creating the client key pair the first time) and the client.
    pub async fn new(
        source: OpcuaSource,
        plan: Plan,
        identity: Identity,
        connector_id: &str,
        state_dir: &Path,
        sink: Arc<Sink>,
    ) -> Result<Self, SessionError> {
        let pki_dir = state_dir.join("pki");
        let id = connector_id.to_owned();
        let pki = tokio::task::spawn_blocking(move || Pki::prepare(&pki_dir, &id))
            .await
            .map_err(|e| SessionError::Config(format!("PKI preparation panicked: {e}")))??;
        health().certificate_days_left(pki.days_left);
        if pki.days_left < 30 {
            warn!(source = %source.name, days_left = pki.days_left, cert = %pki.own_cert_path().display(), "The connector's OPC-UA client certificate expires soon.");
        }
        let connect_timeout = Duration::from_millis(source.connect_timeout_ms.max(1));
        let client = ClientBuilder::new()
            .application_name("iot-connector")
            .application_uri(&pki.application_uri)
            .product_uri("urn:iot-connector")
            .pki_dir(&pki.dir)
            .create_sample_keypair(false)
            .trust_server_certs(false)
            .verify_server_certs(true)
            .session_retry_limit(-1)
            .session_retry_initial(Duration::from_millis(500))
            .session_retry_max(Duration::from_secs(4))
            .keep_alive_interval(Duration::from_secs(2))
            .max_failed_keep_alive_count(3)
            .request_timeout(connect_timeout)
            .max_message_size(MAX_MESSAGE_BYTES)
            .max_chunk_count(MAX_CHUNKS)
            .max_array_length(MAX_ARRAY_LENGTH)
            .session_name(format!("iot-connector {}", source.name))
            .recreate_subscriptions(true)
            .client()
            .map_err(|problems| SessionError::Config(problems.join("; ")))?;
        if std::env::var_os(NO_WORKAROUND_ENV).is_some() {
            warn!(source = %source.name, "Test mode: the publish-stall workaround is off; only the watchdog recovers stalled subscriptions.");
        }
        let nodes = Arc::new(RwLock::new(Vec::new()));
        let gate = Arc::new(Gate::default());
        let (notices, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(
            rx,
            Arc::clone(&nodes),
            Arc::clone(&sink),
            Arc::clone(&gate),
            source.endpoint.clone(),
        ));
        Ok(Self {
            source,
            plan,
            identity,
            pki,
            client,
            sink,
            nodes,
            notices,
            gate,
            groups: Vec::new(),
            subscribed: false,
            connected_at: Instant::now(),
            lost: None,
            last_report: None,
            publish_workaround: std::env::var_os(NO_WORKAROUND_ENV).is_none(),
        })
    }

    /// Connects, monitors and reconnects, forever.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
        loop {
            match self.establish().await {
                Ok(connection) => {
                    backoff.connected();
                    self.connected(connection).await;
                    // A server that ends every session right after creating it is not
                    // hammered: the pause grows until a session stays up.
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(failure) => {
                    self.report(&failure).await;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    fn identity_token(&self) -> Result<IdentityToken, Failure> {
        Ok(match &self.identity {
            Identity::Anonymous => IdentityToken::Anonymous,
            Identity::UserName(user) => IdentityToken::new_user_name(
                user.clone(),
                self.source
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_owned())
                    .unwrap_or_default(),
            ),
            Identity::Certificate(cert, key) => {
                IdentityToken::new_x509_path(cert, key).map_err(|e| Failure {
                    kind: FailureKind::Identity,
                    message: format!(
                        "cannot read the user certificate {} or key {}: {e}",
                        cert.display(),
                        key.display()
                    ),
                })?
            }
        })
    }

    /// One attempt: endpoints, selection, certificate check, session. Every step is bounded
    /// by `connect_timeout_ms`.
    async fn establish(&mut self) -> Result<Connection, Failure> {
        let url = self.source.endpoint.clone();
        let timeout = Duration::from_millis(self.source.connect_timeout_ms.max(1));
        let transient = |message: String| Failure {
            kind: FailureKind::Transient,
            message,
        };
        let endpoints = tokio::time::timeout(
            timeout,
            self.client.get_server_endpoints_from_url(url.as_str()),
        )
        .await
        .map_err(|_| {
            transient(format!(
                "{url} did not answer GetEndpoints within {timeout:?}"
            ))
        })?
        .map_err(|e| transient(format!("cannot get the endpoints of {url}: {e}")))?;
        let endpoint = select_endpoint(
            &endpoints,
            &url,
            policy(self.source.security_policy),
            mode(self.source.security_mode),
            self.identity.token_type(),
        )
        .map_err(|message| Failure {
            kind: FailureKind::Security,
            message,
        })?;
        if policy(self.source.security_policy) != Policy::None {
            let der = endpoint
                .server_certificate
                .value
                .as_deref()
                .unwrap_or_default();
            let days_left = self.pki.check_server(der).map_err(|u| Failure {
                kind: FailureKind::Security,
                message: u.message,
            })?;
            health().certificate_days_left(days_left.min(self.pki.days_left));
        }
        let identity = self.identity_token()?;
        let (session, event_loop) = self
            .client
            .connect_to_endpoint_directly(endpoint, identity)
            .map_err(|e| transient(format!("cannot set up a session with {url}: {e}")))?;
        let (tx, mut events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(
            event_loop.enter(),
            Arc::clone(&session),
            tx,
            Arc::clone(&self.gate),
            self.publish_workaround,
        ));
        let mut connection = Connection {
            session,
            events: mpsc::unbounded_channel().1,
            driver,
        };
        let first = tokio::time::timeout(timeout, events.recv()).await;
        match first {
            Ok(Some(Event::Connected(_))) => {
                connection.events = events;
                Ok(connection)
            }
            Ok(Some(Event::Failed(code) | Event::Lost(code) | Event::Ended(code))) => {
                Err(self.failure(code, &url))
            }
            Ok(None) => Err(transient(format!("the session with {url} ended at once"))),
            Err(_) => Err(transient(format!(
                "{url} did not open a session within {timeout:?}"
            ))),
        }
    }

    fn failure(&self, code: StatusCode, url: &str) -> Failure {
        let kind = classify(code);
        let message = match kind {
            // Our own check of the server's certificate (it changed, expired, or names
            // another host or application) refused it.
            FailureKind::Security
                if matches!(
                    code,
                    StatusCode::BadCertificateUntrusted
                        | StatusCode::BadCertificateTimeInvalid
                        | StatusCode::BadCertificateHostNameInvalid
                        | StatusCode::BadCertificateUriInvalid
                ) =>
            {
                format!(
                    "this connector refused the certificate of {url} ({code}); an unknown one is \
                     in {}: check its thumbprint with the server's administrator and move it to {}",
                    self.pki.dir.join("rejected").display(),
                    self.pki.dir.join("trusted").display()
                )
            }
            FailureKind::Security => format!(
                "{url} refused the secure connection ({code}): the server most likely does not \
                 trust this connector's certificate {} (SHA-1 thumbprint {}); on the server, move \
                 it from its rejected to its trusted certificates",
                self.pki.own_cert_path().display(),
                self.pki.own_thumbprint
            ),
            FailureKind::Identity => format!(
                "{url} refused the user identity ({code}): check username/password or the user certificate"
            ),
            FailureKind::Transient => format!("cannot connect to {url}: {code}"),
        };
        Failure { kind, message }
    }

    /// Health board always; a `disconnected` status row when the reason changes; the log then
    /// and once a minute.
    async fn report(&mut self, failure: &Failure) {
        health().set_connected(false);
        health().error(failure.message.clone());
        let same = self
            .last_report
            .as_ref()
            .filter(|(m, _)| *m == failure.message)
            .map(|(_, at)| *at);
        if same.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        if same.is_none() {
            self.sink
                .status(StatusEvent::Disconnected, failure.message.clone(), 0)
                .await;
        }
        self.last_report = Some((failure.message.clone(), Instant::now()));
        match failure.kind {
            FailureKind::Transient => {
                warn!(source = %self.source.name, error = %failure.message, "OPC-UA connection failed; retrying.");
            }
            FailureKind::Security | FailureKind::Identity => {
                error!(source = %self.source.name, error = %failure.message, "OPC-UA server refused the connection; the operator must act. Retrying.");
            }
        }
    }

    /// Runs an established connection until its session ends for good.
    async fn connected(&mut self, mut connection: Connection) {
        let session = Arc::clone(&connection.session);
        self.on_connected(&session, None).await;
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = connection.events.recv() => match event {
                    Some(Event::Connected(how)) => self.on_connected(&session, Some(how)).await,
                    Some(Event::Lost(code)) => self.on_lost(code).await,
                    Some(Event::Failed(code)) => {
                        let failure = self.failure(code, &self.source.endpoint.clone());
                        self.report(&failure).await;
                    }
                    ended @ (Some(Event::Ended(_)) | None) => {
                        let code = match ended { Some(Event::Ended(code)) => code, _ => StatusCode::BadUnexpectedError };
                        warn!(source = %self.source.name, %code, "The OPC-UA session ended; connecting anew.");
                        if self.lost.is_none() {
                            self.on_lost(code).await;
                        }
                        self.subscribed = false;
                        self.groups.clear();
                        return;
                    }
                },
                _ = watchdog.tick() => self.watch(&session).await,
            }
        }
    }

    async fn on_lost(&mut self, code: StatusCode) {
        health().set_connected(false);
        health().error(format!(
            "connection to {} lost: {code}",
            self.source.endpoint
        ));
        warn!(source = %self.source.name, %code, "OPC-UA connection lost; reconnecting.");
        self.lost = Some((Instant::now(), code));
        self.sink
            .status(
                StatusEvent::Disconnected,
                format!("{}: {code}", self.source.endpoint),
                0,
            )
            .await;
    }

    /// After the first connect: subscribe. After a reconnect: gap row, read every value once.
    async fn on_connected(&mut self, session: &Arc<Session>, how: Option<SessionConnectMode>) {
        self.connected_at = Instant::now();
        health().set_connected(true);
        self.last_report = None;
        let reconnect = how.is_some();
        if let Some(how) = &how {
            health().reconnected();
            let (since, code) = self
                .lost
                .take()
                .map_or((Duration::ZERO, StatusCode::Good), |(at, code)| {
                    (at.elapsed(), code)
                });
            let kind = match how {
                SessionConnectMode::NewSession(_) => "new session, subscriptions recreated",
                SessionConnectMode::ReactivatedSession(_) => {
                    "session reactivated, subscriptions transferred"
                }
            };
            info!(source = %self.source.name, down_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX), kind, "OPC-UA session reconnected.");
            self.sink.status(
                StatusEvent::Gap,
                format!(
                    "{}: connection lost for {:.1} s ({code}); {kind}; values that changed meanwhile may be missing, current values read again",
                    self.source.endpoint,
                    since.as_secs_f64()
                ),
                0,
            )
            .await;
        }
        if !self.subscribed {
            if let Err(e) = self.subscribe_all(session).await {
                warn!(source = %self.source.name, error = %e, "Setting up the subscriptions failed; retrying.");
                health().error(format!("setting up subscriptions failed: {e}"));
                return;
            }
        } else if reconnect {
            self.read_current(session).await;
        }
        let items = self.nodes.read().map_or(0, |n| n.len());
        self.sink
            .status(
                StatusEvent::Connected,
                format!(
                    "{} ({:?}/{:?}), {} subscription(s)",
                    self.source.endpoint,
                    self.source.security_policy,
                    self.source.security_mode,
                    self.groups.len()
                ),
                u64::try_from(items).unwrap_or(u64::MAX),
            )
            .await;
    }

    async fn subscribe_all(&mut self, session: &Arc<Session>) -> Result<(), String> {
        // Leftovers of a setup that failed half-way would be duplicates.
        let leftovers = session.subscription_state().lock().subscription_ids();
        if let Some(ids) = leftovers {
            let _ = session.delete_subscriptions(&ids).await;
        }
        self.groups.clear();
        let (monitored, problems) = nodes::resolve(session, &self.plan, &self.source.name).await?;
        let count = monitored.len();
        let groups = nodes::groups(&monitored);
        *self
            .nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = monitored;
        // As many items per subscription as the server takes: fewer subscriptions (servers also
        // cap those per session) and less memory than a fixed split. The first full one tells
        // the capacity the others are filled to.
        let mut capacity = None;
        for (publishing_ms, handles) in groups {
            let mut rest = handles.as_slice();
            while !rest.is_empty() {
                let mut group = Group {
                    publishing_ms,
                    handles: rest.to_vec(),
                    heard: Arc::new(Heard::new()),
                    timing: Timing::new(publishing_ms, self.source.watchdog_intervals),
                };
                let placed = self.create_subscription(session, &group, capacity).await?;
                if placed < rest.len() {
                    capacity.get_or_insert(placed);
                }
                group.handles.truncate(placed);
                group.handles.shrink_to_fit();
                rest = rest.get(placed..).unwrap_or_default();
                self.groups.push(group);
            }
        }
        self.subscribed = true;
        // Browsing and subscribing thousands of nodes leaves megabytes of freed transient data.
        iot_connector_ipc::os::release_free_memory();
        info!(source = %self.source.name, nodes = count, subscriptions = self.groups.len(), "Monitoring.");
        if count == 0 {
            warn!(source = %self.source.name, "No node to monitor: check nodes and browse.");
        }
        if !problems.is_empty() {
            health().error(format!(
                "{} configured node(s) not monitored: {}",
                problems.len(),
                problems.join("; ")
            ));
        }
        Ok(())
    }

    /// Creates a subscription for `group` and fills it with the group's items, in order, until
    /// all are in, `capacity` is reached, or the server answers BadTooManyMonitoredItems. After
    /// such an answer one item is tried: refused, the subscription is full (the usual case: a
    /// round limit met by full calls); taken, calls of half the size go on. Returns how many
    /// items it took; items the server refuses one by one count as taken and are reported.
    async fn create_subscription(
        &self,
        session: &Session,
        group: &Group,
        capacity: Option<usize>,
    ) -> Result<usize, String> {
        group.heard.now();
        let callback = Notifications {
            tx: self.notices.clone(),
            gate: Arc::clone(&self.gate),
            heard: Arc::clone(&group.heard),
        };
        let id = session
            .create_subscription(
                Duration::from_millis(group.publishing_ms),
                group.timing.lifetime,
                group.timing.keep_alive,
                MAX_NOTIFICATIONS_PER_PUBLISH,
                0,
                true,
                callback,
            )
            .await
            .map_err(|e| {
                format!(
                    "CreateSubscription ({} ms) failed: {e}",
                    group.publishing_ms
                )
            })?;
        let requests: Vec<_> = {
            let nodes = self
                .nodes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            group
                .handles
                .iter()
                .filter_map(|&h| {
                    index_of(h)
                        .and_then(|i| nodes.get(i))
                        .map(|n| n.create_request(h))
                })
                .collect()
        };
        let wanted = capacity.map_or(requests.len(), |c| c.min(requests.len()));
        let (mut placed, mut per_call, mut after_probe) = (0, CHUNK, None);
        let mut refused = Vec::new();
        while placed < wanted {
            let end = wanted.min(placed + per_call);
            let chunk = requests.get(placed..end).unwrap_or_default().to_vec();
            match session
                .create_monitored_items(id, TimestampsToReturn::Both, chunk)
                .await
            {
                Ok(created) => {
                    // Some servers refuse item by item once the subscription is full.
                    let full = created.iter().position(|item| {
                        item.result.status_code == StatusCode::BadTooManyMonitoredItems
                    });
                    for item in created.iter().take(full.unwrap_or(usize::MAX)) {
                        if !item.result.status_code.is_good() {
                            refused.push(format!(
                                "{} ({})",
                                item.item_to_monitor.node_id, item.result.status_code
                            ));
                        }
                    }
                    if let Some(taken) = full {
                        placed += taken;
                        break;
                    }
                    placed = end;
                    if let Some(size) = after_probe.take() {
                        per_call = size;
                    }
                }
                Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems && per_call > 1 => {
                    after_probe = Some(per_call / 2);
                    per_call = 1;
                }
                Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems => break,
                Err(e) => return Err(format!("CreateMonitoredItems failed: {e}")),
            }
        }
        if placed == 0 && wanted > 0 {
            let _ = session.delete_subscription(id).await;
            return Err(
                "the server takes no monitored item in a new subscription (BadTooManyMonitoredItems)"
                    .to_owned(),
            );
        }
        if !refused.is_empty() {
            let first = refused.get(..10).unwrap_or(&refused).join(", ");
            error!(
                source = %self.source.name,
                refused = refused.len(),
                nodes = %first,
                "The server refused some monitored items; they are not monitored."
            );
            health().error(format!(
                "the server refused {} monitored item(s): {first}",
                refused.len()
            ));
        }
        Ok(placed)
    }

    /// Reads every monitored value once (after a reconnect: what changed while we were away).
    async fn read_current(&self, session: &Session) {
        let reads: Vec<(u32, ReadValueId)> = {
            let nodes = self
                .nodes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        nodes::handle_of(i),
                        ReadValueId {
                            node_id: n.node_id.clone(),
                            attribute_id: AttributeId::Value as u32,
                            ..Default::default()
                        },
                    )
                })
                .collect()
        };
        for chunk in reads.chunks(CHUNK) {
            let ids: Vec<ReadValueId> = chunk.iter().map(|(_, r)| r.clone()).collect();
            match session.read(&ids, TimestampsToReturn::Both, 0.0).await {
                Ok(values) => {
                    for ((handle, _), value) in chunk.iter().zip(values) {
                        self.gate.add();
                        if self
                            .notices
                            .send(Notice {
                                handle: *handle,
                                value,
                            })
                            .is_err()
                        {
                            self.gate.done();
                        }
                    }
                }
                Err(e) => {
                    warn!(source = %self.source.name, error = %e, "Reading current values after the reconnect failed.");
                    return;
                }
            }
        }
    }

    /// Recreates subscriptions that stayed silent too long while the session is up.
    async fn watch(&mut self, session: &Arc<Session>) {
        if self.lost.is_some() {
            return;
        }
        if !self.subscribed {
            // Setting up failed on a live session (a browse or a request refused): try again.
            if self.connected_at.elapsed() >= SETUP_RETRY {
                self.on_connected(session, None).await;
            }
            return;
        }
        let up_for = self.connected_at.elapsed();
        let mut silent = Vec::new();
        for (i, group) in self.groups.iter().enumerate() {
            let quiet = group.heard.silent_for().min(up_for);
            if quiet > group.timing.watchdog {
                silent.push((i, quiet));
            }
        }
        for (i, quiet) in silent {
            let Some(group) = self.groups.get(i) else {
                continue;
            };
            warn!(
                source = %self.source.name,
                publishing_ms = group.publishing_ms,
                silent_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX),
                "A subscription stayed silent while the session is up; recreating it."
            );
            let first = group.handles.first().copied();
            // The subscription's id changes when the crate recreates it: find it by its items.
            let old = {
                let state = session.subscription_state().lock();
                state.subscription_ids().and_then(|ids| {
                    ids.into_iter().find(|id| {
                        state.get(*id).is_some_and(|s| {
                            s.monitored_items()
                                .any(|m| Some(m.client_handle()) == first)
                        })
                    })
                })
            };
            if let Some(old) = old {
                let _ = session.delete_subscription(old).await;
            }
            match self.create_subscription(session, group, None).await {
                Ok(placed) => {
                    if placed < group.handles.len() {
                        error!(
                            source = %self.source.name,
                            not_monitored = group.handles.len() - placed,
                            "The server took fewer items into the recreated subscription than before."
                        );
                    }
                    self.sink.status(
                        StatusEvent::Gap,
                        format!(
                            "{}: subscription ({} ms) silent for {:.1} s while connected; recreated",
                            self.source.endpoint,
                            group.publishing_ms,
                            quiet.as_secs_f64()
                        ),
                        u64::try_from(group.handles.len()).unwrap_or(u64::MAX),
                    )
                    .await;
                }
                Err(e) => {
                    warn!(source = %self.source.name, error = %e, "Recreating the silent subscription failed; trying again.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use opcua::types::UserTokenPolicy;

    use super::*;

    fn endpoint(
        policy: Policy,
        mode: MessageSecurityMode,
        tokens: &[UserTokenType],
    ) -> EndpointDescription {
        EndpointDescription {
            endpoint_url: "opc.tcp://plc.internal:4840/".into(),
            security_mode: mode,
            security_policy_uri: policy.to_uri().into(),
            user_identity_tokens: Some(
                tokens
                    .iter()
                    .map(|t| UserTokenPolicy {
                        token_type: *t,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const URL: &str = "opc.tcp://127.0.0.1:14840/";

    #[test]
    fn sign_is_refused_when_the_server_offers_only_none() {
        let offered = [endpoint(
            Policy::None,
            MessageSecurityMode::None,
            &[UserTokenType::Anonymous],
        )];
        let error = select_endpoint(
            &offered,
            URL,
            Policy::Basic256Sha256,
            MessageSecurityMode::Sign,
            UserTokenType::Anonymous,
        )
        .unwrap_err();
        assert!(error.contains("refusing"), "{error}");
        assert!(error.contains("None"), "{error}");
    }

    #[test]
    fn only_the_exact_policy_and_mode_is_taken_never_a_weaker_one() {
        let offered = [
            endpoint(
                Policy::None,
                MessageSecurityMode::None,
                &[UserTokenType::Anonymous],
            ),
            endpoint(
                Policy::Basic256Sha256,
                MessageSecurityMode::Sign,
                &[UserTokenType::Anonymous],
            ),
            endpoint(
                Policy::Aes256Sha256RsaPss,
                MessageSecurityMode::SignAndEncrypt,
                &[UserTokenType::UserName],
            ),
        ];
        assert!(
            select_endpoint(
                &offered,
                URL,
                Policy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                UserTokenType::Anonymous
            )
            .is_err()
        );
        assert!(
            select_endpoint(
                &offered,
                URL,
                Policy::Aes128Sha256RsaOaep,
                MessageSecurityMode::Sign,
                UserTokenType::Anonymous
            )
            .is_err()
        );
        let chosen = select_endpoint(
            &offered,
            URL,
            Policy::Aes256Sha256RsaPss,
            MessageSecurityMode::SignAndEncrypt,
            UserTokenType::UserName,
        )
        .unwrap();
        assert_eq!(chosen.security_mode, MessageSecurityMode::SignAndEncrypt);
        assert_eq!(
            Policy::from_uri(chosen.security_policy_uri.as_ref()),
            Policy::Aes256Sha256RsaPss
        );
        // The configured address, not the one the server advertises.
        assert_eq!(chosen.endpoint_url.as_ref(), URL);
    }

    #[test]
    fn an_endpoint_without_the_users_token_type_is_refused() {
        let offered = [endpoint(
            Policy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
            &[UserTokenType::Anonymous],
        )];
        let error = select_endpoint(
            &offered,
            URL,
            Policy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
            UserTokenType::UserName,
        )
        .unwrap_err();
        assert!(error.contains("UserName"), "{error}");
        assert!(
            select_endpoint(
                &offered,
                URL,
                Policy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                UserTokenType::Certificate
            )
            .is_err()
        );
    }

    #[test]
    fn a_password_is_never_sent_in_clear_text() {
        let offered = [endpoint(
            Policy::None,
            MessageSecurityMode::None,
            &[UserTokenType::UserName],
        )];
        let error = select_endpoint(
            &offered,
            URL,
            Policy::None,
            MessageSecurityMode::None,
            UserTokenType::UserName,
        )
        .unwrap_err();
        assert!(error.contains("clear text"), "{error}");
        let mut encrypted_token = offered[0].clone();
        if let Some(tokens) = encrypted_token.user_identity_tokens.as_mut() {
            tokens[0].security_policy_uri = Policy::Basic256Sha256.to_uri().into();
        }
        assert!(
            select_endpoint(
                &[encrypted_token],
                URL,
                Policy::None,
                MessageSecurityMode::None,
                UserTokenType::UserName
            )
            .is_ok()
        );
    }

    #[test]
    fn failures_are_classified_for_the_operator() {
        assert_eq!(
            classify(StatusCode::BadSecurityChecksFailed),
            FailureKind::Security
        );
        assert_eq!(
            classify(StatusCode::BadCertificateUntrusted),
            FailureKind::Security
        );
        assert_eq!(
            classify(StatusCode::BadIdentityTokenRejected),
            FailureKind::Identity
        );
        assert_eq!(
            classify(StatusCode::BadUserAccessDenied),
            FailureKind::Identity
        );
        assert_eq!(
            classify(StatusCode::BadCommunicationError),
            FailureKind::Transient
        );
        assert_eq!(classify(StatusCode::BadTimeout), FailureKind::Transient);
    }

    #[test]
    fn timing_keeps_alive_every_few_seconds_and_the_watchdog_waits_longer() {
        let t = Timing::new(1000, 10);
        assert_eq!((t.keep_alive, t.lifetime), (5, 60));
        assert_eq!(t.watchdog, Duration::from_secs(10));
        let t = Timing::new(100, 10);
        assert_eq!((t.keep_alive, t.lifetime), (10, 600));
        // Never shorter than two keep-alive periods, nor than the floor.
        assert_eq!(t.watchdog, Duration::from_secs(5));
        let t = Timing::new(60_000, 3);
        assert_eq!(t.keep_alive, 1);
        assert!(t.lifetime >= 3);
        assert_eq!(t.watchdog, Duration::from_secs(180));
    }

    fn source(text: &str) -> OpcuaSource {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn deprecated_policies_and_double_identities_are_config_errors() {
        let s = source(
            "name='a'\nendpoint='opc.tcp://h:1'\nsecurity_policy='Basic256'\nsecurity_mode='Sign'\n",
        );
        assert!(check(&s).unwrap_err()[0].contains("deprecated"));
        let s = source(
            "name='a'\nendpoint='opc.tcp://h:1'\nsecurity_policy='Basic256'\nsecurity_mode='Sign'\nallow_deprecated_security=true\n",
        );
        assert!(check(&s).is_ok());
        let s = source(
            "name='a'\nendpoint='opc.tcp://h:1'\nusername='u'\nuser_certificate_file='c'\nuser_private_key_file='k'\n",
        );
        assert!(check(&s).unwrap_err()[0].contains("two identities"));
        let s = source("name='a'\nendpoint='opc.tcp://h:1'\nuser_certificate_file='c'\n");
        assert!(check(&s).is_err());
        let s = source(
            "name='a'\nendpoint='opc.tcp://h:1'\nuser_certificate_file='c'\nuser_private_key_file='k'\n",
        );
        assert!(matches!(check(&s).unwrap(), Identity::Certificate(..)));
        let s = source("name='a'\nendpoint='opc.tcp://h:1'\nsecurity_policy='Basic256Sha256'\n");
        assert!(check(&s).is_err());
    }
}
