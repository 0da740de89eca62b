//! Model-based test of the spool (Vector's `disk_v2/tests/model/`): random sequences of appends,
//! reads, acknowledged removals, dead letters and reopens run against the real spool (redb in a
//! temporary directory, encryption on) and against [`Model`], a few ordered maps that restate the
//! specification in `uplink/src/spool.rs`. After every operation both must agree on everything a
//! caller can observe: the rows and their positions, every source's sequence number, the sizes,
//! the dead letters, the exact [`AppendOutcome`], the status rows written for drops and the drops
//! not yet reported. Drops are reported with every commit (`report_drops_every(0)`), or never
//! (an interval longer than any run), so that the model needs no clock.
//!
//! Each full policy has its own test with a `max_bytes` small enough that it triggers often; a test
//! also fails if its policy never actually dropped, evicted or blocked, so that a change in the
//! generators cannot quietly turn it into a test of the happy path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use iot_connector_proto::{SpoolPolicy, Table};
use iot_connector_uplink::spool::{
    AppendOutcome, DeadLetter, Incoming, SealKey, Spool, SpoolStats, Spooled,
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

/// What AES-256-GCM adds to every row.
const TAG_LEN: u64 = 16;
const SOURCES: [&str; 3] = ["plc-a", "plc-b", "broker"];

/// One worker batch, with sequence numbers relative to what the source has sent so far.
#[derive(Debug, Clone)]
struct BatchSpec {
    source: usize,
    /// How far before the source's next unsent sequence number the batch starts: > 0 re-sends
    /// that many sequence numbers (a worker that reconnected before its ack arrived).
    rewind: u64,
    /// Sequence numbers skipped before the batch (a worker that lost records upstream).
    skip: u64,
    rows: Vec<(Table, usize)>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<BatchSpec>),
    Read {
        table: Table,
        /// `None`: from the start; otherwise any position handed out so far (or one past).
        after: Option<Index>,
        max_rows: usize,
        max_bytes: ByteLimit,
    },
    /// Acknowledged by Zerobus: removes the table's rows through a position that was read.
    RemoveThrough {
        table: Table,
        pick: Index,
    },
    /// Rejected by Zerobus for good: moves a row that was read.
    DeadLetter {
        table: Table,
        pick: Index,
    },
    /// Drop the spool and open it again from the same directory and key (a crash between calls:
    /// every call commits, so there is never an open transaction to lose).
    Reopen,
}

/// A read's byte limit.
#[derive(Debug, Clone)]
enum ByteLimit {
    Unlimited,
    Bytes(usize),
    /// Exactly the size of the first rows the read would return, to probe the boundary.
    RowsFrom(Index),
}

fn table() -> impl Strategy<Value = Table> {
    prop::sample::select(Table::ALL.to_vec())
}

fn batch() -> impl Strategy<Value = BatchSpec> {
    let row_size = prop_oneof![0usize..16, 16usize..320];
    (
        0..SOURCES.len(),
        prop_oneof![3 => Just(0u64), 1 => 1u64..4],
        prop_oneof![5 => Just(0u64), 1 => 1u64..3],
        prop::collection::vec((table(), row_size), 0..6),
    )
        .prop_map(|(source, rewind, skip, rows)| BatchSpec {
            source,
            rewind,
            skip,
            rows,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(batch(), 0..4).prop_map(Op::Append),
        3 => (
            table(),
            prop::option::weighted(0.5, any::<Index>()),
            1usize..8,
            prop_oneof![
                Just(ByteLimit::Unlimited),
                (0usize..600).prop_map(ByteLimit::Bytes),
                any::<Index>().prop_map(ByteLimit::RowsFrom),
            ],
        )
            .prop_map(|(table, after, max_rows, max_bytes)| Op::Read {
                table,
                after,
                max_rows,
                max_bytes,
            }),
        3 => (table(), any::<Index>()).prop_map(|(table, pick)| Op::RemoveThrough { table, pick }),
        1 => (table(), any::<Index>()).prop_map(|(table, pick)| Op::DeadLetter { table, pick }),
        1 => Just(Op::Reopen),
    ]
}

/// A case: the spool's limit and the operations.
fn case() -> impl Strategy<Value = (u64, Vec<Op>)> {
    (400u64..2500, prop::collection::vec(op(), 1..40))
}

/// The row a source sends with sequence number `seq`: recognisable, `size` bytes long.
fn row_bytes(source: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut row = format!("{source}#{seq}|").into_bytes();
    row.resize(size.max(row.len()), b'.');
    row.truncate(size);
    row
}

fn status_row(count: u64, policy: SpoolPolicy) -> Vec<u8> {
    format!("spool full: policy {policy:?} dropped {count} records").into_bytes()
}

/// `source: seq/table/bytes ...` for each batch, instead of pages of row bytes.
fn summary(batches: &[Incoming]) -> String {
    let batches: Vec<String> = batches
        .iter()
        .map(|b| {
            let rows: Vec<String> = b
                .rows
                .iter()
                .map(|(seq, table, row)| format!("{seq}/{}/{}", table.key(), row.len()))
                .collect();
            format!("{}: {}", b.source, rows.join(" "))
        })
        .collect();
    format!("[{}]", batches.join("; "))
}

fn sealed_len(row: &[u8]) -> u64 {
    row.len() as u64 + TAG_LEN
}

/// When the spool writes a status row for its drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reports {
    /// With every commit that finds drops to report.
    Always,
    /// Never within the run: they wait in the counter.
    Never,
}

