//! A task's story as its record tells it: each attempt ([`AttemptRecord`]) and a timeline of
//! what happened ([`Moment`]), for `GET /api/v1/tasks/{id}`.
//!
//! The record keeps its creation and due times, the latest attempt's start and end, and for
//! every attempt that failed and was retried a field `failed:{n}` (JSON: `node`, `started`,
//! `ended`, `error`, `retry_at`), written by `write.lua` in the same step as the retry. An
//! attempt below the latest without such a field was interrupted (its node stopped or died)
//! and ran again. Nothing else is stored for the timeline, so it costs the task path nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::task::{TaskState, TaskStatus};

/// The prefix of the record fields that keep a retried attempt's failure.
pub(crate) const FAILED_PREFIX: &str = "failed:";

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// Its number, from 1.
    pub attempt: u32,
    /// The node it ran on, when known.
    pub node: Option<String>,
    /// When it started (Unix ms), when known.
    pub started: Option<u64>,
    /// When it ended (Unix ms), when it has.
    pub ended: Option<u64>,
    /// `retried`, `done`, `failed`, `dead`, `cancelled`, `expired`, `running`, `claimed` (not
    /// started yet), or `interrupted` (its node stopped or died; it ran again).
    pub outcome: String,
    /// The error, when it failed.
    pub error: Option<String>,
}

/// One moment of a task's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moment {
    /// When (Unix ms), when known.
    pub at: Option<u64>,
    /// What: `created`, `due`, `claimed`, `started`, `retry`, `interrupted`, or the final state
    /// (`done`, `failed`, `dead`, `cancelled`, `expired`).
    pub event: String,
    /// The attempt it belongs to.
    pub attempt: Option<u32>,
    /// The node, when one was involved.
    pub node: Option<String>,
    /// The error, or when a retry is due.
    pub detail: Option<String>,
}

/// A retried attempt's failure as `write.lua` stores it.
#[derive(Debug, Deserialize)]
struct Failure {
    node: Option<String>,
    started: Option<u64>,
    ended: Option<u64>,
    error: Option<String>,
    retry_at: Option<u64>,
}

