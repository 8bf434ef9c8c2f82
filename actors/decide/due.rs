//! When a new task first comes due, and by when it must have started. Decided once, as the
//! task is stored (the enqueue script resolves it against Redis's clock); the scheduler takes
//! over from there (`cron::advance`).

use std::time::Duration;

use crate::decide::cron::Recurrence;
use crate::model::task::TaskSpec;

/// The due time of a recurring template whose schedule never matches again: it stays in the
/// scheduled set and never fires. (`Cron::parse` refuses expressions such as `0 0 30 2 *` that
/// can never run; a record written before that check may still hold one.)
pub(crate) const NEVER: u64 = u64::MAX / 2;

/// When a task first comes due, and by when it must start, as the enqueue script applies them:
/// times relative to the moment it is stored are counted there from Redis's clock, so a client
/// on a host whose clock is off still gets the delay it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FirstRun {
    /// Due at this time (Unix ms). A one-shot task whose time is not ahead of Redis's when it
    /// is stored runs at once; a recurring template keeps it even when it has passed (it fires
    /// at once). A template whose schedule never matches has [`NEVER`].
    pub at: Option<u64>,
    /// Due this long (ms) after it is stored.
    pub after: Option<u64>,
    /// Must have started within this long (ms) of being stored. Only a one-shot task has one: a
    /// template's deadline applies to each occurrence, counted from that occurrence's due time.
    pub deadline_in: Option<u64>,
}

/// Decides when `spec` first comes due and by when it must start; `now` (Redis's time, Unix ms)
/// matters only to a cron template given no time: its first occurrence is the next match after
/// `now`.
///
/// A one-shot task runs at its time (`at`, or its delay after it is stored), or at once when
/// none was given. A recurring template's first occurrence is the time given, even a past one;
/// else at once for an interval and the next match for a cron expression.
pub(crate) fn first_run(spec: &TaskSpec, now: u64) -> FirstRun {
    let ms = |d: Duration| d.as_millis() as u64;
    let (at, after) = match (spec.run_at, spec.delay) {
        (Some(at), _) => (Some(at), None),
        (None, Some(d)) => (None, Some(ms(d))),
        (None, None) => match &spec.repeat {
            Some(Recurrence::Every(_)) => (None, Some(0)),
            Some(Recurrence::Cron(c)) => (Some(c.next_after(now).unwrap_or(NEVER)), None),
            None => (None, None),
        },
    };
    FirstRun {
        at,
        after,
        deadline_in: spec.deadline.filter(|_| spec.repeat.is_none()).map(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::cron::Cron;
    use serde_json::json;

    /// 2015-01-01T00:00:30Z.
    const NOW: u64 = 1_420_070_430_000;
    const SECOND: Duration = Duration::from_secs(1);

    fn spec() -> TaskSpec {
        TaskSpec::new("w", json!(null))
    }

    fn cron(text: &str) -> Recurrence {
        Recurrence::Cron(Cron::parse(text).unwrap())
    }

    fn run(s: &TaskSpec) -> FirstRun {
        first_run(s, NOW)
    }

    #[test]
    fn one_shot_tasks_run_at_their_time_or_after_their_delay() {
        assert_eq!(run(&spec()).at, None);
        assert_eq!(run(&spec()).after, None, "no time: at once");
        assert_eq!(run(&spec().delay(SECOND * 5)).after, Some(5_000));
        assert_eq!(run(&spec().at(NOW + 1)).at, Some(NOW + 1));
        assert_eq!(
            run(&spec().at(NOW - 60_000)).at,
            Some(NOW - 60_000),
            "a past time is the script's to judge, by Redis's clock"
        );
    }

    #[test]
    fn a_one_shot_deadline_counts_from_the_store() {
        let r = run(&spec().deadline(SECOND * 10).delay(SECOND));
        assert_eq!(r.deadline_in, Some(10_000));
        assert_eq!(r.after, Some(1_000));
        assert_eq!(run(&spec()).deadline_in, None);
    }

    #[test]
    fn an_interval_starts_at_once_or_at_the_time_given() {
        let every = Recurrence::Every(SECOND * 60);
        let r = |s: TaskSpec| run(&s.repeat(every.clone()));
        assert_eq!((r(spec()).at, r(spec()).after), (None, Some(0)));
        assert_eq!(r(spec().delay(SECOND * 2)).after, Some(2_000));
        assert_eq!(r(spec().at(NOW - 5_000)).at, Some(NOW - 5_000));
    }

    #[test]
    fn a_cron_starts_at_its_next_match_or_at_the_time_given() {
        assert_eq!(
            run(&spec().repeat(cron("*/5 * * * *"))).at,
            Some(NOW - 30_000 + 5 * 60_000)
        );
        assert_eq!(
            run(&spec().repeat(cron("@daily")).at(NOW + 7)).at,
            Some(NOW + 7)
        );
    }

    #[test]
    fn a_template_has_no_deadline_of_its_own() {
        let s = spec()
            .repeat(Recurrence::Every(SECOND * 60))
            .deadline(SECOND * 10);
        assert_eq!(run(&s).deadline_in, None);
    }
}
