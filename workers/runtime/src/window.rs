//! The worker's side of the data protocol as a state machine without I/O (rumqttc's `state.rs`
//! is the model): sequence numbers, the window of records pushed but not yet durable, which of
//! them still have to be sent on the current connection and in what batches, what an ack
//! releases, and what is sent again after a reconnect. The connection task in `uplink.rs` only
//! moves bytes and time in and out of it.
//!
//! Invariants: records are held in increasing `seq` order with no gaps; the first `sent` of
//! them went out on the current connection; a record leaves only when the uplink says it is
//! durable (an `Ack` on this connection, or the `Welcome` of a new one).

use std::collections::VecDeque;

use iot_connector_proto::{Detail, Record, Value};

/// Batch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Records per batch at most.
    pub max_batch: usize,
    /// Approximate bytes per batch at most (well under the IPC frame limit).
    pub max_batch_bytes: usize,
}

/// The uplink acknowledged a record that was never sent on this connection: it is not the
/// uplink this worker talks to, or it is broken. The connection is dropped and the window
/// resent on the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the uplink acknowledged seq {up_to}, but only seq {sent:?} and before were sent")]
pub(crate) struct AckBeyondSent {
    /// What the ack claimed.
    pub up_to: u64,
    /// The last sequence number sent on this connection.
    pub sent: Option<u64>,
}

/// Hands out sequence numbers: per source, increasing, continuing after the uplink's last
/// durable one across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequence {
    next: u64,
}

impl Sequence {
    /// Starts after `last_durable` (at 1 for a source the spool has never seen).
    pub(crate) fn after(last_durable: Option<u64>) -> Self {
        Self {
            next: last_durable.map_or(1, |s| s + 1),
        }
    }

    /// The number the next record gets.
    pub(crate) fn peek(self) -> u64 {
        self.next
    }

    /// Takes the next number.
    pub(crate) fn take(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        seq
    }
}

/// Records pushed and not yet durable.
#[derive(Debug)]
pub(crate) struct Window {
    limits: Limits,
    records: VecDeque<Record>,
    /// How many of `records` (from the front) were sent on the current connection.
    sent: usize,
}

impl Window {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            records: VecDeque::new(),
            sent: 0,
        }
    }

    /// Takes a pushed record (they arrive in sequence order).
    pub(crate) fn push(&mut self, record: Record) {
        debug_assert!(self.records.back().is_none_or(|last| last.seq < record.seq));
        self.records.push_back(record);
    }

    /// Whether nothing waits for durability.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records held, sent or not.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Records not yet sent on this connection.
    pub(crate) fn unsent(&self) -> usize {
        self.records.len() - self.sent
    }

    /// Whether a full batch waits to be sent.
    pub(crate) fn has_full_batch(&self) -> bool {
        self.unsent() >= self.limits.max_batch
    }

    /// The next batch to send, marked sent: a full one (by count or bytes), or when `flush`
    /// whatever is left. A record larger than the byte limit goes alone.
    pub(crate) fn next_batch(&mut self, flush: bool) -> Option<Vec<Record>> {
        let mut bytes = 0;
        let mut count = 0;
        let mut full = false;
        for record in self.records.iter().skip(self.sent) {
            let len = approx_len(record);
            if count == self.limits.max_batch
                || (count > 0 && bytes + len > self.limits.max_batch_bytes)
            {
                full = true;
                break;
            }
            bytes += len;
            count += 1;
        }
        full |= count == self.limits.max_batch || bytes >= self.limits.max_batch_bytes;
        if count == 0 || !(full || flush) {
            return None;
        }
        let batch = self
            .records
            .iter()
            .skip(self.sent)
            .take(count)
            .cloned()
            .collect();
        self.sent += count;
        Some(batch)
    }

    /// The uplink holds everything up to `up_to` durably; returns how many records that
    /// released.
    pub(crate) fn acked(&mut self, up_to: u64) -> Result<usize, AckBeyondSent> {
        let last_sent = self
            .sent
            .checked_sub(1)
            .and_then(|i| self.records.get(i))
            .map(|r| r.seq);
        if last_sent.is_none_or(|sent| up_to > sent) && self.front_seq().is_some_and(|f| up_to >= f)
        {
            return Err(AckBeyondSent {
                up_to,
                sent: last_sent,
            });
        }
        Ok(self.release_through(up_to))
    }

    /// A new connection's `Welcome`: everything up to `last_durable` is durable, everything
    /// else is sent again, from the oldest. Returns how many records that released.
    pub(crate) fn reconnected(&mut self, last_durable: Option<u64>) -> usize {
        self.sent = 0;
        last_durable.map_or(0, |up_to| self.release_through(up_to))
    }

    fn front_seq(&self) -> Option<u64> {
        self.records.front().map(|r| r.seq)
    }

    fn release_through(&mut self, up_to: u64) -> usize {
        let mut released = 0;
        while self.front_seq().is_some_and(|seq| seq <= up_to) {
            self.records.pop_front();
            released += 1;
        }
        self.sent = self.sent.saturating_sub(released);
        released
    }
}

