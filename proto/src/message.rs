//! The versioned IPC message enum: the only thing that crosses a process boundary inside the
//! connector. Which message is legal in which state is decided in `iot-connector-ipc`.

use bincode::{Decode, Encode};

use crate::{Record, Table};

/// Bumped on any change to [`Message`] or the types it carries. Every connection starts with a
/// [`Message::Hello`]; a peer with another version is refused before anything else is read.
pub const PROTOCOL_VERSION: u16 = 4;

/// Which kind of process is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Role {
    /// `iot-connector run`.
    Supervisor,
    /// `iot-connector-uplink`.
    Uplink,
    /// A protocol worker.
    Worker,
    /// An operator command (`iot-connector status|restart|stop|start|reload`) on the control socket.
    Operator,
}

/// Every message of every connection: control channels (supervisor ↔ child, an inherited
/// socketpair) and data connections (worker → uplink, a Unix socket in the runtime directory).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Message {
    /// First frame in each direction of every connection.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// The sender's role.
        role: Role,
    },
    /// Refusal of the previous message; the sender closes the connection after it.
    Refused {
        /// Why, for the peer's log.
        reason: String,
    },

    /// Control, supervisor → uplink: its slice of the configuration.
    ConfigureUplink(Box<UplinkSettings>),
    /// Control, supervisor → worker: its slice of the configuration.
    ConfigureWorker(WorkerSettings),
    /// Control, supervisor → uplink: a data connection presenting this token speaks for this source.
    Grant(SourceGrant),
    /// Control, child → supervisor: configured and serving.
    Ready,
    /// Control, child → supervisor, about once a second: alive, and what it has to report.
    Heartbeat(ChildReport),

    /// Control socket, operator → supervisor.
    Command(OperatorCommand),
    /// Control socket, supervisor → operator.
    Reply(OperatorReply),

    /// Data, worker → uplink: the first message after `Hello`, binding the connection to a source.
    Bind {
        /// The source name the worker was configured with.
        source: String,
        /// The per-spawn token the supervisor gave the worker.
        token: Vec<u8>,
    },
    /// Data, uplink → worker: the connection is bound; continue after this sequence number.
    Welcome {
        /// The highest sequence number of this source the spool holds durably, if any.
        last_durable_seq: Option<u64>,
    },
    /// Data, worker → uplink: records in increasing `seq` order.
    Batch(Vec<Record>),
    /// Data, uplink → worker: every record of this source up to this `seq` is durable.
    Ack {
        /// Highest durable sequence number.
        up_to_seq: u64,
    },
}

/// The kind of a [`Message`], without its payload: what the per-phase allow-lists of
/// `iot-connector-ipc` are keyed by, and what protocol errors name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// [`Message::Hello`].
    Hello,
    /// [`Message::Refused`].
    Refused,
    /// [`Message::ConfigureUplink`].
    ConfigureUplink,
    /// [`Message::ConfigureWorker`].
    ConfigureWorker,
    /// [`Message::Grant`].
    Grant,
    /// [`Message::Ready`].
    Ready,
    /// [`Message::Heartbeat`].
    Heartbeat,
    /// [`Message::Command`].
    Command,
    /// [`Message::Reply`].
    Reply,
    /// [`Message::Bind`].
    Bind,
    /// [`Message::Welcome`].
    Welcome,
    /// [`Message::Batch`].
    Batch,
    /// [`Message::Ack`].
    Ack,
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl Message {
    /// What kind of message this is; the compiler keeps this match complete.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello { .. } => MessageKind::Hello,
            Self::Refused { .. } => MessageKind::Refused,
            Self::ConfigureUplink(_) => MessageKind::ConfigureUplink,
            Self::ConfigureWorker(_) => MessageKind::ConfigureWorker,
            Self::Grant(_) => MessageKind::Grant,
            Self::Ready => MessageKind::Ready,
            Self::Heartbeat(_) => MessageKind::Heartbeat,
            Self::Command(_) => MessageKind::Command,
            Self::Reply(_) => MessageKind::Reply,
            Self::Bind { .. } => MessageKind::Bind,
            Self::Welcome { .. } => MessageKind::Welcome,
            Self::Batch(_) => MessageKind::Batch,
            Self::Ack { .. } => MessageKind::Ack,
        }
    }
}

/// Authorises one source's data connection at the uplink.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SourceGrant {
    /// Source name.
    pub source: String,
    /// The table the source's data records must go to (status records are always allowed).
    pub table: Table,
    /// The per-spawn token; a new spawn gets a new token and the old one stops working.
    pub token: Vec<u8>,
    /// Why this spawn: the uplink writes it to the status table when the grant arrives.
    pub start: Start,
}

