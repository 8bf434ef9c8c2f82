//! The restart policy of a supervisor, free of I/O: how long to wait before restarting a failed
//! child, and when failures are too frequent to be transient. The node's supervisor and the
//! dispatcher (for its worker pools) both decide with a [`RestartTracker`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often and how fast a child may be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Most restarts within `window` before giving up.
    pub max_restarts: usize,
    /// The window restarts are counted in.
    pub window: Duration,
    /// First backoff; doubles with each restart inside the window.
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartDecision {
    /// Restart after this delay.
    Restart(Duration),
    /// Too many failures in the window: stop.
    GiveUp {
        /// Failures counted in the window, this one included.
        failures: usize,
    },
}

/// Counts failures of one child against a [`RestartPolicy`].
#[derive(Debug, Clone)]
pub(crate) struct RestartTracker {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub(crate) fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub(crate) fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let n = self.failures.len();
        if n > self.policy.max_restarts {
            return RestartDecision::GiveUp { failures: n };
        }
        let factor = 1u32 << (n - 1).min(16);
        RestartDecision::Restart((self.policy.base * factor).min(self.policy.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up() {
        let policy = RestartPolicy::default();
        let mut t = RestartTracker::new(policy);
        let t0 = Instant::now();
        let delays: Vec<RestartDecision> = (0..6)
            .map(|i| t.on_failure(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            delays[0],
            RestartDecision::Restart(Duration::from_millis(100))
        );
        assert_eq!(
            delays[1],
            RestartDecision::Restart(Duration::from_millis(200))
        );
        assert_eq!(
            delays[4],
            RestartDecision::Restart(Duration::from_millis(1600))
        );
        assert_eq!(delays[5], RestartDecision::GiveUp { failures: 6 });
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(10),
            ..RestartPolicy::default()
        });
        let t0 = Instant::now();
        assert!(matches!(t.on_failure(t0), RestartDecision::Restart(_)));
        assert!(matches!(t.on_failure(t0), RestartDecision::Restart(_)));
        assert_eq!(
            t.on_failure(t0 + Duration::from_secs(11)),
            RestartDecision::Restart(Duration::from_millis(100)),
            "the first two fell out of the window"
        );
    }

    #[test]
    fn backoff_is_capped() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 100,
            ..RestartPolicy::default()
        });
        let t0 = Instant::now();
        let mut last = RestartDecision::Restart(Duration::ZERO);
        for _ in 0..40 {
            last = t.on_failure(t0);
        }
        assert_eq!(last, RestartDecision::Restart(Duration::from_secs(5)));
    }
}
