//! Redis's clock, read on this side of the connection.
//!
//! Every time that decides something is Redis's (`TIME`): the scripts read it themselves, and
//! what a node or client computes or records outside a script (an attempt's start and end, a
//! retry's due time, a deadline check before a start, a cron expression's first match) comes
//! from a [`Clock`] anchored to it. The machine's own wall clock plays no part, so nodes whose
//! clocks disagree by minutes decide the same.
//!
//! An anchor is one `TIME` reading and the monotonic instant its request was sent; from there
//! the clock runs on the monotonic clock: now = Redis's time read + time elapsed since the send.
//! Redis read its time after the send, so the clock is never behind Redis, and ahead by at most
//! the round trip of its anchor: a time recorded here after something Redis recorded (a start
//! after the task's creation) is never the earlier. A reading never goes back. The node renews
//! the anchor from the `TIME` its lease renewals return, keeping only answers that came back
//! quickly (a reading that waited on a hung Redis would put the clock ahead).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A round trip this short always makes a good anchor.
const QUICK: Duration = Duration::from_millis(25);

/// After this long without a new anchor, any answer quicker than [`SLOW`] is taken.
pub(crate) const STALE: Duration = Duration::from_secs(60);

/// An answer this slow never anchors the clock.
const SLOW: Duration = Duration::from_secs(1);

/// Redis's clock as this process reads it (Unix ms). Cheap to clone: clones share one anchor.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The monotonic origin of every µs count below.
    base: Instant,
    /// Redis's time minus this process's monotonic time, in µs, at the latest anchor. Redis's
    /// time is far above the monotonic count, so the difference is positive.
    offset: AtomicU64,
    /// Monotonic µs at which the latest anchor was taken.
    anchored: AtomicU64,
    /// The round trip of the latest anchor, µs.
    rtt: AtomicU64,
    /// The latest reading, µs of Redis time, so that no reading goes back.
    last: AtomicU64,
}

impl Clock {
    /// A clock anchored to `redis_us` (Redis's `TIME` in µs), read in a request sent at `sent`
    /// and answered at `answered`.
    pub(crate) fn new(sent: Instant, answered: Instant, redis_us: u64) -> Clock {
        let base = sent;
        let clock = Clock {
            inner: Arc::new(Inner {
                base,
                offset: AtomicU64::new(0),
                anchored: AtomicU64::new(0),
                rtt: AtomicU64::new(0),
                last: AtomicU64::new(0),
            }),
        };
        clock.set(sent, answered, redis_us);
        clock
    }

    /// Offers a new reading of Redis's time (`redis_us`, µs), requested at `sent` and answered
    /// at `answered`. Taken when its round trip was quick, or no slower than the anchor's, or
    /// the anchor is [`STALE`] and the answer not [`SLOW`]. Returns true when taken.
    pub(crate) fn offer(&self, sent: Instant, answered: Instant, redis_us: u64) -> bool {
        let rtt = answered.saturating_duration_since(sent);
        let current = Duration::from_micros(self.inner.rtt.load(Ordering::Relaxed));
        let age = self.age(answered);
        let take = rtt <= QUICK.max(current) || (age >= STALE && rtt < SLOW);
        if take {
            self.set(sent, answered, redis_us);
        }
        take
    }

    fn set(&self, sent: Instant, answered: Instant, redis_us: u64) {
        let at = self.micros(sent);
        let rtt = answered.saturating_duration_since(sent).as_micros() as u64;
        self.inner
            .offset
            .store(redis_us.saturating_sub(at), Ordering::Relaxed);
        self.inner
            .anchored
            .store(self.micros(answered), Ordering::Relaxed);
        self.inner.rtt.store(rtt, Ordering::Relaxed);
    }

    /// How long ago, at `now`, the latest anchor was taken.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        Duration::from_micros(
            self.micros(now)
                .saturating_sub(self.inner.anchored.load(Ordering::Relaxed)),
        )
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.base).as_micros() as u64
    }

    /// Redis's time at `at`, µs; never less than a reading given before.
    fn read_at(&self, at: Instant) -> u64 {
        let now = self.micros(at) + self.inner.offset.load(Ordering::Relaxed);
        self.inner.last.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Redis's time now, Unix ms.
    pub(crate) fn now_ms(&self) -> u64 {
        self.read_at(Instant::now()) / 1_000
    }
}

/// Redis's answer to `TIME` (seconds and microseconds) in µs.
pub(crate) fn time_us(seconds: u64, micros: u64) -> u64 {
    seconds * 1_000_000 + micros
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-01-01T00:00:00Z in µs.
    const T: u64 = 1_420_070_400_000_000;
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn runs_from_the_redis_time_it_read_never_behind() {
        let t0 = Instant::now();
        // Redis read T somewhere within the 2 ms the request took.
        let clock = Clock::new(t0, t0 + 2 * MS, T);
        assert_eq!(clock.read_at(t0), T, "the send is the anchor");
        assert_eq!(clock.read_at(t0 + 10 * MS), T + 10_000);
        assert_eq!(clock.read_at(t0 + Duration::from_secs(60)), T + 60_000_000);
    }

    #[test]
    fn a_reading_never_goes_back() {
        let t0 = Instant::now();
        let clock = Clock::new(t0, t0 + 20 * MS, T + 5_000);
        assert_eq!(clock.read_at(t0 + 30 * MS), T + 35_000);
        // A tighter anchor: Redis's time was 4 ms less than the first reading implied.
        assert!(clock.offer(t0 + 30 * MS, t0 + 31 * MS, T + 31_000));
        assert_eq!(
            clock.read_at(t0 + 31 * MS),
            T + 35_000,
            "held until the new anchor catches up"
        );
        assert_eq!(clock.read_at(t0 + 40 * MS), T + 41_000);
    }

    #[test]
    fn slow_answers_anchor_nothing_unless_the_anchor_is_stale() {
        let t0 = Instant::now();
        let clock = Clock::new(t0, t0 + MS, T);
        // A Redis that hung 30 s read its time at the end: that reading would put us 30 s ahead.
        let hung = t0 + Duration::from_secs(10);
        assert!(!clock.offer(hung, hung + Duration::from_secs(30), T + 40_000_000));
        assert_eq!(clock.read_at(t0 + Duration::from_secs(41)), T + 41_000_000);
        // Quick answers are taken, and so is a middling one once the anchor is old.
        assert!(clock.offer(t0 + 100 * MS, t0 + 110 * MS, T + 100_500));
        let later = t0 + STALE + Duration::from_secs(1);
        assert!(!clock.offer(t0 + 200 * MS, t0 + 500 * MS, T + 300_000));
        assert!(clock.offer(later, later + 300 * MS, T + 61_100_000));
        assert!(!clock.offer(later, later + SLOW, T + 61_100_000));
        assert_eq!(clock.age(later + 300 * MS), Duration::ZERO);
    }

    #[test]
    fn redis_time_reads_as_micros() {
        assert_eq!(time_us(1_420_070_400, 123_456), T + 123_456);
    }
}