impl Reports {
    fn every(self) -> Duration {
        match self {
            Self::Always => Duration::ZERO,
            Self::Never => Duration::MAX,
        }
    }
}

/// The specification, restated with ordered maps.
#[derive(Debug)]
struct Model {
    policy: SpoolPolicy,
    reports: Reports,
    /// Drops not yet in a status row.
    unreported: u64,
    max_bytes: u64,
    rows: [BTreeMap<u64, Vec<u8>>; Table::COUNT],
    sources: HashMap<String, u64>,
    live_bytes: u64,
    next_position: u64,
    dead: BTreeMap<u64, DeadLetter>,
}

impl Model {
    fn new(policy: SpoolPolicy, reports: Reports, max_bytes: u64) -> Self {
        Self {
            policy,
            reports,
            unreported: 0,
            max_bytes,
            rows: Default::default(),
            sources: HashMap::new(),
            live_bytes: 0,
            next_position: 0,
            dead: BTreeMap::new(),
        }
    }

    fn insert(&mut self, table: Table, row: Vec<u8>) {
        self.live_bytes += sealed_len(&row);
        self.rows[table.index()].insert(self.next_position, row);
        self.next_position += 1;
    }

    /// The oldest data row of any table, else the oldest status row.
    fn oldest(&self) -> Option<(Table, u64)> {
        let data = Table::ALL
            .into_iter()
            .filter(|t| *t != Table::Status)
            .filter_map(|t| self.rows[t.index()].keys().next().map(|p| (*p, t)))
            .min()
            .map(|(p, t)| (t, p));
        data.or_else(|| {
            self.rows[Table::Status.index()]
                .keys()
                .next()
                .map(|p| (Table::Status, *p))
        })
    }

    /// Evicts oldest-first until `live_bytes <= limit`; returns how many rows went.
    fn evict_down_to(&mut self, limit: u64) -> u64 {
        let mut evicted = 0;
        while self.live_bytes > limit {
            let (table, position) = self.oldest().expect("limit >= 0 is reached by then");
            let row = self.rows[table.index()].remove(&position).unwrap();
            self.live_bytes -= sealed_len(&row);
            evicted += 1;
        }
        evicted
    }

