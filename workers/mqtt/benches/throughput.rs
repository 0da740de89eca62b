//! Messages per second from a local MQTT publisher into the spool, QoS 0 and QoS 1.
//!
//! A mosquitto on loopback, the release `iot-connector-uplink` (spool only, encrypted, no
//! Zerobus) and `iot-connector-mqtt`, started the way the supervisor starts them. A rumqttc
//! publisher sends small text messages as fast as the broker takes them ("live"); for QoS 1 a
//! second run queues the messages while the worker is away and measures how fast the worker
//! drains the backlog into the spool ("backlog": worker and spool alone, without the
//! publisher's pace). Progress is the worker's own heartbeat to its supervisor: records read
//! minus records not yet durable, so "into the spool" means acknowledged by the uplink after
//! its fsync (and, for QoS 1, PUBACKed to the broker after that).
//!
//! ```sh
//! cargo build --release -p iot-connector-uplink -p iot-connector-mqtt
//! cargo bench -p iot-connector-mqtt --bench throughput
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iot_connector_config::Source;
use iot_connector_ipc::{FrameReader, FrameWriter, expect, new_token};
use iot_connector_proto::{
    ChildReport, Message, Role, SourceGrant, SpoolPolicy, Table, UplinkSettings, WorkerSettings,
};
use iot_connector_tests::Process;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::{
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    process::{Child, Command},
};

const LIVE_MESSAGES: u64 = 150_000;
const BACKLOG_MESSAGES: u64 = 300_000;

/// The worker's heartbeats: when each arrived and how many records were durable by then.
#[derive(Default)]
struct Progress {
    samples: std::sync::Mutex<Vec<(Instant, u64)>>,
}

impl Progress {
    fn latest(&self) -> u64 {
        self.samples.lock().unwrap().last().map_or(0, |s| s.1)
    }

    /// The steady rate: the slope between the first and the last heartbeat strictly between
    /// `from` and `to` (start-up, tail and the 1 s heartbeat period do not skew it). A run too
    /// short for two such heartbeats gets `(to - from) / (first heartbeat at `to` - start)`, a
    /// lower bound (`exact` false). Also the time from `start` to the first heartbeat at `to`.
    fn rate(&self, from: u64, to: u64, start: Instant) -> Option<Rate> {
        let samples = self.samples.lock().unwrap();
        let done = samples
            .iter()
            .find(|s| s.1 >= to)
            .map(|s| s.0.duration_since(start).as_secs_f64());
        let inside: Vec<&(Instant, u64)> =
            samples.iter().filter(|s| s.1 > from && s.1 < to).collect();
        if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
            let seconds = last.0.duration_since(first.0).as_secs_f64();
            if seconds > 0.0 {
                let per_second = (last.1 - first.1) as f64 / seconds;
                return Some(Rate {
                    per_second,
                    exact: true,
                    done,
                });
            }
        }
        let seconds = done?;
        Some(Rate {
            per_second: (to - from) as f64 / seconds,
            exact: false,
            done,
        })
    }
}

struct Rate {
    per_second: f64,
    exact: bool,
    done: Option<f64>,
}

fn follow(mut worker: FrameReader<OwnedReadHalf>) -> Arc<Progress> {
    let progress = Arc::new(Progress::default());
    let shared = Arc::clone(&progress);
    tokio::spawn(async move {
        while let Ok(ChildReport::Worker(report)) = worker.expect(expect::HEARTBEAT).await {
            let durable = report.records_read.saturating_sub(report.unacked);
            shared
                .samples
                .lock()
                .unwrap()
                .push((Instant::now(), durable));
        }
    });
    progress
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn mosquitto(dir: &Path, port: u16) -> Child {
    let user = if nix::unistd::geteuid().is_root() {
        "user root\n"
    } else {
        ""
    };
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "persistence false\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n\
             log_dest none\n{user}listener {port} 127.0.0.1\nallow_anonymous true\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto is installed");
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("mosquitto did not start");
}

/// A publisher that counts publishes the broker took (QoS 0: written, QoS 1: PUBACKed).
async fn publisher(port: u16) -> (AsyncClient, Arc<AtomicU64>) {
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 10_000);
    let done = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&done);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_)))
                | Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, done)
}

struct Connector {
    _uplink: Process,
    worker: Option<(Child, FrameWriter<OwnedWriteHalf>)>,
    progress: Arc<Progress>,
    settings: WorkerSettings,
}

