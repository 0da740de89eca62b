//! The Modbus peer: tokio-modbus's TCP server as a device whose one 32-bit register answers every
//! read with the next number of a counter. Each answer is a value given to the worker process
//! behind that connection; the worker pushes it into its window and it is not durable until the
//! uplink says so, so a kill may take the last answers of the process it ends.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use iot_connector_proto::Table;
use iot_connector_sim_zerobus::SimState;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_modbus_server::{ExceptionCode, Request, Response, SlaveRequest, server};

use super::{Given, Peer, Tie};

/// The counter and what it answered.
#[derive(Debug, Default)]
struct Counter {
    given: Mutex<Vec<(u64, Tie)>>,
    /// Once stopped, reads raise "server device busy": no more values.
    stopped: AtomicBool,
}

/// One connection's service: its answers are tied to the moment the connection opened.
#[derive(Debug, Clone)]
struct Service {
    counter: Arc<Counter>,
    opened: Instant,
}

impl server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        std::future::ready(match request.request {
            _ if self.counter.stopped.load(Ordering::SeqCst) => {
                Err(ExceptionCode::ServerDeviceBusy)
            }
            Request::ReadHoldingRegisters(0, 2) => {
                let mut given = self.counter.given.lock().unwrap();
                let value = given.len() as u64 + 1;
                given.push((value, Tie::Process(self.opened)));
                #[allow(clippy::cast_possible_truncation)] // the two halves of a 32-bit value
                let words = vec![(value >> 16) as u16, value as u16];
                Ok(Some(Response::ReadHoldingRegisters(words)))
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        })
    }
}

/// A counting device on a free loopback port.
#[derive(Debug)]
pub struct Modbus {
    port: u16,
    counter: Arc<Counter>,
    poll_interval_ms: u64,
    task: JoinHandle<()>,
}

impl Modbus {
    /// Starts the device; the worker polls it `rate` times a second.
    pub async fn start(rate: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = Arc::new(Counter::default());
        let serving = Arc::clone(&counter);
        let task = tokio::spawn(async move {
            let server = server::tcp::Server::new(listener);
            let on_connected = |stream, address| {
                let service = Service {
                    counter: Arc::clone(&serving),
                    opened: Instant::now(),
                };
                async move {
                    server::tcp::accept_tcp_connection(stream, address, move |_| {
                        Ok(Some(service.clone()))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_error| {}).await;
        });
        Self {
            port,
            counter,
            poll_interval_ms: (1000 / rate.max(1)).max(1),
            task,
        }
    }
}

impl Drop for Modbus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer for Modbus {
    const PROTOCOL: &'static str = "modbus";
    const WORKER: &'static str = "iot-connector-modbus";
    /// The worker's window (the runtime's default) and the scan in hand.
    const WINDOW: usize = 8192 + 1;
    const TABLE: Table = Table::Modbus;

    fn entry(&self) -> String {
        format!(
            "endpoint = \"tcp://127.0.0.1:{}\"\npoll_interval_ms = {}\n\
             registers = [{{ name = \"n\", kind = \"holding\", address = 0, data_type = \"uint32\" }}]\n",
            self.port, self.poll_interval_ms
        )
    }

    /// The worker polls from its start: every answer counts, the first ones too.
    async fn start(&mut self, _rate: u64, _zerobus: &SimState) {}

    async fn stop(&mut self) -> Given {
        self.counter.stopped.store(true, Ordering::SeqCst);
        Given {
            values: self.counter.given.lock().unwrap().clone(),
        }
    }

    fn value(text: &str) -> Option<u64> {
        text.parse().ok()
    }
}
