//! The end-to-end test harness: it starts the real connector binaries the way the supervisor
//! does (control channel on an inherited descriptor, handshake, configuration slice, grants) and
//! gives tests handles to kill and restart them.
//!
//! Trust: test code only; it runs the binaries built by `cargo build --workspace`.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_ipc::{FrameReader, FrameWriter, IpcError, Phase, handshake, new_token, os};
use iot_connector_proto::{Message, Role, SourceGrant, Table, UplinkSettings, WorkerSettings};
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
    async fn spawn(binary: &str, role: Role, configure: Message) -> Result<Self, IpcError> {
        let mut command = Command::new(bin(binary));
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
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
}

impl Uplink {
    /// Starts `iot-connector-uplink` and waits until it is ready.
    pub async fn start(settings: UplinkSettings) -> Result<Self, IpcError> {
        let process = Process::spawn(
            "iot-connector-uplink",
            Role::Uplink,
            Message::ConfigureUplink(Box::new(settings.clone())),
        )
        .await?;
        Ok(Self { process, settings })
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
        self.process.writer.send(&Message::Grant(grant)).await?;
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
    Process::spawn(binary, Role::Worker, Message::ConfigureWorker(settings)).await
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
