//! The end-to-end test harness: it starts the real connector binaries the way the supervisor
//! does (control channel on an inherited descriptor, handshake, configuration slice, grants) and
//! gives tests handles to kill and restart them.
//!
//! Trust: test code only; it runs the binaries built by `cargo build --workspace`.
#![forbid(unsafe_code)]

pub mod connector;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_ipc::{FrameReader, FrameWriter, IpcError, Phase, handshake, new_token, os};
use iot_connector_proto::{
    Message, Role, SourceGrant, Table, UplinkSettings, WorkerSettings, ZerobusSettings,
};
use tokio::{
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    process::{Child, Command},
};

/// The path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A child started with a control channel.
#[derive(Debug)]
pub struct Process {
    /// The running child.
    pub child: Child,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
}

impl Process {
    async fn spawn(
        binary: &str,
        role: Role,
        configure: Message,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Self, IpcError> {
        let mut command = Command::new(bin(binary));
        command.envs(env.iter().copied());
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            command.stderr(file);
        }
        let (child, control) = os::spawn_with_control(&mut command)?;
        let (rx, tx) = control.into_split();
        let mut process = Self {
            child,
            reader: FrameReader::new(rx),
            writer: FrameWriter::new(tx),
        };
        handshake(
            &mut process.reader,
            &mut process.writer,
            Role::Supervisor,
            role,
        )
        .await?;
        process.writer.send(&configure).await?;
        process
            .reader
            .recv_in(Phase::SupervisorAwaitingReady)
            .await?;
        Ok(process)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The uplink under test.
#[derive(Debug)]
pub struct Uplink {
    /// Its process.
    pub process: Process,
    /// The settings it was started with.
    pub settings: UplinkSettings,
    log: Option<PathBuf>,
    grants: Vec<SourceGrant>,
}

impl Uplink {
    /// Starts `iot-connector-uplink` and waits until it is ready.
    pub async fn start(settings: UplinkSettings) -> Result<Self, IpcError> {
        Self::start_logging_to(settings, None).await
    }

    /// Like [`Uplink::start`], appending the uplink's log lines to `log`.
    pub async fn start_logging_to(
        settings: UplinkSettings,
        log: Option<&Path>,
    ) -> Result<Self, IpcError> {
        let configure = Message::ConfigureUplink(Box::new(settings.clone()));
        let process =
            Process::spawn("iot-connector-uplink", Role::Uplink, configure, log, &[]).await?;
        Ok(Self {
            process,
            settings,
            log: log.map(Path::to_path_buf),
            grants: Vec::new(),
        })
    }

    /// Opens the uplink's spool (its directory, key, size limit and policy) in this process,
    /// to look at what it holds. The uplink must be stopped: the spool admits one process.
    pub fn open_spool(
        &self,
    ) -> Result<iot_connector_uplink::spool::Spool, iot_connector_uplink::spool::SpoolError> {
        use iot_connector_uplink::spool::{SealKey, Spool};
        let key = self
            .settings
            .key_file
            .as_deref()
            .map(|f| SealKey::load_or_create(Path::new(f)));
        Spool::open(
            Path::new(&self.settings.spool_dir),
            key.transpose()?,
            self.settings.max_bytes,
            self.settings.full_policy,
        )
    }

    /// SIGKILLs the uplink and starts a new one on the same spool with every current grant, as
    /// the supervisor does.
    pub async fn kill_and_restart(&mut self) -> Result<(), IpcError> {
        self.process.kill().await;
        let settings = UplinkSettings {
            grants: self.grants.clone(),
            ..self.settings.clone()
        };
        let configure = Message::ConfigureUplink(Box::new(settings));
        self.process = Process::spawn(
            "iot-connector-uplink",
            Role::Uplink,
            configure,
            self.log.as_deref(),
            &[],
        )
        .await?;
        Ok(())
    }

    /// Authorises `source` for `table` and returns the worker settings carrying its new token.
    pub async fn grant(
        &mut self,
        source: &str,
        table: Table,
        source_config: &str,
    ) -> Result<WorkerSettings, IpcError> {
        let token = new_token();
        let grant = SourceGrant {
            source: source.to_owned(),
            table,
            token: token.clone(),
        };
        self.process
            .writer
            .send(&Message::Grant(grant.clone()))
            .await?;
        self.grants.retain(|g| g.source != source);
        self.grants.push(grant);
        Ok(WorkerSettings {
            connector_id: self.settings.connector_id.clone(),
            source: source.to_owned(),
            data_socket: self.settings.data_socket.clone(),
            token,
            source_config: source_config.to_owned(),
        })
    }
}

/// Starts a worker binary with its settings and waits until it is ready.
pub async fn start_worker(binary: &str, settings: WorkerSettings) -> Result<Process, IpcError> {
    start_worker_with_env(binary, settings, &[]).await
}

/// Like [`start_worker`], with extra environment variables (as the supervisor's allow-list
/// passes them, e.g. `IOT_CONNECTOR_STATE_DIR`).
pub async fn start_worker_with_env(
    binary: &str,
    settings: WorkerSettings,
    env: &[(&str, &str)],
) -> Result<Process, IpcError> {
    Process::spawn(
        binary,
        Role::Worker,
        Message::ConfigureWorker(settings),
        None,
        env,
    )
    .await
}

/// Uplink settings for a test directory: spool under `dir/spool`, key under `dir/keys`.
pub fn uplink_settings(dir: &Path) -> UplinkSettings {
    UplinkSettings {
        connector_id: "test-connector".into(),
        spool_dir: dir.join("spool").display().to_string(),
        data_socket: dir.join("data.sock").display().to_string(),
        max_bytes: 1 << 30,
        full_policy: iot_connector_proto::SpoolPolicy::DropOldest,
        key_file: Some(dir.join("keys/spool.key").display().to_string()),
        zerobus: None,
        grants: Vec::new(),
    }
}

/// Reads the test worker's acked file (`None` until something was acknowledged).
pub fn read_acked(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// The three-part table names the tests forward to, in [`Table::ALL`] order.
pub const TABLES: [&str; 4] = [
    "main.bronze.opcua_events",
    "main.bronze.mqtt_events",
    "main.bronze.modbus_events",
    "main.bronze.connector_status",
];

/// Zerobus settings pointing at a local emulator, trusted through its CA like a corporate CA.
pub fn zerobus_settings(emulator: &iot_connector_sim_zerobus::Emulator) -> ZerobusSettings {
    ZerobusSettings {
        endpoint: emulator.grpc_url().to_owned(),
        workspace_url: emulator.oauth_url().to_owned(),
        client_id: "test-principal".into(),
        client_secret: "test-secret".into(),
        ca_pem: Some(emulator.ca_pem().to_owned()),
        proxy: None,
        no_proxy: Vec::new(),
        tables: TABLES.map(str::to_owned),
    }
}

/// A local Zerobus emulator with default options.
pub async fn start_emulator()
-> Result<iot_connector_sim_zerobus::Emulator, iot_connector_sim_zerobus::SimError> {
    iot_connector_sim_zerobus::start(iot_connector_sim_zerobus::EmulatorOptions::default()).await
}

/// An uplink with its spool under `dir` that forwards to `emulator`.
pub async fn start_uplink_to(
    emulator: &iot_connector_sim_zerobus::Emulator,
    dir: &Path,
) -> Result<Uplink, IpcError> {
    let mut settings = uplink_settings(dir);
    settings.zerobus = Some(zerobus_settings(emulator));
    Uplink::start(settings).await
}

/// The rows written for `source`.
pub fn of_source(rows: Vec<serde_json::Value>, source: &str) -> Vec<serde_json::Value> {
    rows.into_iter()
        .filter(|r| r["source_name"] == source)
        .collect()
}

/// Waits until the emulator holds a row of `table` for every one of `expected` record ids (and
/// possibly duplicates); returns the ids it holds. Cheap counts first, the full set check at most
/// every half second: a set of 200,000 ids is not rebuilt every few milliseconds.
pub async fn wait_for_ids(
    state: &iot_connector_sim_zerobus::SimState,
    table: &str,
    expected: &std::collections::HashSet<String>,
    timeout: Duration,
) -> std::collections::HashSet<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if state.row_count(table) >= expected.len() || tokio::time::Instant::now() >= deadline {
            let held: std::collections::HashSet<String> =
                state.record_ids(table).into_iter().collect();
            if expected.is_subset(&held) || tokio::time::Instant::now() >= deadline {
                return held;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `GET path` on a connector's HTTP listener: the status code (0 when nothing answers) and the
/// body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
