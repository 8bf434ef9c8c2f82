//! Fencing: whether a completion may be written.
//!
//! Every change of owner bumps a task's `epoch`. A node writes a start or a completion with the
//! epoch it claimed the task under; the write is applied only when that epoch is still the
//! stored one. A node that was paused or cut off while its task failed over thus cannot
//! overwrite the new owner's result: its late write is counted as a stale duplicate instead.
//!
//! [`judge`] is the rule as a table. `write.lua` (its `finish`) applies the same table atomically inside Redis;
//! the store tests run both on the same cases so the two cannot drift apart.

use crate::model::task::TaskState;

/// What happens to a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The writer still owns the task: write the result.
    Apply,
    /// The task moved on (failed over, handed back): refuse and count a stale duplicate.
    Stale,
    /// This very completion was written already (a retried pipeline): do nothing.
    AlreadyFinished,
    /// The record expired or was deleted: nothing to write.
    Gone,
}

/// Judges a completion carrying `carried` against the stored `epoch` and `state`.
pub(crate) fn judge(
    stored_epoch: Option<u64>,
    stored_state: Option<TaskState>,
    carried: u64,
) -> Verdict {
    match stored_epoch {
        None => Verdict::Gone,
        Some(epoch) if epoch != carried => Verdict::Stale,
        Some(_) if stored_state.is_some_and(TaskState::is_finished) => Verdict::AlreadyFinished,
        Some(_) => Verdict::Apply,
    }
}

/// The cases both the Rust rule and the Lua script are checked against:
/// (stored epoch, stored state, carried epoch, verdict).
pub(crate) const CASES: &[(Option<u64>, Option<TaskState>, u64, Verdict)] = &[
    (Some(1), Some(TaskState::Running), 1, Verdict::Apply),
    (Some(1), Some(TaskState::Queued), 1, Verdict::Apply),
    (Some(2), Some(TaskState::Running), 1, Verdict::Stale),
    (Some(2), Some(TaskState::Queued), 1, Verdict::Stale),
    (Some(2), Some(TaskState::Done), 1, Verdict::Stale),
    (Some(1), Some(TaskState::Done), 1, Verdict::AlreadyFinished),
    (
        Some(3),
        Some(TaskState::Failed),
        3,
        Verdict::AlreadyFinished,
    ),
    (None, None, 1, Verdict::Gone),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds() {
        for (epoch, state, carried, verdict) in CASES {
            assert_eq!(
                judge(*epoch, *state, *carried),
                *verdict,
                "{epoch:?} {state:?} {carried}"
            );
        }
    }

    #[test]
    fn an_older_or_newer_epoch_is_never_applied() {
        for stored in 0..5u64 {
            for carried in 0..5u64 {
                let v = judge(Some(stored), Some(TaskState::Running), carried);
                assert_eq!(v == Verdict::Apply, stored == carried);
            }
        }
    }
}
