//! The Rust client: enqueue durably, wait for results, read status.
//!
//! `enqueue` writes the task record and its pending entry in one atomic script, which also
//! publishes a wake notice on the task channel: once it returns, the task exists and will run
//! even if no node heard the notice (nodes sweep the pending sets on start and reconnect).

use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;
use crate::events::outcome_of;
use crate::store::{Publish, Store, StoreError};
use crate::task::{Outcome, SpecError, TaskSpec, TaskStatus};

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The task was refused before it was stored.
    #[error("invalid task: {0}")]
    Invalid(#[from] SpecError),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task failed; the message is the worker's error.
    #[error("task {id} failed: {error}")]
    Failed {
        /// Task id.
        id: String,
        /// The error.
        error: String,
    },
    /// No result within the wait; the task may still run.
    #[error("no result for task {id} within {waited:?}; it may still be queued or running")]
    Timeout {
        /// Task id.
        id: String,
        /// How long the call waited.
        waited: Duration,
    },
}

/// What `result` finds.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskResult {
    /// Finished with a result.
    Done(Value),
    /// Finished with an error.
    Failed(String),
    /// Not finished; the current state.
    Pending(String),
    /// No such task (never existed, or expired after the result TTL).
    NotFound,
}

/// A connection to a bgnode cluster's Redis.
#[derive(Debug, Clone)]
pub struct Client {
    store: Store,
    channel: String,
    events: String,
}

impl Client {
    /// Connects with the default channel names and key prefix.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let mut settings = Settings::defaults();
        settings.redis.url = url.to_owned();
        Client::from_settings(&settings).await
    }

    /// Connects with the `[redis]` settings (URL, channels, prefix).
    pub async fn from_settings(settings: &Settings) -> Result<Client, ClientError> {
        let store = Store::connect(&settings.redis.url, &settings.redis.prefix).await?;
        Ok(Client {
            store,
            channel: settings.redis.channel.clone(),
            events: settings.redis.events.clone(),
        })
    }

    /// Stores a task durably and wakes the cluster. Returns the task id. Enqueuing an id that
    /// exists does nothing (the id is the idempotency key) and returns the same id.
    pub async fn enqueue(&self, spec: TaskSpec) -> Result<String, ClientError> {
        Ok(self.enqueue_all(vec![spec]).await?.remove(0))
    }

    /// Stores several tasks in one round trip. Returns their ids in order.
    pub async fn enqueue_all(&self, specs: Vec<TaskSpec>) -> Result<Vec<String>, ClientError> {
        for spec in &specs {
            spec.validate()?;
        }
        let mut specs = specs;
        for spec in &mut specs {
            spec.id.get_or_insert_with(crate::task::new_task_id);
        }
        let publish = Publish {
            wake: Some(&self.channel),
            events: &self.events,
        };
        let stored = self.store.enqueue_many(&specs, &publish).await?;
        Ok(stored.into_iter().map(|(id, _)| id).collect())
    }

    /// Enqueues a task and waits up to `timeout` for its result.
    pub async fn call(&self, spec: TaskSpec, timeout: Duration) -> Result<Value, ClientError> {
        let mut spec = spec;
        spec.reply = true;
        let id = self.enqueue(spec).await?;
        self.wait(&id, timeout).await
    }

    /// Waits up to `timeout` for the result of a task enqueued with a reply (as `call` does).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value, ClientError> {
        let reply = self.store.wait_reply(id, timeout).await?;
        match reply.as_deref().and_then(outcome_of) {
            Some(Outcome::Done(v)) => Ok(v),
            Some(Outcome::Failed(error)) => Err(ClientError::Failed {
                id: id.to_owned(),
                error,
            }),
            None => Err(ClientError::Timeout {
                id: id.to_owned(),
                waited: timeout,
            }),
        }
    }

    /// Everything stored about a task, or `None` when it does not exist (or expired).
    pub async fn status(&self, id: &str) -> Result<Option<TaskStatus>, ClientError> {
        Ok(self.store.status(id).await?)
    }

    /// The result of a task, if it finished.
    pub async fn result(&self, id: &str) -> Result<TaskResult, ClientError> {
        Ok(match self.status(id).await? {
            None => TaskResult::NotFound,
            Some(s) => match s.state.as_str() {
                "done" => TaskResult::Done(s.result.unwrap_or(Value::Null)),
                "failed" => TaskResult::Failed(s.error.unwrap_or_default()),
                other => TaskResult::Pending(other.to_owned()),
            },
        })
    }

    /// The store, for tools that need raw access.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
