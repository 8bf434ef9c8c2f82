//! Event messages published on the events channel (`background:events` by default).
//!
//! Each event is one JSON object with at least `event`, `ts` (Unix ms) and, for task events,
//! `id`, `worker`, `node` and `attempt`. A message holds one event, or several as a JSON array
//! in the order they happened (a script call publishes its events together, see `common.lua`):
//! [`events_in`] reads either. PROTOCOL.md lists every kind with its fields. Events of
//! transitions made inside Lua scripts (`available`, `cancelled` and `expired` of waiting tasks)
//! are built there with the same fields.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::decide::policy::Settle;
use crate::model::envelope::Rejection;
use crate::model::task::Task;

/// The events of one message of the events channel, in order: the message is one event (a
/// JSON object) or several (a JSON array of them). `T` is what each event is read as, a
/// `serde_json::Value` or a struct of the fields the caller needs.
///
/// ```
/// let events: Vec<serde_json::Value> =
///     background::events_in(br#"[{"event":"started","id":"a"},{"event":"done","id":"a"}]"#)
///         .unwrap();
/// assert_eq!(events.len(), 2);
/// let one: Vec<serde_json::Value> = background::events_in(br#"{"event":"done"}"#).unwrap();
/// assert_eq!(one[0]["event"], "done");
/// ```
pub fn events_in<T: DeserializeOwned>(payload: &[u8]) -> Result<Vec<T>, serde_json::Error> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|event| vec![event])
    }
}

/// A task event, serialized straight from borrowed fields: every attempt of every task builds
/// two or three, so no map of owned values is built for them. The fields are in alphabetical
/// order, the order the events have always had.
#[derive(Serialize)]
struct TaskEvent<'a> {
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    event: &'a str,
    id: &'a str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<u64>,
    ts: u64,
    worker: &'a str,
}

impl<'a> TaskEvent<'a> {
    fn new(event: &'a str, task: &'a Task, node: &'a str, ts: u64) -> TaskEvent<'a> {
        TaskEvent {
            attempt: task.attempt,
            error: None,
            event,
            id: &task.id,
            node,
            result: None,
            retry_at: None,
            ts,
            worker: &task.worker,
        }
    }

    fn error(mut self, error: &'a str) -> TaskEvent<'a> {
        self.error = Some(error);
        self
    }

    fn text(&self) -> String {
        serde_json::to_string(self).expect("an event of strings and numbers serializes")
    }
}

/// `started`: an attempt began.
pub(crate) fn started(task: &Task, node: &str, at: u64) -> String {
    TaskEvent::new("started", task, node, at).text()
}

/// `error`: an attempt failed (followed by `retry` or `dead`, or final as state `failed`).
pub(crate) fn error(task: &Task, node: &str, error: &str, at: u64) -> String {
    TaskEvent::new("error", task, node, at).error(error).text()
}

/// The event of a transition: `done`, `retry`, `dead`, `error` (failed without retry),
/// `cancelled` or `expired`. For a final state it is also the reply a waiting caller receives.
pub(crate) fn transition(task: &Task, node: &str, settle: &Settle, at: u64) -> String {
    let event = match settle {
        Settle::Done(result) => TaskEvent {
            result: Some(result),
            ..TaskEvent::new("done", task, node, at)
        },
        Settle::Retry {
            error,
            at: retry_at,
        } => TaskEvent {
            retry_at: Some(*retry_at),
            ..TaskEvent::new("retry", task, node, at).error(error)
        },
        Settle::Dead { error } => TaskEvent::new("dead", task, node, at).error(error),
        Settle::Failed { error: message } => return error(task, node, message, at),
        Settle::Cancelled => TaskEvent::new("cancelled", task, node, at).error("cancelled"),
        Settle::Expired => {
            TaskEvent::new("expired", task, node, at).error(crate::model::task::EXPIRED_ERROR)
        }
    };
    event.text()
}

/// `rejected`: a channel message was refused.
pub(crate) fn rejected(rejection: &Rejection, node: &str, ts: u64) -> String {
    json!({
        "event": "rejected", "reason": rejection.reason, "id": rejection.id,
        "worker": rejection.worker, "excerpt": rejection.excerpt, "node": node, "ts": ts,
    })
    .to_string()
}

/// How a task ended, read back from its final event (a reply).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ending {
    /// `done`, with the result.
    Done(Value),
    /// Any other final event: its kind (`error`, `dead`, `cancelled`, `expired`) and message.
    Failed {
        /// The event kind, which is also the final state (`error` means `failed`).
        kind: String,
        /// The error message.
        error: String,
    },
}

/// Reads a final event (a reply).
pub(crate) fn ending_of(event: &str) -> Option<Ending> {
    let v: Value = serde_json::from_str(event).ok()?;
    let kind = v.get("event")?.as_str()?;
    Some(match kind {
        "done" => Ending::Done(v.get("result").cloned().unwrap_or(Value::Null)),
        _ => Ending::Failed {
            kind: kind.to_owned(),
            error: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or(kind)
                .to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events as they were built before, from a map (`json!`), for comparison.
    fn as_map(kind: &str, task: &Task, node: &str, at: u64, extra: Value) -> String {
        let mut e = json!({
            "event": kind, "id": task.id, "worker": task.worker, "node": node,
            "attempt": task.attempt, "ts": at,
        });
        let Value::Object(extra) = extra else {
            panic!("extra fields are an object")
        };
        for (k, v) in extra {
            e[k.as_str()] = v;
        }
        e.to_string()
    }

    #[test]
    fn every_task_event_has_its_fields_in_the_same_order() {
        let mut task = Task::sample("t\"1");
        task.attempt = 2;
        let cases = [
            (
                started(&task, "n1", 5),
                as_map("started", &task, "n1", 5, json!({})),
            ),
            (
                error(&task, "n1", "bo\nom", 6),
                as_map("error", &task, "n1", 6, json!({"error": "bo\nom"})),
            ),
            (
                transition(&task, "n1", &Settle::Done(json!({"x": [1, null]})), 7),
                as_map("done", &task, "n1", 7, json!({"result": {"x": [1, null]}})),
            ),
            (
                transition(&task, "n1", &Settle::Done(Value::Null), 7),
                as_map("done", &task, "n1", 7, json!({"result": null})),
            ),
            (
                transition(
                    &task,
                    "n1",
                    &Settle::Retry {
                        error: "e".into(),
                        at: 99,
                    },
                    8,
                ),
                as_map(
                    "retry",
                    &task,
                    "n1",
                    8,
                    json!({"error": "e", "retry_at": 99}),
                ),
            ),
            (
                transition(&task, "n1", &Settle::Dead { error: "d".into() }, 9),
                as_map("dead", &task, "n1", 9, json!({"error": "d"})),
            ),
            (
                transition(&task, "n1", &Settle::Failed { error: "f".into() }, 9),
                as_map("error", &task, "n1", 9, json!({"error": "f"})),
            ),
            (
                transition(&task, "n1", &Settle::Cancelled, 10),
                as_map("cancelled", &task, "n1", 10, json!({"error": "cancelled"})),
            ),
            (
                transition(&task, "n1", &Settle::Expired, 11),
                as_map(
                    "expired",
                    &task,
                    "n1",
                    11,
                    json!({"error": crate::model::task::EXPIRED_ERROR}),
                ),
            ),
        ];
        for (built, expected) in cases {
            assert_eq!(built, expected);
        }
    }
}