    /// One append call; also returns the drop count the status row it writes must carry (0: it
    /// writes none).
    fn append(&mut self, batches: &[Incoming]) -> (AppendOutcome, u64) {
        let mut outcome = AppendOutcome::default();
        let mut drops = 0;
        for batch in batches {
            let held = self.sources.get(&batch.source).copied();
            let fresh: Vec<_> = batch
                .rows
                .iter()
                .filter(|(seq, _, _)| held.is_none_or(|h| *seq > h))
                .cloned()
                .collect();
            let need: u64 = fresh.iter().map(|(_, _, row)| sealed_len(row)).sum();
            let room = self.max_bytes.saturating_sub(self.live_bytes);
            if need > self.max_bytes {
                // Can never fit, whatever is evicted or waited for: refused like drop_newest.
                outcome.dropped_newest += fresh.len() as u64;
                drops += fresh.len() as u64;
            } else if need == 0 || need <= room {
                self.store(&fresh, &mut outcome);
            } else {
                match self.policy {
                    SpoolPolicy::Block => break,
                    SpoolPolicy::DropNewest => {
                        outcome.dropped_newest += fresh.len() as u64;
                        drops += fresh.len() as u64;
                    }
                    SpoolPolicy::DropOldest => {
                        let evicted = self.evict_down_to(self.max_bytes - need);
                        outcome.evicted_oldest += evicted;
                        drops += evicted;
                        self.store(&fresh, &mut outcome);
                    }
                }
            }
            outcome.duplicates += (batch.rows.len() - fresh.len()) as u64;
            if let Some(max) = batch.rows.iter().map(|(seq, _, _)| *seq).max()
                && held.is_none_or(|h| max > h)
            {
                self.sources.insert(batch.source.clone(), max);
            }
            outcome.committed += 1;
        }
        self.unreported += drops;
        let reported = match self.reports {
            Reports::Always => std::mem::take(&mut self.unreported),
            Reports::Never => 0,
        };
        if reported > 0 {
            self.insert(Table::Status, status_row(reported, self.policy));
        }
        (outcome, reported)
    }

    fn store(&mut self, fresh: &[(u64, Table, Vec<u8>)], outcome: &mut AppendOutcome) {
        for (_, table, row) in fresh {
            self.insert(*table, row.clone());
            outcome.stored += 1;
        }
    }

    fn read(
        &self,
        table: Table,
        after: Option<u64>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Vec<Spooled> {
        let start = after.map_or(0, |a| a + 1);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (position, row) in self.rows[table.index()].range(start..) {
            if out.len() == max_rows || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += row.len();
            out.push(Spooled {
                position: *position,
                row: row.clone(),
            });
        }
        out
    }

    fn remove_through(&mut self, table: Table, position: u64) -> u64 {
        let kept = self.rows[table.index()].split_off(&(position + 1));
        let removed = std::mem::replace(&mut self.rows[table.index()], kept);
        self.live_bytes -= removed.values().map(|r| sealed_len(r)).sum::<u64>();
        removed.len() as u64
    }

    fn dead_letter(&mut self, table: Table, position: u64, reason: &str) {
        if let Some(row) = self.rows[table.index()].remove(&position) {
            self.live_bytes -= sealed_len(&row);
            self.dead.insert(
                position,
                DeadLetter {
                    position,
                    table,
                    reason: reason.to_owned(),
                    row: Some(row),
                },
            );
        }
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            live_bytes: self.live_bytes,
            rows: Table::ALL.map(|t| self.rows[t.index()].len() as u64),
            dead_letters: self.dead.len() as u64,
        }
    }
}

/// What a run of a policy's test went through, summed over its cases.
#[derive(Debug, Default)]
struct Coverage {
    appends_with_drops: Cell<u64>,
    evicted: Cell<u64>,
    dropped_newest: Cell<u64>,
    blocked_appends: Cell<u64>,
    duplicates: Cell<u64>,
    removed: Cell<u64>,
    dead_letters: Cell<u64>,
    reopens: Cell<u64>,
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

/// The real spool, its directory and key, and what the simulated workers and forwarder know.
struct Harness {
    dir: tempfile::TempDir,
    key_path: PathBuf,
    spool: Option<Spool>,
    model: Model,
    /// Per source, the highest sequence number it has sent.
    sent: [Option<u64>; SOURCES.len()],
    /// Per table, every position a read returned.
    read: [Vec<u64>; Table::COUNT],
}

fn open(dir: &Path, key_path: &Path, model: &Model) -> Spool {
    let key = SealKey::load_or_create(key_path).unwrap();
    let mut spool = Spool::open(dir, Some(key), model.max_bytes, model.policy).unwrap();
    spool.report_drops_every(model.reports.every());
    spool
}

impl Harness {
    fn new(policy: SpoolPolicy, reports: Reports, max_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("key").join("spool.key");
        let model = Model::new(policy, reports, max_bytes);
        let spool = open(&dir.path().join("spool"), &key_path, &model);
        Self {
            dir,
            key_path,
            spool: Some(spool),
            model,
            sent: [None; SOURCES.len()],
            read: Default::default(),
        }
    }

    fn spool(&self) -> &Spool {
        self.spool.as_ref().unwrap()
    }

