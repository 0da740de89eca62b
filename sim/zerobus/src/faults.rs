//! Scripted faults. A test changes them at run time through [`FaultsHandle`]; the servers read
//! them on every create, ingest request and token call. One-shot faults clear themselves when
//! they fire, so the SDK's automatic recovery meets a healthy server afterwards.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tonic::Code;

/// Every fault knob. `Faults::default()` is a healthy server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Refuse stream creation with this gRPC code (e.g. `Unavailable`, `Unauthenticated`).
    pub refuse_create: Option<Code>,
    /// How many creates to refuse before `refuse_create` clears itself; `None` refuses until
    /// the test clears it.
    pub refuse_create_times: Option<u32>,
    /// One-shot: fail one stream with `UNAVAILABLE` mid-way.
    pub drop_stream: Option<DropStream>,
    /// Hold every ack for this long before sending it (a slow server).
    pub ack_delay: Option<Duration>,
    /// One-shot: hold the next ack for this long (a stall).
    pub stall_once: Option<Duration>,
    /// Fail the stream with `INVALID_ARGUMENT` when a record whose decoded `record_id` field
    /// equals this string arrives; nothing from that request is acknowledged.
    pub poison_record_id: Option<String>,
    /// One-shot: rotate one stream with `CloseStreamSignal`, as the service does every ~15 min.
    pub rotate_stream: Option<RotateStream>,
    /// Answer every token request with this HTTP status (e.g. 401) instead of a token.
    pub oauth_status: Option<u16>,
    /// An outage: creates are refused with `UNAVAILABLE`, open streams fail with
    /// `UNAVAILABLE` at their next request, and the token endpoint answers 503.
    pub down: bool,
}

/// Fail a stream with `UNAVAILABLE` once it has received `after_requests` ingest requests.
///
/// The last `withhold_acks` of those requests are written (they appear in the rows) but never
/// acknowledged: that models acks lost in transit, which is what makes the SDK resend records
/// the service already has, i.e. duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropStream {
    /// Ingest requests (1-based, counted per stream) after which the stream fails.
    pub after_requests: u64,
    /// How many of the last requests before the failure get no ack.
    pub withhold_acks: u64,
}

/// Send `CloseStreamSignal{close_after}` once a stream has received `after_requests` ingest
/// requests, keep acknowledging, then end the stream with `OK` after `close_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateStream {
    /// Ingest requests (counted per stream) after which the signal is sent.
    pub after_requests: u64,
    /// The duration announced in the signal and waited before the stream ends.
    pub close_after: Duration,
}

/// What the drop fault decides for one ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropDecision {
    /// Acknowledge normally.
    Ack,
    /// Acknowledge, then fail the stream.
    AckThenDrop,
    /// Write without acknowledging.
    Withhold,
    /// Write without acknowledging, then fail the stream.
    WithholdThenDrop,
}

/// A shared, cloneable handle on the fault knobs.
#[derive(Debug, Clone, Default)]
pub struct FaultsHandle {
    inner: Arc<Mutex<Faults>>,
}

