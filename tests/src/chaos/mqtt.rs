//! The MQTT peer: a real mosquitto and a QoS 1 publisher. The broker keeps every message of the
//! worker's persistent session until the worker acknowledges it, so no kill may take one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iot_connector_proto::Table;
use iot_connector_sim_zerobus::SimState;
use rumqttc::QoS;
use tokio::task::JoinHandle;

use super::{Given, Peer, Tie};
use crate::mosquitto::{Broker, Publisher};

/// mosquitto with a publisher of `c000000042`-style payloads on `chaos/data`.
#[derive(Debug)]
pub struct Mqtt {
    _dir: tempfile::TempDir,
    broker: Broker,
    publisher: Option<Publisher>,
    probes: u64,
    sent: Arc<AtomicU64>,
    publishing: Option<JoinHandle<()>>,
}

impl Mqtt {
    /// Starts the broker.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(dir.path()).await;
        Self {
            _dir: dir,
            broker,
            publisher: None,
            probes: 0,
            sent: Arc::new(AtomicU64::new(0)),
            publishing: None,
        }
    }
}

impl Peer for Mqtt {
    const PROTOCOL: &'static str = "mqtt";
    const WORKER: &'static str = "iot-connector-mqtt";
    const WINDOW: usize = 0;
    const TABLE: Table = Table::Mqtt;

    fn entry(&self) -> String {
        format!(
            "endpoint = \"{}\"\nclient_id = \"chaos\"\n\
             topics = [{{ filter = \"chaos/#\", qos = 1, payload = \"text\" }}]\n",
            self.broker.endpoint()
        )
    }

    async fn start(&mut self, rate: u64, zerobus: &SimState) {
        // The subscription holds once a probe arrives.
        let publisher = Publisher::connect(self.broker.port, "chaos-publisher").await;
        let table = crate::table_name(Table::Mqtt);
        let mut subscribed = false;
        for _ in 0..100 {
            publisher
                .publish("chaos/probe", QoS::AtLeastOnce, false, "probe")
                .await;
            if zerobus
                .wait_until(Duration::from_millis(300), |s| s.row_count(table) > 0)
                .await
            {
                subscribed = true;
                break;
            }
        }
        assert!(subscribed, "no probe arrived");
        self.probes = zerobus.row_count(table) as u64;
        let (client, sent) = (publisher.client.clone(), Arc::clone(&self.sent));
        self.publishing = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            loop {
                tick.tick().await;
                let i = sent.load(Ordering::Relaxed);
                if client
                    .publish("chaos/data", QoS::AtLeastOnce, false, format!("c{i:09}"))
                    .await
                    .is_err()
                {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
        self.publisher = Some(publisher);
    }

    async fn stop(&mut self) -> Given {
        if let Some(publishing) = self.publishing.take() {
            publishing.abort();
            let _ = publishing.await;
        }
        let published = self.sent.load(Ordering::Relaxed);
        if let Some(publisher) = &self.publisher {
            publisher
                .wait_done(published + self.probes, Duration::from_secs(120))
                .await;
        }
        Given {
            values: (0..published).map(|i| (i, Tie::Peer)).collect(),
        }
    }

    fn value(text: &str) -> Option<u64> {
        text.strip_prefix('c')?.parse().ok()
    }
}
