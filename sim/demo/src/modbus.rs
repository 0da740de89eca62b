//! A simulated boiler PLC on Modbus TCP: a temperature (float32, ABCD), a pressure (int16, input
//! register, ×0.01 bar), a flow counter (uint32, CDAB word order), a burner state (coil) and a
//! firmware string, changing every half second.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_modbus_server::{ExceptionCode, Request, Response, SlaveRequest, server};

/// The device's memory: 32 holding and input registers and 16 coils.
#[derive(Debug, Default)]
struct Plant {
    holding: [u16; 32],
    input: [u16; 32],
    coils: [bool; 16],
}

fn words(memory: &[u16], address: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
    let start = usize::from(address);
    memory
        .get(start..start + usize::from(count))
        .map(<[u16]>::to_vec)
        .ok_or(ExceptionCode::IllegalDataAddress)
}

impl Plant {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match *request {
            Request::ReadHoldingRegisters(address, count) => {
                words(&self.holding, address, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(address, count) => {
                words(&self.input, address, count).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(address, count) => {
                let start = usize::from(address);
                self.coils
                    .get(start..start + usize::from(count))
                    .map(|bits| Response::ReadCoils(bits.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// One step of the simulation at `t` seconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // simulated values in range
    fn step(&mut self, t: f64) {
        let temperature = (80.0 + 5.0 * (t / 20.0).sin()) as f32;
        let bits = temperature.to_bits();
        let flow = (t * 12.5) as u32;
        // Temperature ABCD (high word first); flow CDAB (low word first).
        let mut holding = vec![
            (0, (bits >> 16) as u16),
            (1, bits as u16),
            (2, flow as u16),
            (3, (flow >> 16) as u16),
        ];
        for (i, pair) in b"FW-2.4.1".chunks(2).enumerate() {
            let word = u16::from_be_bytes([
                pair.first().copied().unwrap_or(0),
                pair.get(1).copied().unwrap_or(0),
            ]);
            holding.push((10 + i, word));
        }
        for (address, word) in holding {
            if let Some(slot) = self.holding.get_mut(address) {
                *slot = word;
            }
        }
        if let Some(pressure) = self.input.get_mut(0) {
            *pressure = (250.0 + 20.0 * (t / 7.0).cos()) as i16 as u16;
        }
        if let Some(burner) = self.coils.get_mut(0) {
            *burner = (t as u64 / 15).is_multiple_of(2);
        }
    }
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<Plant>>);

impl server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let plant = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::future::ready(plant.answer(&request.request))
    }
}

/// Starts the device on a free loopback port; returns the port.
pub async fn start() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let plant = Arc::new(Mutex::new(Plant::default()));
    let simulated = Arc::clone(&plant);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let t = started.elapsed().as_secs_f64();
            simulated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .step(t);
        }
    });
    tokio::spawn(async move {
        let server = server::tcp::Server::new(listener);
        let on_connected = |stream, address| {
            let plant = Arc::clone(&plant);
            async move {
                server::tcp::accept_tcp_connection(stream, address, |_| {
                    Ok(Some(Service(Arc::clone(&plant))))
                })
            }
        };
        let _ = server.serve(&on_connected, |_error| {}).await;
    });
    Ok(port)
}

/// The `[[sources]]` entry for this device.
pub fn source(port: u16) -> String {
    format!(
        r#"
[[sources]]
name = "boiler_plc"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{port}"
poll_interval_ms = 1000
registers = [
  {{ name = "boiler_temp", kind = "holding", address = 0, data_type = "float32", byte_order = "ABCD", unit = "degC" }},
  {{ name = "flow_total", kind = "holding", address = 2, data_type = "uint32", byte_order = "CDAB", scale = 0.1, unit = "m3" }},
  {{ name = "firmware", kind = "holding", address = 10, data_type = "string", length = 4, poll_interval_ms = 10000 }},
  {{ name = "steam_pressure", kind = "input", address = 0, data_type = "int16", scale = 0.01, unit = "bar", deadband = 0.05, heartbeat_ms = 5000 }},
  {{ name = "burner_on", kind = "coil", address = 0, data_type = "bool" }},
]
"#
    )
}
