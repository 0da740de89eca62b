//! The configuration file's schema: a promise to operators. Every key has its doc comment here
//! (this is the reference) and a default that works out of the box. Keys are only ever added;
//! renaming or removing one changes this file, the README, the examples and the tests in the
//! same change.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Secret;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[connector]`: identity, directories, logging.
    pub connector: Connector,
    /// `[http]`: the health and metrics listener.
    #[serde(default)]
    pub http: Http,
    /// `[zerobus]`: where data goes. Without it, records stay in the spool.
    #[serde(default)]
    pub zerobus: Option<Zerobus>,
    /// `[spool]`: the local store.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[[sources]]`: one worker process each.
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// `[connector]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// Required; part of every `record_id`, so it must stay the same for the life of the tables.
    pub id: String,
    /// Spool, keys and OPC-UA PKI. Default: `$STATE_DIRECTORY`, else `./state`.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// Sockets. Default: `$RUNTIME_DIRECTORY`, else `./run`.
    #[serde(default)]
    pub runtime_dir: Option<String>,
    /// Where the worker and uplink binaries are. Default: next to `iot-connector`.
    #[serde(default)]
    pub bin_dir: Option<String>,
    /// `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `iot_connector_uplink=debug,info`, ….
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

fn default_log_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Address of `GET /health` and `GET /metrics`; loopback unless a scraper needs more.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How long a source may be without a connection (never connected yet, or lost) before
    /// `/health` says `degraded` with its reason.
    #[serde(default = "default_degraded_after")]
    pub degraded_after: Span,
}

fn default_listen() -> String {
    "127.0.0.1:8081".into()
}

fn default_degraded_after() -> Span {
    Span(std::time::Duration::from_secs(60))
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            degraded_after: default_degraded_after(),
        }
    }
}

/// `[zerobus]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Zerobus {
    /// `https://<workspace-id>.zerobus.<region>.cloud.databricks.com`.
    pub endpoint: String,
    /// `https://<instance>.cloud.databricks.com`, where OAuth tokens come from.
    pub workspace_url: String,
    /// The service principal's client id.
    pub client_id: Secret,
    /// The service principal's secret: `${ENV}`, `file:PATH`, `credential:NAME` or `enc:…`.
    pub client_secret: Secret,
    /// An extra trust anchor (PEM) for both hosts, e.g. a TLS-inspecting proxy's CA.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// `http://host:port` of a CONNECT proxy for both hosts.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Host names (or domain suffixes) that bypass `proxy`.
    #[serde(default)]
    pub no_proxy: Vec<String>,
    /// Target table (three-part name) per kind of record.
    pub tables: Tables,
}

/// `[zerobus] tables`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    /// OPC-UA records.
    pub opcua: String,
    /// MQTT records.
    pub mqtt: String,
    /// Modbus records.
    pub modbus: String,
    /// Connector events (connects, gaps, drops, dead letters).
    pub status: String,
}

/// `[spool]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Upper bound of the stored records, e.g. `"10GiB"`, `"500MB"` or a number of bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// What happens when the spool is full.
    #[serde(default)]
    pub full_policy: FullPolicy,
    /// Encrypt records at rest (AES-256-GCM).
    #[serde(default = "yes")]
    pub encrypt: bool,
    /// The 32-byte key file. Default: `<state_dir>/keys/spool.key`, created 0600 on first start.
    #[serde(default)]
    pub key_file: Option<String>,
}

fn default_max_bytes() -> ByteSize {
    ByteSize(10 << 30)
}

fn yes() -> bool {
    true
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            full_policy: FullPolicy::default(),
            encrypt: true,
            key_file: None,
        }
    }
}

/// A size in bytes, written as a number or as `"<n><unit>"` with `B`, `KB`, `MB`, `GB`, `TB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Encode, Decode)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> Self {
        size.0
    }
}

