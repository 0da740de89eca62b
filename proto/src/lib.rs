//! The connector's shared vocabulary: the [`Record`] every worker produces, the versioned
//! [`Message`] enum every process speaks over IPC, and the bronze table schemas Zerobus receives.
//!
//! Trust: pure data types, no I/O. Decoding of outside bytes happens in `iot-connector-ipc`, which
//! bounds every decode; this crate only defines what may be decoded. No `unsafe`.
#![forbid(unsafe_code)]

mod message;
mod record;
pub mod table;

pub use message::{
    ACK_LATENCY_BUCKETS_MS, ChildReport, Message, MessageKind, OperatorCommand, OperatorReply,
    PROTOCOL_VERSION, ProcessStatus, Role, SourceGrant, SourceState, SpoolPolicy, Start,
    UplinkReport, UplinkSettings, WorkerReport, WorkerSettings, ZerobusSettings,
};
pub use record::{
    Detail, ModbusDetail, MqttDetail, OpcuaDetail, Quality, Record, StatusDetail, StatusEvent,
    Value, now_us,
};
pub use table::Table;
