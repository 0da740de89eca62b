//! What the supervisor knows about every process: the state its supervising task sets and the
//! last report its heartbeat carried. `status`, `/health` and `/metrics` are all views of it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use iot_connector_proto::{ChildReport, ProcessStatus, SourceState, UplinkReport, WorkerReport};

/// A report older than this no longer proves the uplink accepts writes (heartbeats come every
/// second).
pub const FRESH: Duration = Duration::from_secs(3);

/// The name the uplink goes by in `status` and `/health`.
pub const UPLINK: &str = "uplink";

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being started, or waiting to be restarted.
    Starting,
    /// Running and reporting.
    Running,
    /// Crashed too often; still retried at the slowest pace.
    Failed,
    /// Exited with the configuration error code; waits for a configuration change.
    WaitingForConfigChange,
    /// Stopped by the operator.
    Stopped,
}

/// One process.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The `protocol` key of a worker's source, or `uplink`.
    pub protocol: String,
    /// Its phase.
    pub phase: Phase,
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Restarts since the supervisor started (crashes, watchdog kills, operator restarts).
    pub restarts: u64,
    /// The supervisor's own last word about it (exit status, watchdog).
    pub last_exit: Option<String>,
    /// The last heartbeat's report.
    pub report: Option<ChildReport>,
    /// When that heartbeat came.
    pub heartbeat_at: Option<Instant>,
    /// Since when it has not been connected (never yet, or lost); `None` while connected.
    pub disconnected_since: Option<Instant>,
}

impl Entry {
    fn worker(&self) -> Option<&WorkerReport> {
        match &self.report {
            Some(ChildReport::Worker(w)) => Some(w),
            _ => None,
        }
    }

    /// Its state, in the words of `status`, `/health` and `/metrics`.
    pub fn state(&self) -> SourceState {
        match self.phase {
            Phase::Failed | Phase::WaitingForConfigChange => SourceState::Failed,
            Phase::Stopped => SourceState::Stopped,
            Phase::Starting => SourceState::Connecting,
            Phase::Running => match &self.report {
                Some(ChildReport::Worker(w)) if w.connected => SourceState::Connected,
                Some(ChildReport::Uplink(_)) => SourceState::Connected,
                _ => SourceState::Connecting,
            },
        }
    }

    /// The last problem: the child's own, else the supervisor's.
    pub fn last_error(&self) -> Option<String> {
        let reported = match &self.report {
            Some(ChildReport::Worker(w)) => w.last_error.clone(),
            Some(ChildReport::Uplink(u)) => u.last_error.clone(),
            None => None,
        };
        reported.or_else(|| self.last_exit.clone())
    }

    /// Records read from the source.
    pub fn records_read(&self) -> u64 {
        self.worker().map_or(0, |w| w.records_read)
    }

    /// How long it has been without a connection, unless the operator stopped it.
    pub fn not_connected_for(&self) -> Option<Duration> {
        (self.phase != Phase::Stopped)
            .then_some(self.disconnected_since)
            .flatten()
            .map(|since| since.elapsed())
    }

    fn track_connection(&mut self) {
        if self.state() == SourceState::Connected {
            self.disconnected_since = None;
        } else {
            self.disconnected_since.get_or_insert_with(Instant::now);
        }
    }
}

/// Every process, by name; the uplink under [`UPLINK`].
#[derive(Debug, Clone)]
pub struct Board {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// `[http] degraded_after`: how long a source may be without a connection before it makes
    /// the connector `degraded`.
    pub degraded_after: Duration,
}

impl Default for Board {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Board {
    /// An empty board.
    pub fn new(degraded_after: Duration) -> Self {
        Self {
            inner: Arc::default(),
            degraded_after,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> T {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut map)
    }

    /// Adds a process (or resets its entry's protocol when it already exists).
    pub fn add(&self, name: &str, protocol: &str) {
        self.with(|m| {
            m.entry(name.to_owned())
                .or_insert_with(|| Entry {
                    protocol: protocol.to_owned(),
                    phase: Phase::Starting,
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                    report: None,
                    heartbeat_at: None,
                    disconnected_since: Some(Instant::now()),
                })
                .protocol = protocol.to_owned();
        });
    }

    /// Forgets a process removed from the configuration.
    pub fn remove(&self, name: &str) {
        self.with(|m| m.remove(name));
    }

    /// Changes one entry.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        self.with(|m| {
            if let Some(entry) = m.get_mut(name) {
                f(entry);
                entry.track_connection();
            }
        });
    }

    /// A copy of every entry.
    pub fn snapshot(&self) -> BTreeMap<String, Entry> {
        self.with(|m| m.clone())
    }

    /// The uplink's last report, if it runs and reported within [`FRESH`].
    pub fn uplink(&self) -> Option<UplinkReport> {
        self.with(|m| match m.get(UPLINK) {
            Some(Entry {
                phase: Phase::Running,
                report: Some(ChildReport::Uplink(u)),
                heartbeat_at: Some(at),
                ..
            }) if at.elapsed() <= FRESH => Some(u.clone()),
            _ => None,
        })
    }

    /// `iot-connector status`: the uplink first, then the sources by name.
    pub fn status(&self) -> Vec<ProcessStatus> {
        let snapshot = self.snapshot();
        let uplink = snapshot.get(UPLINK).map(|e| (UPLINK, e));
        let sources = snapshot
            .iter()
            .filter(|(n, _)| n.as_str() != UPLINK)
            .map(|(n, e)| (n.as_str(), e));
        uplink
            .into_iter()
            .chain(sources)
            .map(|(name, e)| ProcessStatus {
                name: name.to_owned(),
                protocol: e.protocol.clone(),
                state: e.state(),
                waiting_for_config_change: e.phase == Phase::WaitingForConfigChange,
                pid: e.pid,
                restarts: e.restarts,
                records_read: e.records_read(),
                last_error: e.last_error(),
            })
            .collect()
    }
}
