//! What each child receives: the uplink its settings, a worker its own source and nothing else.

use iot_connector_proto::{
    SourceGrant, SpoolPolicy, Table, UplinkSettings, WorkerSettings, ZerobusSettings,
};

use crate::{FullPolicy, Loaded, Source, Tables};

fn lossy(path: &std::path::Path) -> String {
    path.to_string_lossy().into_owned()
}

fn table_name(tables: &Tables, table: Table) -> String {
    match table {
        Table::Opcua => tables.opcua.clone(),
        Table::Mqtt => tables.mqtt.clone(),
        Table::Modbus => tables.modbus.clone(),
        Table::Status => tables.status.clone(),
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
    /// the CA's PEM text, and the grants of the workers already running.
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
                tables: Table::ALL.map(|t| table_name(&z.tables, t)),
            }),
            grants,
        }
    }

    /// A worker's slice: its source's table as TOML (without `protocol`, secrets resolved; the
    /// worker reads it with `toml::from_str::<ModbusSource>` and so on), the connector id, the
    /// data socket and its per-spawn token.
    pub fn worker_settings(&self, source: &Source, token: Vec<u8>) -> WorkerSettings {
        let source_config = self
            .slices
            .get(source.name())
            .cloned()
            .or_else(|| source_toml(source).ok())
            .unwrap_or_default();
        WorkerSettings {
            connector_id: self.config.connector.id.clone(),
            source: source.name().to_owned(),
            data_socket: lossy(&self.data_socket()),
            token,
            source_config,
        }
    }

    /// Whether the named source's worker must restart to pick up `other`: its slice differs, or
    /// it exists (or is enabled) in only one of the two. False when neither has it.
    pub fn source_changed(&self, other: &Loaded, name: &str) -> bool {
        let enabled = |loaded: &Loaded| loaded.source(name).map(Source::enabled);
        enabled(self) != enabled(other)
            || self.slices.get(name) != other.slices.get(name)
            || (self.source(name).is_some()
                && (self.config.connector.id != other.config.connector.id
                    || self.data_socket() != other.data_socket()))
    }

    /// Whether the uplink must restart to pick up `other` (its slice, grants aside, differs).
    pub fn uplink_changed(&self, other: &Loaded) -> bool {
        self.uplink_settings(Vec::new()) != other.uplink_settings(Vec::new())
    }
}

/// A source's own table as TOML, without `protocol`.
pub(crate) fn source_toml(source: &Source) -> Result<String, toml::ser::Error> {
    match source {
        Source::Opcua(s) => toml::to_string(s),
        Source::Mqtt(s) => toml::to_string(s),
        Source::Modbus(s) => toml::to_string(s),
    }
}
