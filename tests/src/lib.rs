//! The end-to-end test harness: it starts the real connector binaries the way the supervisor
//! does (control channel on an inherited descriptor, handshake, configuration slice, grants) and
//! gives tests handles to kill and restart them. [`Rig`] is what a test starts: a directory, the
//! Zerobus emulator, the uplink and the workers; [`connector`] runs `iot-connector run` itself.
//!
//! Trust: test code only; it runs the binaries built by `cargo build --workspace`.
#![forbid(unsafe_code)]

pub mod chaos;
pub mod connector;
pub mod emulator;
pub mod mosquitto;
pub mod outage;
pub mod rig;

pub use rig::Rig;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_config::{Protocol, Source};
use iot_connector_ipc::{FrameReader, FrameWriter, IpcError, expect, handshake, new_token, os};
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
    /// Starts `binary` as the supervisor would: control channel, handshake as the supervisor of
    /// a `role`, `configure`, then waits for `Ready`. Its stderr goes to `log` when given.
    pub async fn spawn(
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
        process.reader.expect(expect::READY).await?;
        Ok(process)
    }

    /// The child and both halves of its control channel, for a test that speaks it itself.
    pub fn into_parts(
        self,
    ) -> (
        Child,
        FrameReader<OwnedReadHalf>,
        FrameWriter<OwnedWriteHalf>,
    ) {
        (self.child, self.reader, self.writer)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends `signal` (SIGSTOP to freeze the child, SIGCONT to let it go on); nothing once the
    /// child was reaped, so that a stale pid never signals someone else.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            connector::kill(pid, signal);
        }
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

    /// Waits for the uplink's next heartbeat (one a second) and returns its counters; `None`
    /// once its control channel is closed. A test that reads them reads every one, so that
    /// none is stale.
    pub async fn report(&mut self) -> Option<iot_connector_proto::UplinkReport> {
        loop {
            match self.process.reader.recv().await {
                Ok(Some(Message::Heartbeat(iot_connector_proto::ChildReport::Uplink(report)))) => {
                    return Some(report);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
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
    /// `source_config` is the source's `[[sources]]` entry as TOML without `protocol` (or the
    /// test worker's parameters); [`start_worker`] turns it into the slice the binary takes.
    pub async fn grant(
        &mut self,
        source: &str,
        table: Table,
        source_config: &str,
    ) -> Result<WorkerSettings, IpcError> {
        let (grant, settings) = self.issue(source, table, source_config);
        self.send_grant(grant).await?;
        Ok(settings)
    }

    /// A new grant for `source` and the worker settings carrying its token, not yet sent to
    /// the uplink: a test that wants the worker to start first sends it later with
    /// [`Uplink::send_grant`].
    pub fn issue(
        &self,
        source: &str,
        table: Table,
        source_config: &str,
    ) -> (SourceGrant, WorkerSettings) {
        let token = new_token();
        let grant = SourceGrant {
            source: source.to_owned(),
            table,
            token: token.clone(),
            start: iot_connector_proto::Start::First,
        };
        let state_dir = Path::new(&self.settings.spool_dir).with_file_name("state");
        let settings = WorkerSettings {
            connector_id: self.settings.connector_id.clone(),
            source: source.to_owned(),
            state_dir: state_dir.display().to_string(),
            data_socket: self.settings.data_socket.clone(),
            token,
            source_config: source_config.as_bytes().to_vec(),
        };
        (grant, settings)
    }

    /// Sends `grant` to the uplink, and keeps it for [`Uplink::kill_and_restart`].
    pub async fn send_grant(&mut self, grant: SourceGrant) -> Result<(), IpcError> {
        self.process
            .writer
            .send(&Message::Grant(grant.clone()))
            .await?;
        self.grants.retain(|g| g.source != grant.source);
        self.grants.push(grant);
        Ok(())
    }
}

/// The synthetic worker of `src/bin`, which stands in for a protocol worker.
pub const TEST_WORKER: &str = "iot-connector-testworker";

/// Where the test worker finds its parameters (TOML): see `src/bin/iot-connector-testworker.rs`.
pub const TEST_WORKER_ENV: &str = "IOT_CONNECTOR_TEST_WORKER";

/// Starts a worker binary with the settings [`Uplink::grant`] made and waits until it is ready.
pub async fn start_worker(binary: &str, settings: WorkerSettings) -> Result<Process, IpcError> {
    start_worker_with_env(binary, settings, &[]).await
}

/// Like [`start_worker`], with extra environment variables.
pub async fn start_worker_with_env(
    binary: &str,
    mut settings: WorkerSettings,
    env: &[(&str, &str)],
) -> Result<Process, IpcError> {
    let text = String::from_utf8_lossy(&settings.source_config).into_owned();
    let mut env = env.to_vec();
    let source = if binary == TEST_WORKER {
        env.push((TEST_WORKER_ENV, &text));
        // It stands in for the worker of its `table` (default: Modbus) and ignores the source.
        let table = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("table").and_then(|t| t.as_str()).map(str::to_owned));
        let protocol = Protocol::ALL
            .into_iter()
            .find(|p| table.as_deref() == Some(p.table().key()))
            .unwrap_or(Protocol::Modbus);
        let endpoint = match protocol {
            Protocol::Opcua => "opc.tcp://127.0.0.1:1",
            Protocol::Mqtt => "mqtt://127.0.0.1:1",
            Protocol::Modbus => "tcp://127.0.0.1:1",
        };
        let text = format!("name = {:?}\nendpoint = {endpoint:?}\n", settings.source);
        source_of(protocol, &text)
    } else {
        let protocol = Protocol::ALL.into_iter().find(|p| p.binary() == binary);
        let protocol = protocol.ok_or_else(|| not_a_source(binary, "no protocol's worker"))?;
        source_of(protocol, &text)
    }?;
    settings.source_config = source.to_slice();
    Process::spawn(
        binary,
        Role::Worker,
        Message::ConfigureWorker(settings),
        None,
        &env,
    )
    .await
}

/// A source of `protocol` from its TOML (without `protocol`), as the supervisor would load it.
fn source_of(protocol: Protocol, text: &str) -> Result<Source, IpcError> {
    let source = match protocol {
        Protocol::Opcua => toml::from_str(text).map(Source::Opcua),
        Protocol::Mqtt => toml::from_str(text).map(Source::Mqtt),
        Protocol::Modbus => toml::from_str(text).map(Source::Modbus),
    };
    source.map_err(|e| not_a_source(protocol.key(), &e.to_string()))
}

fn not_a_source(what: &str, why: &str) -> IpcError {
    IpcError::Io(std::io::Error::other(format!("not a {what} source: {why}")))
}

/// The binary of the protocol worker that writes to `table`.
pub fn worker_binary(table: Table) -> &'static str {
    Protocol::ALL
        .into_iter()
        .find(|p| p.table() == table)
        .map_or(
            "iot-connector-no-worker-writes-this-table",
            Protocol::binary,
        )
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
        start: iot_connector_proto::Start::First,
    }
}

