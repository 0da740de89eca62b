//! Every file under `examples/` is a valid config, so the examples never rot.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)] // test code: a failed step should fail loudly

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use iot_connector_config::{Loaded, Source, parse_with_env};
use iot_connector_proto::Table;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The variables the examples reference, as a deployment would set them.
fn deployment_env(name: &str) -> Option<String> {
    let vars: HashMap<&str, &str> = [
        ("DATABRICKS_CLIENT_ID", "6f1c2a9e-client"),
        ("DATABRICKS_CLIENT_SECRET", "dose-secret-value"),
        ("OPCUA_PASSWORD", "opcua-password"),
        ("MQTT_PASSWORD", "mqtt-password"),
    ]
    .into();
    vars.get(name).map(|v| (*v).to_owned())
}

fn load_example(name: &str) -> Loaded {
    let path = examples_dir().join(name);
    let text = fs::read_to_string(&path).unwrap();
    match parse_with_env(&path, &text, &deployment_env) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("{name} is not valid:\n{errors}"),
    }
}

#[test]
fn every_example_is_valid() {
    let mut names: Vec<String> = fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    for expected in ["all.toml", "modbus.toml", "mqtt.toml", "opcua.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/{expected} is missing"
        );
    }
    for name in &names {
        let loaded = load_example(name);
        assert!(loaded.config.zerobus.is_some(), "{name} streams nowhere");
        assert!(
            loaded.enabled_sources().next().is_some(),
            "{name} has no enabled source"
        );
        for source in loaded.enabled_sources() {
            // Every worker slice reads back as its source.
            let slice = loaded.worker_settings(source, vec![1, 2, 3]).source_config;
            let back = Source::from_slice(&slice).ok();
            assert_eq!(back.as_ref(), Some(source), "{name}: {}", source.name());
        }
    }
}

#[test]
fn the_combined_example_resolves_to_the_contract_settings() {
    let loaded = load_example("all.toml");
    assert_eq!(loaded.config.connector.id, "plant-a-dmz-01");
    assert_eq!(loaded.state_dir, Path::new("/var/lib/iot-connector"));
    assert_eq!(
        loaded.data_socket(),
        Path::new("/run/iot-connector/data.sock")
    );
    assert_eq!(
        loaded.control_socket(),
        Path::new("/run/iot-connector/control.sock")
    );
    assert_eq!(
        loaded.key_file(),
        Path::new("/var/lib/iot-connector/keys/spool.key")
    );
    assert_eq!(loaded.http_listen().to_string(), "127.0.0.1:8081");
    let tables: Vec<Table> = loaded.enabled_sources().map(Source::table).collect();
    assert_eq!(tables, [Table::Opcua, Table::Mqtt, Table::Modbus]);

    let uplink = loaded.uplink_settings(Vec::new());
    assert_eq!(uplink.connector_id, "plant-a-dmz-01");
    assert_eq!(uplink.spool_dir, "/var/lib/iot-connector/spool");
    assert_eq!(uplink.max_bytes, 10 << 30);
    assert_eq!(
        uplink.key_file.as_deref(),
        Some("/var/lib/iot-connector/keys/spool.key")
    );
    let zerobus = uplink.zerobus.unwrap();
    assert_eq!(zerobus.client_id, "6f1c2a9e-client");
    assert_eq!(zerobus.client_secret, "dose-secret-value");
    assert_eq!(zerobus.ca_pem, None);
    assert_eq!(
        zerobus.tables,
        [
            "iot.bronze.opcua_events",
            "iot.bronze.mqtt_events",
            "iot.bronze.modbus_events",
            "iot.bronze.connector_status"
        ]
    );

    let mqtt = loaded.source("sensor_net").unwrap();
    let worker = loaded.worker_settings(mqtt, vec![9]);
    assert_eq!(worker.source, "sensor_net");
    assert_eq!(worker.token, [9]);
    let Ok(Source::Mqtt(slice)) = Source::from_slice(&worker.source_config) else {
        panic!("the MQTT source's slice is not an MQTT source");
    };
    assert_eq!(
        slice.password.as_ref().map(|p| p.expose()),
        Some("mqtt-password"),
        "secrets are resolved in the slice"
    );
    assert!(
        !worker
            .source_config
            .windows(b"opcua-password".len())
            .any(|w| w == b"opcua-password"),
        "a worker sees only its source"
    );

    // Secrets stay out of Debug output.
    let debug = format!("{loaded:?}");
    for secret in [
        "dose-secret-value",
        "opcua-password",
        "mqtt-password",
        "6f1c2a9e-client",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug");
    }
}
