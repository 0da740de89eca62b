//! `iot-connector demo`: starts a simulated plant (an OPC-UA server with a process plant, a Modbus
//! boiler PLC, an MQTT broker with sensors publishing JSON and a Sparkplug B edge node) and a
//! local Zerobus emulator that writes every row it acknowledges as JSON
//! lines under `./demo/zerobus/`, writes a configuration for them, runs the real connector
//! (`iot-connector run`: supervisor, uplink and workers) and prints a live summary every second.
//! Ctrl-C stops everything.
//!
//! Trust: a local tool beside the product, not a product code path; it binds loopback only.
//! No `unsafe`.
#![forbid(unsafe_code)]

mod modbus;
mod mqtt;
mod opcua;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use iot_connector_proto::Table;
use iot_connector_sim_zerobus::EmulatorOptions;

const TABLES: [(&str, &str); Table::COUNT] = [
    ("opcua", "demo.bronze.opcua_events"),
    ("mqtt", "demo.bronze.mqtt_events"),
    ("modbus", "demo.bronze.modbus_events"),
    ("status", "demo.bronze.connector_status"),
];

fn main() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return ExitCode::from(71);
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(70)
        }
    }
}

fn config(
    dir: &Path,
    zerobus: &iot_connector_sim_zerobus::Emulator,
    http: &str,
    sources: &str,
) -> String {
    let tables: Vec<String> = TABLES
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect();
    format!(
        r#"# Written by `iot-connector demo`: the simulated plant and the local Zerobus emulator.
[connector]
id = "demo"
state_dir = "{state}"
runtime_dir = "{run}"
log_level = "warn"

[http]
listen = "{http}"

[zerobus]
endpoint = "{endpoint}"
workspace_url = "{workspace}"
client_id = "demo-client"
client_secret = "demo-secret"
ca_file = "{ca}"
tables = {{ {tables} }}

[spool]
max_bytes = "1GiB"
{sources}"#,
        state = dir.join("state").display(),
        run = dir.join("run").display(),
        endpoint = zerobus.grpc_url(),
        workspace = zerobus.oauth_url(),
        ca = dir.join("zerobus-ca.pem").display(),
        tables = tables.join(", "),
    )
}

/// `GET path` on the connector's HTTP listener, body only.
fn get(address: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

// The summary is the demo's output; indexing a serde_json::Value yields Null, never a panic.
#[allow(clippy::print_stdout, clippy::indexing_slicing)]
fn summary(
    health: &serde_json::Value,
    zerobus: &iot_connector_sim_zerobus::SimState,
    started: std::time::Instant,
) {
    let sources: Vec<String> = health["sources"]
        .as_array()
        .map(|sources| {
            sources
                .iter()
                .map(|s| {
                    format!(
                        "{}={} ({}, {} restarts)",
                        s["name"].as_str().unwrap_or("?"),
                        s["records_read"],
                        s["state"].as_str().unwrap_or("?"),
                        s["restarts"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<String> = TABLES
        .iter()
        .map(|(key, table)| format!("{key}={}", zerobus.row_count(table)))
        .collect();
    println!(
        "[{:>4}s] {} | records read: {} | spool {} B | rows at Zerobus: {}",
        started.elapsed().as_secs(),
        health["status"].as_str().unwrap_or("starting"),
        sources.join(" "),
        health["uplink"]["spool_bytes"],
        rows.join(" "),
    );
}

#[allow(clippy::print_stdout)]
async fn run() -> Result<(), String> {
    let dir = std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join("demo");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let options = EmulatorOptions {
        sink_dir: Some(dir.join("zerobus")),
    };
    let zerobus = iot_connector_sim_zerobus::start(options)
        .await
        .map_err(|e| e.to_string())?;
    zerobus
        .write_ca_pem(&dir.join("zerobus-ca.pem"))
        .map_err(|e| e.to_string())?;
    let opcua_port = opcua::start(&dir.join("opcua-server-pki"))
        .await
        .map_err(|e| format!("OPC-UA server: {e}"))?;
    let modbus_port = modbus::start()
        .await
        .map_err(|e| format!("Modbus simulator: {e}"))?;
    let mqtt_port = mqtt::start()
        .await
        .map_err(|e| format!("MQTT broker: {e}"))?;
    let http = std::env::var("IOT_CONNECTOR_DEMO_HTTP").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let sources = format!(
        "{}{}{}",
        opcua::source(opcua_port),
        modbus::source(modbus_port),
        mqtt::source(mqtt_port)
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config(&dir, &zerobus, &http, &sources))
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;

    let connector = sibling("iot-connector")?;
    let mut child = tokio::process::Command::new(&connector)
        .args(["run", "--config"])
        .arg(&config_path)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", connector.display()))?;
    println!("The demo connector runs with {}.", config_path.display());
    println!("Health: http://{http}/health   Metrics: http://{http}/metrics");
    println!(
        "Rows Zerobus acknowledged: {}/*.jsonl   Status: iot-connector status --config {}",
        dir.join("zerobus").display(),
        config_path.display()
    );
    println!("Ctrl-C stops everything.");

    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = |kind| tokio::signal::unix::signal(kind).map_err(|e| e.to_string());
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let address = http.clone();
                let health = tokio::task::spawn_blocking(move || get(&address, "/health"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|body| serde_json::from_str(&body).ok())
                    .unwrap_or(serde_json::Value::Null);
                summary(&health, zerobus.state(), started);
            }
            status = child.wait() => return Err(format!("the connector exited: {status:?}")),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    println!("Stopping the connector…");
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    println!(
        "Stopped. The rows stay in {}.",
        dir.join("zerobus").display()
    );
    Ok(())
}

/// A connector binary next to this one.
fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .ok_or("no directory for the demo binary")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build the workspace first (cargo build --workspace)",
            path.display()
        ))
    }
}
