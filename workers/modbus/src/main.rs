//! `iot-connector-modbus`: the Modbus worker. It polls one device (Modbus TCP, RTU on a serial
//! port, or RTU over TCP) for the registers and coils of its `[[sources]]` entry, decodes them
//! and pushes one record per tag reading to the uplink through `iot-connector-runtime`.
//!
//! - [`decode`]: data types, byte orders, strings, scale and offset: the only place that does it.
//! - [`plan`]: the read planner, which merges tags into as few requests as the device allows.
//! - [`poll`]: the connection, the schedule, report-by-exception and status rows.
//!
//! Trust: the device and the network to it are untrusted. Every answer is checked against its
//! request (function, length) before it is decoded, and a malformed answer becomes bad-quality
//! records, never a panic. The supervisor and uplink are trusted peers reached through the
//! runtime. No `unsafe`.
#![forbid(unsafe_code)]

mod decode;
mod plan;
mod poll;

use std::{process::ExitCode, sync::Arc};

use iot_connector_config::ModbusSource;
use iot_connector_runtime::{Context, InvalidSource, Sink, Worker};

use crate::poll::{Device, Poller};

struct Modbus(Device);

impl Worker for Modbus {
    type Source = ModbusSource;
    type Error = InvalidSource;
    const NAME: &'static str = "Modbus";

    fn prepare(source: ModbusSource, context: &Context) -> Result<Self, InvalidSource> {
        Device::new(source)
            .map(Self)
            .map_err(|problem| context.invalid(vec![problem]))
    }

    async fn run(self, _: Context, sink: Arc<Sink>) -> Result<(), InvalidSource> {
        Poller::new(self.0, &*sink).run().await;
        Ok(())
    }
}

fn main() -> ExitCode {
    iot_connector_runtime::main::<Modbus>()
}
