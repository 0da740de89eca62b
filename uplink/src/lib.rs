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
#[cfg(test)]
mod fault;
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
    let now = iot_connector_proto::now_us();
    row_about(connector_id, UPLINK_SOURCE, now, event, detail, count)
}

/// The status rows of one process start, about `source` (a worker's source, or the uplink):
/// `started`; `crashed` (at the time the previous process ended) and `restarted`; `restarted`
/// by the operator; or `config_changed`.
pub fn start_rows(
    connector_id: &str,
    source: &str,
    start: &iot_connector_proto::Start,
) -> Vec<Vec<u8>> {
    use iot_connector_proto::{Start, StatusEvent};
    let now = iot_connector_proto::now_us();
    let row =
        |at, event, detail: &str| row_about(connector_id, source, at, event, detail.to_owned(), 0);
    match start {
        Start::First => vec![row(now, StatusEvent::Started, "started")],
        Start::AfterCrash { why, at_us } => vec![
            row(*at_us, StatusEvent::Crashed, why),
            row(
                now,
                StatusEvent::Restarted,
                &format!("started again after: {why}"),
            ),
        ],
        Start::ByOperator => vec![row(now, StatusEvent::Restarted, "started by the operator")],
        Start::ConfigChanged => vec![row(
            now,
            StatusEvent::ConfigChanged,
            "started again with the changed configuration",
        )],
    }
}

/// One status row about `source`, encoded for the status table.
pub fn row_about(
    connector_id: &str,
    source: &str,
    at_us: i64,
    event: iot_connector_proto::StatusEvent,
    detail: String,
    count: u64,
) -> Vec<u8> {
    use iot_connector_proto::{Detail, Quality, Record, StatusDetail, Value};
    let record = Record {
        // The status table has no record_id: the number is not used.
        seq: 0,
        event_time_us: at_us,
        ingest_time_us: iot_connector_proto::now_us(),
        quality: Quality::Good,
        value: Value::Null,
        detail: Detail::Status(StatusDetail {
            event,
            detail,
            count,
        }),
    };
    iot_connector_proto::table::encode_row(connector_id, source, &record).1
}
