//! What each child receives: the uplink its settings, a worker its own source and nothing else.

use iot_connector_proto::{
    SourceGrant, SpoolPolicy, Start, Table, UplinkSettings, WorkerSettings, ZerobusSettings,
};

use crate::{FullPolicy, Loaded, Protocol, Source, Tables};

fn lossy(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Tables {
    /// The Delta table `table`'s records go to.
    pub fn of(&self, table: Table) -> &str {
        match table {
            Table::Opcua => &self.opcua,
            Table::Mqtt => &self.mqtt,
            Table::Modbus => &self.modbus,
            Table::Status => &self.status,
        }
    }
}

impl From<FullPolicy> for SpoolPolicy {
    fn from(policy: FullPolicy) -> Self {
        match policy {
            FullPolicy::DropOldest => Self::DropOldest,
            FullPolicy::DropNewest => Self::DropNewest,
            FullPolicy::Block => Self::Block,
        }
    }
}

impl Loaded {
    /// The uplink's slice: connector id, spool (`<state_dir>/spool`, size, policy, key file or
    /// `None` when `encrypt = false`), the data socket, `[zerobus]` with secrets resolved and
    /// the CA's PEM text, and the grants of the workers already running. `start` is
    /// [`Start::First`]; the supervisor, which knows better, sets it.
    pub fn uplink_settings(&self, grants: Vec<SourceGrant>) -> UplinkSettings {
        let spool = &self.config.spool;
        UplinkSettings {
            connector_id: self.config.connector.id.clone(),
            spool_dir: lossy(&self.spool_dir()),
            data_socket: lossy(&self.data_socket()),
            max_bytes: spool.max_bytes.0,
            full_policy: spool.full_policy.into(),
            key_file: spool.encrypt.then(|| lossy(&self.key_file())),
            zerobus: self.config.zerobus.as_ref().map(|z| ZerobusSettings {
                endpoint: z.endpoint.clone(),
                workspace_url: z.workspace_url.clone(),
                client_id: z.client_id.expose().to_owned(),
                client_secret: z.client_secret.expose().to_owned(),
                ca_pem: self.ca_pem.clone(),
                proxy: z.proxy.clone(),
                no_proxy: z.no_proxy.clone(),
                tables: Table::ALL.map(|t| z.tables.of(t).to_owned()),
            }),
            grants,
            start: Start::First,
        }
    }

    /// A worker's slice: its validated source with secrets resolved (see [`Source::to_slice`]),
    /// the connector id, the state directory, the data socket and its per-spawn token.
    pub fn worker_settings(&self, source: &Source, token: Vec<u8>) -> WorkerSettings {
        WorkerSettings {
            connector_id: self.config.connector.id.clone(),
            source: source.name().to_owned(),
            state_dir: lossy(&self.state_dir),
            data_socket: lossy(&self.data_socket()),
            token,
            source_config: source.to_slice(),
        }
    }

    /// Whether the named source's worker must restart to pick up `other`: the settings it
    /// would get differ (its slice, the connector id, the state directory, the data socket), or
    /// it runs (is enabled) in only one of the two. False when neither runs it.
    pub fn source_changed(&self, other: &Loaded, name: &str) -> bool {
        let settings = |loaded: &Loaded| {
            loaded
                .source(name)
                .filter(|s| s.enabled())
                .map(|s| loaded.worker_settings(s, Vec::new()))
        };
        settings(self) != settings(other)
    }

    /// Whether the uplink must restart to pick up `other` (its slice, grants aside, differs).
    pub fn uplink_changed(&self, other: &Loaded) -> bool {
        self.uplink_settings(Vec::new()) != other.uplink_settings(Vec::new())
    }
}

fn slice_codec() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The supervisor's slice does not decode as a source: the two binaries are of different
/// releases, or the slice was damaged on its way.
#[derive(Debug, thiserror::Error)]
#[error("the configuration slice does not decode as a source: {0}")]
pub struct SliceError(#[source] bincode::error::DecodeError);

impl Source {
    /// The source as its worker receives it in [`WorkerSettings::source_config`]: already
    /// validated, so that the worker decodes it and never parses or checks it again.
    pub fn to_slice(&self) -> Vec<u8> {
        // Encoding into a vector only fails for types that refuse to encode; ours never do.
        bincode::encode_to_vec(self, slice_codec()).unwrap_or_default()
    }

    /// The source of a slice written by [`Source::to_slice`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SliceError> {
        match bincode::decode_from_slice(bytes, slice_codec()) {
            Ok((source, used)) if used == bytes.len() => Ok(source),
            Ok(_) => Err(SliceError(bincode::error::DecodeError::Other(
                "trailing bytes after the source",
            ))),
            Err(e) => Err(SliceError(e)),
        }
    }
}

/// A worker's own kind of source: one variant of [`Source`], or any of them.
pub trait FromSource: Sized {
    /// The source if it is of this kind, else the protocol it is of.
    fn from_source(source: Source) -> Result<Self, Protocol>;
}

impl FromSource for Source {
    fn from_source(source: Source) -> Result<Self, Protocol> {
        Ok(source)
    }
}

macro_rules! protocol_source {
    ($variant:ident, $type:ty) => {
        impl FromSource for $type {
            fn from_source(source: Source) -> Result<Self, Protocol> {
                match source {
                    Source::$variant(s) => Ok(s),
                    other => Err(other.protocol()),
                }
            }
        }
    };
}

protocol_source!(Opcua, crate::OpcuaSource);
protocol_source!(Mqtt, crate::MqttSource);
protocol_source!(Modbus, crate::ModbusSource);
