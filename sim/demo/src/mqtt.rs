//! An MQTT broker embedded as a library (rumqttd, plain TCP on loopback) and a publisher, once a
//! second at QoS 1, of sensor readings as JSON (three temperature sensors and a vibration sensor)
//! and of a Sparkplug B edge node `spBv1.0/demo/…/edge1` (a conveyor: speed, running, part count).
//!
//! The edge node publishes NBIRTH (every metric with its alias) after each connect, then NDATA
//! with aliases only, and has NDEATH as its last will. The NBIRTH is retained, a demo shortcut
//! (Sparkplug asks a host to request a rebirth instead): the connector, which starts after the
//! publisher, learns the aliases as soon as it subscribes.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use prost::Message as _;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    dead_code,
    clippy::all,
    clippy::pedantic
)]
mod tahu {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

use tahu::{DataType, Payload, payload::Metric, payload::metric::Value as MetricValue};

/// The edge node's metrics: alias, name, datatype.
const METRICS: [(u64, &str, DataType); 3] = [
    (1, "Conveyor/Speed", DataType::Double),
    (2, "Conveyor/Running", DataType::Boolean),
    (3, "Conveyor/PartCount", DataType::UInt64),
];

/// The edge node's topic for a message kind (`NBIRTH`, `NDATA`, `NDEATH`).
fn edge_topic(kind: &str) -> String {
    format!("spBv1.0/demo/{kind}/edge1")
}

/// The metric values `t` seconds after the start, in [`METRICS`] order.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // simulated values in range
fn conveyor(t: f64) -> [MetricValue; 3] {
    let seconds = t as u64;
    let running = seconds % 60 < 45;
    [
        MetricValue::DoubleValue(if running {
            ((1.2 + 0.1 * (t / 4.0).sin()) * 100.0).round() / 100.0
        } else {
            0.0
        }),
        MetricValue::BooleanValue(running),
        MetricValue::LongValue(seconds * 2),
    ]
}

/// NBIRTH (`birth`: names, aliases and datatypes) or NDATA (aliases only).
fn sparkplug(birth: bool, seq: u8, timestamp_ms: u64, t: f64) -> Vec<u8> {
    let mut metrics: Vec<Metric> = METRICS
        .iter()
        .zip(conveyor(t))
        .map(|((alias, name, datatype), value)| Metric {
            name: birth.then(|| (*name).to_owned()),
            alias: Some(*alias),
            datatype: birth.then_some(*datatype as u32),
            timestamp: Some(timestamp_ms),
            value: Some(value),
            ..Metric::default()
        })
        .collect();
    if birth {
        metrics.insert(0, bd_seq());
    }
    Payload {
        timestamp: Some(timestamp_ms),
        metrics,
        seq: Some(u64::from(seq)),
        ..Payload::default()
    }
    .encode_to_vec()
}

/// The birth/death sequence metric; one value for the publisher's life (its will is fixed).
fn bd_seq() -> Metric {
    Metric {
        name: Some("bdSeq".to_owned()),
        datatype: Some(DataType::Int64 as u32),
        value: Some(MetricValue::LongValue(0)),
        ..Metric::default()
    }
}

/// Starts the broker on a free loopback port (in its own threads) and the publisher; returns
/// the port.
pub async fn start() -> std::io::Result<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = ServerSettings {
        name: "demo".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("demo".to_owned(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("demo: the MQTT broker stopped: {e}");
            }
        })?;
    tokio::spawn(publish(port));
    Ok(port)
}

/// Publishes forever, reconnecting as rumqttc does.
async fn publish(port: u16) {
    let mut options = MqttOptions::new("demo-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let death = Payload {
        metrics: vec![bd_seq()],
        ..Payload::default()
    };
    options.set_last_will(LastWill::new(
        edge_topic("NDEATH"),
        death.encode_to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = AsyncClient::new(options, 100);
    // Every (re)connect starts a new Sparkplug session: NBIRTH first.
    let (connected, mut reborn) = tokio::sync::watch::channel(0_u64);
    tokio::spawn(async move {
        let mut connects = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connects += 1;
                    let _ = connected.send(connects);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seq: u8 = 0;
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let now_ms_u64 = u64::try_from(now_ms).unwrap_or(u64::MAX);
        let birth = reborn.has_changed().unwrap_or(false);
        if birth {
            reborn.mark_unchanged();
            seq = 0;
        }
        if *reborn.borrow() > 0 {
            let (kind, retain) = if birth {
                ("NBIRTH", true)
            } else {
                ("NDATA", false)
            };
            let payload = sparkplug(birth, seq, now_ms_u64, t);
            let _ = client
                .publish(edge_topic(kind), QoS::AtLeastOnce, retain, payload)
                .await;
            seq = seq.wrapping_add(1);
        }
        for (i, room) in ["hall_a", "hall_b", "cold_store"].iter().enumerate() {
            let base = [21.0, 23.5, 4.0].get(i).copied().unwrap_or(20.0);
            let value = base + (t / 30.0 + i as f64).sin();
            let payload = serde_json::json!({ "value": (value * 100.0).round() / 100.0, "ts": now_ms, "unit": "degC" });
            let topic = format!("plant/{room}/temperature");
            let _ = client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await;
        }
        let vibration = serde_json::json!({ "value": { "rms": 0.8 + (t / 5.0).sin().abs(), "peak": 2.1 }, "ts": now_ms });
        let _ = client
            .publish(
                "plant/press_1/vibration",
                QoS::AtLeastOnce,
                false,
                vibration.to_string(),
            )
            .await;
    }
}

/// The `[[sources]]` entry for this broker.
pub fn source(port: u16) -> String {
    format!(
        r#"
[[sources]]
name = "sensor_net"
protocol = "mqtt"
endpoint = "mqtt://127.0.0.1:{port}"
topics = [
  {{ filter = "plant/+/temperature", qos = 1, payload = "json", value_path = "/value", timestamp_path = "/ts" }},
  {{ filter = "plant/+/vibration", qos = 1, payload = "json", value_path = "/value" }},
  {{ filter = "spBv1.0/demo/#", qos = 1, payload = "sparkplug_b" }},
]
"#
    )
}
