//! Group commit: one thread owns the spool's write path. It takes every batch queued since its
//! last commit, stores them in one durable transaction, and only then completes their
//! acknowledgements. While one fsync runs, the next group queues up.

use std::{
    collections::VecDeque,
    sync::{Arc, mpsc},
    time::Duration,
};

use iot_connector_ipc::{Backoff, LogGate};
use iot_connector_proto::{SpoolPolicy, StatusEvent, Table};
use tokio::sync::{Notify, oneshot};

use crate::{
    UPLINK_SOURCE,
    spool::{Incoming, Spool},
    stats::Stats,
};

/// Batches per commit at most, so that one commit's latency stays bounded.
const MAX_GROUP: usize = 256;
/// How often a `block`ed group retries while the spool is full; the first pause after a failed
/// commit.
const BLOCKED_RETRY: Duration = Duration::from_millis(50);
/// The longest pause between attempts while commits fail (a full disk, a failing device).
const FAILED_RETRY_MAX: Duration = Duration::from_secs(2);

/// A request to the writer thread.
#[derive(Debug)]
pub enum WriterRequest {
    /// Store a batch; the reply comes after the durable commit.
    Append(Incoming, oneshot::Sender<Result<(), String>>),
    /// Reply with the source's last durable sequence number once everything queued earlier is
    /// committed.
    Barrier(String, oneshot::Sender<Result<Option<u64>, String>>),
    /// Store status rows the uplink writes itself (process starts), in order with the rest.
    Status(Vec<Vec<u8>>),
}

/// Runs the writer until every sender is gone. `committed` is notified after each commit.
pub fn run(
    spool: Arc<Spool>,
    connector_id: String,
    requests: mpsc::Receiver<WriterRequest>,
    committed: Arc<Notify>,
    stats: Arc<Stats>,
) {
    let status_row = move |count: u64, policy: SpoolPolicy| {
        tracing::error!(count, ?policy, "Spool full: records dropped.");
        let detail = format!("spool full: policy {policy:?} dropped {count} records");
        crate::status_row(&connector_id, StatusEvent::Dropped, detail, count)
    };
    // The uplink's own rows go in as a batch of its own "source", numbered after the last one
    // stored, so that the spool's re-send check never mistakes them for duplicates.
    let mut own_seq = spool.last_seq(UPLINK_SOURCE).ok().flatten().unwrap_or(0);
    let mut own = |request| match request {
        WriterRequest::Status(rows) => {
            let rows = rows
                .into_iter()
                .map(|row| {
                    own_seq += 1;
                    (own_seq, Table::Status, row)
                })
                .collect();
            let source = UPLINK_SOURCE.to_owned();
            // Nobody waits for this commit.
            WriterRequest::Append(Incoming { source, rows }, oneshot::channel().0)
        }
        other => other,
    };
    let mut pending: VecDeque<WriterRequest> = VecDeque::new();
    let mut failures = LogGate::default();
    let mut retry = Backoff::new(BLOCKED_RETRY, FAILED_RETRY_MAX);
    loop {
        if pending.is_empty() {
            match requests.recv() {
                Ok(request) => pending.push_back(own(request)),
                Err(_) => return,
            }
        }
        while pending.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(request) => pending.push_back(own(request)),
                Err(_) => break,
            }
        }
        let outcome = commit_group(&spool, &mut pending, &status_row, &stats, &mut failures);
        committed.notify_waiters();
        if outcome == Group::Failed {
            // redb takes no transaction after an I/O error until the file is opened again;
            // the refused batches come back from their workers meanwhile.
            if let Err(e) = spool.reopen()
                && let Some(suppressed) = failures.open(tokio::time::Instant::now())
            {
                tracing::error!(error = %e, suppressed, "Cannot open the spool again yet.");
            }
            std::thread::sleep(retry.next_delay());
            while let Ok(request) = requests.try_recv() {
                pending.push_back(own(request));
            }
            continue;
        }
        retry.reset();
        if outcome == Group::Blocked {
            // `block` policy and the spool is full: wait for the forwarder to free space, then
            // retry the same group, in order, before anything newer.
            std::thread::sleep(BLOCKED_RETRY);
            while let Ok(request) = requests.try_recv() {
                pending.push_back(own(request));
            }
        }
    }
}

/// What became of one group.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// Committed, its barrier answered.
    Done,
    /// The spool is full under `block`: some batches wait for room.
    Blocked,
    /// The commit failed: every batch was refused.
    Failed,
}

