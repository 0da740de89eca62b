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