    fn incoming(&mut self, specs: &[BatchSpec]) -> Vec<Incoming> {
        specs
            .iter()
            .map(|spec| {
                let source = SOURCES[spec.source];
                let sent = &mut self.sent[spec.source];
                let start = match *sent {
                    None => spec.skip,
                    Some(s) => (s + 1 + spec.skip).saturating_sub(spec.rewind),
                };
                let rows: Vec<_> = (start..)
                    .zip(&spec.rows)
                    .map(|(seq, (table, size))| (seq, *table, row_bytes(source, seq, *size)))
                    .collect();
                if let Some((last, _, _)) = rows.last() {
                    *sent = Some(sent.map_or(*last, |s| s.max(*last)));
                }
                Incoming {
                    source: source.to_owned(),
                    rows,
                }
            })
            .collect()
    }

    /// A position that a read of `table` returned and that is still in the table.
    fn read_position(&self, table: Table, pick: &Index) -> Option<u64> {
        let live: Vec<u64> = self.read[table.index()]
            .iter()
            .copied()
            .filter(|p| self.model.rows[table.index()].contains_key(p))
            .collect();
        (!live.is_empty()).then(|| *pick.get(&live))
    }

    fn apply(&mut self, op: &Op, coverage: &Coverage) -> Result<(), TestCaseError> {
        match op {
            Op::Append(specs) => {
                let batches = self.incoming(specs);
                let calls = RefCell::new(Vec::new());
                let record = |count, policy| {
                    calls.borrow_mut().push((count, policy));
                    status_row(count, policy)
                };
                let got = self.spool().append(&batches, &record).unwrap();
                let unreported_before = self.model.unreported;
                let (want, reported) = self.model.append(&batches);
                prop_assert_eq!(&got, &want, "append of {}", summary(&batches));
                let want_calls = if reported > 0 {
                    vec![(reported, self.model.policy)]
                } else {
                    vec![]
                };
                prop_assert_eq!(calls.into_inner(), want_calls, "status rows written");
                add(
                    &coverage.appends_with_drops,
                    u64::from(reported > 0 || self.model.unreported > unreported_before),
                );
                add(&coverage.evicted, got.evicted_oldest);
                add(&coverage.dropped_newest, got.dropped_newest);
                add(
                    &coverage.blocked_appends,
                    u64::from(got.committed < batches.len()),
                );
                add(&coverage.duplicates, got.duplicates);
            }
            Op::Read {
                table,
                after,
                max_rows,
                max_bytes,
            } => {
                let after = after.as_ref().map(|i| {
                    i.index(usize::try_from(self.model.next_position).unwrap() + 1) as u64
                });
                let max_bytes = match max_bytes {
                    ByteLimit::Unlimited => usize::MAX,
                    ByteLimit::Bytes(n) => *n,
                    ByteLimit::RowsFrom(pick) => {
                        let all = self.model.read(*table, after, usize::MAX, usize::MAX);
                        let count = pick.index(all.len() + 1);
                        all.iter().take(count).map(|s| s.row.len()).sum()
                    }
                };
                let got = self
                    .spool()
                    .read(*table, after, *max_rows, max_bytes)
                    .unwrap();
                let want = self.model.read(*table, after, *max_rows, max_bytes);
                prop_assert_eq!(
                    &got,
                    &want,
                    "read({:?}, {:?}, {}, {})",
                    table,
                    after,
                    max_rows,
                    max_bytes
                );
                self.read[table.index()].extend(got.iter().map(|s| s.position));
            }
            Op::RemoveThrough { table, pick } => {
                if let Some(position) = self.read_position(*table, pick) {
                    let got = self.spool().remove_through(*table, position).unwrap();
                    let want = self.model.remove_through(*table, position);
                    prop_assert_eq!(got, want, "rows removed through {}", position);
                    add(&coverage.removed, got);
                }
            }
            Op::DeadLetter { table, pick } => {
                if let Some(position) = self.read_position(*table, pick) {
                    let reason = format!("rejected row {position}");
                    self.spool()
                        .dead_letter(*table, position, &reason, None)
                        .unwrap();
                    self.model.dead_letter(*table, position, &reason);
                    add(&coverage.dead_letters, 1);
                }
            }
            Op::Reopen => {
                drop(self.spool.take());
                self.spool = Some(open(
                    &self.dir.path().join("spool"),
                    &self.key_path,
                    &self.model,
                ));
                add(&coverage.reopens, 1);
            }
        }
        self.check()
    }

