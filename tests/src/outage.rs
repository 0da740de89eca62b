//! The compressed outage: Zerobus is down while two sources stream at a steady rate into a spool
//! far smaller than the outage's records, as a day-long outage fills a real one. The spool fills
//! and `drop_oldest` makes room; when Zerobus comes back the backlog drains while the sources
//! go on. At the end every record acknowledged to a source is either in the emulator's rows or
//! counted in the uplink's `dropped` status rows, and those say exactly what the uplink's
//! counter says. Used by `cargo bench --bench outage` (minutes, a spool of hundreds of MB) and,
//! short, by the test suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test harness: a failed step should fail loudly; JSON indexing gives null

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use iot_connector_proto::{SpoolPolicy, Table, UplinkReport};

use crate::{Rig, read_acked, start_emulator, table_name};

/// Sources streaming through the outage.
const SOURCES: u64 = 2;

/// How an outage run is set up.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long Zerobus is down.
    pub outage: Duration,
    /// Records a second, all sources together, before, during and after the outage.
    pub rate: u64,
    /// The spool's `max_bytes`.
    pub spool_bytes: u64,
}

/// What an outage run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Records the uplink acknowledged to the sources, up to the moment of the count.
    pub acked: u64,
    /// Of those, the ones in the emulator's rows.
    pub delivered: u64,
    /// Records the `dropped` status rows report.
    pub dropped_reported: u64,
    /// Records the uplink's counter says the full policy dropped.
    pub dropped_counted: u64,
    /// The `dropped` status rows that reported them.
    pub drop_rows: u64,
    /// The shortest time between two of them, seconds (a full spool reports once an interval).
    pub drop_rows_min_gap_s: Option<f64>,
    /// Acknowledged, not delivered, not reported.
    pub lost: u64,
    /// Delivered although counted as dropped: rows evicted while on their way to Zerobus,
    /// which then acknowledged them (at most the forwarder's window of ingest calls).
    pub evicted_in_flight: u64,
    /// Rows the spool held when Zerobus came back.
    pub backlog_rows: u64,
    /// From Zerobus's return to the first row it acknowledged (the forwarder's backoff).
    pub resume_s: f64,
    /// From Zerobus's return until the spool held no more than a second of live records.
    pub drain_s: f64,
    /// Rows Zerobus acknowledged per second while draining (backlog and live together).
    pub drain_records_per_second: f64,
    /// Records acknowledged to the sources per second while draining.
    pub live_records_per_second: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked={} delivered={} dropped_reported={} dropped_counted={} drop_rows={} lost={} evicted_in_flight={} backlog_rows={} \
             resume_s={:.1} drain_s={:.1} drain_records_per_second={:.0} live_records_per_second={:.0}",
            self.acked,
            self.delivered,
            self.dropped_reported,
            self.dropped_counted,
            self.drop_rows,
            self.lost,
            self.evicted_in_flight,
            self.backlog_rows,
            self.resume_s,
            self.drain_s,
            self.drain_records_per_second,
            self.live_records_per_second,
        )
    }
}

fn mqtt(counts: &[u64; Table::COUNT]) -> u64 {
    counts[Table::Mqtt.index()]
}

async fn heartbeat(rig: &mut Rig) -> UplinkReport {
    rig.uplink.report().await.expect("the uplink is alive")
}

