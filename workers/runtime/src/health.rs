//! What the worker tells the supervisor with every heartbeat. One source per process, so one
//! board per process: protocol code reports into [`health()`] from wherever it is.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use iot_connector_proto::WorkerReport;
/// The worker's counters and state.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    records_read: AtomicU64,
    parse_errors: AtomicU64,
    reconnects: AtomicU64,
    unacked: AtomicU64,
    dropped: Mutex<BTreeMap<String, u64>>,
    last_error: Mutex<Option<String>>,
    certificate_days_left: Mutex<Option<i64>>,
    /// Wakes the heartbeat early when the connection state changes, so that status and health
    /// follow a reconnect at once rather than at the next tick.
    changed: tokio::sync::Notify,
}

/// This process's board.
pub fn health() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(Health::default)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Health {
    /// The session with the source is up (clears the last error) or down.
    pub fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::Relaxed);
        if connected {
            *lock(&self.last_error) = None;
        }
        if was != connected {
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection state changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The worker connected again after losing its source.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A problem the operator should see in `status` and `/health` until the next success.
    pub fn error(&self, message: impl Into<String>) {
        *lock(&self.last_error) = Some(message.into());
    }

    /// Values not taken, by reason (`window_full`, `missed_scan`, …).
    pub fn dropped(&self, reason: &str, count: u64) {
        *lock(&self.dropped).entry(reason.to_owned()).or_default() += count;
    }

    /// A payload that did not parse (it is still forwarded, flagged).
    pub fn parse_error(&self) {
        self.parse_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Days until the nearest certificate expiry the worker depends on.
    pub fn certificate_days_left(&self, days: i64) {
        *lock(&self.certificate_days_left) = Some(days);
    }

    pub(crate) fn pushed(&self) {
        self.records_read.fetch_add(1, Ordering::Relaxed);
        self.unacked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, count: u64) {
        self.unacked.fetch_sub(
            count.min(self.unacked.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    /// The heartbeat's content.
    pub fn report(&self) -> WorkerReport {
        WorkerReport {
            connected: self.connected.load(Ordering::Relaxed),
            records_read: self.records_read.load(Ordering::Relaxed),
            dropped: lock(&self.dropped)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            parse_errors: self.parse_errors.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            unacked: self.unacked.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            certificate_days_left: *lock(&self.certificate_days_left),
        }
    }
}