/// The attempts and timeline of the task whose record is `record` and status `status`.
pub(crate) fn story(
    status: &TaskStatus,
    record: &HashMap<String, String>,
) -> (Vec<AttemptRecord>, Vec<Moment>) {
    let moment = |at, event: &str, attempt, node: Option<String>, detail| Moment {
        at,
        event: event.to_owned(),
        attempt,
        node,
        detail,
    };
    let mut timeline = vec![moment(status.created, "created", None, None, None)];
    if let (Some(due), Some(created)) = (status.run_at, status.created)
        && due > created
    {
        timeline.push(moment(Some(due), "due", None, None, None));
    }
    let state = TaskState::parse(&status.state);
    let mut attempts = Vec::new();
    for n in 1..=status.attempt {
        let failure = record
            .get(&format!("{FAILED_PREFIX}{n}"))
            .and_then(|text| serde_json::from_str::<Failure>(text).ok());
        if let Some(f) = failure {
            timeline.push(moment(f.started, "started", Some(n), f.node.clone(), None));
            let due = f.retry_at.map(|t| format!("runs again at {t}"));
            let detail = match (&f.error, due) {
                (Some(e), Some(d)) => Some(format!("{e}; {d}")),
                (e, d) => e.clone().or(d),
            };
            timeline.push(moment(f.ended, "retry", Some(n), f.node.clone(), detail));
            attempts.push(AttemptRecord {
                attempt: n,
                node: f.node,
                started: f.started,
                ended: f.ended,
                outcome: "retried".into(),
                error: f.error,
            });
            continue;
        }
        if n < status.attempt {
            timeline.push(moment(None, "interrupted", Some(n), None, None));
            attempts.push(AttemptRecord {
                attempt: n,
                node: None,
                started: None,
                ended: None,
                outcome: "interrupted".into(),
                error: None,
            });
            continue;
        }
        // The latest attempt: the record's own fields.
        let node = status.node.clone();
        let outcome = match state {
            Some(TaskState::Queued) if status.started.is_none() => {
                timeline.push(moment(None, "claimed", Some(n), node.clone(), None));
                "claimed"
            }
            Some(TaskState::Queued) => {
                // Handed back after it started: it waits to run again.
                timeline.push(moment(
                    status.started,
                    "started",
                    Some(n),
                    node.clone(),
                    None,
                ));
                timeline.push(moment(None, "interrupted", Some(n), None, None));
                "interrupted"
            }
            Some(TaskState::Running) => {
                timeline.push(moment(
                    status.started,
                    "started",
                    Some(n),
                    node.clone(),
                    None,
                ));
                "running"
            }
            Some(s) if s.is_finished() => {
                if status.started.is_some() {
                    timeline.push(moment(
                        status.started,
                        "started",
                        Some(n),
                        node.clone(),
                        None,
                    ));
                }
                s.as_str()
            }
            _ => "unknown",
        };
        attempts.push(AttemptRecord {
            attempt: n,
            node,
            started: status.started,
            ended: state
                .is_some_and(TaskState::is_finished)
                .then_some(status.finished)
                .flatten(),
            outcome: outcome.into(),
            error: state
                .is_some_and(|s| s.is_finished() && s != TaskState::Done)
                .then(|| status.error.clone())
                .flatten(),
        });
    }
    if let Some(s) = state.filter(|s| s.is_finished()) {
        let detail = (s != TaskState::Done)
            .then(|| status.error.clone())
            .flatten();
        let attempt = (status.attempt > 0).then_some(status.attempt);
        timeline.push(moment(
            status.finished,
            s.as_str(),
            attempt,
            status.node.clone(),
            detail,
        ));
    }
    (attempts, timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, attempt: u32) -> TaskStatus {
        TaskStatus {
            id: "t".into(),
            worker: "w".into(),
            state: state.into(),
            progress: 0,
            node: Some("n2".into()),
            attempt,
            attempts: Some(3),
            priority: 0,
            args: serde_json::Value::Null,
            result: None,
            error: Some("boom".into()),
            epoch: 4,
            created: Some(100),
            started: Some(300),
            finished: Some(350),
            run_at: None,
            retry_at: None,
            every: None,
            cron: None,
            deadline: None,
            key: None,
            result_key: None,
            template: None,
            target: None,
            parent: None,
        }
    }

    #[test]
    fn a_retried_then_dead_task_tells_each_attempt_in_order() {
        let record: HashMap<String, String> = [(
            "failed:1".to_owned(),
            r#"{"node":"n1","started":110,"ended":120,"error":"first","retry_at":200}"#.to_owned(),
        )]
        .into_iter()
        .collect();
        let (attempts, timeline) = story(&status("dead", 3), &record);
        let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["retried", "interrupted", "dead"]);
        assert_eq!(attempts[0].node.as_deref(), Some("n1"));
        assert_eq!(attempts[2].error.as_deref(), Some("boom"));
        let events: Vec<&str> = timeline.iter().map(|m| m.event.as_str()).collect();
        assert_eq!(
            events,
            [
                "created",
                "started",
                "retry",
                "interrupted",
                "started",
                "dead"
            ]
        );
        let times: Vec<u64> = timeline.iter().filter_map(|m| m.at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[test]
    fn a_waiting_task_has_no_attempt_and_a_claimed_one_says_so() {
        let mut s = status("queued", 0);
        s.started = None;
        s.finished = None;
        s.node = None;
        let (attempts, timeline) = story(&s, &HashMap::new());
        assert!(attempts.is_empty());
        assert_eq!(timeline.len(), 1);
        s.attempt = 1;
        s.node = Some("n1".into());
        let (attempts, timeline) = story(&s, &HashMap::new());
        assert_eq!(attempts[0].outcome, "claimed");
        assert_eq!(timeline.last().unwrap().event, "claimed");
    }
}
