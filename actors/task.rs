//! The task model: what a client submits ([`TaskSpec`]), what a node runs ([`Task`]), what a
//! worker returns ([`Outcome`]) and what anyone can read back ([`TaskStatus`]).
//!
//! The durable form is the Redis hash `{prefix}:task:{id}`; its field names are the `F_*`
//! constants below and are documented in PROTOCOL.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{NameError, validate_worker_name};

/// Lowest accepted priority.
pub const MIN_PRIORITY: i32 = -100;
/// Highest accepted priority.
pub const MAX_PRIORITY: i32 = 100;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest client-chosen task id.
pub const MAX_ID_LEN: usize = 128;

/// Field names of the task hash.
pub mod field {
    /// Task id.
    pub const ID: &str = "id";
    /// Worker name.
    pub const WORKER: &str = "worker";
    /// Arguments, JSON text.
    pub const ARGS: &str = "args";
    /// Priority, higher runs first.
    pub const PRIORITY: &str = "priority";
    /// Maximum number of attempts.
    pub const ATTEMPTS: &str = "attempts";
    /// Current attempt (0 before the first run).
    pub const ATTEMPT: &str = "attempt";
    /// Run-time limit in milliseconds (0: the worker's default).
    pub const TIMEOUT: &str = "timeout";
    /// `1` when a caller waits on the reply list.
    pub const REPLY: &str = "reply";
    /// Lifecycle state, see [`super::TaskState`].
    pub const STATE: &str = "state";
    /// Owning node id (empty while pending).
    pub const NODE: &str = "node";
    /// Fencing token, bumped on every change of owner.
    pub const EPOCH: &str = "epoch";
    /// Result, JSON text.
    pub const RESULT: &str = "result";
    /// Error message.
    pub const ERROR: &str = "error";
    /// Creation time, Unix milliseconds.
    pub const CREATED: &str = "created";
    /// Start of the latest attempt, Unix milliseconds.
    pub const STARTED: &str = "started";
    /// End of the task, Unix milliseconds.
    pub const FINISHED: &str = "finished";
    /// Completions rejected by fencing (stale duplicates).
    pub const STALE: &str = "stale";
}

/// The lifecycle state of a task, as stored in the `state` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Accepted, waiting for a worker (pending in Redis or queued on a node).
    Queued,
    /// A worker is running it.
    Running,
    /// Finished with a result.
    Done,
    /// Finished with an error.
    Failed,
}

impl TaskState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<TaskState> {
        Some(match text {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            _ => return None,
        })
    }

    /// True once the task will not run again.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Done | TaskState::Failed)
    }

    /// The BackgroundService-style progress code: 0 not started, 1 started, 2 finished.
    pub fn progress(self) -> u8 {
        match self {
            TaskState::Queued => 0,
            TaskState::Running => 1,
            TaskState::Done | TaskState::Failed => 2,
        }
    }
}

/// A task as a client submits it. Build one with [`TaskSpec::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The id; `None` lets the system assign a UUIDv7. A given id is the idempotency key.
    pub id: Option<String>,
    /// Worker name.
    pub worker: String,
    /// Arguments handed to the worker.
    pub args: Value,
    /// Priority in `MIN_PRIORITY..=MAX_PRIORITY`, higher first; equal priorities in arrival order.
    pub priority: i32,
    /// Maximum attempts (at least 1).
    pub attempts: u32,
    /// Run-time limit; `None` uses the worker's default.
    pub timeout: Option<Duration>,
    /// A caller waits for the result on the reply list.
    pub reply: bool,
}

impl TaskSpec {
    /// A task for `worker` with `args` and default options.
    pub fn new(worker: impl Into<String>, args: Value) -> TaskSpec {
        TaskSpec {
            id: None,
            worker: worker.into(),
            args,
            priority: 0,
            attempts: 1,
            timeout: None,
            reply: false,
        }
    }

