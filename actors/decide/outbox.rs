//! `Outbox`: what an archiver does about the archive's outbox as it fills and drains, from the
//! length it reads every second and the bound (`[saver] archive_outbox`).
//!
//! From 80% of the bound it warns, at most once a minute; at the bound it holds every node's
//! claims (nothing is dropped: finished tasks stay in the outbox, new ones wait in their pending
//! sets), and it keeps renewing that hold while the outbox stays at or over 90%, so claims come
//! back only once there is room for a while; then it says so once.

use std::time::{Duration, Instant};

/// Warn from this share of the bound.
const WARN_AT: f64 = 0.8;
/// A hold is let go below this share.
const RELEASE_BELOW: f64 = 0.9;
/// Warnings at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What to do after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Nothing.
    Nothing,
    /// Log a warning: the outbox nears its bound.
    Warn,
    /// Hold every node's claims (renew the hold).
    Hold {
        /// The hold starts with this reading (log it).
        first: bool,
    },
    /// Let the claims go (log it).
    Release,
}

/// The archiver's view of the outbox.
#[derive(Debug)]
pub(crate) struct Outbox {
    bound: u64,
    holding: bool,
    warned: Option<Instant>,
}

impl Outbox {
    /// An outbox of `bound` rows.
    pub(crate) fn new(bound: u64) -> Outbox {
        Outbox {
            bound,
            holding: false,
            warned: None,
        }
    }

    /// The outbox holds `len` rows at `now`.
    pub(crate) fn observe(&mut self, len: u64, now: Instant) -> Act {
        let share = len as f64 / self.bound.max(1) as f64;
        if len >= self.bound || (self.holding && share >= RELEASE_BELOW) {
            let first = !self.holding;
            self.holding = true;
            return Act::Hold { first };
        }
        if self.holding {
            self.holding = false;
            return Act::Release;
        }
        if share >= WARN_AT && self.warned.is_none_or(|at| now - at >= WARN_EVERY) {
            self.warned = Some(now);
            return Act::Warn;
        }
        Act::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_from_eighty_percent_once_a_minute() {
        let t = Instant::now();
        let mut o = Outbox::new(1000);
        assert_eq!(o.observe(799, t), Act::Nothing);
        assert_eq!(o.observe(800, t), Act::Warn);
        assert_eq!(o.observe(850, t + Duration::from_secs(30)), Act::Nothing);
        assert_eq!(o.observe(850, t + Duration::from_secs(60)), Act::Warn);
    }

    #[test]
    fn holds_at_the_bound_until_there_is_room() {
        let t = Instant::now();
        let mut o = Outbox::new(1000);
        assert_eq!(o.observe(1000, t), Act::Hold { first: true });
        assert_eq!(o.observe(1005, t), Act::Hold { first: false });
        assert_eq!(
            o.observe(950, t),
            Act::Hold { first: false },
            "still over 90%"
        );
        assert_eq!(o.observe(899, t), Act::Release);
        assert_eq!(o.observe(899, t), Act::Warn);
        assert_eq!(o.observe(10, t), Act::Nothing);
    }
}
