//! The Zerobus emulator in a process of its own (`iot-connector-sim-zerobus`), and the CPU time
//! of a process, for benches that report the cost of each process per record: the emulator
//! decodes every row it acknowledges, which must not be charged to the bench or share its
//! runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // bench harness: a failed step should fail loudly; JSON indexing gives null

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use iot_connector_proto::ZerobusSettings;

use crate::{bin, proc_stat_fields, zerobus_settings_at};

/// A running `iot-connector-sim-zerobus`; killed when dropped.
#[derive(Debug)]
pub struct EmulatorProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    settings: ZerobusSettings,
    _dir: tempfile::TempDir,
}

impl EmulatorProcess {
    /// Starts it and waits until it has written its addresses.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("zerobus.json");
        let mut child = Command::new(bin("iot-connector-sim-zerobus"))
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addresses: serde_json::Value = loop {
            if let Some(parsed) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
            {
                break parsed;
            }
            assert!(Instant::now() < deadline, "the emulator never started");
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = |key: &str| addresses[key].as_str().unwrap_or_default();
        let settings = zerobus_settings_at(text("grpc_url"), text("oauth_url"), text("ca_pem"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            settings,
            _dir: dir,
        }
    }

    /// The settings an uplink forwards to it with.
    pub fn settings(&self) -> ZerobusSettings {
        self.settings.clone()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rows acknowledged in `table`.
    pub fn rows(&mut self, table: &str) -> usize {
        writeln!(self.stdin, "rows {table}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim().parse().unwrap()
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU time (user and system) `pid` has used, in microseconds; `None` once it is gone.
pub fn cpu_us(pid: u32) -> Option<u64> {
    // utime and stime are fields 14 and 15.
    let fields = proc_stat_fields(pid)?;
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)?;
    Some(ticks * 1_000_000 / per_second)
}
