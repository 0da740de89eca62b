//! The protocol-neutral record a worker hands to the uplink, one per observed value.

use bincode::{Decode, Encode};

/// Now, in the unit of every timestamp of a [`Record`]: microseconds since the epoch, UTC.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One observed value (or one connector event) from one source.
///
/// `seq` is the source's own sequence number: strictly increasing across worker restarts, since
/// the uplink tells a reconnecting worker the last one it holds durably. Together with the
/// connector id and the source name it forms the row's `record_id`, the downstream dedupe key.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Record {
    /// Per-source sequence number.
    pub seq: u64,
    /// Device or server timestamp when the protocol gives one, else the read time (µs, UTC).
    pub event_time_us: i64,
    /// When the worker received the value (µs, UTC).
    pub ingest_time_us: i64,
    /// Quality as the source reported it.
    pub quality: Quality,
    /// The value itself.
    pub value: Value,
    /// Protocol-specific columns; the variant decides the target table.
    pub detail: Detail,
}

/// Data quality, the common denominator of OPC-UA status codes, Modbus exceptions and parse errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Quality {
    /// The value is valid.
    Good,
    /// The source flagged the value as of doubtful validity.
    Uncertain,
    /// No valid value: read error, exception response, parse failure.
    Bad,
}

impl Quality {
    /// The `quality` column text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Uncertain => "uncertain",
            Self::Bad => "bad",
        }
    }
}

/// A value, kept in its source type until it is written to the table's value columns.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Value {
    /// No value (bad quality, or an event without one).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Str(String),
    /// Arrays and structures, as JSON text.
    Json(String),
    /// Opaque bytes (kept as lowercase hex in `value_str`).
    Bytes(Vec<u8>),
}

impl Value {
    /// The `value_type` column text.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int64",
            Self::UInt(_) => "uint64",
            Self::Float(_) => "double",
            Self::Str(_) => "string",
            Self::Json(_) => "json",
            Self::Bytes(_) => "bytes",
        }
    }
}

/// The protocol-specific part of a record; the variant selects the bronze table.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Detail {
    /// A monitored-item notification or read from an OPC-UA server.
    Opcua(OpcuaDetail),
    /// A message from an MQTT broker (one record per message, or per Sparkplug B metric).
    Mqtt(MqttDetail),
    /// A register or coil read from a Modbus device.
    Modbus(ModbusDetail),
    /// A connector event: connect, disconnect, restart, gap, drop, dead letter.
    Status(StatusDetail),
}

impl Detail {
    /// What the record is about, for log lines and status rows: the node id, the topic, the
    /// register's tag name, or the event of a status row.
    pub fn subject(&self) -> &str {
        match self {
            Self::Opcua(d) => &d.node_id,
            Self::Mqtt(d) => &d.topic,
            Self::Modbus(d) => &d.tag_name,
            Self::Status(d) => d.event.as_str(),
        }
    }
}

/// OPC-UA columns.
#[derive(Debug, Clone, PartialEq, Default, Encode, Decode)]
pub struct OpcuaDetail {
    /// Server endpoint URL.
    pub endpoint: String,
    /// Node id as configured or resolved (`ns=2;s=...`).
    pub node_id: String,
    /// The namespace URI of the node's namespace.
    pub namespace_uri: String,
    /// Browse path from the Objects folder, `/`-separated.
    pub browse_path: String,
    /// The node's display name.
    pub display_name: String,
    /// The raw OPC-UA status code.
    pub status_code: u32,
    /// SourceTimestamp, µs UTC, when present.
    pub source_time_us: Option<i64>,
    /// ServerTimestamp, µs UTC, when present.
    pub server_time_us: Option<i64>,
}

/// MQTT columns.
#[derive(Debug, Clone, PartialEq, Default, Encode, Decode)]
pub struct MqttDetail {
    /// Broker URL.
    pub broker: String,
    /// Topic the message was published on.
    pub topic: String,
    /// QoS the message was delivered with.
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The payload as received.
    pub payload: Vec<u8>,
    /// `json`, `text`, `binary` or `sparkplug_b`.
    pub payload_format: String,
    /// Why the payload could not be parsed, when it could not.
    pub parse_error: Option<String>,
}

/// Modbus columns.
#[derive(Debug, Clone, PartialEq, Default, Encode, Decode)]
pub struct ModbusDetail {
    /// Device endpoint (`tcp://…`, `rtu:///dev/…`).
    pub device: String,
    /// Unit (slave) id.
    pub unit_id: u8,
    /// `holding`, `input`, `coil` or `discrete`.
    pub register_kind: String,
    /// 0-based protocol address.
    pub address: u16,
    /// The register's configured name.
    pub tag_name: String,
    /// Configured data type.
    pub data_type: String,
    /// The registers (big-endian words) or bits as read.
    pub raw: Vec<u8>,
    /// Scale applied to the raw number.
    pub scale: f64,
    /// Offset added after scaling.
    pub offset: f64,
    /// Engineering unit.
    pub unit: String,
}

/// Status-table columns.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StatusDetail {
    /// What happened.
    pub event: StatusEvent,
    /// Human-readable detail (peer, reason).
    pub detail: String,
    /// How many records the event concerns (drops, dead letters), else 0.
    pub count: u64,
}

/// The `event` column of the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum StatusEvent {
    /// A worker started.
    Started,
    /// A source connection was established.
    Connected,
    /// A source connection was lost.
    Disconnected,
    /// A process was started again (by the operator, or after it ended).
    Restarted,
    /// Data may be missing (session lost, sequence gap).
    Gap,
    /// Records were dropped by the spool's full policy.
    Dropped,
    /// Records were moved to the dead-letter store.
    DeadLettered,
    /// A process ended on its own (or was killed for silence) and is started again.
    Crashed,
    /// A process was started again with its changed configuration.
    ConfigChanged,
}

impl StatusEvent {
    /// The `event` column text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Restarted => "restarted",
            Self::Gap => "gap",
            Self::Dropped => "dropped",
            Self::DeadLettered => "dead_lettered",
            Self::Crashed => "crashed",
            Self::ConfigChanged => "config_changed",
        }
    }
}
