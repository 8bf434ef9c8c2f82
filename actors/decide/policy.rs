//! What happens after an attempt: done, retry later, dead, failed, cancelled, expired. Pure, so
//! the rules are tested without a clock or Redis.

use std::time::Duration;

use serde_json::Value;

use crate::decide::backoff::backoff;
use crate::model::task::{Outcome, Retry, TaskState};

/// Retry settings resolved for one task (task, else worker, else `[workers]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Maximum attempts.
    pub attempts: u32,
    /// Backoff of the first retry.
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
}

/// The transition an attempt leads to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settle {
    /// Finished with a result.
    Done(Value),
    /// Run again at `at` (Unix ms).
    Retry {
        /// The attempt's error.
        error: String,
        /// When.
        at: u64,
    },
    /// Attempts exhausted.
    Dead {
        /// The last error.
        error: String,
    },
    /// Failed, and the worker asked not to retry.
    Failed {
        /// The error.
        error: String,
    },
    /// Cancelled on request.
    Cancelled,
    /// Not started before its deadline.
    Expired,
}

impl Settle {
    /// The state this transition stores.
    pub(crate) fn state(&self) -> TaskState {
        match self {
            Settle::Done(_) => TaskState::Done,
            Settle::Retry { .. } => TaskState::Retrying,
            Settle::Dead { .. } => TaskState::Dead,
            Settle::Failed { .. } => TaskState::Failed,
            Settle::Cancelled => TaskState::Cancelled,
            Settle::Expired => TaskState::Expired,
        }
    }
}

/// Decides what `outcome` of attempt number `attempt` leads to at time `now` (Unix ms), with
/// `unit` the jitter draw in `[0, 1)`.
pub(crate) fn settle(
    outcome: Outcome,
    attempt: u32,
    policy: &RetryPolicy,
    now: u64,
    unit: f64,
) -> Settle {
    match outcome {
        Outcome::Done(v) => Settle::Done(v),
        Outcome::Cancelled => Settle::Cancelled,
        Outcome::Expired => Settle::Expired,
        Outcome::Failed {
            error,
            retry: Retry::Never,
        } => Settle::Failed { error },
        Outcome::Failed { error, .. } if attempt >= policy.attempts => Settle::Dead {
            error: format!(
                "{error} (gave up after {attempt} attempt{})",
                if attempt == 1 { "" } else { "s" }
            ),
        },
        Outcome::Failed { error, retry } => {
            let delay = match retry {
                Retry::After(d) => d,
                _ => backoff(attempt, policy.base, policy.cap, unit),
            };
            Settle::Retry {
                error,
                at: now + delay.as_millis() as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 3,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn failures_retry_with_growing_delays_then_die() {
        let fail = || Outcome::failed("boom");
        let Settle::Retry { at: first, .. } = settle(fail(), 1, &POLICY, 0, 0.5) else {
            panic!()
        };
        let Settle::Retry { at: second, .. } = settle(fail(), 2, &POLICY, 0, 0.5) else {
            panic!()
        };
        assert_eq!((first, second), (750, 1_500));
        assert_eq!(
            settle(fail(), 3, &POLICY, 0, 0.5),
            Settle::Dead {
                error: "boom (gave up after 3 attempts)".into()
            }
        );
    }

    #[test]
    fn the_worker_chooses_the_policy() {
        let after = Outcome::Failed {
            error: "busy".into(),
            retry: Retry::After(Duration::from_secs(30)),
        };
        assert_eq!(
            settle(after, 1, &POLICY, 1_000, 0.9),
            Settle::Retry {
                error: "busy".into(),
                at: 31_000
            }
        );
        let never = Outcome::Failed {
            error: "bad input".into(),
            retry: Retry::Never,
        };
        assert_eq!(settle(never, 1, &POLICY, 0, 0.0).state(), TaskState::Failed);
        assert_eq!(
            settle(Outcome::Cancelled, 1, &POLICY, 0, 0.0),
            Settle::Cancelled
        );
        assert_eq!(
            settle(Outcome::Expired, 1, &POLICY, 0, 0.0).state(),
            TaskState::Expired
        );
        assert_eq!(
            settle(Outcome::Done(Value::Null), 3, &POLICY, 0, 0.0),
            Settle::Done(Value::Null)
        );
    }

    #[test]
    fn a_single_attempt_dies_at_once() {
        let one = RetryPolicy {
            attempts: 1,
            ..POLICY
        };
        assert_eq!(
            settle(Outcome::failed("x"), 1, &one, 0, 0.0).state(),
            TaskState::Dead
        );
    }
}
