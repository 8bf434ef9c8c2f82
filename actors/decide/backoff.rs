//! Backoff, free of I/O: how long a failed task waits before its next attempt ([`backoff`],
//! with a per-attempt [`jitter`]), and the growing delays of a reconnect loop ([`Backoff`]).

use sha2::{Digest, Sha256};
use std::time::Duration;

/// Retry backoff: `base * 2^(attempt-1)`, capped, with "equal jitter": half of it fixed, half
/// random. Delays therefore grow with the attempt while never synchronising retries.
/// `unit` is a number in `[0, 1)` (the jitter draw).
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(cap);
    full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A jitter draw in `[0, 1)` that depends only on `key`.
///
/// The key is hashed with SHA-256 and the first 53 bits of the digest become the fraction, so
/// the draw is the same on every node, build and platform: a retry keyed `"{id}:{attempt}"` gets
/// the same delay whichever node computes it, while different tasks and attempts spread out.
pub(crate) fn jitter(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The delays of a loop that keeps retrying a connection: `first`, then twice as long each time,
/// up to `cap`, until [`Backoff::reset`] after a success: with 100 ms and 1 s, the waits are
/// 100, 200, 400, 800, 1000, 1000 ms (see the test `doubles_up_to_the_cap_and_resets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays that start at `first` and double up to `cap`. A `first` above `cap` is lowered to
    /// `cap`; a zero `first` never grows.
    pub(crate) fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.min(cap);
        Backoff {
            first,
            cap,
            current: first,
            failures: 0,
        }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = self.current;
        self.current = self.current.saturating_mul(2).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        now
    }

    /// The delay [`Backoff::next_delay`] will return, without advancing.
    #[cfg(test)]
    pub(crate) fn peek(&self) -> Duration {
        self.current
    }

    /// How many delays were handed out since the start or the last reset: 0 means the coming
    /// failure is the first one, which is the one worth logging.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts again from the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.current = self.first;
        self.failures = 0;
    }
}

impl Default for Backoff {
    /// From 100 ms up to 2 s, the bounds of most Redis reconnect loops.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut delay = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<_> = (0..6).map(|_| delay.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        delay.reset();
        assert_eq!(delay.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(20, base, cap, 1.0), cap);
        // Ranges of successive attempts do not overlap downwards: delays grow.
        for a in 1..6 {
            assert!(backoff(a + 1, base, cap, 0.0) >= backoff(a, base, cap, 1.0));
        }
    }

    #[test]
    fn jitter_is_a_stable_spread_function_of_the_key() {
        assert_eq!(jitter("task-1:2"), jitter("task-1:2"));
        assert_ne!(jitter("task-1:2"), jitter("task-1:3"));
        // Nodes of different versions must agree: the mapping itself is fixed.
        assert_eq!(jitter("task-1:2"), 0.746_178_040_288_214_2);
        let draws: Vec<f64> = (0..1_000).map(|i| jitter(&format!("t{i}:1"))).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        let low = draws.iter().filter(|j| **j < 0.1).count();
        assert!((50..150).contains(&low), "{low} of 1000 below 0.1");
    }

    #[test]
    fn reconnect_delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.peek(), Duration::from_millis(200));
        let waits: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        assert_eq!(b.failures(), 7);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(), Duration::from_millis(200));

        // A copy goes on by itself.
        let mut copy = b.clone();
        copy.next_delay();
        assert_eq!(b.peek(), Duration::from_millis(400));
        assert_eq!(copy.peek(), Duration::from_millis(800));
    }

    #[test]
    fn reconnect_delay_bounds_are_kept() {
        let mut d = Backoff::default();
        assert_eq!(d.next_delay(), Duration::from_millis(100));
        for _ in 0..100 {
            d.next_delay();
        }
        assert_eq!(d.peek(), Duration::from_secs(2), "no overflow past the cap");

        let mut high = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(high.next_delay(), Duration::from_secs(1), "first is capped");

        let mut zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.next_delay(), Duration::ZERO);
        assert_eq!(zero.next_delay(), Duration::ZERO);

        let mut huge = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        huge.next_delay();
        assert_eq!(huge.next_delay(), Duration::MAX, "doubling saturates");
    }
}
