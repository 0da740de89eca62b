//! The chaos run: a real mosquitto publishing QoS 1 at a steady rate into `iot-connector run`
//! (the real supervisor, uplink and MQTT worker, the Zerobus emulator behind the real SDK),
//! while kill -9 hits the worker, the uplink and the supervisor at random moments (the
//! supervisor is started again at once, as systemd's `Restart=` would). At the end every
//! published message must be in the emulator's rows. Used by `cargo bench --bench chaos` (1,000
//! kills of each kind) and, short, by the test suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test harness: a failed step should fail loudly; JSON indexing gives null

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use rand::{Rng, seq::SliceRandom};
use rumqttc::QoS;

use crate::{
    TABLES,
    connector::{Connector, config_text, kill, source_health, with_binaries, zerobus_section},
    free_port,
    mosquitto::{Broker, Publisher},
};

const SOURCE: &str = "chaos";

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// kill -9 of the MQTT worker.
    pub kills_worker: usize,
    /// kill -9 of the uplink.
    pub kills_uplink: usize,
    /// kill -9 of the supervisor (its children die with it), then a new `iot-connector run`.
    pub kills_supervisor: usize,
    /// Messages the broker acknowledged to the publisher.
    pub published: u64,
    /// Published messages missing from the emulator's rows.
    pub lost: u64,
    /// Rows beyond one per published message.
    pub duplicates: u64,
    /// The longest time from a kill until the source was connected again.
    pub max_recovery_ms: u128,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kills_worker={} kills_uplink={} kills_supervisor={} published={} lost={} duplicates={} max_recovery_ms={}",
            self.kills_worker,
            self.kills_uplink,
            self.kills_supervisor,
            self.published,
            self.lost,
            self.duplicates,
            self.max_recovery_ms
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Worker,
    Uplink,
    Supervisor,
}

fn connected(c: &Connector) -> bool {
    let (status, health) = c.health();
    status == 200 && source_health(&health, SOURCE)["state"] == "connected"
}

/// Runs `kills` kill -9s of each kind while `rate` messages per second are published.
pub async fn run(kills: usize, rate: u64) -> Report {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_dir.path()).await;
    let (zerobus, _ca, zerobus_block) = zerobus_section().await;
    let dir = with_binaries(&[
        ("iot-connector-uplink", "iot-connector-uplink"),
        ("iot-connector-mqtt", "iot-connector-mqtt"),
    ]);
    let http = format!("127.0.0.1:{}", free_port());
    let source = format!(
        "{zerobus_block}[[sources]]\nname = \"{SOURCE}\"\nprotocol = \"mqtt\"\nendpoint = \"{}\"\n\
         client_id = \"chaos\"\ntopics = [{{ filter = \"chaos/#\", qos = 1, payload = \"text\" }}]\n",
        broker.endpoint()
    );
    let config = config_text(dir.path(), &http, &source);
    let mut c = Connector::launch(dir, http, &config);
    assert!(
        c.wait_for(Duration::from_secs(60), connected).await,
        "the source never connected: {}",
        c.health().1
    );

    // The subscription holds once a probe arrives.
    let publisher = Publisher::connect(broker.port, "chaos-publisher").await;
    let state = zerobus.state().clone();
    let mqtt = TABLES[1];
    let mut subscribed = false;
    for _ in 0..100 {
        publisher
            .publish("chaos/probe", QoS::AtLeastOnce, false, "probe")
            .await;
        if state
            .wait_until(Duration::from_millis(300), |s| s.row_count(mqtt) > 0)
            .await
        {
            subscribed = true;
            break;
        }
    }
    assert!(subscribed, "no probe arrived");
    let probes = state.row_count(mqtt) as u64;

    let sent = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (client, sent) = (publisher.client.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
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
        })
    };

    let mut order: Vec<Kill> = (0..kills)
        .flat_map(|_| [Kill::Worker, Kill::Uplink, Kill::Supervisor])
        .collect();
    order.shuffle(&mut rand::rng());
    let mut report = Report::default();
    for kind in order {
        let pause = rand::rng().random_range(100..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let killed = Instant::now();
        match kind {
            Kill::Worker => {
                if let Some(pid) = c.pid(SOURCE) {
                    kill(pid, Signal::SIGKILL);
                    report.kills_worker += 1;
                }
            }
            Kill::Uplink => {
                if let Some(pid) = c.pid("uplink") {
                    kill(pid, Signal::SIGKILL);
                    report.kills_uplink += 1;
                }
            }
            Kill::Supervisor => {
                let _ = c.process.start_kill();
                let _ = c.process.wait().await;
                assert!(
                    c.wait_for(Duration::from_secs(30), |c| c.children().is_empty())
                        .await,
                    "the children outlived the supervisor"
                );
                c.rerun().await;
                report.kills_supervisor += 1;
            }
        }
        // Give the kill time to be seen before asking whether all is well again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            c.wait_for(Duration::from_secs(60), connected).await,
            "not connected again after a {kind:?} kill: {}",
            c.health().1
        );
        report.max_recovery_ms = report.max_recovery_ms.max(killed.elapsed().as_millis());
    }
    publishing.abort();
    let _ = publishing.await;
    let published = sent.load(Ordering::Relaxed);
    publisher
        .wait_done(published + probes, Duration::from_secs(120))
        .await;
    report.published = published;

    let expected: HashSet<String> = (0..published).map(|i| format!("c{i:09}")).collect();
    let payloads = |s: &iot_connector_sim_zerobus::SimState| -> Vec<String> {
        s.strings(mqtt, "value_str")
            .into_iter()
            .filter(|v| expected.contains(v))
            .collect()
    };
    state
        .wait_until(Duration::from_secs(180), |s| {
            payloads(s).into_iter().collect::<HashSet<_>>().len() == expected.len()
        })
        .await;
    let rows = payloads(&state);
    let distinct: HashSet<&String> = rows.iter().collect();
    report.lost = (expected.len() - distinct.len()) as u64;
    report.duplicates = (rows.len() - distinct.len()) as u64;
    report
}