/// Why the supervisor starts a process, as the status table records it (`started`,
/// `crashed` and `restarted`, `restarted`, `config_changed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub enum Start {
    /// The first start since the supervisor started.
    #[default]
    First,
    /// The previous process ended on its own or was killed for silence.
    AfterCrash {
        /// How it ended, in the supervisor's words (`exit status 1`, `silent for 10 s`).
        why: String,
        /// When it ended (µs, UTC).
        at_us: i64,
    },
    /// The operator started or restarted it.
    ByOperator,
    /// Its configuration changed.
    ConfigChanged,
}

/// The uplink's slice of the configuration.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct UplinkSettings {
    /// `[connector] id`, the first part of every `record_id`.
    pub connector_id: String,
    /// Directory of the spool database.
    pub spool_dir: String,
    /// Unix socket the workers connect to.
    pub data_socket: String,
    /// `[spool] max_bytes`.
    pub max_bytes: u64,
    /// `[spool] full_policy`.
    pub full_policy: SpoolPolicy,
    /// The AES-256-GCM key file, or `None` to store records unencrypted (`[spool] encrypt = false`).
    pub key_file: Option<String>,
    /// Where to forward to; `None` keeps everything in the spool.
    pub zerobus: Option<ZerobusSettings>,
    /// The sources already authorised when the uplink (re)starts, so that running workers
    /// reconnect without waiting for [`Message::Grant`]s.
    pub grants: Vec<SourceGrant>,
    /// Why this uplink process was started.
    pub start: Start,
}

/// What the spool does when it reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SpoolPolicy {
    /// Evict the oldest records to make room (counted, status row written).
    DropOldest,
    /// Refuse the new records (counted, status row written); their worker sees them acknowledged
    /// so that the source does not stall.
    DropNewest,
    /// Withhold acknowledgements until space frees up; workers stop reading.
    Block,
}

/// `[zerobus]` with secrets already resolved.
#[derive(Clone, PartialEq, Encode, Decode)]
pub struct ZerobusSettings {
    /// Zerobus endpoint, `https://<workspace-id>.zerobus.<region>…`.
    pub endpoint: String,
    /// Workspace URL, where OAuth tokens come from.
    pub workspace_url: String,
    /// Service principal client id.
    pub client_id: String,
    /// Service principal secret.
    pub client_secret: String,
    /// PEM text of an extra trust anchor for both hosts.
    pub ca_pem: Option<String>,
    /// `http://host:port` of a CONNECT proxy.
    pub proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Vec<String>,
    /// Target table per record kind, in [`Table::ALL`] order.
    pub tables: [String; Table::COUNT],
}

impl std::fmt::Debug for ZerobusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZerobusSettings")
            .field("endpoint", &self.endpoint)
            .field("workspace_url", &self.workspace_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("proxy", &self.proxy)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// A worker's slice of the configuration.
#[derive(Clone, PartialEq, Encode, Decode)]
pub struct WorkerSettings {
    /// `[connector] id`.
    pub connector_id: String,
    /// This worker's source name.
    pub source: String,
    /// `[connector] state_dir`, absolute: where a worker keeps what must outlive it (OPC-UA PKI).
    pub state_dir: String,
    /// The uplink's data socket.
    pub data_socket: String,
    /// The token to present in [`Message::Bind`].
    pub token: Vec<u8>,
    /// The source's own `[[sources]]` entry, validated by the supervisor, secrets resolved:
    /// `iot_connector_config::Source` as its `to_slice` encodes it, decoded once by the worker.
    pub source_config: Vec<u8>,
}

impl std::fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("connector_id", &self.connector_id)
            .field("source", &self.source)
            .field("state_dir", &self.state_dir)
            .field("data_socket", &self.data_socket)
            .finish_non_exhaustive()
    }
}

/// What a child reports with each heartbeat; the supervisor turns it into `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ChildReport {
    /// From a protocol worker.
    Worker(WorkerReport),
    /// From the uplink.
    Uplink(UplinkReport),
}

/// A protocol worker's counters (totals since the process started).
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct WorkerReport {
    /// Whether the worker holds a working session with its source.
    pub connected: bool,
    /// Records handed to the uplink.
    pub records_read: u64,
    /// Values the worker could not take (window full, missed scans), by reason.
    pub dropped: Vec<(String, u64)>,
    /// Records the source sent that could not be parsed (still forwarded, flagged).
    pub parse_errors: u64,
    /// Reconnects to the source.
    pub reconnects: u64,
    /// Records pushed and not yet durable.
    pub unacked: u64,
    /// The last problem, for `status` and `/health`.
    pub last_error: Option<String>,
    /// Days until the worker's own or its peer's certificate expires, when it has one.
    pub certificate_days_left: Option<i64>,
}

