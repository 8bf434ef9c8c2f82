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
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.write.get_hash())
            .arg(0)
            .arg(self.keys.prefix())
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
                    worker: _,
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
                } => {
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
                        .arg(error_event.as_deref().unwrap_or(""));
                }
                WriteOp::Event { event } => {
                    cmd.arg("E").arg(event);
                }
            }
        }
        cmd
    }
}
