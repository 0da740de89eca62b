//! What every protocol worker shares, so that a worker is only "connect, read, map to `Record`,
//! push": the process skeleton ([`main`] and the [`Worker`] trait it drives: control channel,
//! configuration slice, sandbox point, uplink connection, heartbeats, flush on stop, exit
//! codes), the connection to the uplink ([`Sink`]: sequence numbers that continue after the
//! uplink's last durable one, batching by size and time, a bounded window of unacknowledged
//! records as the backpressure signal, durable-ack notifications, reconnection with backoff),
//! and the health board every heartbeat carries.
//!
//! Trust: the uplink and supervisor are trusted peers, but every frame is still decoded with the
//! bounded decoder of `iot-connector-ipc`, and a message that is not legal where it arrives ends
//! the conversation. No `unsafe`.
#![forbid(unsafe_code)]

mod control;
mod health;
mod skeleton;
mod uplink;
mod window;

pub use control::HEARTBEAT_INTERVAL;
pub use health::{Health, health};
pub use iot_connector_ipc::{Backoff, LogGate};
pub use iot_connector_proto::now_us;
pub use skeleton::{Context, FLUSH_ON_STOP, Failure, InvalidSource, Worker, WorkerError, main};
pub use uplink::{Sink, SinkOptions, WindowFull};