/// Runs one outage of `settings.outage`.
pub async fn run(settings: Settings) -> Report {
    let zerobus = start_emulator().await.unwrap();
    zerobus.faults().update(|f| f.down = true);
    let spool_bytes = settings.spool_bytes;
    let mut rig = Rig::builder()
        .emulator(zerobus)
        .uplink_settings(move |s| {
            s.max_bytes = spool_bytes;
            s.full_policy = SpoolPolicy::DropOldest;
        })
        .start()
        .await;
    let acked_files: Vec<(String, PathBuf)> = (0..SOURCES)
        .map(|i| (format!("line{i}"), rig.dir.path().join(format!("acked{i}"))))
        .collect();
    for (source, acked) in &acked_files {
        let config = format!(
            "table = \"mqtt\"\nrate = {}\npayload_bytes = 64\nacked_file = {:?}\n",
            settings.rate / SOURCES,
            acked.display().to_string()
        );
        rig.test_worker(source, Table::Mqtt, &config).await;
    }
    let acked_now = || -> u64 {
        acked_files
            .iter()
            .map(|(_, f)| read_acked(f).unwrap_or(0))
            .sum()
    };
    let mut report = Report::default();

    let started = Instant::now();
    let mut last = heartbeat(&mut rig).await;
    while started.elapsed() < settings.outage {
        last = heartbeat(&mut rig).await;
    }
    report.backlog_rows = mqtt(&last.spool_rows);
    let (acked_at_return, zerobus_acked_at_return) = (acked_now(), mqtt(&last.zerobus_acked));
    rig.zerobus().faults().clear();
    let returned = Instant::now();
    let mut resume = None;
    loop {
        last = heartbeat(&mut rig).await;
        if resume.is_none() && mqtt(&last.zerobus_acked) > zerobus_acked_at_return {
            resume = Some(returned.elapsed());
        }
        if resume.is_some() && mqtt(&last.spool_rows) <= settings.rate {
            break;
        }
        assert!(
            returned.elapsed() < Duration::from_secs(3600),
            "the backlog did not drain in an hour: {} rows left",
            mqtt(&last.spool_rows)
        );
    }
    let drain = returned.elapsed().as_secs_f64();
    report.resume_s = resume.unwrap_or_default().as_secs_f64();
    report.drain_s = drain;
    report.drain_records_per_second =
        (mqtt(&last.zerobus_acked) - zerobus_acked_at_return) as f64 / drain;
    report.live_records_per_second = (acked_now() - acked_at_return) as f64 / drain;

    // The count: every record acknowledged so far is delivered or reported dropped. Drops
    // happen only while the spool is full, so none of the records still to come is one.
    let acked: Vec<(String, u64)> = acked_files
        .iter()
        .map(|(source, f)| (source.clone(), read_acked(f).unwrap_or(0)))
        .collect();
    report.acked = acked.iter().map(|(_, n)| n).sum();
    let expected: HashSet<String> = acked
        .iter()
        .flat_map(|(source, n)| (1..=*n).map(move |seq| format!("test-connector/{source}/{seq}")))
        .collect();
    let state = rig.zerobus().state().clone();
    let count = |s: &iot_connector_sim_zerobus::SimState| {
        let delivered = s
            .record_ids(table_name(Table::Mqtt))
            .into_iter()
            .filter(|id| expected.contains(id))
            .collect::<HashSet<_>>()
            .len() as u64;
        let reported: u64 = s
            .rows(table_name(Table::Status))
            .iter()
            .filter(|r| r["event"] == "dropped")
            .filter_map(|r| r["count"].as_u64())
            .sum();
        (delivered, reported)
    };
    state
        .wait_until(Duration::from_secs(600), |s| {
            let (delivered, reported) = count(s);
            delivered + reported >= report.acked
        })
        .await;
    (report.delivered, report.dropped_reported) = count(&state);
    let mut times: Vec<i64> = state
        .rows(table_name(Table::Status))
        .iter()
        .filter(|r| r["event"] == "dropped")
        .filter_map(|r| r["event_time"].as_i64())
        .collect();
    times.sort_unstable();
    report.drop_rows = times.len() as u64;
    report.drop_rows_min_gap_s = times
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .reduce(f64::min);
    report.dropped_counted = rig.uplink.report().await.map_or(0, |r| r.dropped_full);
    let accounted = report.delivered + report.dropped_reported;
    report.lost = report.acked.saturating_sub(accounted);
    report.evicted_in_flight = accounted.saturating_sub(report.acked);
    rig.stop().await;
    report
}