async fn connector(dir: &Path, port: u16, qos: u8) -> (Connector, u64) {
    let token = new_token();
    let grant = SourceGrant {
        source: "bench".into(),
        table: Table::Mqtt,
        token: token.clone(),
        start: iot_connector_proto::Start::First,
    };
    let uplink_settings = UplinkSettings {
        connector_id: "bench".into(),
        spool_dir: dir.join("spool").display().to_string(),
        data_socket: dir.join("data.sock").display().to_string(),
        max_bytes: 4 << 30,
        full_policy: SpoolPolicy::Block,
        key_file: Some(dir.join("spool.key").display().to_string()),
        zerobus: None,
        grants: vec![grant],
        start: iot_connector_proto::Start::First,
    };
    // The release binaries: `cargo build --release --workspace` first.
    let uplink = Process::spawn(
        "iot-connector-uplink",
        Role::Uplink,
        Message::ConfigureUplink(Box::new(uplink_settings.clone())),
        None,
        &[],
    )
    .await
    .unwrap();
    let settings = WorkerSettings {
        connector_id: "bench".into(),
        source: "bench".into(),
        data_socket: uplink_settings.data_socket,
        token,
        state_dir: dir.display().to_string(),
        source_config: Source::Mqtt(
            toml::from_str(&format!(
                "name = \"bench\"\nendpoint = \"mqtt://127.0.0.1:{port}\"\n\
                 topics = [{{ filter = \"bench/#\", qos = {qos}, payload = \"text\" }}]\n"
            ))
            .unwrap(),
        )
        .to_slice(),
    };
    let mut connector = Connector {
        _uplink: uplink,
        worker: None,
        progress: Arc::default(),
        settings,
    };
    connector.start_worker().await;
    // The `connected` status row is the first durable record: the session is up.
    let baseline = wait_for(&connector.progress, 1, Duration::from_secs(10)).await;
    // Let the subscription settle before anything is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (connector, baseline)
}

impl Connector {
    async fn start_worker(&mut self) {
        let (child, reader, writer) = Process::spawn(
            "iot-connector-mqtt",
            Role::Worker,
            Message::ConfigureWorker(self.settings.clone()),
            None,
            &[],
        )
        .await
        .unwrap()
        .into_parts();
        self.progress = follow(reader);
        self.worker = Some((child, writer));
    }

    async fn stop_worker(&mut self) {
        if let Some((mut child, _)) = self.worker.take() {
            child.kill().await.unwrap();
        }
    }
}

/// Waits until the worker reports `target` durable records (or no progress for 5 s); returns
/// the last count.
async fn wait_for(progress: &Progress, target: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = (progress.latest(), Instant::now());
    loop {
        let now = progress.latest();
        if now >= target || Instant::now() > deadline {
            return now;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) && now > 0 {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(label: &str, progress: &Progress, from: u64, to: u64, start: Instant) {
    let stored = progress.latest().saturating_sub(from);
    match progress.rate(from, to, start) {
        Some(rate) => println!(
            "{label:<20} {}{:>7.0} msg/s into the spool; {stored} messages stored{}",
            if rate.exact { "" } else { ">= " },
            rate.per_second,
            rate.done
                .map_or(String::new(), |s| format!(", all within {s:.1} s"))
        ),
        None => println!("{label:<20} too short to measure ({stored} messages stored)"),
    }
}

async fn live(qos: QoS, level: u8) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port).await;
    let (connector, baseline) = connector(dir.path(), port, level).await;
    let (client, taken) = publisher(port).await;
    let start = Instant::now();
    let publishing = tokio::spawn(async move {
        for i in 0..LIVE_MESSAGES {
            client
                .publish("bench/live", qos, false, format!("{i:08}"))
                .await
                .unwrap();
        }
    });
    let target = baseline + LIVE_MESSAGES;
    wait_for(&connector.progress, target, Duration::from_secs(25)).await;
    publishing.await.unwrap();
    report(
        &format!("QoS {level} live"),
        &connector.progress,
        baseline,
        target,
        start,
    );
    let stored = connector.progress.latest() - baseline;
    if stored < LIVE_MESSAGES {
        println!(
            "    ({stored} of {LIVE_MESSAGES} published messages stored; the broker took {})",
            taken.load(Ordering::Relaxed)
        );
    }
}

async fn backlog() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = mosquitto(dir.path(), port).await;
    let (mut connector, _) = connector(dir.path(), port, 1).await;
    connector.stop_worker().await;
    let (client, taken) = publisher(port).await;
    for i in 0..BACKLOG_MESSAGES {
        client
            .publish("bench/backlog", QoS::AtLeastOnce, false, format!("{i:08}"))
            .await
            .unwrap();
    }
    while taken.load(Ordering::Relaxed) < BACKLOG_MESSAGES {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    connector.start_worker().await;
    // The restarted worker counts from its own `connected` row.
    let target = 1 + BACKLOG_MESSAGES;
    wait_for(&connector.progress, target, Duration::from_secs(25)).await;
    report("QoS 1 backlog drain", &connector.progress, 1, target, start);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` only checks that it builds.
    if std::env::args().all(|a| a != "--bench") {
        println!(
            "throughput bench: run with `cargo bench -p iot-connector-mqtt --bench throughput`"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("payload: 8-byte text; broker, publisher, worker and uplink on this host");
        live(QoS::AtMostOnce, 0).await;
        live(QoS::AtLeastOnce, 1).await;
        backlog().await;
    });
}
