//! The harness of the end-to-end tests that start the connector's processes themselves, without
//! the supervisor: a temporary directory, the Zerobus emulator, the uplink forwarding to it and
//! the workers, each started for a source name, its table and its `[[sources]]` entry (TOML).
//! What the processes produced is read back from the emulator: the rows of a source in a table,
//! its status rows and their events, and waits for them that fail with what arrived instead.
//!
//! Protocol peers (devices, servers, brokers) belong to the tests that need them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test harness

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_proto::{StatusEvent, Table, UplinkSettings};
use iot_connector_sim_zerobus::{Emulator, SimState};
use serde_json::Value as Json;

use crate::{
    Process, TEST_WORKER, Uplink, of_source, poll_until, start_emulator, start_worker_with_env,
    table_name, uplink_settings, worker_binary, zerobus_settings,
};

/// How often the rig's waits look at the emulator unless told otherwise: the emulator's own
/// polling interval.
const POLL: Duration = Duration::from_millis(10);

/// The events the uplink writes about process starts; the worker's own events are the rest.
pub const START_EVENTS: [StatusEvent; 4] = [
    StatusEvent::Started,
    StatusEvent::Crashed,
    StatusEvent::Restarted,
    StatusEvent::ConfigChanged,
];

fn is_start(row: &Json) -> bool {
    START_EVENTS
        .iter()
        .any(|event| row["event"] == event.as_str())
}