/// Commits the appends at the front of `pending` up to the first barrier and answers that
/// barrier.
fn commit_group(
    spool: &Spool,
    pending: &mut VecDeque<WriterRequest>,
    status_row: &dyn Fn(u64, SpoolPolicy) -> Vec<u8>,
    stats: &Stats,
    failures: &mut LogGate,
) -> Group {
    let appends = pending
        .iter()
        .take_while(|r| matches!(r, WriterRequest::Append(..)))
        .count();
    let batches: Vec<Incoming> = pending
        .iter()
        .take(appends)
        .filter_map(|r| match r {
            WriterRequest::Append(batch, _) => Some(batch.clone()),
            WriterRequest::Barrier(..) | WriterRequest::Status(_) => None,
        })
        .collect();
    let (committed, failure) = if batches.is_empty() {
        (0, None)
    } else {
        match spool.append(&batches, status_row) {
            Ok(outcome) => {
                if outcome.duplicates > 0 {
                    tracing::debug!(duplicates = outcome.duplicates, "Dropped re-sent records.");
                }
                let rows: Vec<(&str, u64)> = batches
                    .iter()
                    .take(outcome.committed)
                    .map(|b| (b.source.as_str(), b.rows.len() as u64))
                    .collect();
                let dropped = outcome.dropped_newest + outcome.evicted_oldest;
                let blocked = outcome.committed < batches.len();
                stats.committed(&rows, dropped, outcome.duplicates, blocked);
                (outcome.committed, None)
            }
            Err(e) => {
                if let Some(suppressed) = failures.open(tokio::time::Instant::now()) {
                    tracing::error!(error = %e, suppressed, "Spool commit failed; batches are refused and will be re-sent.");
                }
                stats.commit_failed(format!("spool commit failed: {e}"));
                (appends, Some(e.to_string()))
            }
        }
    };
    let failed = failure.is_some();
    for request in pending.drain(..committed) {
        if let WriterRequest::Append(_, done) = request {
            let _ = done.send(failure.clone().map_or(Ok(()), Err));
        }
    }
    if failed {
        return Group::Failed;
    }
    if committed < appends {
        return Group::Blocked;
    }
    if matches!(pending.front(), Some(WriterRequest::Barrier(..)))
        && let Some(WriterRequest::Barrier(source, reply)) = pending.pop_front()
    {
        let _ = reply.send(spool.last_seq(&source).map_err(|e| e.to_string()));
    }
    Group::Done
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        io,
        sync::atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// An fsync that fails while `fail` is set.
    fn open_failing(fail: &Arc<AtomicBool>) -> Box<crate::spool::Opener> {
        let fail = Arc::clone(fail);
        crate::fault::opener(Arc::new(move || {
            if fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
            Ok(())
        }))
    }

    #[test]
    fn a_batch_whose_commit_failed_is_never_acknowledged_and_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let spool = Arc::new(
            Spool::open_with(
                &dir.path().join("spool"),
                None,
                1 << 30,
                SpoolPolicy::Block,
                open_failing(&fail),
            )
            .unwrap(),
        );
        let (requests, queue) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer = {
            let (spool, stats) = (Arc::clone(&spool), Arc::clone(&stats));
            std::thread::spawn(move || {
                run(spool, "c".into(), queue, Arc::new(Notify::new()), stats)
            })
        };
        let append = |seq: u64| {
            let (done, answer) = oneshot::channel();
            let rows = vec![(seq, Table::Modbus, vec![7_u8; 64])];
            let batch = Incoming {
                source: "plc".into(),
                rows,
            };
            requests.send(WriterRequest::Append(batch, done)).unwrap();
            answer.blocking_recv().unwrap()
        };
        assert_eq!(append(1), Ok(()));
        fail.store(true, Ordering::SeqCst);
        let refused = append(2);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("injected fsync failure")),
            "{refused:?}"
        );
        // Until the fault clears every attempt is refused, never acknowledged.
        assert!(append(2).is_err());
        fail.store(false, Ordering::SeqCst);
        assert_eq!(
            append(2),
            Ok(()),
            "the writer reopened the spool and goes on"
        );
        drop(requests);
        writer.join().unwrap();
        assert_eq!(spool.last_seq("plc").unwrap(), Some(2));
        assert_eq!(
            spool.stats().unwrap().rows
                [Table::ALL.iter().position(|t| *t == Table::Modbus).unwrap()],
            2,
            "the refused attempts left no row behind"
        );
    }
}