/// A cheap upper estimate of a record's encoded size, to keep batches under the frame limit.
pub(crate) fn approx_len(record: &Record) -> usize {
    let detail = match &record.detail {
        Detail::Opcua(d) => {
            d.endpoint.len()
                + d.node_id.len()
                + d.namespace_uri.len()
                + d.browse_path.len()
                + d.display_name.len()
        }
        Detail::Mqtt(d) => {
            d.broker.len()
                + d.topic.len()
                + d.payload.len()
                + d.payload_format.len()
                + d.parse_error.as_ref().map_or(0, String::len)
        }
        Detail::Modbus(d) => {
            d.device.len()
                + d.register_kind.len()
                + d.tag_name.len()
                + d.data_type.len()
                + d.raw.len()
                + d.unit.len()
        }
        Detail::Status(d) => d.detail.len(),
    };
    let value = match &record.value {
        Value::Str(s) | Value::Json(s) => s.len(),
        Value::Bytes(b) => b.len(),
        _ => 0,
    };
    64 + detail + value
}

#[cfg(test)]
mod tests {
    use iot_connector_proto::{MqttDetail, Quality};

    use super::*;

    fn record(seq: u64, payload_bytes: usize) -> Record {
        Record {
            seq,
            event_time_us: 0,
            ingest_time_us: 0,
            quality: Quality::Good,
            value: Value::Null,
            detail: Detail::Mqtt(MqttDetail {
                payload: vec![0; payload_bytes],
                ..Default::default()
            }),
        }
    }

    fn window(
        max_batch: usize,
        max_batch_bytes: usize,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Window {
        let mut window = Window::new(Limits {
            max_batch,
            max_batch_bytes,
        });
        for seq in seqs {
            window.push(record(seq, 0));
        }
        window
    }

    fn seqs(batch: &[Record]) -> Vec<u64> {
        batch.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn sequence_numbers_continue_after_the_last_durable_one() {
        assert_eq!(Sequence::after(None).peek(), 1);
        let mut sequence = Sequence::after(Some(41));
        assert_eq!(
            (sequence.take(), sequence.take(), sequence.peek()),
            (42, 43, 44)
        );
    }

    #[test]
    fn only_full_batches_go_out_until_a_flush() {
        let mut w = window(4, 1 << 20, 1..=10);
        assert_eq!(seqs(&w.next_batch(false).unwrap()), [1, 2, 3, 4]);
        assert_eq!(seqs(&w.next_batch(false).unwrap()), [5, 6, 7, 8]);
        assert!(
            w.next_batch(false).is_none(),
            "two records are not a full batch"
        );
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [9, 10]);
        assert!(w.next_batch(true).is_none(), "everything is sent");
        assert_eq!((w.len(), w.unsent()), (10, 0));
    }

    #[test]
    fn batches_stay_under_the_byte_limit_and_an_oversized_record_goes_alone() {
        let mut w = Window::new(Limits {
            max_batch: 100,
            max_batch_bytes: 1000,
        });
        for (seq, bytes) in [(1, 300), (2, 300), (3, 300), (4, 5000), (5, 10)] {
            w.push(record(seq, bytes));
        }
        assert_eq!(seqs(&w.next_batch(false).unwrap()), [1, 2]);
        assert_eq!(seqs(&w.next_batch(false).unwrap()), [3]);
        assert_eq!(seqs(&w.next_batch(false).unwrap()), [4]);
        assert!(w.next_batch(false).is_none());
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [5]);
    }

    #[test]
    fn an_ack_releases_through_its_seq_and_keeps_the_rest() {
        let mut w = window(4, 1 << 20, 1..=6);
        w.next_batch(false);
        assert_eq!(w.acked(3), Ok(3));
        assert_eq!((w.len(), w.unsent()), (3, 2));
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [5, 6]);
    }

    #[test]
    fn an_ack_for_a_record_never_sent_is_refused() {
        let mut w = window(2, 1 << 20, 1..=4);
        w.next_batch(false);
        assert_eq!(
            w.acked(3),
            Err(AckBeyondSent {
                up_to: 3,
                sent: Some(2)
            })
        );
        assert_eq!(w.len(), 4, "nothing is released by a bad ack");
    }

    #[test]
    fn an_old_ack_after_a_newer_one_releases_nothing() {
        let mut w = window(2, 1 << 20, 1..=4);
        w.next_batch(false);
        w.next_batch(false);
        assert_eq!(w.acked(4), Ok(4));
        assert_eq!(w.acked(2), Ok(0));
        assert!(w.is_empty());
    }

    #[test]
    fn a_reconnect_resends_from_the_oldest_record_not_yet_durable() {
        let mut w = window(2, 1 << 20, 1..=6);
        w.next_batch(false);
        w.next_batch(false);
        w.next_batch(false);
        assert_eq!(w.acked(2), Ok(2));
        // The uplink made 3 durable before the connection broke; 4 to 6 are sent again.
        assert_eq!(w.reconnected(Some(3)), 1);
        assert_eq!(w.unsent(), 3);
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [4, 5]);
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [6]);
    }

    #[test]
    fn a_reconnect_to_an_empty_spool_resends_everything() {
        let mut w = window(8, 1 << 20, 1..=3);
        w.next_batch(true);
        assert_eq!(w.reconnected(None), 0);
        assert_eq!(seqs(&w.next_batch(true).unwrap()), [1, 2, 3]);
    }
}
