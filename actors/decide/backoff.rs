//! Retry backoff, free of I/O: how long a failed task waits before its next attempt.

use sha2::{Digest, Sha256};
use std::time::Duration;

/// Retry backoff: `base * 2^(attempt-1)`, capped, with "equal jitter": half of it fixed, half
/// random. Delays therefore grow with the attempt while never synchronising retries.
/// `unit` is a number in `[0, 1)` (the jitter draw).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(cap);
    full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A jitter draw in `[0, 1)` that depends only on `key`.
///
/// The key is hashed with SHA-256 and the first 53 bits of the digest become the fraction, so
/// the draw is the same on every node, build and platform: a retry keyed `"{id}:{attempt}"` gets
/// the same delay whichever node computes it, while different tasks and attempts spread out.
pub fn jitter(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
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
}