impl FaultsHandle {
    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes knobs in place: `emulator.faults().update(|f| f.down = true)`.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.lock());
    }

    /// A copy of the current knobs.
    pub fn snapshot(&self) -> Faults {
        self.lock().clone()
    }

    /// Back to a healthy server.
    pub fn clear(&self) {
        *self.lock() = Faults::default();
    }

    /// The code to refuse this create with, if any; counts down `refuse_create_times`.
    pub(crate) fn take_create_refusal(&self) -> Option<Code> {
        let mut faults = self.lock();
        if faults.down {
            return Some(Code::Unavailable);
        }
        let code = faults.refuse_create?;
        match faults.refuse_create_times {
            None => Some(code),
            Some(0) => {
                faults.refuse_create = None;
                faults.refuse_create_times = None;
                None
            }
            Some(n) => {
                if n == 1 {
                    faults.refuse_create = None;
                    faults.refuse_create_times = None;
                } else {
                    faults.refuse_create_times = Some(n - 1);
                }
                Some(code)
            }
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.lock().down
    }

    pub(crate) fn poison_record_id(&self) -> Option<String> {
        self.lock().poison_record_id.clone()
    }

    /// Decides the fate of the `request_number`-th (1-based) request of a stream.
    pub(crate) fn drop_decision(&self, request_number: u64) -> DropDecision {
        let mut faults = self.lock();
        let Some(drop) = faults.drop_stream else {
            return DropDecision::Ack;
        };
        let withhold = request_number > drop.after_requests.saturating_sub(drop.withhold_acks);
        let fail = request_number >= drop.after_requests;
        if fail {
            faults.drop_stream = None;
        }
        match (withhold, fail) {
            (false, false) => DropDecision::Ack,
            (false, true) => DropDecision::AckThenDrop,
            (true, false) => DropDecision::Withhold,
            (true, true) => DropDecision::WithholdThenDrop,
        }
    }

    /// How long to hold the next ack: the one-shot stall (consumed) plus the steady delay.
    pub(crate) fn take_ack_delay(&self) -> Duration {
        let mut faults = self.lock();
        let stall = faults.stall_once.take().unwrap_or_default();
        stall + faults.ack_delay.unwrap_or_default()
    }

    /// The rotation to start after the `request_number`-th request, if due (consumed).
    pub(crate) fn take_rotation(&self, request_number: u64) -> Option<Duration> {
        let mut faults = self.lock();
        let rotate = faults.rotate_stream?;
        if request_number < rotate.after_requests {
            return None;
        }
        faults.rotate_stream = None;
        Some(rotate.close_after)
    }

    /// The status the token endpoint must answer instead of a token, if any.
    pub(crate) fn oauth_failure(&self) -> Option<u16> {
        let faults = self.lock();
        if faults.down {
            Some(503)
        } else {
            faults.oauth_status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_withholds_the_last_acks_then_fails_once() {
        let handle = FaultsHandle::default();
        handle.update(|f| {
            f.drop_stream = Some(DropStream {
                after_requests: 4,
                withhold_acks: 2,
            })
        });
        let decisions: Vec<_> = (1..=5).map(|n| handle.drop_decision(n)).collect();
        assert_eq!(
            decisions,
            [
                DropDecision::Ack,
                DropDecision::Ack,
                DropDecision::Withhold,
                DropDecision::WithholdThenDrop,
                DropDecision::Ack,
            ]
        );
    }

    #[test]
    fn drop_without_withheld_acks_acks_the_last_request_before_failing() {
        let handle = FaultsHandle::default();
        handle.update(|f| {
            f.drop_stream = Some(DropStream {
                after_requests: 1,
                withhold_acks: 0,
            })
        });
        assert_eq!(handle.drop_decision(1), DropDecision::AckThenDrop);
    }

    #[test]
    fn counted_create_refusals_clear_themselves() {
        let handle = FaultsHandle::default();
        handle.update(|f| {
            f.refuse_create = Some(Code::Unavailable);
            f.refuse_create_times = Some(2);
        });
        assert_eq!(handle.take_create_refusal(), Some(Code::Unavailable));
        assert_eq!(handle.take_create_refusal(), Some(Code::Unavailable));
        assert_eq!(handle.take_create_refusal(), None);
        assert_eq!(handle.snapshot(), Faults::default());
    }

    #[test]
    fn down_refuses_creates_and_fails_token_calls() {
        let handle = FaultsHandle::default();
        handle.update(|f| f.down = true);
        assert_eq!(handle.take_create_refusal(), Some(Code::Unavailable));
        assert_eq!(handle.oauth_failure(), Some(503));
    }

    #[test]
    fn stall_fires_once_on_top_of_the_steady_delay() {
        let handle = FaultsHandle::default();
        handle.update(|f| {
            f.ack_delay = Some(Duration::from_millis(5));
            f.stall_once = Some(Duration::from_millis(100));
        });
        assert_eq!(handle.take_ack_delay(), Duration::from_millis(105));
        assert_eq!(handle.take_ack_delay(), Duration::from_millis(5));
    }
}
