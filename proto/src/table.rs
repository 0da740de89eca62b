//! The four bronze tables: generated protobuf types, their descriptors for Zerobus, and the
//! mapping from a [`Record`] to a table row.

use bincode::{Decode, Encode};
use prost::Message as _;

use crate::{Detail, Record, Value};

// Per-table arrays are indexed by discriminant: `ALL` must list the tables in that order.
#[allow(clippy::indexing_slicing)] // evaluated by the compiler, `i < COUNT`
const _: () = {
    let mut i = 0;
    while i < Table::COUNT {
        assert!(Table::ALL[i] as usize == i);
        i += 1;
    }
};

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// Types generated from `schemas/bronze.proto`.
#[allow(
    missing_docs,
    clippy::all,
    unreachable_pub,
    missing_debug_implementations
)]
pub mod bronze {
    include!(concat!(env!("OUT_DIR"), "/iot_connector.bronze.v1.rs"));
}

const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bronze.fds"));

/// A target table. Data records go to their protocol's table; connector events to `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub enum Table {
    /// `tables.opcua`.
    Opcua,
    /// `tables.mqtt`.
    Mqtt,
    /// `tables.modbus`.
    Modbus,
    /// `tables.status`.
    Status,
}

impl Table {
    /// How many tables there are: the length of every per-table array.
    pub const COUNT: usize = 4;

    /// Every table, in a fixed order used for per-table arrays.
    pub const ALL: [Table; Self::COUNT] = [Self::Opcua, Self::Mqtt, Self::Modbus, Self::Status];

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The config key under `[zerobus] tables`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Opcua => "opcua",
            Self::Mqtt => "mqtt",
            Self::Modbus => "modbus",
            Self::Status => "status",
        }
    }

    /// The protobuf message name in `schemas/bronze.proto`.
    pub fn message_name(self) -> &'static str {
        match self {
            Self::Opcua => "OpcuaEvent",
            Self::Mqtt => "MqttEvent",
            Self::Modbus => "ModbusEvent",
            Self::Status => "ConnectorStatus",
        }
    }

    /// The table a record belongs to.
    pub fn of(detail: &Detail) -> Self {
        match detail {
            Detail::Opcua(_) => Self::Opcua,
            Detail::Mqtt(_) => Self::Mqtt,
            Detail::Modbus(_) => Self::Modbus,
            Detail::Status(_) => Self::Status,
        }
    }

    /// The message's descriptor, as the Zerobus stream's `descriptor_proto` wants it.
    pub fn descriptor(self) -> prost_types::DescriptorProto {
        descriptor_set()
            .file
            .into_iter()
            .flat_map(|file| file.message_type)
            .find(|message| message.name() == self.message_name())
            .unwrap_or_default()
    }
}

/// The compiled descriptor set of every bronze table.
pub fn descriptor_set() -> prost_types::FileDescriptorSet {
    // The bytes were produced by this crate's build script from the same prost version, so a
    // decode failure cannot happen at run time; the empty set keeps this total regardless.
    prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).unwrap_or_default()
}

/// When a row was taken in (`ingest_time`, or `event_time` for status rows), µs since the epoch.
pub fn row_time_us(table: Table, row: &[u8]) -> Option<i64> {
    match table {
        Table::Opcua => bronze::OpcuaEvent::decode(row).ok()?.ingest_time,
        Table::Mqtt => bronze::MqttEvent::decode(row).ok()?.ingest_time,
        Table::Modbus => bronze::ModbusEvent::decode(row).ok()?.ingest_time,
        Table::Status => bronze::ConnectorStatus::decode(row).ok()?.event_time,
    }
}

/// The `record_id` column: `<connector>/<source>/<seq>`, unique per row, the dedupe key.
pub fn record_id(connector_id: &str, source: &str, seq: u64) -> String {
    format!("{connector_id}/{source}/{seq}")
}

/// The value columns shared by every data table.
struct ValueColumns {
    num: Option<f64>,
    text: Option<String>,
    boolean: Option<bool>,
}

