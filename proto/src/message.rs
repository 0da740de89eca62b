//! The versioned IPC message enum: the only thing that crosses a process boundary inside the
//! connector. Which message is legal in which state is decided in `iot-connector-ipc`.

use bincode::{Decode, Encode};

use crate::{Record, Table};

/// Bumped on any change to [`Message`] or the types it carries. Every connection starts with a
/// [`Message::Hello`]; a peer with another version is refused before anything else is read.
pub const PROTOCOL_VERSION: u16 = 1;

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

impl Message {
    /// A short name for logs and protocol errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Refused { .. } => "Refused",
            Self::ConfigureUplink(_) => "ConfigureUplink",
            Self::ConfigureWorker(_) => "ConfigureWorker",
            Self::Grant(_) => "Grant",
            Self::Ready => "Ready",
            Self::Heartbeat(_) => "Heartbeat",
            Self::Command(_) => "Command",
            Self::Reply(_) => "Reply",
            Self::Bind { .. } => "Bind",
            Self::Welcome { .. } => "Welcome",
            Self::Batch(_) => "Batch",
            Self::Ack { .. } => "Ack",
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
    pub tables: [String; 4],
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
    /// The uplink's data socket.
    pub data_socket: String,
    /// The token to present in [`Message::Bind`].
    pub token: Vec<u8>,
    /// The source's own `[[sources]]` table as TOML text, secrets resolved.
    pub source_config: String,
}

impl std::fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("connector_id", &self.connector_id)
            .field("source", &self.source)
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
    pub spool_rows: [u64; 4],
    /// Age of the oldest row not yet acknowledged by Zerobus, seconds.
    pub oldest_unacked_seconds: f64,
    /// Records written to the spool per source.
    pub records_written: Vec<(String, u64)>,
    /// Records dropped by the full policy.
    pub dropped_full: u64,
    /// Re-sent records the spool already held.
    pub duplicates: u64,
    /// Rows acknowledged by Zerobus per table, in [`Table::ALL`] order.
    pub zerobus_acked: [u64; 4],
    /// Stream (re)openings per table.
    pub zerobus_reconnects: [u64; 4],
    /// Whether each table's stream is currently failing (the circuit is open).
    pub zerobus_failing: [bool; 4],
    /// Rows moved to the dead-letter store since start.
    pub dead_letters: u64,
    /// Durable-ack latency histogram: counts per bucket of [`ACK_LATENCY_BUCKETS_MS`], plus the sum in ms.
    pub ack_latency_counts: Vec<u64>,
    /// Sum of all observed ack latencies, ms.
    pub ack_latency_sum_ms: f64,
    /// The last problem, for `status` and `/health`.
    pub last_error: Option<String>,
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

/// One process as `iot-connector status` shows it.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ProcessStatus {
    /// Source name, or `uplink`.
    pub name: String,
    /// `opcua`, `mqtt`, `modbus` or `uplink`.
    pub protocol: String,
    /// `connected`, `connecting`, `failed`, `stopped`, `waiting_for_config_change`.
    pub state: String,
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Restarts since the supervisor started.
    pub restarts: u64,
    /// Records read from the source (workers).
    pub records_read: u64,
    /// The last problem.
    pub last_error: Option<String>,
}
