//! The task model: what a client submits ([`TaskSpec`]), what a node runs ([`Task`]), how an
//! attempt ended ([`Outcome`]) and what anyone can read back ([`TaskStatus`]).
//!
//! The durable form is the Redis hash `{prefix}:task:{id}`; its field names are in [`field`]
//! and documented in PROTOCOL.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decide::cron::Recurrence;
use crate::model::names::{NameError, validate_worker_name};

/// Lowest accepted priority.
pub(crate) const MIN_PRIORITY: i32 = -100;
/// Highest accepted priority.
pub(crate) const MAX_PRIORITY: i32 = 100;
/// Most attempts a task may ask for.
pub(crate) const MAX_ATTEMPTS: u32 = 100;
/// Longest client-chosen task id, key or result key.
pub(crate) const MAX_ID_LEN: usize = 128;
/// Shortest interval of a recurring task.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Field names of the task hash.
pub(crate) mod field {
    /// Task id.
    pub(crate) const ID: &str = "id";
    /// Worker name.
    pub(crate) const WORKER: &str = "worker";
    /// Arguments, JSON text.
    pub(crate) const ARGS: &str = "args";
    /// Priority, higher runs first.
    pub(crate) const PRIORITY: &str = "priority";
    /// Maximum number of attempts (0: the worker's default).
    pub(crate) const ATTEMPTS: &str = "attempts";
    /// The latest attempt that started (0 before the first run).
    pub(crate) const ATTEMPT: &str = "attempt";
    /// Run-time limit in milliseconds (0: the worker's default).
    pub(crate) const TIMEOUT: &str = "timeout";
    /// Retry backoff base in milliseconds (absent: the worker's default).
    pub(crate) const BACKOFF: &str = "backoff";
    /// Retry backoff cap in milliseconds (absent: the worker's default).
    pub(crate) const BACKOFF_CAP: &str = "backoff_cap";
    /// `1` when a caller waits on the reply list.
    pub(crate) const REPLY: &str = "reply";
    /// Lifecycle state, see [`super::TaskState`].
    pub(crate) const STATE: &str = "state";
    /// Owning node id (empty while not on a node).
    pub(crate) const NODE: &str = "node";
    /// Fencing token, bumped on every change of owner.
    pub(crate) const EPOCH: &str = "epoch";
    /// Result, JSON text.
    pub(crate) const RESULT: &str = "result";
    /// Error message (of the latest failed attempt).
    pub(crate) const ERROR: &str = "error";
    /// Creation time, Unix milliseconds.
    pub(crate) const CREATED: &str = "created";
    /// Start of the latest attempt, Unix milliseconds.
    pub(crate) const STARTED: &str = "started";
    /// End of the task, Unix milliseconds.
    pub(crate) const FINISHED: &str = "finished";
    /// When a delayed task is due, or a recurring template's next occurrence.
    pub(crate) const RUN_AT: &str = "run_at";
    /// Interval of a recurring template, in milliseconds.
    pub(crate) const EVERY: &str = "every";
    /// Cron expression of a recurring template.
    pub(crate) const CRON: &str = "cron";
    /// Must have started by this time (Unix ms), else it expires.
    pub(crate) const DEADLINE: &str = "deadline";
    /// Deadline of each occurrence of a template, relative to its due time (ms).
    pub(crate) const DEADLINE_IN: &str = "deadline_in";
    /// Per-key limit group.
    pub(crate) const KEY: &str = "key";
    /// The limit of that key when the task was accepted.
    pub(crate) const KEY_LIMIT: &str = "klimit";
    /// Name under which the result is also stored.
    pub(crate) const RESULT_KEY: &str = "result_key";
    /// The template an occurrence came from.
    pub(crate) const TEMPLATE: &str = "template";
    /// When a retrying task runs again (Unix ms).
    pub(crate) const RETRY_AT: &str = "retry_at";
    /// Where the task may run: absent or `any`, `all`, `node:<id>`.
    pub(crate) const TARGET: &str = "target";
    /// The broadcast an occurrence belongs to.
    pub(crate) const PARENT: &str = "parent";
}

/// Where a task may run (BackgrounDRb's `:host`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    /// Any node that offers the worker, chosen by load (the default).
    #[default]
    Any,
    /// Once on every live node, including nodes that join while it runs.
    All,
    /// The local node: for a client, the node id its configuration gives (`node.id`, or the
    /// host name); for a raw publish, the node that took the message.
    Local,
    /// This node only; waits for it when it is down.
    Node(String),
}