/// The uplink's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct UplinkReport {
    /// The spool accepts writes (not failing, not blocked full).
    pub accepting: bool,
    /// Sealed bytes held.
    pub spool_bytes: u64,
    /// Rows held per table, in [`Table::ALL`] order.
    pub spool_rows: [u64; Table::COUNT],
    /// Age of the oldest row not yet acknowledged by Zerobus, seconds.
    pub oldest_unacked_seconds: f64,
    /// Records written to the spool per source.
    pub records_written: Vec<(String, u64)>,
    /// Records dropped by the full policy.
    pub dropped_full: u64,
    /// Re-sent records the spool already held.
    pub duplicates: u64,
    /// Rows acknowledged by Zerobus per table, in [`Table::ALL`] order.
    pub zerobus_acked: [u64; Table::COUNT],
    /// Stream (re)openings per table.
    pub zerobus_reconnects: [u64; Table::COUNT],
    /// Whether each table's stream is currently failing (the circuit is open).
    pub zerobus_failing: [bool; Table::COUNT],
    /// Rows moved to the dead-letter store since start.
    pub dead_letters: u64,
    /// Durable-ack latency histogram: counts per bucket of [`ACK_LATENCY_BUCKETS_MS`], plus the sum in ms.
    pub ack_latency_counts: Vec<u64>,
    /// Sum of all observed ack latencies, ms.
    pub ack_latency_sum_ms: f64,
    /// The last problem, for `status` and `/health`.
    pub last_error: Option<String>,
    /// A problem that stays until an operator deals with it (a damaged spool file moved
    /// aside): `/health` is `degraded` while it lasts.
    pub needs_attention: Option<String>,
}

/// Upper bounds (ms) of the ingestion latency histogram buckets; the last bucket is +Inf.
pub const ACK_LATENCY_BUCKETS_MS: [f64; 10] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

/// What an operator asks the running supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum OperatorCommand {
    /// Every process's state.
    Status,
    /// Restart one source's worker.
    Restart(String),
    /// Stop one source's worker (until `Start` or a restart of the service).
    Stop(String),
    /// Start a stopped source's worker.
    Start(String),
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum OperatorReply {
    /// Done; what was done.
    Done(String),
    /// The command named a source the configuration does not have.
    UnknownSource(String),
    /// The configuration is invalid (`FILE:LINE: message` each); nothing changed.
    Invalid(Vec<String>),
    /// Every process, the uplink first.
    Status(Vec<ProcessStatus>),
}

/// A process's state in the words operators see, the same in `status`, `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SourceState {
    /// A worker holds a working session with its source; the uplink runs and reports.
    Connected,
    /// Being started, or running without a session yet.
    Connecting,
    /// Crashed too often (still retried at the slowest pace), or waits for a configuration change.
    Failed,
    /// Stopped by the operator.
    Stopped,
}

impl SourceState {
    /// Every state, in the order the README lists them.
    pub const ALL: [Self; 4] = [
        Self::Connected,
        Self::Connecting,
        Self::Failed,
        Self::Stopped,
    ];

    /// The contract's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One process as `iot-connector status` shows it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ProcessStatus {
    /// Source name, or `uplink`.
    pub name: String,
    /// The `protocol` key of a worker's source, or `uplink`.
    pub protocol: String,
    /// Its state, as `/health` and `/metrics` show it.
    pub state: SourceState,
    /// It exited with the configuration-error code and is not restarted until the configuration
    /// changes (its `state` is [`SourceState::Failed`]).
    pub waiting_for_config_change: bool,
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Restarts since the supervisor started.
    pub restarts: u64,
    /// Records read from the source (workers).
    pub records_read: u64,
    /// The last problem.
    pub last_error: Option<String>,
}

impl ProcessStatus {
    /// The word `status` prints: the state, or `waiting_for_config_change`, which tells the
    /// operator that a restart will not help and a configuration change will.
    pub fn state_word(&self) -> &'static str {
        if self.waiting_for_config_change {
            "waiting_for_config_change"
        } else {
            self.state.as_str()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every released protocol version with the number of tables (and so of `Detail` variants a
    /// `Record` can carry) it was released with.
    const RELEASED: &[(u16, usize)] = &[(2, 4), (3, 4), (4, 4)];

    #[test]
    fn a_new_table_comes_with_a_new_protocol_version() {
        assert!(
            RELEASED.contains(&(PROTOCOL_VERSION, Table::COUNT)),
            "Table::COUNT is {} with PROTOCOL_VERSION {PROTOCOL_VERSION}: a new table changes \
             Record on the wire, so bump PROTOCOL_VERSION and add ({}, {}) to RELEASED",
            Table::COUNT,
            PROTOCOL_VERSION + 1,
            Table::COUNT
        );
    }
}
