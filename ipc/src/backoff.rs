//! Exponential backoff with full jitter, for every reconnect loop.

use std::time::{Duration, Instant};

/// Delays that double from `initial` up to `max`, each drawn uniformly from `[d/2, d]` so that
/// many workers that lost the same peer do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    /// When the current connection came up (see [`Backoff::connected`]).
    up_since: Option<Instant>,
}

impl Backoff {
    /// A backoff from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
            up_since: None,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| since.elapsed() >= self.max)
        {
            self.current = self.initial;
        }
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to `initial` after a success that proves the peer sound (an accepted connection).
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.up_since = None;
    }

    /// A connection to the peer is up. The delays start again from `initial` only once it has
    /// stayed up for `max`: a peer that accepts and then drops every connection (a broker that
    /// closes the session over a poison message, a server that fails right after the handshake)
    /// still gets growing pauses, not a reconnect loop at the shortest delay.
    pub fn connected(&mut self) {
        self.up_since = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100) && delays[0] >= Duration::from_millis(50));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_connection_dropped_at_once_keeps_the_delays_growing() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        for _ in 0..4 {
            backoff.next_delay();
            backoff.connected();
        }
        assert!(
            backoff.next_delay() >= Duration::from_secs(8),
            "the fifth pause after four short-lived connections is at least 16 s / 2"
        );
    }

    #[test]
    fn a_connection_that_stayed_up_starts_the_delays_again() {
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
        for _ in 0..4 {
            backoff.next_delay();
        }
        backoff.connected();
        std::thread::sleep(Duration::from_millis(5));
        assert!(backoff.next_delay() <= Duration::from_millis(1));
    }
}