/// Reads the test worker's acked file (`None` until something was acknowledged).
pub fn read_acked(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    poll_until(Duration::from_millis(20), timeout, condition).await
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; whether it held.
pub async fn poll_until(
    interval: Duration,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(interval).await;
    }
    condition()
}

/// A free loopback port, never one this process was given before: the kernel may hand a
/// just-released port out again, and two listeners of one test (a broker's plain and TLS
/// ports) must not get the same one.
#[allow(clippy::expect_used)] // test harness: a test cannot go on without one
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The three-part table names the tests forward to, in [`Table::ALL`] order.
pub const TABLES: [&str; Table::COUNT] = [
    "main.bronze.opcua_events",
    "main.bronze.mqtt_events",
    "main.bronze.modbus_events",
    "main.bronze.connector_status",
];

/// Zerobus settings pointing at a local emulator, trusted through its CA like a corporate CA.
pub fn zerobus_settings(emulator: &iot_connector_sim_zerobus::Emulator) -> ZerobusSettings {
    zerobus_settings_at(emulator.grpc_url(), emulator.oauth_url(), emulator.ca_pem())
}

/// Settings for an emulator at these addresses with this CA (one in this process or not).
pub fn zerobus_settings_at(grpc_url: &str, oauth_url: &str, ca_pem: &str) -> ZerobusSettings {
    ZerobusSettings {
        endpoint: grpc_url.to_owned(),
        workspace_url: oauth_url.to_owned(),
        client_id: "test-principal".into(),
        client_secret: "test-secret".into(),
        ca_pem: Some(ca_pem.to_owned()),
        proxy: None,
        no_proxy: Vec::new(),
        tables: TABLES.map(str::to_owned),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces), starting
/// with the state (field 3); `None` once the process is gone.
pub fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The three-part name of `table`, as the tests forward to it.
pub fn table_name(table: Table) -> &'static str {
    #[allow(clippy::indexing_slicing)] // `index()` is below `Table::COUNT` by construction
    TABLES[table.index()]
}

/// A local Zerobus emulator with default options.
pub async fn start_emulator()
-> Result<iot_connector_sim_zerobus::Emulator, iot_connector_sim_zerobus::SimError> {
    iot_connector_sim_zerobus::start(iot_connector_sim_zerobus::EmulatorOptions::default()).await
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

/// Standard base64 with padding: how the emulator's JSON rows show `bytes` columns.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut three = [0u8; 3];
        three.iter_mut().zip(chunk).for_each(|(slot, b)| *slot = *b);
        let n = u32::from_be_bytes([0, three[0], three[1], three[2]]);
        for i in 0..4 {
            let symbol = usize::try_from((n >> (18 - 6 * i)) & 63)
                .ok()
                .and_then(|s| ALPHABET.get(s));
            out.push(match symbol {
                Some(s) if i <= chunk.len() => char::from(*s),
                _ => '=',
            });
        }
    }
    out
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`, `RssAnon`, ...); `None` when the
/// process or the field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The runtime the benches run in: two worker threads, as the tests have.
#[allow(clippy::expect_used)] // a bench cannot go on without one
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_pads_like_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"kept"), "a2VwdA==");
        assert_eq!(base64(&[0, 1, 2, 255]), "AAEC/w==");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
