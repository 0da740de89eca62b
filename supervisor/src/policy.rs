//! The restart policy, without I/O: how long to wait before the next start, and when a child
//! counts as `failed`. Exponential backoff with jitter (100 ms → 30 s); 5 crashes within 60 s mark
//! the child failed (health degraded) while it is still retried at the cap, never abandoned; a
//! child that ran for [`HEALTHY_RUN`] before it died starts over from the short delay (the crash
//! count still decides `failed`, so a child dying every few seconds cannot hot-loop).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use iot_connector_ipc::Backoff;

/// Crashes within [`WINDOW`] that make a child `failed`.
pub const INTENSITY: usize = 5;
/// The window of [`INTENSITY`].
pub const WINDOW: Duration = Duration::from_secs(60);
/// A child that ran this long had recovered: its next restart is quick again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// One child's restart history.
#[derive(Debug)]
pub struct RestartPolicy {
    backoff: Backoff,
    crashes: VecDeque<Instant>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            crashes: VecDeque::new(),
        }
    }
}

impl RestartPolicy {
    /// The child exited unexpectedly at `now` after running since `started`: the delay before the
    /// next start.
    pub fn crashed(&mut self, started: Instant, now: Instant) -> Duration {
        if now.duration_since(started) >= HEALTHY_RUN {
            self.backoff.reset();
        }
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.crashes.pop_front();
        }
        self.backoff.next_delay()
    }

    /// Whether the child crashed [`INTENSITY`] times within [`WINDOW`] before `now`.
    pub fn failed(&self, now: Instant) -> bool {
        self.crashes
            .iter()
            .filter(|t| now.duration_since(**t) <= WINDOW)
            .count()
            >= INTENSITY
    }

    /// An operator restart or a configuration change: start over.
    pub fn reset(&mut self) {
        self.backoff.reset();
        self.crashes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_five_quick_crashes_mean_failed() {
        let mut policy = RestartPolicy::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..5u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            assert!(!policy.failed(now));
            delays.push(policy.crashed(now, now));
        }
        assert!(policy.failed(t0 + Duration::from_secs(5)));
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[4] >= Duration::from_millis(800));
        assert!(
            !policy.failed(t0 + Duration::from_secs(70)),
            "crashes age out of the window"
        );
    }

    #[test]
    fn a_child_that_ran_for_a_minute_starts_over_from_the_short_delay() {
        let mut policy = RestartPolicy::default();
        let t0 = Instant::now();
        for _ in 0..6 {
            policy.crashed(t0, t0);
        }
        let later = t0 + Duration::from_secs(120);
        assert!(
            policy.crashed(later - Duration::from_secs(61), later) <= Duration::from_millis(100)
        );
    }

    #[test]
    fn the_delay_never_exceeds_the_cap() {
        let mut policy = RestartPolicy::default();
        let t0 = Instant::now();
        for _ in 0..40 {
            assert!(policy.crashed(t0, t0) <= Duration::from_secs(30));
        }
    }
}