/// `"<digits><unit>"` scaled by the factor `units` gives the unit. `kind` and `example` name
/// the form in errors: a `size` like `"10GiB"`.
fn scaled(text: &str, kind: &str, example: &str, units: &[(&str, u64)]) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a {kind} like {example}"))?;
    let unit = unit.trim();
    let Some((_, factor)) = units.iter().find(|(name, _)| *name == unit) else {
        let names: Vec<&str> = units
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !name.is_empty())
            .collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        return Err(format!(
            "unknown {kind} unit {unit:?}: use {} or {last}",
            rest.join(", ")
        ));
    };
    number
        .checked_mul(*factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const UNITS: &[(&str, u64)] = &[
            ("", 1),
            ("B", 1),
            ("KB", 1_000),
            ("MB", 1_000_000),
            ("GB", 1_000_000_000),
            ("TB", 1_000_000_000_000),
            ("KiB", 1 << 10),
            ("MiB", 1 << 20),
            ("GiB", 1 << 30),
            ("TiB", 1 << 40),
        ];
        scaled(text, "size", "\"10GiB\"", UNITS).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: its errors name the expected form and keep
        // the value's position in the file.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size like \"10GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{n} is negative: a size is 0 or more bytes")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A length of time, written `"<n><unit>"` with `ms`, `s`, `m`, `h` or `d` (`"60s"`, `"24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Span(pub std::time::Duration);

impl From<Span> for String {
    fn from(span: Span) -> Self {
        format!("{}ms", span.0.as_millis())
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const UNITS: &[(&str, u64)] = &[
            ("ms", 1),
            ("s", 1_000),
            ("m", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ];
        scaled(text, "time", "\"60s\"", UNITS).map(|ms| Span(std::time::Duration::from_millis(ms)))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a length of time like \"60s\", \"5m\" or \"24h\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Span, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// `[spool] full_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Evict the oldest records (counted, status row written).
    #[default]
    DropOldest,
    /// Refuse new records (counted, status row written).
    DropNewest,
    /// Stop acknowledging; sources slow down (MQTT brokers queue, Modbus scans are skipped).
    Block,
}

/// One `[[sources]]` entry: the protocol decides the other keys.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Source {
    /// An OPC-UA server.
    Opcua(OpcuaSource),
    /// An MQTT broker.
    Mqtt(MqttSource),
    /// A Modbus device or gateway.
    Modbus(ModbusSource),
}

/// `protocol = "opcua"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSource {
    /// Unique source name, `[a-z0-9_-]`; part of every `record_id`.
    pub name: String,
    /// Set `false` to keep the entry without running it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// Security policy; never weaker than configured.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// Message security mode; never weaker than configured.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// User name; anonymous when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Subscription publishing interval.
    #[serde(default = "default_1000")]
    pub publishing_interval_ms: u64,
    /// Nodes to monitor.
    #[serde(default)]
    pub nodes: Vec<OpcuaNode>,
    /// Browse discovery of further nodes.
    #[serde(default)]
    pub browse: Vec<OpcuaBrowse>,
    /// How long one connection attempt (endpoint discovery, secure channel, session) may take
    /// before it is abandoned, reported and retried with backoff.
    #[serde(default = "default_opcua_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The server-side queue of each monitored item, in values. Default: room for the samples
    /// of two publishing intervals (`2 * publishing / sampling`, at least 2), so a value that
    /// changes at every sample loses nothing between two publishes.
    #[serde(default)]
    pub queue_size: Option<u32>,
    /// X.509 user identity: the user certificate (DER or PEM). With `user_private_key_file`;
    /// excludes `username`.
    #[serde(default)]
    pub user_certificate_file: Option<String>,
    /// X.509 user identity: the private key of `user_certificate_file` (PEM).
    #[serde(default)]
    pub user_private_key_file: Option<String>,
    /// Allow the deprecated policies `Basic128Rsa15` and `Basic256` (SHA-1). Off: a source that
    /// names one of them is a configuration error.
    #[serde(default)]
    pub allow_deprecated_security: bool,
    /// A subscription from which nothing (neither data nor keep-alive) arrives for this many
    /// publishing intervals (at least 5 s) while the session is up is deleted and created again.
    #[serde(default = "default_opcua_watchdog_intervals")]
    pub watchdog_intervals: u32,
}

fn default_opcua_connect_timeout_ms() -> u64 {
    10_000
}

fn default_opcua_watchdog_intervals() -> u32 {
    10
}

/// OPC-UA security policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
pub enum SecurityPolicy {
    /// No security.
    #[default]
    None,
    /// Basic256Sha256.
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
    /// Basic128Rsa15: deprecated (SHA-1), only with `allow_deprecated_security = true`.
    Basic128Rsa15,
    /// Basic256: deprecated (SHA-1), only with `allow_deprecated_security = true`.
    Basic256,
}

/// OPC-UA message security mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
pub enum SecurityMode {
    /// Neither signed nor encrypted.
    #[default]
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

fn default_1000() -> u64 {
    1000
}

/// One monitored node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OpcuaNode {
    /// `ns=2;s=…`, `nsu=<namespace URI>;s=…`, or a browse path.
    pub node_id: String,
    /// Sampling interval; the publishing interval when absent.
    #[serde(default)]
    pub sampling_interval_ms: Option<u64>,
    /// Report only changes larger than this.
    #[serde(default)]
    pub deadband_absolute: Option<f64>,
    /// Report only changes larger than this percentage of the EU range.
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// Publishing interval of the subscription this node joins; the source's when absent.
    /// Nodes with the same interval share one subscription.
    #[serde(default)]
    pub publishing_interval_ms: Option<u64>,
    /// Server-side queue size of this node; the source's `queue_size` when absent.
    #[serde(default)]
    pub queue_size: Option<u32>,
}

/// One browse discovery root.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OpcuaBrowse {
    /// Node id to start from.
    pub root: String,
    /// Levels below `root` to visit.
    #[serde(default = "default_depth")]
    pub max_depth: u32,
    /// Glob patterns on the browse name; all variables when empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Variables taken from this root at most; more are logged as skipped, never silently.
    #[serde(default = "default_browse_max_nodes")]
    pub max_nodes: u32,
    /// Sampling interval of the variables found; the publishing interval when absent.
    #[serde(default)]
    pub sampling_interval_ms: Option<u64>,
    /// Publishing interval of the variables found; the source's when absent.
    #[serde(default)]
    pub publishing_interval_ms: Option<u64>,
}

