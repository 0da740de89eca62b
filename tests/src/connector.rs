//! `iot-connector run` end to end: the real supervisor and uplink with stand-in workers (the test
//! worker in place of the Modbus worker, `/bin/false` as a crash-looping MQTT worker, a script
//! that exits with the configuration-error code as the OPC-UA worker).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test harness

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::Child;

use serde_json::Value as Json;

use crate::{bin, free_port};

/// A running `iot-connector run` in a temporary directory.
#[derive(Debug)]
pub struct Connector {
    /// Its directory: state, runtime, stand-in binaries, config.
    pub dir: tempfile::TempDir,
    /// The configuration file.
    pub config: PathBuf,
    /// The HTTP listener's address.
    pub http: String,
    /// The supervisor process.
    pub process: Child,
}

/// A Modbus `[[sources]]` entry (the test worker stands in for the Modbus worker).
pub fn modbus_source(name: &str, port: u16) -> String {
    format!(
        "[[sources]]\nname = \"{name}\"\nprotocol = \"modbus\"\nendpoint = \"tcp://127.0.0.1:{port}\"\n\
         registers = [{{ name = \"t\", kind = \"holding\", address = 0 }}]\n"
    )
}

/// A configuration with `sources`, everything under `dir`.
pub fn config_text(dir: &Path, http: &str, sources: &str) -> String {
    format!(
        "[connector]\nid = \"sup-test\"\nstate_dir = {:?}\nruntime_dir = {:?}\nbin_dir = {:?}\nlog_level = \"warn\"\n\n\
         [http]\nlisten = \"{http}\"\n\n{sources}",
        dir.join("state").display().to_string(),
        dir.join("run").display().to_string(),
        dir.join("bin").display().to_string(),
    )
}

/// A fresh directory whose `bin/` holds `binaries`: each `(name, workspace binary)` pair puts
/// the binary there under that name (the real worker, or the test worker in its place).
pub fn with_binaries(binaries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for (name, binary) in binaries {
        std::os::unix::fs::symlink(bin(binary), bins.join(name)).unwrap();
    }
    dir
}

/// A Zerobus emulator, its CA in a file (kept while the returned handle lives) and the
/// `[zerobus]` section that points a connector at it.
pub async fn zerobus_section() -> (
    iot_connector_sim_zerobus::Emulator,
    tempfile::NamedTempFile,
    String,
) {
    let zerobus = iot_connector_sim_zerobus::start(Default::default())
        .await
        .unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    zerobus.write_ca_pem(ca.path()).unwrap();
    let tables = crate::TABLES;
    let section = format!(
        "[zerobus]\nendpoint = \"{}\"\nworkspace_url = \"{}\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n\
         ca_file = {:?}\ntables = {{ opcua = \"{}\", mqtt = \"{}\", modbus = \"{}\", status = \"{}\" }}\n\n",
        zerobus.grpc_url(),
        zerobus.oauth_url(),
        ca.path().display().to_string(),
        tables[0],
        tables[1],
        tables[2],
        tables[3],
    );
    (zerobus, ca, section)
}

fn run_supervisor(config: &Path, env: &[(&str, String)]) -> Child {
    tokio::process::Command::new(bin("iot-connector"))
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

impl Connector {
    /// Stand-in binaries: the real uplink, the test worker as the Modbus worker, `/bin/false`
    /// as the MQTT worker, and an OPC-UA worker that reports a configuration error.
    pub async fn start(sources: &str) -> Self {
        Self::start_with_env(sources, &[]).await
    }

    /// [`Connector::start`] with more environment variables for the supervisor.
    pub async fn start_with_env(sources: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bins = dir.path().join("bin");
        std::fs::create_dir_all(&bins).unwrap();
        std::os::unix::fs::symlink(
            bin("iot-connector-uplink"),
            bins.join("iot-connector-uplink"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            bin("iot-connector-testworker"),
            bins.join("iot-connector-modbus"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/bin/false", bins.join("iot-connector-mqtt")).unwrap();
        let script = bins.join("iot-connector-opcua");
        std::fs::write(&script, "#!/bin/sh\nexit 78\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let http = format!("127.0.0.1:{}", free_port());
        let config = config_text(dir.path(), &http, sources);
        let connector = Self::launch_with_env(dir, http, &config, env);
        connector.wait_until_healthy().await;
        connector
    }

    /// Writes `config` to `dir/config.toml` and runs `iot-connector run` on it, without waiting
    /// for it to be healthy; `http` is the listener that configuration names.
    pub fn launch(dir: tempfile::TempDir, http: String, config: &str) -> Self {
        Self::launch_with_env(dir, http, config, &[])
    }

    /// [`Connector::launch`] with more environment variables (`NOTIFY_SOCKET`, say).
    pub fn launch_with_env(
        dir: tempfile::TempDir,
        http: String,
        config: &str,
        env: &[(&str, String)],
    ) -> Self {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let process = run_supervisor(&path, env);
        Self {
            dir,
            config: path,
            http,
            process,
        }
    }

    /// Starts the supervisor again on the same directory, after it was killed or stopped.
    pub async fn rerun(&mut self) {
        self.process = run_supervisor(&self.config, &[]);
        self.wait_until_healthy().await;
    }

    async fn wait_until_healthy(&self) {
        assert!(
            self.wait_for(Duration::from_secs(30), |c| c.get("/health").0 == 200)
                .await,
            "never healthy"
        );
    }

    /// Runs an operator command against this connector: exit code and output.
    pub fn command(&self, args: &[&str]) -> (i32, String) {
        let output = std::process::Command::new(bin("iot-connector"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    /// `status --json`, one object per process; empty while the supervisor does not answer yet
    /// (a condition polled with [`Connector::wait_for`] then simply does not hold).
    pub fn status(&self) -> Vec<Json> {
        status_of(&self.config)
    }

    /// One process of `status`, `null` when there is none.
    pub fn process(&self, name: &str) -> Json {
        self.status()
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or(Json::Null)
    }

    /// A process id from `status`.
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.process(name)["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    }

    /// `GET path`: status code and body (0 when the listener is down).
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::http_get(&self.http, path)
    }

    /// `GET /health`: the status code and the body (`null` when it is not JSON).
    pub fn health(&self) -> (u16, Json) {
        let (status, body) = self.get("/health");
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// The `/health` entry of `source`, whatever the status code; `null` when there is none.
    pub fn health_of(&self, source: &str) -> Json {
        source_health(&self.health().1, source)
    }

    /// Polls `condition` every 50 ms until it holds or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if tokio::task::block_in_place(|| condition(self)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Every running process started from the stand-in binaries.
    pub fn children(&self) -> Vec<i32> {
        let bins = self.dir.path().join("bin").display().to_string();
        let output = std::process::Command::new("pgrep")
            .args(["-f", &bins])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// `iot-connector status --json` for the connector configured by `config`, one object per
/// process; empty while the supervisor does not answer yet.
pub fn status_of(config: &Path) -> Vec<Json> {
    let output = std::process::Command::new(bin("iot-connector"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The entry of `source` in a `/health` body, `null` when there is none.
pub fn source_health(health: &Json, source: &str) -> Json {
    health["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == source))
        .cloned()
        .unwrap_or_default()
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
}
