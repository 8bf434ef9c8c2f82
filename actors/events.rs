//! Event messages published on the events channel (`background:events` by default).
//!
//! One JSON object per event with at least `event`, `ts` (Unix ms) and, for task events, `id`,
//! `worker`, `node` and `attempt`. PROTOCOL.md lists every kind with its fields.

use serde_json::{Value, json};

use crate::envelope::Rejection;
use crate::task::{Outcome, Task, now_ms};

/// `started`: an attempt began.
pub fn started(task: &Task, node: &str, at: u64) -> String {
    json!({
        "event": "started", "id": task.id, "worker": task.worker, "node": node,
        "attempt": task.attempt, "ts": at,
    })
    .to_string()
}

/// `done` or `error`: the task finished. This is also the reply a waiting caller receives.
pub fn finished(task: &Task, node: &str, outcome: &Outcome, at: u64) -> String {
    let mut event = json!({
        "id": task.id, "worker": task.worker, "node": node, "attempt": task.attempt, "ts": at,
    });
    match outcome {
        Outcome::Done(result) => {
            event["event"] = json!("done");
            event["result"] = result.clone();
        }
        Outcome::Failed(error) => {
            event["event"] = json!("error");
            event["error"] = json!(error);
        }
    }
    event.to_string()
}

/// `rejected`: a channel message was refused.
pub fn rejected(rejection: &Rejection, node: &str) -> String {
    json!({
        "event": "rejected", "reason": rejection.reason, "id": rejection.id,
        "worker": rejection.worker, "excerpt": rejection.excerpt, "node": node, "ts": now_ms(),
    })
    .to_string()
}

/// Reads a final event (a reply) back into an outcome.
pub fn outcome_of(event: &str) -> Option<Outcome> {
    let v: Value = serde_json::from_str(event).ok()?;
    match v.get("event")?.as_str()? {
        "done" => Some(Outcome::Done(
            v.get("result").cloned().unwrap_or(Value::Null),
        )),
        "error" => Some(Outcome::Failed(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        )),
        _ => None,
    }
}
