//! The saver's writes: starts and finishes of attempts, each fenced by the epoch the node owns
//! the task under, applied in order by `write.lua`, [`SCRIPT_CHUNK`] per call.

use super::{SCRIPT_CHUNK, Store, StoreResult};
use crate::model::task::TaskState;

/// A durable write made by the saver. Each is one fenced script call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WriteOp {
    /// The task started its attempt.
    Start {
        /// Task id.
        id: String,
        /// Epoch the node owns it under.
        epoch: u64,
        /// The attempt that started.
        attempt: u32,
        /// Start time, Unix ms.
        at: u64,
        /// The `started` event.
        event: String,
    },
    /// The attempt ended: the task is done, retrying, dead, failed, cancelled or expired.
    Finish {
        /// Task id.
        id: String,
        /// Its worker type: not written, but counted in the node's metrics once Redis has
        /// applied the write.
        worker: String,
        /// Owning node (whose owned set loses the id).
        node: String,
        /// Epoch the node owns it under.
        epoch: u64,
        /// Attempt that ended.
        attempt: u32,
        /// Start time of the attempt, Unix ms.
        started: u64,
        /// End time, Unix ms.
        finished: u64,
        /// The new state.
        state: TaskState,
        /// Result JSON text (done) or error message.
        value: String,
        /// When a retrying task runs again (Unix ms), else 0.
        retry_at: u64,
        /// The event of this transition (also the reply for a waiting caller when final).
        event: String,
        /// The `started` event when the start was folded into this write.
        started_event: Option<String>,
        /// The `error` event of a failed attempt, published before `retry` or `dead`.
        error_event: Option<String>,
        /// The task's arguments (JSON text), for the archive's row.
        args: String,
        /// Its priority, for the archive's row.
        priority: i32,
        /// Its creation time (Unix ms), for the archive's row.
        created: u64,
    },
    /// Publish an event that belongs to no task write (`rejected`).
    Event {
        /// The event JSON.
        event: String,
    },
}

/// What Redis said about one [`WriteOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteResult {
    /// Written.
    Applied,
    /// Refused by fencing: the task has another epoch now (counted as a stale duplicate).
    Stale,
    /// The task was already finished under this epoch (a retried write).
    AlreadyDone,
    /// The task record no longer exists.
    Gone,
    /// The script failed on this write (a bug or a corrupt record); it is not retried.
    Failed,
}

impl Store {
    /// Applies a batch of writes, in order, each on its own: one round trip, one script call
    /// per [`SCRIPT_CHUNK`] writes (a longer script would hold Redis up for everyone else).
    pub(crate) async fn write(&self, ops: &[WriteOp]) -> StoreResult<Vec<WriteResult>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chunk in ops.chunks(SCRIPT_CHUNK) {
            pipe.add_command(self.write_cmd(chunk));
        }
        let codes: Vec<Vec<i64>> = self.run_pipeline(&pipe).await?;
        Ok(codes
            .into_iter()
            .flatten()
            .map(|code| match code {
                1 => WriteResult::Applied,
                0 => WriteResult::Stale,
                2 => WriteResult::AlreadyDone,
                3 => WriteResult::Gone,
                _ => WriteResult::Failed,
            })
            .collect())
    }

    fn write_cmd(&self, ops: &[WriteOp]) -> redis::Cmd {
        let mut cmd = self.scripts.write.bare();
        cmd.arg(self.keys.prefix())
            .arg(&self.names.events)
            .arg(&self.names.channel)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(self.names.dead_ttl.as_millis() as u64);
        for op in ops {
            match op {
                WriteOp::Start {
                    id,
                    epoch,
                    attempt,
                    at,
                    event,
                } => {
                    cmd.arg("S")
                        .arg(id)
                        .arg(epoch)
                        .arg(attempt)
                        .arg(at)
                        .arg(event);
                }
                WriteOp::Finish {
                    id,
                    worker,
                    node,
                    epoch,
                    attempt,
                    started,
                    finished,
                    state,
                    value,
                    retry_at,
                    event,
                    started_event,
                    error_event,
                    args,
                    priority,
                    created,
                } => {
                    // On a node that archives, a final end carries its row, which `write.lua`
                    // stages on this node's outbox when it applies the end (else '': the row,
                    // if the cluster archives, is staged from the record).
                    let row = if self.names.archives && state.is_finished() {
                        archive_row(&ArchiveRow {
                            id,
                            worker,
                            state: state.as_str(),
                            attempt,
                            node,
                            priority: *priority,
                            created: *created,
                            started: *started,
                            finished: *finished,
                            args,
                            value,
                        })
                    } else {
                        String::new()
                    };
                    cmd.arg("F")
                        .arg(id)
                        .arg(node)
                        .arg(epoch)
                        .arg(state.as_str())
                        .arg(value)
                        .arg(attempt)
                        .arg(started)
                        .arg(finished)
                        .arg(retry_at)
                        .arg(event)
                        .arg(started_event.as_deref().unwrap_or(""))
                        .arg(error_event.as_deref().unwrap_or(""))
                        .arg(row);
                }
                WriteOp::Event { event } => {
                    cmd.arg("E").arg(event);
                }
            }
        }
        cmd
    }
}

/// What a node knows of a task it ends, for the archive.
struct ArchiveRow<'a> {
    id: &'a str,
    worker: &'a str,
    state: &'a str,
    attempt: &'a u32,
    node: &'a str,
    priority: i32,
    created: u64,
    started: u64,
    finished: u64,
    args: &'a str,
    value: &'a str,
}

/// The row `write.lua` stages for the archive, in the outbox's format (the record's fields as
/// text, as `stage_row` in `common.lua` writes them); the script adds `key`, `parent` and
/// `template` from the record.
fn archive_row(r: &ArchiveRow<'_>) -> String {
    /// The staged row's fields, serialized straight into the text (no map of owned values).
    #[derive(serde::Serialize)]
    struct Staged<'a> {
        id: &'a str,
        worker: &'a str,
        state: &'a str,
        attempt: String,
        node: &'a str,
        priority: String,
        created: String,
        started: String,
        finished: String,
        args: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    }
    let done = r.state == "done";
    let staged = Staged {
        id: r.id,
        worker: r.worker,
        state: r.state,
        attempt: r.attempt.to_string(),
        node: r.node,
        priority: r.priority.to_string(),
        created: r.created.to_string(),
        started: r.started.to_string(),
        finished: r.finished.to_string(),
        args: r.args,
        result: done.then_some(r.value),
        error: (!done).then_some(r.value),
    };
    serde_json::to_string(&staged).expect("a row of strings serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, value: &str) -> serde_json::Value {
        let text = archive_row(&ArchiveRow {
            id: "t1",
            worker: "echo",
            state,
            attempt: &2,
            node: "n1",
            priority: -3,
            created: 1000,
            started: 2000,
            finished: 2500,
            args: r#"{"a":"\"q\""}"#,
            value,
        });
        assert!(
            text.ends_with('}'),
            "write.lua appends fields before the brace: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_staged_row_holds_the_record_fields_as_text() {
        let done = row("done", "[1,2]");
        assert_eq!(
            done,
            serde_json::json!({
                "id": "t1", "worker": "echo", "state": "done", "attempt": "2", "node": "n1",
                "priority": "-3", "created": "1000", "started": "2000", "finished": "2500",
                "args": r#"{"a":"\"q\""}"#, "result": "[1,2]",
            })
        );
        let failed = row("failed", "boom \"x\"");
        assert_eq!(failed["error"], "boom \"x\"");
        assert!(failed.get("result").is_none());
    }
}