impl Target {
    /// Reads `any`, `all`, `local` or `node:<id>`.
    pub fn parse(text: &str) -> Result<Target, String> {
        match text {
            "any" | "" => Ok(Target::Any),
            "all" => Ok(Target::All),
            "local" => Ok(Target::Local),
            other => match other.strip_prefix("node:") {
                Some(id) => {
                    validate_token("target", id).map_err(|e| e.to_string())?;
                    Ok(Target::Node(id.to_owned()))
                }
                None => Err(format!(
                    "target `{}` is not any, all, local or node:<id>",
                    crate::model::names::shorten(other, 40)
                )),
            },
        }
    }

    /// The stored spelling (`local` must have been resolved to a node first).
    pub fn as_field(&self) -> Option<String> {
        match self {
            Target::Any | Target::Local => None,
            Target::All => Some("all".into()),
            Target::Node(id) => Some(format!("node:{id}")),
        }
    }

    /// `Local` made concrete for the node `here`.
    pub fn resolve(self, here: &str) -> Target {
        match self {
            Target::Local => Target::Node(here.to_owned()),
            other => other,
        }
    }
}

/// The error recorded for a task whose deadline passed before it started.
pub(crate) const EXPIRED_ERROR: &str = "deadline passed before the task started";

/// The lifecycle state of a task, as stored in the `state` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its time (delayed), or a recurring template.
    Scheduled,
    /// Waiting for a free slot of its key.
    Deferred,
    /// Accepted, waiting for a worker (pending in Redis or queued on a node).
    Queued,
    /// A worker is running it.
    Running,
    /// An attempt failed; it runs again at `retry_at`.
    Retrying,
    /// Finished with a result.
    Done,
    /// Failed without retry (the worker said so).
    Failed,
    /// Failed on every attempt; kept in the dead set until retried or expired.
    Dead,
    /// Cancelled.
    Cancelled,
    /// Its deadline passed before it started.
    Expired,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 10] = [
        TaskState::Scheduled,
        TaskState::Deferred,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Dead,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Deferred => "deferred",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True once the task will not run again (unless retried by hand).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Done
                | TaskState::Failed
                | TaskState::Dead
                | TaskState::Cancelled
                | TaskState::Expired
        )
    }

    /// The BackgroundService-style progress code: 0 not started, 1 started, 2 finished.
    pub fn progress(self) -> u8 {
        match self {
            TaskState::Scheduled | TaskState::Deferred | TaskState::Queued => 0,
            TaskState::Running | TaskState::Retrying => 1,
            _ => 2,
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
    /// Maximum attempts; `None` uses the worker's default.
    pub attempts: Option<u32>,
    /// Run-time limit of one attempt; `None` uses the worker's default.
    pub timeout: Option<Duration>,
    /// Retry backoff base; `None` uses the worker's default.
    pub backoff: Option<Duration>,
    /// Retry backoff cap; `None` uses the worker's default.
    pub backoff_cap: Option<Duration>,
    /// Run at this time (Unix ms) instead of at once.
    pub run_at: Option<u64>,
    /// Run this long after it is stored instead of at once.
    pub delay: Option<Duration>,
    /// Recur: this spec is a template that fires an occurrence at each due time.
    pub repeat: Option<Recurrence>,
    /// Must start within this long after it is enqueued (or, for a recurring task, after each
    /// occurrence is due), else it expires.
    pub deadline: Option<Duration>,
    /// Per-key limit group: at most `[keys] limit` tasks with one key pending or running.
    pub key: Option<String>,
    /// Also store the result under this name (`bgnode result --key`).
    pub result_key: Option<String>,
    /// Where it may run.
    pub target: Target,
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
            attempts: None,
            timeout: None,
            backoff: None,
            backoff_cap: None,
            run_at: None,
            delay: None,
            repeat: None,
            deadline: None,
            key: None,
            result_key: None,
            target: Target::Any,
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
        self.attempts = Some(attempts);
        self
    }

    /// Sets the run-time limit.
    pub fn timeout(mut self, timeout: Duration) -> TaskSpec {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry backoff base and cap.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> TaskSpec {
        self.backoff = Some(base);
        self.backoff_cap = Some(cap);
        self
    }

    /// Runs the task `delay` after it is stored.
    pub fn delay(mut self, delay: Duration) -> TaskSpec {
        self.delay = Some(delay);
        self
    }

    /// Runs the task at `at` (Unix ms).
    pub fn at(mut self, at: u64) -> TaskSpec {
        self.run_at = Some(at);
        self
    }

    /// Makes this a recurring task.
    pub fn repeat(mut self, repeat: Recurrence) -> TaskSpec {
        self.repeat = Some(repeat);
        self
    }

    /// Sets the deadline: it must start within `within`, else it expires.
    pub fn deadline(mut self, within: Duration) -> TaskSpec {
        self.deadline = Some(within);
        self
    }

    /// Puts the task in a per-key limit group.
    pub fn key(mut self, key: impl Into<String>) -> TaskSpec {
        self.key = Some(key.into());
        self
    }

    /// Also stores the result under `name`.
    pub fn result_key(mut self, name: impl Into<String>) -> TaskSpec {
        self.result_key = Some(name.into());
        self
    }

    /// Sets where the task may run.
    pub fn target(mut self, target: Target) -> TaskSpec {
        self.target = target;
        self
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &'static str, reason: String| SpecError::Field { field, reason };
        validate_worker_name(&self.worker).map_err(SpecError::Worker)?;
        if let Some(id) = &self.id {
            validate_token("id", id)?;
        }
        if let Some(key) = &self.key {
            validate_token("key", key)?;
        }
        if let Some(rk) = &self.result_key {
            validate_token("result_key", rk)?;
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&self.priority) {
            return Err(bad(
                "priority",
                format!(
                    "{} is outside {MIN_PRIORITY}..={MAX_PRIORITY}",
                    self.priority
                ),
            ));
        }
        if let Some(a) = self.attempts
            && (a == 0 || a > MAX_ATTEMPTS)
        {
            return Err(bad(
                "attempts",
                format!("{a} is outside 1..={MAX_ATTEMPTS}"),
            ));
        }
        for (name, d) in [
            ("timeout", self.timeout),
            ("backoff", self.backoff),
            ("backoff_cap", self.backoff_cap),
            ("deadline", self.deadline),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(bad(name, "must be longer than zero".into()));
            }
        }
        if let Some(Recurrence::Every(d)) = &self.repeat
            && *d < MIN_INTERVAL
        {
            return Err(bad(
                "every",
                format!("the interval must be at least {MIN_INTERVAL:?}"),
            ));
        }
        if self.delay.is_some() && self.run_at.is_some() {
            return Err(bad(
                "in",
                "a delay and a time (`at`) exclude each other".into(),
            ));
        }
        if self.target == Target::All && (self.repeat.is_some() || self.key.is_some()) {
            return Err(bad(
                "target",
                "`all` cannot be combined with a recurrence or a key".into(),
            ));
        }
        if let Target::Node(id) = &self.target {
            validate_token("target", id)?;
        }
        if self.repeat.is_some() && self.reply {
            return Err(bad(
                "every",
                "a recurring task has no single result to wait for".into(),
            ));
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

/// Checks a client-chosen id, key or result key: `[A-Za-z0-9_.:-]`, 1 to 128 characters.
pub(crate) fn validate_token(field: &'static str, text: &str) -> Result<(), SpecError> {
    let bad = |reason: String| SpecError::Field { field, reason };
    if text.is_empty() {
        return Err(bad("is empty".into()));
    }
    if text.len() > MAX_ID_LEN {
        return Err(bad(format!(
            "is {} bytes long (at most {MAX_ID_LEN})",
            text.len()
        )));
    }
    if let Some(ch) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(bad(format!(
            "\"{}\" contains {:?} (letters, digits, `_`, `-`, `.`, `:` only)",
            crate::model::names::shorten(text, 40),
            ch
        )));
    }
    Ok(())
}

/// Checks a client-chosen task id.
pub(crate) fn validate_task_id(id: &str) -> Result<(), SpecError> {
    validate_token("id", id)
}

/// Checks the id of a task as stored, which is a client's id ([`validate_task_id`]) or one the
/// cluster made from one: an occurrence of a recurring task (`{template}@{due_ms}`) or one
/// node's copy of a task for every node (`{parent}@{node}`). Readers take both; clients may
/// choose only the first.
pub(crate) fn validate_stored_id(id: &str) -> Result<(), SpecError> {
    match id.split_once('@') {
        Some((parent, child)) => {
            validate_token("id", parent)?;
            validate_token("id", child)
        }
        None => validate_task_id(id),
    }
}

/// A new task id: a UUIDv7, so ids sort by creation time.
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A task claimed by a node, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Task {
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
    /// Maximum attempts given by the task (`None`: the worker's default).
    pub attempts: Option<u32>,
    /// Run-time limit given by the task, if any.
    pub timeout: Option<Duration>,
    /// Retry backoff base given by the task, if any.
    pub backoff: Option<Duration>,
    /// Retry backoff cap given by the task, if any.
    pub backoff_cap: Option<Duration>,
    /// Must start by this time (Unix ms).
    pub deadline: Option<u64>,
    /// The fencing token this node owns the task under.
    pub epoch: u64,
    /// Creation time, Unix milliseconds (orders equal priorities).
    pub created: u64,
    /// Pinned to this node (target `node:<id>`): never handed to another. Decided by the
    /// store's claim and adopt scripts, which hold the one rule.
    pub pinned: bool,
}

#[cfg(test)]
impl Task {
    /// A claimed task with every option unset, for tests.
    pub(crate) fn sample(id: &str) -> Task {
        Task {
            id: id.into(),
            worker: "w".into(),
            args: "null".into(),
            priority: 0,
            attempt: 1,
            attempts: None,
            timeout: None,
            backoff: None,
            backoff_cap: None,
            deadline: None,
            epoch: 1,
            created: 0,
            pinned: false,
        }
    }
}

/// How an attempt ended, as the worker (or the node) saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a result.
    Done(Value),
    /// Failure; `retry` says whether another attempt may follow.
    Failed {
        /// The message for the user.
        error: String,
        /// What the failure asks for.
        retry: Retry,
    },
    /// Stopped because cancellation was requested.
    Cancelled,
    /// Not started: its deadline had passed.
    Expired,
}

impl Outcome {
    /// A failure that may be retried with the configured backoff.
    pub fn failed(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: error.into(),
            retry: Retry::Backoff,
        }
    }
}

