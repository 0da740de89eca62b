//! The OPC-UA peer: async-opcua's server with one `UInt64` variable that takes the next number
//! of a counter `rate` times a second. A change reaches only the session subscribed when it is
//! made: a kill may take the last changes sent to the process it ends, and the changes made
//! before the next process has subscribed are never sent (the worker writes its `gap` row).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use iot_connector_proto::Table;
use iot_connector_sim_zerobus::SimState;
use opcua::{
    crypto::SecurityPolicy,
    nodes::Variable,
    server::{
        ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle,
        diagnostics::NamespaceMetadata,
        node_manager::memory::{SimpleNodeManager, simple_node_manager},
    },
    types::{DataValue, DateTime, MessageSecurityMode, NodeId, ObjectId, StatusCode, Variant},
};
use tokio::{sync::RwLock, task::JoinHandle};

use super::{Given, Peer, Tie};

const NS_URI: &str = "urn:iot-connector-chaos";
const COUNTER: &str = "Counter";
/// The monitored item's queue on the server.
const QUEUE: usize = 1000;

/// The server and the task that counts.
pub struct Opcua {
    port: u16,
    ns: u16,
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    given: Arc<Mutex<Vec<(u64, Tie)>>>,
    quiet: Arc<RwLock<()>>,
    counting: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Opcua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opcua")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Opcua {
    /// Starts the server on a free loopback port (security None, anonymous).
    pub async fn start() -> Self {
        let pki = tempfile::tempdir().unwrap().keep();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut builder = ServerBuilder::new()
            .application_name("chaos")
            .application_uri("urn:iot-connector-chaos:server")
            .product_uri("urn:iot-connector-chaos:server")
            .host("127.0.0.1")
            .port(port)
            .pki_dir(&pki)
            .create_sample_keypair(true)
            .discovery_urls(vec!["/".into()])
            .add_endpoint(
                "none",
                (
                    "/",
                    SecurityPolicy::None,
                    MessageSecurityMode::None,
                    &[ANONYMOUS_USER_TOKEN_ID] as &[&str],
                ),
            )
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: NS_URI.into(),
                    ..Default::default()
                },
                "chaos",
            ));
        // Room for every change while a publish is late (the crate's default queue holds 10).
        builder
            .limits_mut()
            .subscriptions
            .max_monitored_item_queue_size = QUEUE;
        let (server, handle) = builder.build().unwrap();
        tokio::spawn(server.run_with(listener));
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .unwrap();
        let ns = manager
            .namespaces()
            .iter()
            .find(|(_, uri)| uri.as_str() == NS_URI)
            .map(|(i, _)| *i)
            .unwrap();
        let objects: NodeId = ObjectId::ObjectsFolder.into();
        let counter = Variable::new(&NodeId::new(ns, COUNTER), COUNTER, COUNTER, 0_u64);
        manager
            .address_space()
            .write()
            .add_variables(vec![counter], &objects);
        Self {
            port,
            ns,
            handle,
            manager,
            given: Arc::default(),
            quiet: Arc::default(),
            counting: None,
        }
    }
}

impl Drop for Opcua {
    fn drop(&mut self) {
        if let Some(counting) = &self.counting {
            counting.abort();
        }
        self.handle.cancel();
    }
}

impl Peer for Opcua {
    const PROTOCOL: &'static str = "opcua";
    const WORKER: &'static str = "iot-connector-opcua";
    /// The worker's window, its queue of notifications waiting for it, and the item's queue.
    const WINDOW: usize = 2048 + 1024 + QUEUE;
    const TABLE: Table = Table::Opcua;

    fn entry(&self) -> String {
        format!(
            "endpoint = \"opc.tcp://127.0.0.1:{}/\"\npublishing_interval_ms = 50\n\
             nodes = [ {{ node_id = \"ns={};s={COUNTER}\", queue_size = {QUEUE} }} ]\n",
            self.port, self.ns
        )
    }

    async fn start(&mut self, rate: u64, _zerobus: &SimState) {
        let (manager, subscriptions) = (
            Arc::clone(&self.manager),
            self.handle.subscriptions().clone(),
        );
        let (given, quiet, ns) = (Arc::clone(&self.given), Arc::clone(&self.quiet), self.ns);
        self.counting = Some(tokio::spawn(async move {
            let node = NodeId::new(ns, COUNTER);
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            loop {
                tick.tick().await;
                let _making = quiet.read().await;
                let mut given = given.lock().unwrap();
                let value = given.len() as u64 + 1;
                given.push((value, Tie::Sampled(Instant::now())));
                // No source time: the server's sampling filter passes every change.
                let change = DataValue {
                    value: Some(Variant::UInt64(value)),
                    status: Some(StatusCode::Good),
                    server_timestamp: Some(DateTime::now()),
                    ..Default::default()
                };
                let _ = manager.set_values(&subscriptions, [(&node, None, change)].into_iter());
            }
        }));
    }

    fn quiet(&self) -> Option<Arc<RwLock<()>>> {
        Some(Arc::clone(&self.quiet))
    }

    async fn stop(&mut self) -> Given {
        if let Some(counting) = self.counting.take() {
            counting.abort();
            let _ = counting.await;
        }
        Given {
            values: self.given.lock().unwrap().clone(),
        }
    }

    fn value(text: &str) -> Option<u64> {
        text.parse().ok()
    }
}
