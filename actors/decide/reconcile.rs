//! Self-healing ownership: which tasks Redis says this node owns that it does not hold, and
//! when it is safe to hand them back.
//!
//! A claim or an adoption whose answer was lost (Redis hung past the call's timeout, then
//! applied it) leaves tasks owned by a live node that never runs them. The dispatcher reads its
//! owned set every [`EVERY`] and keeps the ids it owns but does not hold (nor is handing to a
//! peer) as candidates, each with its epoch. A candidate is handed back only when it was one,
//! under the same epoch, in a read answered at least [`GAP`] earlier: by then any call that
//! could still deliver it has answered or timed out for good. A task whose result was queued
//! for the saver but not written yet is not handed back either: the earlier read's saver mark
//! must have been written before the later read was made.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the owned set is read.
pub(crate) const EVERY: Duration = Duration::from_secs(3);

/// How long a candidate must stay one: longer than any Redis call may take to answer (the
/// store's response timeout is 5 s).
pub(crate) const GAP: Duration = Duration::from_millis(5_500);

/// One read of the owned set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Round {
    /// Owned, not held: id → epoch.
    pub(crate) candidates: HashMap<String, u64>,
    /// The saver's count of queued writes when the read was made.
    pub(crate) mark: u64,
}

/// The reconciliation's memory between reads.
#[derive(Debug, Default)]
pub(crate) struct Reconciler {
    earlier: Option<(Instant, Round)>,
}

impl Reconciler {
    /// Whether a read may start now: always, except that while an earlier round waits for the
    /// saver to write what was queued before it, a newer read could not be compared with it.
    pub(crate) fn may_read(&self, written: u64) -> bool {
        self.earlier
            .as_ref()
            .is_none_or(|(_, round)| written >= round.mark)
    }

    /// A read answered at `now`: returns the candidates to hand back (id, epoch), and keeps this
    /// round for the next comparison once it is at least [`GAP`] old.
    pub(crate) fn answered(&mut self, now: Instant, round: Round) -> Vec<(String, u64)> {
        let Some((at, earlier)) = &self.earlier else {
            self.earlier = Some((now, round));
            return Vec::new();
        };
        if now.duration_since(*at) < GAP {
            // Too recent to compare with: keep the older round, which matures first.
            return Vec::new();
        }
        let mut back: Vec<(String, u64)> = round
            .candidates
            .iter()
            .filter(|(id, epoch)| earlier.candidates.get(*id) == Some(*epoch))
            .map(|(id, epoch)| (id.clone(), *epoch))
            .collect();
        back.sort();
        self.earlier = Some((now, round));
        back
    }

    /// Forgets every round (after a restart of the owned set's story: recovery, a lapse).
    pub(crate) fn reset(&mut self) {
        self.earlier = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ids: &[(&str, u64)], mark: u64) -> Round {
        Round {
            candidates: ids.iter().map(|(i, e)| ((*i).to_owned(), *e)).collect(),
            mark,
        }
    }

    #[test]
    fn a_candidate_goes_back_only_after_two_reads_a_gap_apart() {
        let t0 = Instant::now();
        let mut r = Reconciler::default();
        assert!(r.answered(t0, round(&[("a", 1), ("b", 1)], 0)).is_empty());
        // Too soon: a late answer could still arrive.
        assert!(
            r.answered(t0 + Duration::from_secs(2), round(&[("a", 1)], 0))
                .is_empty()
        );
        // Past the gap: `a` is still a candidate under the same epoch, `b` was answered.
        let back = r.answered(t0 + GAP, round(&[("a", 1), ("c", 4)], 0));
        assert_eq!(back, vec![("a".to_owned(), 1)]);
        // `c` needs its own gap.
        assert!(
            r.answered(t0 + GAP + Duration::from_secs(1), round(&[("c", 4)], 0))
                .is_empty()
        );
        let back = r.answered(t0 + GAP * 2, round(&[("c", 4)], 0));
        assert_eq!(back, vec![("c".to_owned(), 4)]);
    }

    #[test]
    fn a_new_epoch_is_a_new_candidate() {
        let t0 = Instant::now();
        let mut r = Reconciler::default();
        r.answered(t0, round(&[("a", 1)], 0));
        assert!(r.answered(t0 + GAP, round(&[("a", 2)], 0)).is_empty());
        assert_eq!(
            r.answered(t0 + GAP * 2, round(&[("a", 2)], 0)),
            vec![("a".to_owned(), 2)]
        );
    }

    #[test]
    fn a_read_waits_for_the_saver_to_write_what_was_queued_before_the_last() {
        let mut r = Reconciler::default();
        assert!(r.may_read(0));
        r.answered(Instant::now(), round(&[("a", 1)], 10));
        assert!(
            !r.may_read(9),
            "a result queued before the read may be unwritten"
        );
        assert!(r.may_read(10));
        r.reset();
        assert!(r.may_read(0));
    }
}
