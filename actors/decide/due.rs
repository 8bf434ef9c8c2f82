//! When a new task first comes due, and by when it must have started. Decided once, as the
//! task is stored; the scheduler takes over from there (`cron::advance`).

use std::time::Duration;

use crate::decide::cron::Recurrence;
use crate::model::task::TaskSpec;

/// The due time of a recurring template whose schedule never matches again: it stays in the
/// scheduled set and never fires. (`Cron::parse` refuses expressions such as `0 0 30 2 *` that
/// can never run; a record written before that check may still hold one.)
pub(crate) const NEVER: u64 = u64::MAX / 2;

/// When a task stored now first comes due, and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FirstRun {
    /// When it is due (Unix ms); `None`: it may run at once. A recurring template always has
    /// one: its first occurrence, or [`NEVER`].
    pub due: Option<u64>,
    /// Must have started by this time (Unix ms). Only a one-shot task has one: a template's
    /// deadline applies to each occurrence, counted from that occurrence's due time.
    pub deadline: Option<u64>,
}

/// Decides when `spec`, stored at `now`, first comes due and by when it must start.
///
/// A one-shot task runs at its time (`at`, or `now` plus its delay), or at once when that time
/// has passed or none was given. A recurring template's first occurrence is the time given, even
/// a past one (it fires at once); else `now` for an interval and the next match after `now` for
/// a cron expression.
pub(crate) fn first_run(spec: &TaskSpec, now: u64) -> FirstRun {
    let ms = |d: Duration| d.as_millis() as u64;
    let given = spec.run_at.or_else(|| spec.delay.map(|d| now + ms(d)));
    match &spec.repeat {
        Some(rec) => FirstRun {
            due: Some(
                given
                    .or_else(|| first_occurrence(rec, now))
                    .unwrap_or(NEVER),
            ),
            deadline: None,
        },
        None => FirstRun {
            due: given.filter(|at| *at > now),
            deadline: spec.deadline.map(|d| now + ms(d)),
        },
    }
}

/// A template's first occurrence when no time was given.
fn first_occurrence(rec: &Recurrence, now: u64) -> Option<u64> {
    match rec {
        Recurrence::Every(_) => Some(now),
        Recurrence::Cron(c) => c.next_after(now),
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

    #[test]
    fn one_shot_tasks_run_at_once_unless_their_time_is_ahead() {
        let run = |s: TaskSpec| first_run(&s, NOW).due;
        assert_eq!(run(spec()), None);
        assert_eq!(run(spec().delay(SECOND * 5)), Some(NOW + 5_000));
        assert_eq!(run(spec().at(NOW + 1)), Some(NOW + 1));
        assert_eq!(run(spec().at(NOW)), None, "due now is runnable now");
        assert_eq!(
            run(spec().at(NOW - 60_000)),
            None,
            "a past time runs at once"
        );
    }

    #[test]
    fn a_one_shot_deadline_counts_from_now() {
        let run = first_run(&spec().deadline(SECOND * 10).delay(SECOND), NOW);
        assert_eq!(run.deadline, Some(NOW + 10_000));
        assert_eq!(run.due, Some(NOW + 1_000));
        assert_eq!(first_run(&spec(), NOW).deadline, None);
    }

    #[test]
    fn an_interval_starts_now_or_at_the_time_given() {
        let every = Recurrence::Every(SECOND * 60);
        let run = |s: TaskSpec| first_run(&s.repeat(every.clone()), NOW);
        assert_eq!(run(spec()).due, Some(NOW));
        assert_eq!(run(spec().delay(SECOND * 2)).due, Some(NOW + 2_000));
        assert_eq!(
            run(spec().at(NOW - 5_000)).due,
            Some(NOW - 5_000),
            "a past first time is kept: it fires at once"
        );
    }

    #[test]
    fn a_cron_starts_at_its_next_match_or_at_the_time_given() {
        let run = |s: TaskSpec| first_run(&s, NOW);
        assert_eq!(
            run(spec().repeat(cron("*/5 * * * *"))).due,
            Some(NOW - 30_000 + 5 * 60_000)
        );
        assert_eq!(
            run(spec().repeat(cron("@daily")).at(NOW + 7)).due,
            Some(NOW + 7)
        );
    }

    #[test]
    fn a_template_has_no_deadline_of_its_own() {
        let s = spec()
            .repeat(Recurrence::Every(SECOND * 60))
            .deadline(SECOND * 10);
        assert_eq!(first_run(&s, NOW).deadline, None);
    }
}
