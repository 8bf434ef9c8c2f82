//! Rust workers: the [`Worker`] trait, the context a run gets, and how an attempt can fail.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A piece of work the node can run. Register it with [`crate::NodeBuilder::worker`].
///
/// ```no_run
/// use background::{TaskContext, TaskError, Worker};
/// use serde_json::{Value, json};
///
/// struct Email;
///
/// #[async_trait::async_trait]
/// impl Worker for Email {
///     async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
///         let to: String = ctx.arg("to")?;
///         Ok(json!({ "sent_to": to }))
///     }
/// }
/// ```
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// Runs one attempt. The returned value is stored as the task's result.
    ///
    /// A panic fails this attempt only ("worker crashed: …"); the node restarts the actor that
    /// ran it and the other tasks keep flowing. The run is cancelled (the future dropped) when
    /// the task's time limit passes. When the task is cancelled, [`TaskContext::cancelled`]
    /// resolves; a worker that does not return within 5 s after that is dropped.
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError>;
}

/// Why an attempt failed, and what should happen next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// Retry with the configured backoff while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Retry after the given delay while attempts remain.
    #[error("{message} (retry after {after:?})")]
    RetryAfter {
        /// The delay before the next attempt.
        after: Duration,
        /// The error message.
        message: String,
    },
    /// Fail now, without further attempts.
    #[error("{0}")]
    Fail(String),
}

impl TaskError {
    /// A retryable error.
    pub fn retry(message: impl Into<String>) -> TaskError {
        TaskError::Retry(message.into())
    }

    /// An error that ends the task.
    pub fn fail(message: impl Into<String>) -> TaskError {
        TaskError::Fail(message.into())
    }

    /// The outcome this error makes of an attempt.
    pub fn into_outcome(self) -> crate::model::task::Outcome {
        use crate::model::task::{Outcome, Retry};
        match self {
            TaskError::Retry(error) => Outcome::Failed {
                error,
                retry: Retry::Backoff,
            },
            TaskError::RetryAfter { after, message } => Outcome::Failed {
                error: message,
                retry: Retry::After(after),
            },
            TaskError::Fail(error) => Outcome::Failed {
                error,
                retry: Retry::Never,
            },
        }
    }

    /// The message, without the policy.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Retry(m) | TaskError::Fail(m) => m,
            TaskError::RetryAfter { message, .. } => message,
        }
    }
}

/// What a worker gets for one attempt.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task id: the idempotency key a worker may use for its side effects.
    pub id: String,
    /// Worker name.
    pub worker: String,
    /// This attempt, 1 for the first.
    pub attempt: u32,
    /// The node running it.
    pub node: String,
    /// The arguments.
    pub args: Value,
    /// Signalled when the task is cancelled.
    pub cancel: CancellationToken,
}

impl TaskContext {
    /// The arguments as a typed value; a mismatch fails the task without retry.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_value(self.args.clone())
            .map_err(|e| TaskError::fail(format!("bad arguments: {e}")))
    }

    /// True once cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when cancellation is requested: select on it to stop early.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// One named argument as a typed value.
    pub fn arg<T: DeserializeOwned>(&self, name: &str) -> Result<T, TaskError> {
        let value = self
            .args
            .get(name)
            .cloned()
            .ok_or_else(|| TaskError::fail(format!("missing argument `{name}`")))?;
        serde_json::from_value(value)
            .map_err(|e| TaskError::fail(format!("argument `{name}`: {e}")))
    }
}

/// Per-worker options set at registration; unset fields fall back to `[workers]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerOptions {
    /// Tasks of this worker running at once on a node.
    pub concurrency: Option<u32>,
    /// Run-time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Attempts per task.
    pub attempts: Option<u32>,
    /// Retry backoff base and cap.
    pub backoff: Option<(Duration, Duration)>,
}

impl WorkerOptions {
    /// Sets the concurrency.
    pub fn concurrency(mut self, n: u32) -> WorkerOptions {
        self.concurrency = Some(n);
        self
    }

    /// Sets the run-time limit.
    pub fn timeout(mut self, timeout: Duration) -> WorkerOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the attempts per task.
    pub fn attempts(mut self, attempts: u32) -> WorkerOptions {
        self.attempts = Some(attempts);
        self
    }

    /// Sets the retry backoff base and cap.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> WorkerOptions {
        self.backoff = Some((base, cap));
        self
    }
}

/// A shareable worker.
pub(crate) type SharedWorker = Arc<dyn Worker>;

/// Workers every node offers, for smoke tests and benchmarks.
pub(crate) mod builtin {
    use super::*;

    /// `bg-noop`: returns `null` at once. The benchmark worker.
    pub(crate) struct Noop;

    #[async_trait]
    impl Worker for Noop {
        async fn run(&self, _ctx: TaskContext) -> Result<Value, TaskError> {
            Ok(Value::Null)
        }
    }

    /// `bg-echo`: returns its arguments.
    pub(crate) struct Echo;

    #[async_trait]
    impl Worker for Echo {
        async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
            Ok(ctx.args)
        }
    }

    /// `bg-sleep`: waits `{"ms": N}` milliseconds (at most an hour), then returns `{"slept_ms": N}`.
    pub(crate) struct Sleep;

    #[async_trait]
    impl Worker for Sleep {
        async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
            let ms: u64 = ctx.arg("ms")?;
            if ms > 3_600_000 {
                return Err(TaskError::fail("`ms` is over one hour"));
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(serde_json::json!({ "slept_ms": ms }))
        }
    }

    /// The built-in workers by name.
    pub(crate) fn all() -> Vec<(&'static str, SharedWorker)> {
        vec![
            ("bg-noop", Arc::new(Noop)),
            ("bg-echo", Arc::new(Echo)),
            ("bg-sleep", Arc::new(Sleep)),
        ]
    }
}
