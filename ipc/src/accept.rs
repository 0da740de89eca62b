//! What every accept loop of the connector does when `accept` fails.

use std::{io, time::Duration};

use crate::Backoff;

/// Paces an accept loop through failures (EMFILE and ENFILE while descriptors are exhausted,
/// ECONNABORTED, a peer-credential read that failed): the loop pauses, with a delay that grows
/// from 10 ms to 1 s while the failures go on, and carries on. It never ends the loop and never
/// spins. One log line at the start of a run of failures and one when accepting works again.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    backoff: Backoff,
    failures: u64,
}

impl AcceptErrors {
    /// For the listener named `listener` in log lines.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            failures: 0,
        }
    }

    /// `accept` failed: logs the first failure of a run and waits before the next attempt.
    pub async fn failed(&mut self, error: &io::Error) {
        if self.failures == 0 {
            tracing::error!(listener = self.listener, error = %error,
                "Cannot accept connections; pausing and retrying (are descriptors exhausted?).");
        }
        self.failures += 1;
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    /// `accept` worked: ends a run of failures.
    pub fn accepted(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                listener = self.listener,
                failures = self.failures,
                "Accepting connections again."
            );
            self.failures = 0;
            self.backoff.reset();
        }
    }
}