#[allow(clippy::cast_precision_loss)] // value_num is DOUBLE; the exact integer goes to value_str.
fn value_columns(value: &Value) -> ValueColumns {
    let (num, text, boolean) = match value {
        Value::Null => (None, None, None),
        Value::Bool(b) => (Some(f64::from(u8::from(*b))), None, Some(*b)),
        Value::Int(i) => (Some(*i as f64), Some(i.to_string()), None),
        Value::UInt(u) => (Some(*u as f64), Some(u.to_string()), None),
        Value::Float(f) => (Some(*f), None, None),
        Value::Str(s) | Value::Json(s) => (None, Some(s.clone()), None),
        Value::Bytes(b) => (None, Some(hex(b)), None),
    };
    ValueColumns { num, text, boolean }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Encodes a record as a protobuf row of its table. `source` is the name the uplink bound the
/// connection to, never the worker's word.
pub fn encode_row(connector_id: &str, source: &str, record: &Record) -> (Table, Vec<u8>) {
    let record_id = Some(record_id(connector_id, source, record.seq));
    let connector_id = Some(connector_id.to_owned());
    let source_name = Some(source.to_owned());
    let seq = Some(i64_of(record.seq));
    let event_time = Some(record.event_time_us);
    let ingest_time = Some(record.ingest_time_us);
    let quality = Some(record.quality.as_str().to_owned());
    let value_type = Some(record.value.type_name().to_owned());
    let ValueColumns {
        num: value_num,
        text: value_str,
        boolean: value_bool,
    } = value_columns(&record.value);
    let table = Table::of(&record.detail);
    let bytes = match &record.detail {
        Detail::Opcua(d) => bronze::OpcuaEvent {
            record_id,
            connector_id,
            source_name,
            seq,
            event_time,
            ingest_time,
            quality,
            value_num,
            value_str,
            value_bool,
            value_type,
            endpoint: Some(d.endpoint.clone()),
            node_id: Some(d.node_id.clone()),
            namespace_uri: Some(d.namespace_uri.clone()),
            browse_path: Some(d.browse_path.clone()),
            display_name: Some(d.display_name.clone()),
            status_code: Some(i64::from(d.status_code)),
            source_time: d.source_time_us,
            server_time: d.server_time_us,
        }
        .encode_to_vec(),
        Detail::Mqtt(d) => bronze::MqttEvent {
            record_id,
            connector_id,
            source_name,
            seq,
            event_time,
            ingest_time,
            quality,
            value_num,
            value_str,
            value_bool,
            value_type,
            broker: Some(d.broker.clone()),
            topic: Some(d.topic.clone()),
            qos: Some(i32::from(d.qos)),
            retain: Some(d.retain),
            payload: Some(d.payload.clone()),
            payload_format: Some(d.payload_format.clone()),
            parse_error: d.parse_error.clone(),
        }
        .encode_to_vec(),
        Detail::Modbus(d) => bronze::ModbusEvent {
            record_id,
            connector_id,
            source_name,
            seq,
            event_time,
            ingest_time,
            quality,
            value_num,
            value_str,
            value_bool,
            value_type,
            device: Some(d.device.clone()),
            unit_id: Some(i32::from(d.unit_id)),
            register_kind: Some(d.register_kind.clone()),
            address: Some(i32::from(d.address)),
            tag_name: Some(d.tag_name.clone()),
            data_type: Some(d.data_type.clone()),
            raw: Some(d.raw.clone()),
            scale: Some(d.scale),
            offset: Some(d.offset),
            unit: Some(d.unit.clone()),
        }
        .encode_to_vec(),
        Detail::Status(d) => bronze::ConnectorStatus {
            connector_id,
            source_name,
            event_time,
            event: Some(d.event.as_str().to_owned()),
            detail: Some(d.detail.clone()),
            count: Some(i64_of(d.count)),
        }
        .encode_to_vec(),
    };
    (table, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModbusDetail, Quality, StatusDetail, StatusEvent};

    fn record(value: Value, detail: Detail) -> Record {
        Record {
            seq: 7,
            event_time_us: 1,
            ingest_time_us: 2,
            quality: Quality::Good,
            value,
            detail,
        }
    }

    #[test]
    fn every_table_has_a_descriptor_named_for_it() {
        for table in Table::ALL {
            let descriptor = table.descriptor();
            assert_eq!(descriptor.name(), table.message_name());
            assert!(descriptor.field.len() >= 6, "{table:?} has too few columns");
        }
    }

    #[test]
    fn data_rows_carry_record_id_and_exact_integers() {
        let detail = Detail::Modbus(ModbusDetail {
            tag_name: "flow".into(),
            ..Default::default()
        });
        let (table, bytes) = encode_row("c1", "boiler", &record(Value::UInt(u64::MAX), detail));
        assert_eq!(table, Table::Modbus);
        let row = bronze::ModbusEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(row.record_id(), "c1/boiler/7");
        assert_eq!(row.value_str(), "18446744073709551615");
        assert_eq!(row.value_type(), "uint64");
        assert_eq!(row.tag_name(), "flow");
    }

    #[test]
    fn status_rows_go_to_the_status_table() {
        let detail = Detail::Status(StatusDetail {
            event: StatusEvent::Dropped,
            detail: "spool full".into(),
            count: 3,
        });
        let (table, bytes) = encode_row("c1", "s", &record(Value::Null, detail));
        assert_eq!(table, Table::Status);
        let row = bronze::ConnectorStatus::decode(bytes.as_slice()).unwrap();
        assert_eq!((row.event(), row.count()), ("dropped", 3));
    }
}