fn default_browse_max_nodes() -> u32 {
    10_000
}

fn default_depth() -> u32 {
    3
}

/// `protocol = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// Unique source name, `[a-z0-9_-]`; part of every `record_id`.
    pub name: String,
    /// Set `false` to keep the entry without running it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub endpoint: String,
    /// Client id; default `iot-connector-<connector.id>-<source>`. Keep it stable: the broker
    /// keeps the persistent session under it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Lets a password go over `mqtt://`, in clear text (refused otherwise): only on a network
    /// you trust, such as a broker on the same host.
    #[serde(default)]
    pub allow_plaintext_password: bool,
    /// CA certificate (PEM) for `mqtts://`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub key_file: Option<String>,
    /// `false` keeps a persistent session, so the broker queues messages while we are away.
    #[serde(default)]
    pub clean_session: bool,
    /// `"3.1.1"` or `"5"`.
    #[serde(default)]
    pub mqtt_version: MqttVersion,
    /// MQTT 5 only, with `clean_session = false`: how long the broker keeps the session (and
    /// queues messages for it) while the connector is away. Default one week; `4294967295`
    /// means never expire, like an MQTT 3.1.1 persistent session. Brokers may cap it.
    #[serde(default = "default_session_expiry_seconds")]
    pub session_expiry_seconds: u32,
    /// Subscriptions.
    #[serde(default)]
    pub topics: Vec<MqttTopic>,
    /// The largest message payload taken, at most `"256MiB"`. MQTT 5 brokers are told (maximum
    /// packet size) and drop larger messages themselves; under MQTT 3.1.1 a larger message is
    /// refused before it is read, which ends the connection: the worker reports it and retries
    /// slowly (the broker redelivers it until the limit is raised or the message is removed).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
    /// Sparkplug B names and aliases remembered from births, across all edge nodes (about
    /// 100 bytes each); a birth beyond it is remembered in part and says so in `parse_error`.
    #[serde(default = "default_sparkplug_max_names")]
    pub sparkplug_max_names: u32,
}

fn default_session_expiry_seconds() -> u32 {
    7 * 24 * 3600
}

fn default_max_message_bytes() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_sparkplug_max_names() -> u32 {
    100_000
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct MqttTopic {
    /// Topic filter, wildcards allowed; `$share/<group>/<filter>` with MQTT 5.
    pub filter: String,
    /// 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// How the payload is decoded.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// JSON pointer to the value (`json` only); the whole document when absent.
    #[serde(default)]
    pub value_path: Option<String>,
    /// JSON pointer to the event timestamp (`json` only): epoch ms, s or RFC 3339.
    #[serde(default)]
    pub timestamp_path: Option<String>,
}

fn default_qos() -> u8 {
    1
}

/// MQTT payload format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// JSON; `value_path`/`timestamp_path` pick the value and the event time.
    #[default]
    Json,
    /// UTF-8 text.
    Text,
    /// Opaque bytes.
    Binary,
    /// Sparkplug B protobuf, one record per metric.
    SparkplugB,
}

/// `protocol = "modbus"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    /// Unique source name, `[a-z0-9_-]`; part of every `record_id`.
    pub name: String,
    /// Set `false` to keep the entry without running it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `tcp://host:port`, `rtu:///dev/ttyX` or `rtu+tcp://host:port`.
    pub endpoint: String,
    /// Default poll interval of every register.
    #[serde(default = "default_1000")]
    pub poll_interval_ms: u64,
    /// Timeout of every request.
    #[serde(default = "default_1000")]
    pub timeout_ms: u64,
    /// Serial line speed (`rtu://` only).
    #[serde(default)]
    pub baud_rate: Option<u32>,
    /// Serial parity (`rtu://` only).
    #[serde(default)]
    pub parity: Option<Parity>,
    /// 7 or 8 (`rtu://` only).
    #[serde(default)]
    pub data_bits: Option<u8>,
    /// 1 or 2 (`rtu://` only).
    #[serde(default)]
    pub stop_bits: Option<u8>,
    /// Largest gap of unused registers a merged read may span.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// The registers to poll.
    #[serde(default)]
    pub registers: Vec<ModbusRegister>,
}