    /// Sets the task id (the idempotency key).
    pub fn id(mut self, id: impl Into<String>) -> TaskSpec {
        self.id = Some(id.into());
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> TaskSpec {
        self.priority = priority;
        self
    }

    /// Sets the maximum number of attempts.
    pub fn attempts(mut self, attempts: u32) -> TaskSpec {
        self.attempts = attempts;
        self
    }

    /// Sets the run-time limit.
    pub fn timeout(mut self, timeout: Duration) -> TaskSpec {
        self.timeout = Some(timeout);
        self
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_worker_name(&self.worker).map_err(SpecError::Worker)?;
        if let Some(id) = &self.id {
            validate_task_id(id)?;
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&self.priority) {
            return Err(SpecError::Field {
                field: "priority",
                reason: format!(
                    "{} is outside {MIN_PRIORITY}..={MAX_PRIORITY}",
                    self.priority
                ),
            });
        }
        if self.attempts == 0 || self.attempts > MAX_ATTEMPTS {
            return Err(SpecError::Field {
                field: "attempts",
                reason: format!("{} is outside 1..={MAX_ATTEMPTS}", self.attempts),
            });
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(SpecError::Field {
                field: "timeout",
                reason: "must be longer than zero".into(),
            });
        }
        Ok(())
    }
}

/// Why a task was refused before it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The worker name fails the allowlist.
    #[error("{0}")]
    Worker(NameError),
    /// A field has a bad value.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks a client-chosen task id: `[A-Za-z0-9_.:-]`, 1 to 128 characters.
pub fn validate_task_id(id: &str) -> Result<(), SpecError> {
    let bad = |reason: String| SpecError::Field {
        field: "id",
        reason,
    };
    if id.is_empty() {
        return Err(bad("is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(format!(
            "is {} bytes long (at most {MAX_ID_LEN})",
            id.len()
        )));
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(bad(format!(
            "\"{}\" contains {:?} (letters, digits, `_`, `-`, `.`, `:` only)",
            crate::names::shorten(id, 40),
            ch
        )));
    }
    Ok(())
}

/// A new task id: a UUIDv7, so ids sort by creation time.
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A task claimed by a node, ready to run.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// Worker name.
    pub worker: String,
    /// Arguments, JSON text as stored.
    pub args: String,
    /// Priority.
    pub priority: i32,
    /// The attempt this run is (1 for the first).
    pub attempt: u32,
    /// Maximum attempts.
    pub attempts: u32,
    /// Run-time limit given by the task, if any.
    pub timeout: Option<Duration>,
    /// The fencing token this node owns the task under.
    pub epoch: u64,
    /// Creation time, Unix milliseconds (orders equal priorities).
    pub created: u64,
    /// A caller waits for the result.
    pub reply: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a result.
    Done(Value),
    /// Failure with a message for the user.
    Failed(String),
}

/// Everything stored about a task, as `bgnode status --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// Worker name.
    pub worker: String,
    /// Lifecycle state (`queued`, `running`, `done`, `failed`).
    pub state: String,
    /// Progress code: 0 not started, 1 started, 2 finished.
    pub progress: u8,
    /// Owning node, `null` while pending.
    pub node: Option<String>,
    /// Current attempt (0 before the first run).
    pub attempt: u32,
    /// Maximum attempts.
    pub attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Arguments.
    pub args: Value,
    /// Result, once done.
    pub result: Option<Value>,
    /// Error message, once failed.
    pub error: Option<String>,
    /// Fencing epoch.
    pub epoch: u64,
    /// Creation time, Unix milliseconds.
    pub created: Option<u64>,
    /// Start of the latest attempt, Unix milliseconds.
    pub started: Option<u64>,
    /// End, Unix milliseconds.
    pub finished: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_validation_names_the_field() {
        assert!(TaskSpec::new("email", json!({})).validate().is_ok());
        let e = TaskSpec::new("email", json!(1))
            .priority(101)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("priority"), "{e}");
        let e = TaskSpec::new("email", json!(1))
            .attempts(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("attempts"), "{e}");
        let e = TaskSpec::new("../x", json!(1)).validate().unwrap_err();
        assert!(matches!(e, SpecError::Worker(_)));
        let e = TaskSpec::new("w", json!(1))
            .id("a b")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("field `id`"), "{e}");
        let e = TaskSpec::new("w", json!(1))
            .timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn states_round_trip_and_map_to_progress() {
        for st in [
            TaskState::Queued,
            TaskState::Running,
            TaskState::Done,
            TaskState::Failed,
        ] {
            assert_eq!(TaskState::parse(st.as_str()), Some(st));
        }
        assert_eq!(TaskState::Queued.progress(), 0);
        assert_eq!(TaskState::Running.progress(), 1);
        assert_eq!(TaskState::Failed.progress(), 2);
        assert!(TaskState::parse("bogus").is_none());
    }

    #[test]
    fn generated_ids_sort_by_time() {
        let a = new_task_id();
        let b = new_task_id();
        assert!(a < b);
        assert!(validate_task_id(&a).is_ok());
    }
}