/// The `event` column of each status row the worker wrote itself (not a process start), in
/// order.
pub fn event_names(status: &[Json]) -> Vec<String> {
    status
        .iter()
        .filter(|r| !is_start(r))
        .map(|r| r["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Where a rig's uplink forwards.
#[derive(Debug)]
enum Cloud {
    /// A new emulator with default options.
    Emulator,
    /// This emulator, set up by the test (faults switched on before the uplink first connects).
    Given(Box<Emulator>),
    /// An emulator elsewhere (another process): only its settings.
    External(Box<iot_connector_proto::ZerobusSettings>),
    /// Nowhere: the uplink keeps everything in its spool.
    Offline,
}

/// A change to the uplink's settings before it starts.
type Adjust = Box<dyn FnOnce(&mut UplinkSettings)>;

/// A rig other than [`Rig::start`]'s default; [`RigBuilder::start`] starts it.
#[must_use]
pub struct RigBuilder {
    cloud: Cloud,
    log_uplink: bool,
    poll: Duration,
    adjust: Option<Adjust>,
}

impl fmt::Debug for RigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RigBuilder")
            .field("cloud", &self.cloud)
            .field("log_uplink", &self.log_uplink)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl RigBuilder {
    /// Forwards to `zerobus`, which the test has set up (faults on from the first connection).
    pub fn emulator(mut self, zerobus: Emulator) -> Self {
        self.cloud = Cloud::Given(Box::new(zerobus));
        self
    }

    /// Forwards to an emulator this process does not run ([`crate::emulator::EmulatorProcess`]);
    /// the rig's own reads of the emulator ([`Rig::zerobus`]) are not available.
    pub fn forwarding_to(mut self, zerobus: iot_connector_proto::ZerobusSettings) -> Self {
        self.cloud = Cloud::External(Box::new(zerobus));
        self
    }

    /// No emulator: the uplink only spools, as with Zerobus not configured.
    pub fn offline(mut self) -> Self {
        self.cloud = Cloud::Offline;
        self
    }

    /// The uplink's log lines go to [`Rig::uplink_log`] instead of the test's stderr.
    pub fn log_uplink(mut self) -> Self {
        self.log_uplink = true;
        self
    }

    /// Changes the uplink's settings (spool size and policy, proxy) before it starts.
    pub fn uplink_settings(mut self, adjust: impl FnOnce(&mut UplinkSettings) + 'static) -> Self {
        self.adjust = Some(Box::new(adjust));
        self
    }

    /// How often the rig's waits look at the emulator: less often leaves the cores to the
    /// processes under test when every look decodes thousands of rows.
    pub fn polling_every(mut self, interval: Duration) -> Self {
        self.poll = interval;
        self
    }

    /// Starts the emulator (unless given or offline) and the uplink, and waits until the uplink
    /// is ready.
    pub async fn start(self) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (zerobus, forward_to) = match self.cloud {
            Cloud::Emulator => (Some(start_emulator().await.unwrap()), None),
            Cloud::Given(zerobus) => (Some(*zerobus), None),
            Cloud::External(settings) => (None, Some(*settings)),
            Cloud::Offline => (None, None),
        };
        let mut settings = uplink_settings(dir.path());
        settings.zerobus = zerobus.as_ref().map(zerobus_settings).or(forward_to);
        if let Some(adjust) = self.adjust {
            adjust(&mut settings);
        }
        let log = self.log_uplink.then(|| uplink_log(dir.path()));
        let uplink = Uplink::start_logging_to(settings, log.as_deref())
            .await
            .unwrap();
        Rig {
            dir,
            uplink,
            workers: Vec::new(),
            zerobus,
            poll: self.poll,
        }
    }
}

fn uplink_log(dir: &Path) -> PathBuf {
    dir.join("uplink.log")
}

/// Processes started the way the supervisor starts them, and the emulator they forward to.
#[derive(Debug)]
pub struct Rig {
    /// Holds the uplink's spool and key, the workers' state directory ([`Rig::state_dir`]) and
    /// whatever files a test adds.
    pub dir: tempfile::TempDir,
    /// The uplink.
    pub uplink: Uplink,
    /// Every worker started, in order: [`Rig::worker`] returns the index of the new one.
    pub workers: Vec<Process>,
    zerobus: Option<Emulator>,
    poll: Duration,
}

impl Rig {
    /// A new emulator and an uplink forwarding to it.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A rig with other options.
    pub fn builder() -> RigBuilder {
        RigBuilder {
            cloud: Cloud::Emulator,
            log_uplink: false,
            poll: POLL,
            adjust: None,
        }
    }

    /// The emulator the uplink forwards to.
    pub fn zerobus(&self) -> &Emulator {
        self.zerobus
            .as_ref()
            .expect("an offline rig, or one forwarding elsewhere, has no emulator here")
    }

    /// The state directory every worker is given in its settings.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the uplink's log lines go when the rig was built with
    /// [`RigBuilder::log_uplink`].
    pub fn uplink_log(&self) -> PathBuf {
        uplink_log(self.dir.path())
    }

    /// Grants `source` the `table` with its `[[sources]]` entry `config` (TOML) and starts the
    /// table's protocol worker for it; returns its index in [`Rig::workers`].
    pub async fn worker(&mut self, source: &str, table: Table, config: &str) -> usize {
        self.worker_with_env(source, table, config, &[]).await
    }

    /// Like [`Rig::worker`], with extra environment variables.
    pub async fn worker_with_env(
        &mut self,
        source: &str,
        table: Table,
        config: &str,
        env: &[(&str, &str)],
    ) -> usize {
        self.start_worker(worker_binary(table), source, table, config, env)
            .await
    }

    /// Like [`Rig::worker`] with the test worker in place of the protocol worker.
    pub async fn test_worker(&mut self, source: &str, table: Table, config: &str) -> usize {
        self.start_worker(TEST_WORKER, source, table, config, &[])
            .await
    }

    async fn start_worker(
        &mut self,
        binary: &str,
        source: &str,
        table: Table,
        config: &str,
        env: &[(&str, &str)],
    ) -> usize {
        // The settings name the state directory, `state_dir()`, as the supervisor's do.
        let settings = self.uplink.grant(source, table, config).await.unwrap();
        self.workers
            .push(start_worker_with_env(binary, settings, env).await.unwrap());
        self.workers.len() - 1
    }

    /// The rows of `source` in `table`, in arrival order.
    pub fn rows(&self, table: Table, source: &str) -> Vec<Json> {
        of_source(self.zerobus().state().rows(table_name(table)), source)
    }

    /// The status rows of `source`, in arrival order.
    pub fn status(&self, source: &str) -> Vec<Json> {
        self.rows(Table::Status, source)
    }

    /// The status rows `source`'s worker wrote itself (not the process starts), in arrival
    /// order.
    pub fn worker_status(&self, source: &str) -> Vec<Json> {
        self.status(source)
            .into_iter()
            .filter(|r| !is_start(r))
            .collect()
    }

    /// The status rows of `source` reporting `event` (`connected`, `gap`, ...).
    pub fn events(&self, source: &str, event: &str) -> Vec<Json> {
        self.status(source)
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// The events of `source`'s status rows, in order.
    pub fn event_names(&self, source: &str) -> Vec<String> {
        event_names(&self.status(source))
    }

    /// Polls `condition` on the emulator until it holds or `timeout` passes; whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&SimState) -> bool,
    ) -> bool {
        let state = self.zerobus().state();
        poll_until(self.poll, timeout, || condition(state)).await
    }

    /// Waits until the rows of `source` in `table` satisfy `done` and returns them; fails
    /// naming `what` was awaited, with the rows' count and the source's status rows.
    pub async fn wait_rows(
        &self,
        table: Table,
        source: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Json]) -> bool,
    ) -> Vec<Json> {
        let name = table_name(table);
        let arrived = self
            .wait_until(timeout, |s| done(&of_source(s.rows(name), source)))
            .await;
        let rows = self.rows(table, source);
        assert!(
            arrived,
            "{source}: {what} within {timeout:?}; {} rows in {name}, status rows {:#?}",
            rows.len(),
            self.status(source)
        );
        rows
    }

    /// Waits until the status rows of `source` satisfy `done` and returns them; fails naming
    /// `what` was awaited, with the status rows that arrived.
    pub async fn wait_status(
        &self,
        source: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Json]) -> bool,
    ) -> Vec<Json> {
        let arrived = self
            .wait_until(timeout, |s| {
                done(&of_source(s.rows(table_name(Table::Status)), source))
            })
            .await;
        let status = self.status(source);
        assert!(
            arrived,
            "{source}: {what} within {timeout:?}; status rows {status:#?}"
        );
        status
    }

    /// The events of `source` ([`event_names`]) once it wrote at least `n` (the status table
    /// is its own stream: its rows may arrive after later data rows).
    pub async fn wait_events(&self, source: &str, n: usize, timeout: Duration) -> Vec<String> {
        let what = format!("{n} status rows of the worker's own");
        let status = self
            .wait_status(source, &what, timeout, |rows| event_names(rows).len() >= n)
            .await;
        event_names(&status)
    }

    /// Waits for a status row of `source` reporting `event` whose detail contains `needle`,
    /// and returns the first one.
    pub async fn wait_event(
        &self,
        source: &str,
        event: &str,
        needle: &str,
        timeout: Duration,
    ) -> Json {
        let matches = |r: &&Json| {
            r["event"] == event && r["detail"].as_str().is_some_and(|d| d.contains(needle))
        };
        let what = format!("a {event:?} status row containing {needle:?}");
        let status = self
            .wait_status(source, &what, timeout, |rows| {
                rows.iter().any(|r| matches(&r))
            })
            .await;
        status.iter().find(matches).cloned().unwrap()
    }

    /// Whether worker `index` still runs.
    pub fn alive(&mut self, index: usize) -> bool {
        matches!(self.workers[index].child.try_wait(), Ok(None))
    }

    /// Whether every worker still runs.
    pub fn workers_alive(&mut self) -> bool {
        (0..self.workers.len()).all(|i| self.alive(i))
    }

    /// SIGKILLs every worker and the uplink, and keeps the directory: the spool can be opened.
    pub async fn kill_all(&mut self) {
        for worker in &mut self.workers {
            worker.kill().await;
        }
        self.uplink.process.kill().await;
    }

    /// SIGKILLs every process and removes the directory.
    pub async fn stop(mut self) {
        self.kill_all().await;
    }
}