    /// Everything observable agrees with the model, and invariant 4 holds.
    fn check(&self) -> Result<(), TestCaseError> {
        let spool = self.spool();
        prop_assert_eq!(
            spool.unreported_drops().unwrap(),
            self.model.unreported,
            "drops not yet reported"
        );
        for table in Table::ALL {
            let got = spool.read(table, None, usize::MAX, usize::MAX).unwrap();
            let want = self.model.read(table, None, usize::MAX, usize::MAX);
            prop_assert_eq!(got, want, "all rows of {:?}", table);
        }
        let stats = spool.stats().unwrap();
        prop_assert_eq!(&stats, &self.model.stats());
        for source in SOURCES {
            prop_assert_eq!(
                spool.last_seq(source).unwrap(),
                self.model.sources.get(source).copied(),
                "last_seq({})",
                source
            );
        }
        prop_assert_eq!(spool.last_seqs().unwrap(), self.model.sources.clone());
        let dead: Vec<_> = self.model.dead.values().cloned().collect();
        prop_assert_eq!(spool.dead_letters().unwrap(), dead);
        let status_bytes: u64 = self.model.rows[Table::Status.index()]
            .values()
            .map(|r| sealed_len(r))
            .sum();
        prop_assert!(
            stats.live_bytes - status_bytes <= self.model.max_bytes,
            "data rows hold {} bytes, over max_bytes {}",
            stats.live_bytes - status_bytes,
            self.model.max_bytes
        );
        Ok(())
    }
}

/// Runs the model test for one policy and returns what it went through.
fn run(policy: SpoolPolicy, reports: Reports) -> Coverage {
    let mut runner = TestRunner::new(Config {
        cases: 64,
        // Only `spool.rs` and this file are ours to write; a failure prints its minimal input.
        failure_persistence: None,
        ..Config::default()
    });
    let coverage = Coverage::default();
    let result = runner.run(&case(), |(max_bytes, ops)| {
        let mut harness = Harness::new(policy, reports, max_bytes);
        harness.check()?;
        for op in &ops {
            harness.apply(op, &coverage)?;
        }
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (max_bytes, ops))) => {
            panic!("{reason}\nminimal failing case: max_bytes {max_bytes}, ops {ops:#?}")
        }
        Err(e) => panic!("{e}"),
    }
    coverage
}

fn assert_common(coverage: &Coverage) {
    assert!(coverage.duplicates.get() > 0, "{coverage:?}");
    assert!(coverage.removed.get() > 0, "{coverage:?}");
    assert!(coverage.dead_letters.get() > 0, "{coverage:?}");
    assert!(coverage.reopens.get() > 0, "{coverage:?}");
}

#[test]
fn spool_matches_model_under_drop_oldest() {
    let coverage = run(SpoolPolicy::DropOldest, Reports::Always);
    assert_common(&coverage);
    assert!(coverage.evicted.get() > 0, "{coverage:?}");
    assert!(coverage.appends_with_drops.get() > 0, "{coverage:?}");
    assert_eq!(coverage.blocked_appends.get(), 0, "{coverage:?}");
}

#[test]
fn spool_matches_model_under_drop_newest() {
    let coverage = run(SpoolPolicy::DropNewest, Reports::Always);
    assert_common(&coverage);
    assert!(coverage.dropped_newest.get() > 0, "{coverage:?}");
    assert!(coverage.appends_with_drops.get() > 0, "{coverage:?}");
    assert_eq!(coverage.evicted.get(), 0, "{coverage:?}");
    assert_eq!(coverage.blocked_appends.get(), 0, "{coverage:?}");
}

#[test]
fn spool_matches_model_under_block() {
    let coverage = run(SpoolPolicy::Block, Reports::Always);
    assert_common(&coverage);
    assert!(coverage.blocked_appends.get() > 0, "{coverage:?}");
    assert_eq!(coverage.evicted.get(), 0, "{coverage:?}");
}

#[test]
fn drops_not_yet_due_for_a_report_are_all_in_the_counter() {
    for policy in [SpoolPolicy::DropOldest, SpoolPolicy::DropNewest] {
        let coverage = run(policy, Reports::Never);
        assert_common(&coverage);
        assert!(coverage.appends_with_drops.get() > 0, "{coverage:?}");
    }
}
