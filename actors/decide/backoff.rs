//! Retry backoff, free of I/O: how long a failed task waits before its next attempt.

use std::time::Duration;

/// Retry backoff: `base * 2^(attempt-1)`, capped, with "equal jitter": half of it fixed, half
/// random. Delays therefore grow with the attempt while never synchronising retries.
/// `unit` is a number in `[0, 1)` (the jitter draw).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(cap);
    full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A jitter draw in `[0, 1)` for `key`, different in every process.
pub fn jitter(key: &str) -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(key);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let j = jitter("task-1:2");
        assert!((0.0..1.0).contains(&j));
    }
}
