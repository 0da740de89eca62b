//! An MQTT broker embedded as a library (rumqttd, plain TCP on loopback) and a publisher of
//! sensor readings as JSON: three temperature sensors and a vibration sensor, once a second, at
//! QoS 1.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

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
    let (client, mut events) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
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
]
"#
    )
}
