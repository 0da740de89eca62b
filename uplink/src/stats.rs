//! The uplink's counters, shared by the writer, the connections and the forwarders, and sent to
//! the supervisor with every heartbeat.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use iot_connector_proto::{ACK_LATENCY_BUCKETS_MS, Table, UplinkReport};

use crate::spool::Spool;

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Stats {
    blocked: AtomicBool,
    failing_commits: AtomicBool,
    written: Mutex<BTreeMap<String, u64>>,
    dropped_full: AtomicU64,
    duplicates: AtomicU64,
    acked: [AtomicU64; Table::COUNT],
    reconnects: [AtomicU64; Table::COUNT],
    failing: [AtomicBool; Table::COUNT],
    dead_letters: AtomicU64,
    latency: Mutex<(Vec<u64>, f64)>,
    last_error: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn slot<T>(array: &[T; Table::COUNT], table: Table) -> Option<&T> {
    array.get(table.index())
}

impl Stats {
    /// A commit finished: rows per source, and what the policy did.
    pub fn committed(&self, rows: &[(&str, u64)], dropped: u64, duplicates: u64, blocked: bool) {
        let mut written = lock(&self.written);
        for (source, count) in rows {
            *written.entry((*source).to_owned()).or_default() += count;
        }
        self.dropped_full.fetch_add(dropped, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.blocked.store(blocked, Ordering::Relaxed);
        self.failing_commits.store(false, Ordering::Relaxed);
    }

    /// A commit failed.
    pub fn commit_failed(&self, error: String) {
        self.failing_commits.store(true, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error);
    }

    /// A batch was acknowledged to its worker this long after it arrived.
    pub fn ack_latency(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let mut histogram = lock(&self.latency);
        let (counts, sum) = &mut *histogram;
        if counts.is_empty() {
            counts.resize(ACK_LATENCY_BUCKETS_MS.len() + 1, 0);
        }
        let bucket = ACK_LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(ACK_LATENCY_BUCKETS_MS.len());
        if let Some(count) = counts.get_mut(bucket) {
            *count += 1;
        }
        *sum += ms;
    }

    /// Zerobus acknowledged `rows` rows of `table`.
    pub fn zerobus_acked(&self, table: Table, rows: u64) {
        if let Some(a) = slot(&self.acked, table) {
            a.fetch_add(rows, Ordering::Relaxed);
        }
        if let Some(f) = slot(&self.failing, table) {
            f.store(false, Ordering::Relaxed);
        }
    }

    /// A stream of `table` was opened.
    pub fn stream_opened(&self, table: Table) {
        if let Some(r) = slot(&self.reconnects, table) {
            r.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A stream of `table` failed.
    pub fn stream_failed(&self, table: Table, error: String) {
        if let Some(f) = slot(&self.failing, table) {
            f.store(true, Ordering::Relaxed);
        }
        *lock(&self.last_error) = Some(error);
    }

    /// A row went to the dead-letter store.
    pub fn dead_lettered(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    /// The heartbeat's content, with the spool's current sizes.
    pub fn report(&self, spool: &Spool) -> UplinkReport {
        let spool_stats = spool.stats();
        let (spool_bytes, spool_rows) = spool_stats
            .as_ref()
            .map_or((0, [0; Table::COUNT]), |s| (s.live_bytes, s.rows));
        let now = iot_connector_proto::now_us();
        let oldest_unacked_seconds = Table::ALL
            .iter()
            .filter_map(|t| {
                spool
                    .read(*t, None, 1, 1)
                    .ok()?
                    .first()
                    .and_then(|r| iot_connector_proto::table::row_time_us(*t, &r.row))
            })
            .min()
            .map_or(0.0, |oldest| (now - oldest).max(0) as f64 / 1e6);
        spool.note_row_count(spool_rows.iter().sum());
        let needs_attention = spool.set_aside_files().first().map(|file| {
            format!(
                "a spool file that did not open was moved aside to {}: its rows are not forwarded; inspect it, then delete it to clear this",
                file.display()
            )
        });
        let (ack_latency_counts, ack_latency_sum_ms) = lock(&self.latency).clone();
        UplinkReport {
            accepting: spool_stats.is_ok()
                && !self.blocked.load(Ordering::Relaxed)
                && !self.failing_commits.load(Ordering::Relaxed),
            spool_bytes,
            spool_rows,
            oldest_unacked_seconds,
            records_written: lock(&self.written)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            zerobus_acked: self.acked.each_ref().map(|a| a.load(Ordering::Relaxed)),
            zerobus_reconnects: self
                .reconnects
                .each_ref()
                .map(|a| a.load(Ordering::Relaxed)),
            zerobus_failing: self.failing.each_ref().map(|a| a.load(Ordering::Relaxed)),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            ack_latency_counts,
            ack_latency_sum_ms,
            last_error: lock(&self.last_error).clone(),
            needs_attention,
        }
    }
}