/// What a failed attempt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry with exponential backoff while attempts remain.
    Backoff,
    /// Retry after this delay while attempts remain.
    After(Duration),
    /// Do not retry.
    Never,
}

/// Everything stored about a task, as `bgnode status --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// Worker name.
    pub worker: String,
    /// Lifecycle state.
    pub state: String,
    /// Progress code: 0 not started, 1 started, 2 finished.
    pub progress: u8,
    /// Owning node, `null` when no node holds it.
    pub node: Option<String>,
    /// Latest attempt (0 before the first run).
    pub attempt: u32,
    /// Maximum attempts (`null`: the worker's default).
    pub attempts: Option<u32>,
    /// Priority.
    pub priority: i32,
    /// Arguments.
    pub args: Value,
    /// Result, once done.
    pub result: Option<Value>,
    /// Error message of the latest failure.
    pub error: Option<String>,
    /// Fencing epoch.
    pub epoch: u64,
    /// Creation time, Unix milliseconds.
    pub created: Option<u64>,
    /// Start of the latest attempt, Unix milliseconds.
    pub started: Option<u64>,
    /// End, Unix milliseconds.
    pub finished: Option<u64>,
    /// When it is due (delayed task, next occurrence of a template).
    pub run_at: Option<u64>,
    /// When a retrying task runs again.
    pub retry_at: Option<u64>,
    /// Interval of a recurring template, in milliseconds.
    pub every: Option<u64>,
    /// Cron expression of a recurring template.
    pub cron: Option<String>,
    /// Must start by this time, Unix milliseconds.
    pub deadline: Option<u64>,
    /// Per-key limit group.
    pub key: Option<String>,
    /// Name under which the result is stored.
    pub result_key: Option<String>,
    /// The template of an occurrence.
    pub template: Option<String>,
    /// Where it may run: `null` (any), `all`, `node:<id>`.
    pub target: Option<String>,
    /// The broadcast an occurrence belongs to.
    pub parent: Option<String>,
}

/// Milliseconds since the Unix epoch by this machine's clock. The cluster decides nothing by
/// it: every due time, deadline and recorded time is Redis's (see ARCHITECTURE.md, "One clock").
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