fn default_max_gap() -> u16 {
    10
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One register (or coil) to poll.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct ModbusRegister {
    /// Tag name, unique within the source.
    pub name: String,
    /// Unit (slave) id.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Which Modbus table the address is in.
    pub kind: RegisterKind,
    /// 0-based protocol address.
    pub address: u16,
    /// How the registers are read as a value.
    #[serde(default)]
    pub data_type: DataType,
    /// Registers of a `string`.
    #[serde(default)]
    pub length: Option<u16>,
    /// Byte order of multi-register values (64-bit types use the same letters per word pair).
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Multiplier applied to the raw number.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// This register's poll interval; the source's when absent.
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// Report only changes larger than this (after scaling).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Report an unchanged value at least this often.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

fn default_unit_id() -> u8 {
    1
}

/// Modbus data table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, Encode, Decode,
)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Holding registers (function 3).
    Holding,
    /// Input registers (function 4).
    Input,
    /// Coils (function 1).
    Coil,
    /// Discrete inputs (function 2).
    Discrete,
}

impl RegisterKind {
    /// The most addresses one Modbus read of this kind may span: 125 registers (function codes
    /// 3 and 4), 2000 bits (1 and 2).
    pub fn max_read(self) -> u16 {
        match self {
            Self::Holding | Self::Input => 125,
            Self::Coil | Self::Discrete => 2000,
        }
    }
}

/// Value type of a register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One bit (coils, discrete inputs) or a register that is non-zero.
    Bool,
    /// One register, signed.
    Int16,
    /// One register, unsigned.
    #[default]
    Uint16,
    /// Two registers, signed.
    Int32,
    /// Two registers, unsigned.
    Uint32,
    /// Four registers, signed.
    Int64,
    /// Four registers, unsigned.
    Uint64,
    /// Two registers, IEEE 754.
    Float32,
    /// Four registers, IEEE 754.
    Float64,
    /// `length` registers of text, two bytes each.
    String,
}

impl DataType {
    /// How many registers (or bits, for a `bool` on coils and discrete inputs) a value of this
    /// type occupies: a `string` its `length`, 0 without one.
    pub fn register_count(self, length: Option<u16>) -> u16 {
        match self {
            Self::Bool | Self::Int16 | Self::Uint16 => 1,
            Self::Int32 | Self::Uint32 | Self::Float32 => 2,
            Self::Int64 | Self::Uint64 | Self::Float64 => 4,
            Self::String => length.unwrap_or(0),
        }
    }
}

/// Byte order of multi-register values, as the letters of a 32-bit value's bytes on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
pub enum ByteOrder {
    /// Big-endian (the Modbus norm).
    #[default]
    ABCD,
    /// Word-swapped.
    CDAB,
    /// Byte-swapped within each word.
    BADC,
    /// Little-endian.
    DCBA,
}

fn default_scale() -> f64 {
    1.0
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Opcua(s) => &s.name,
            Self::Mqtt(s) => &s.name,
            Self::Modbus(s) => &s.name,
        }
    }

    /// Whether the source runs.
    pub fn enabled(&self) -> bool {
        match self {
            Self::Opcua(s) => s.enabled,
            Self::Mqtt(s) => s.enabled,
            Self::Modbus(s) => s.enabled,
        }
    }

    /// The protocol name, as in the file.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Opcua(_) => Protocol::Opcua,
            Self::Mqtt(_) => Protocol::Mqtt,
            Self::Modbus(_) => Protocol::Modbus,
        }
    }
}

/// The `protocol` of a source: the closed list of what the connector speaks. Each has its
/// [`Source`] variant, its worker binary and its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OPC-UA client.
    Opcua,
    /// MQTT client.
    Mqtt,
    /// Modbus TCP/RTU master.
    Modbus,
}

impl Protocol {
    /// Every protocol, in the order the documentation lists them.
    pub const ALL: [Protocol; 3] = [Self::Opcua, Self::Mqtt, Self::Modbus];

    /// The value of the `protocol` key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Opcua => "opcua",
            Self::Mqtt => "mqtt",
            Self::Modbus => "modbus",
        }
    }

    /// The protocol whose `protocol` key is `key`.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }

    /// The worker binary, found next to the supervisor's own.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Opcua => "iot-connector-opcua",
            Self::Mqtt => "iot-connector-mqtt",
            Self::Modbus => "iot-connector-modbus",
        }
    }

    /// The table its data records go to.
    pub fn table(self) -> iot_connector_proto::Table {
        match self {
            Self::Opcua => iot_connector_proto::Table::Opcua,
            Self::Mqtt => iot_connector_proto::Table::Mqtt,
            Self::Modbus => iot_connector_proto::Table::Modbus,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}
