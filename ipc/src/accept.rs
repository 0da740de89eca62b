//! What every accept loop of the connector does between `accept` and serving a connection.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Backoff, LogGate};

/// Admits connections to one listener: at most `limit` at once (one more is closed at once,
/// with a warning at most once a minute), and through `accept` failures (EMFILE and ENFILE
/// while descriptors are exhausted, ECONNABORTED, a peer-credential read that failed) by
/// pausing, with a delay that grows from 10 ms to 1 s while the failures go on. It never ends
/// the loop and never spins. One log line at the start of a run of failures and one when
/// accepting works again.
#[derive(Debug)]
pub struct Admission {
    listener: &'static str,
    permits: Arc<Semaphore>,
    limit: usize,
    backoff: Backoff,
    failures: u64,
    refused: LogGate,
}

impl Admission {
    /// For the listener named `listener` in log lines, admitting `limit` connections at once.
    pub fn new(listener: &'static str, limit: usize) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            failures: 0,
            refused: LogGate::default(),
        }
    }

    /// The next connection `accept` yields that fits under the limit, with the permit it holds
    /// until dropped.
    pub async fn admit<T, F>(&mut self, mut accept: impl FnMut() -> F) -> (T, OwnedSemaphorePermit)
    where
        F: Future<Output = io::Result<T>>,
    {
        loop {
            let connection = match accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    self.failed(&error).await;
                    continue;
                }
            };
            self.accepted();
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => return (connection, permit),
                Err(_) => {
                    if let Some(suppressed) = self.refused.open(tokio::time::Instant::now()) {
                        tracing::warn!(
                            listener = self.listener,
                            limit = self.limit,
                            suppressed,
                            "Too many connections at once; closed a new one."
                        );
                    }
                }
            }
        }
    }

    async fn failed(&mut self, error: &io::Error) {
        if self.failures == 0 {
            tracing::error!(listener = self.listener, error = %error,
                "Cannot accept connections; pausing and retrying (are descriptors exhausted?).");
        }
        self.failures += 1;
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    fn accepted(&mut self) {
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
