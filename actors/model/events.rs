//! Event messages published on the events channel (`background:events` by default).
//!
//! One JSON object per event with at least `event`, `ts` (Unix ms) and, for task events, `id`,
//! `worker`, `node` and `attempt`. PROTOCOL.md lists every kind with its fields. Events of
//! transitions made inside Lua scripts (`available`, `cancelled` and `expired` of waiting tasks)
//! are built there with the same fields.

use serde_json::{Value, json};

use crate::decide::policy::Settle;
use crate::model::envelope::Rejection;
use crate::model::task::Task;

fn base(kind: &str, task: &Task, node: &str, at: u64) -> Value {
    json!({
        "event": kind, "id": task.id, "worker": task.worker, "node": node,
        "attempt": task.attempt, "ts": at,
    })
}

/// `started`: an attempt began.
pub(crate) fn started(task: &Task, node: &str, at: u64) -> String {
    base("started", task, node, at).to_string()
}

/// `error`: an attempt failed (followed by `retry` or `dead`, or final as state `failed`).
pub(crate) fn error(task: &Task, node: &str, error: &str, at: u64) -> String {
    let mut e = base("error", task, node, at);
    e["error"] = json!(error);
    e.to_string()
}

/// The event of a transition: `done`, `retry`, `dead`, `error` (failed without retry),
/// `cancelled` or `expired`. For a final state it is also the reply a waiting caller receives.
pub(crate) fn transition(task: &Task, node: &str, settle: &Settle, at: u64) -> String {
    let mut e = match settle {
        Settle::Done(result) => {
            let mut e = base("done", task, node, at);
            e["result"] = result.clone();
            e
        }
        Settle::Retry {
            error,
            at: retry_at,
        } => {
            let mut e = base("retry", task, node, at);
            e["error"] = json!(error);
            e["retry_at"] = json!(retry_at);
            e
        }
        Settle::Dead { error } => {
            let mut e = base("dead", task, node, at);
            e["error"] = json!(error);
            e
        }
        Settle::Failed { error: message } => return error(task, node, message, at),
        Settle::Cancelled => base("cancelled", task, node, at),
        Settle::Expired => base("expired", task, node, at),
    };
    if matches!(settle, Settle::Cancelled) {
        e["error"] = json!("cancelled");
    }
    if matches!(settle, Settle::Expired) {
        e["error"] = json!(crate::model::task::EXPIRED_ERROR);
    }
    e.to_string()
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
