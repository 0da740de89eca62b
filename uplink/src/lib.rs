//! `iot-connector-uplink`: the only process that holds the spool key and the Databricks
//! credentials. It receives records from the workers over the data socket, persists them in the
//! spool with group commit, acknowledges them only once they are durable, and forwards each table
//! in order to Zerobus, deleting rows only after the server's durability acknowledgement.
//!
//! Trust: workers are untrusted (each may be compromised by its field network): a connection
//! speaks only for the source its supervisor-issued token names, may write only that source's
//! table, and is cut on the first protocol violation. The supervisor (control channel) is trusted.
//! No `unsafe`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod forward;
pub mod server;
pub mod spool;
pub mod stats;
pub mod writer;

/// The `source_name` of the status rows the uplink writes itself (drops, dead letters).
pub const UPLINK_SOURCE: &str = "_uplink";

/// Encodes a status-table row the uplink writes about itself (drops, dead letters).
pub fn status_row(
    connector_id: &str,
    event: iot_connector_proto::StatusEvent,
    detail: String,
    count: u64,
) -> Vec<u8> {
    use iot_connector_proto::{Detail, Quality, Record, StatusDetail, Value};
    let now = iot_connector_proto::now_us();
    let record = Record {
        seq: 0,
        event_time_us: now,
        ingest_time_us: now,
        quality: Quality::Good,
        value: Value::Null,
        detail: Detail::Status(StatusDetail {
            event,
            detail,
            count,
        }),
    };
    iot_connector_proto::table::encode_row(connector_id, UPLINK_SOURCE, &record).1
}
