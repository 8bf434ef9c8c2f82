//! The Rust client: enqueue durably, wait for results, read status, cancel and retry.
//!
//! `enqueue` writes the task record and its pending entry in one atomic script, which also
//! publishes a wake notice on the task channel: once it returns, the task exists and will run
//! even if no node heard the notice (nodes sweep the pending sets on start and reconnect).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::wire::ControlOp;
use crate::config::Settings;
use crate::decide::placement::Load;
use crate::decide::runnable::{Unrunnable, unrunnable};
use crate::model::events::{Ending, ending_of};
use crate::model::names::validate_worker_name;
use crate::model::task::{SpecError, Target, TaskSpec, TaskStatus};
use crate::store::{
    Accepted, CancelResult, Counts, DeleteResult, Overview, RetryResult, Store, StoreError,
    TaskDetail, TaskPage, TaskQuery, Throughput,
};

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The task was refused before it was stored.
    #[error("invalid task: {0}")]
    Invalid(#[from] SpecError),
    /// The task's key is at its limit and the policy is to reject.
    #[error(
        "task refused: key `{key}` is at its limit of {limit} pending or running tasks ([keys] limit)"
    )]
    KeyFull {
        /// The key.
        key: String,
        /// The limit.
        limit: u32,
    },
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No node holds the ingress lease: nobody heard the request.
    #[error("no node is listening on the task channel: is the cluster running?")]
    NoCluster,
    /// The task ended without a result: `state` is `failed`, `dead`, `cancelled` or `expired`.
    #[error("task {id} {state}: {error}")]
    Failed {
        /// Task id.
        id: String,
        /// The final state.
        state: String,
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
    /// Finished without one: the state (`failed`, `dead`, `cancelled`, `expired`) and error.
    Failed {
        /// Final state.
        state: String,
        /// The error.
        error: String,
    },
    /// Not finished; the current state.
    Pending(String),
    /// No such task (never existed, or expired after the result TTL).
    NotFound,
}

/// One live node, as `bgnode info` shows it (BackgrounDRb's `all_worker_info`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: String,
    /// `up`, `leaving`, or `starting` (alive but no report yet).
    pub state: String,
    /// Incarnation (start time, Unix ms).
    pub generation: Option<u64>,
    /// Cluster address.
    pub addr: Option<String>,
    /// Per worker type: capacity, running, queued.
    pub workers: BTreeMap<String, Load>,
    /// Slots, over all worker types.
    pub capacity: u32,
    /// Tasks running.
    pub running: u32,
    /// Tasks claimed and waiting for a slot.
    pub queued: u32,
    /// The peers this node reaches.
    pub peers: Vec<String>,
    /// Per worker type: the settings it runs with on this node.
    pub settings: BTreeMap<String, WorkerLimits>,
}

/// The settings a worker type runs with on one node: `[workers]`, a Rust worker's registration
/// options, or a script's `NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLimits {
    /// Tasks at once on the node.
    pub concurrency: u32,
    /// Run-time limit of one attempt, ms.
    pub timeout_ms: u64,
    /// Attempts per task.
    pub attempts: u32,
    /// First retry delay, ms.
    pub backoff_ms: u64,
    /// Longest retry delay, ms.
    pub backoff_cap_ms: u64,
    /// The script's settings file, when one set them.
    pub file: Option<String>,
}

/// A node's answer to `stop` or `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlAnswer {
    /// The node.
    pub node: String,
    /// Done.
    pub ok: bool,
    /// What happened.
    pub message: String,
}

/// A connection to a bgnode cluster's Redis.
#[derive(Debug, Clone)]
pub struct Client {
    store: Store,
    key_limit: u32,
    local_node: String,
    channel: String,
    events: String,
}

impl Client {
    /// Connects with the default settings but for the URL. A `rediss://` server must then have
    /// a certificate the system trusts; for a private CA or client certificates, set
    /// `redis.tls_ca`, `tls_cert` and `tls_key` and use [`Client::from_settings`].
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let mut settings = Settings::defaults();
        settings.redis.url = url.to_owned();
        Client::from_settings(&settings).await
    }

    /// Connects with `settings`: Redis URL and TLS files, channels, prefix, result TTL, key
    /// limit.
    pub async fn from_settings(settings: &Settings) -> Result<Client, ClientError> {
        Ok(Client {
            store: Store::connect(settings).await?,
            key_limit: settings.keys.limit,
            local_node: settings.node.id.clone(),
            channel: settings.redis.channel.clone(),
            events: settings.redis.events.clone(),
        })
    }

    /// Stores a task durably and wakes the cluster. Returns the task id. Enqueuing an id that
    /// exists does nothing (the id is the idempotency key) and returns the same id.
    pub async fn enqueue(&self, spec: TaskSpec) -> Result<String, ClientError> {
        Ok(self.enqueue_all(vec![spec]).await?.remove(0))
    }

    /// Stores several tasks in one round trip. Returns their ids in order. Fails if any was
    /// refused for its key (the others are stored).
    pub async fn enqueue_all(&self, specs: Vec<TaskSpec>) -> Result<Vec<String>, ClientError> {
        Ok(self
            .submit(specs)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Stores several tasks in one round trip and says what happened to each.
    pub async fn submit(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<(String, Accepted)>, ClientError> {
        let (specs, stored) = self.store_each(specs).await?;
        if let Some((i, _)) = stored
            .iter()
            .enumerate()
            .find(|(_, (_, a))| *a == Accepted::Refused)
        {
            return Err(ClientError::KeyFull {
                key: specs[i].key.clone().unwrap_or_default(),
                limit: self.key_limit,
            });
        }
        Ok(stored)
    }

    /// The one durable enqueue every door uses (the client, `bgnode do`, the HTTP API): checks
    /// every task first (nothing is stored when one is invalid), gives each an id, resolves
    /// `local` to this client's node, and stores them in one round trip. Returns the tasks as
    /// stored and what happened to each, a refusal (key at its limit) included.
    pub(crate) async fn store_each(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<(Vec<TaskSpec>, Vec<(String, Accepted)>), ClientError> {
        for spec in &specs {
            spec.validate()?;
        }
        let mut specs = specs;
        for spec in &mut specs {
            spec.id.get_or_insert_with(crate::model::task::new_task_id);
            // `local` is the node this client's configuration names.
            spec.target = std::mem::take(&mut spec.target).resolve(&self.local_node);
        }
        let stored = self.store.enqueue_many(&specs, true).await?;
        Ok((specs, stored))
    }

    /// For each task, why no live node could run it now (see [`Client::unrunnable`]), reading
    /// the live nodes once.
    pub(crate) async fn unrunnable_each(
        &self,
        specs: &[TaskSpec],
    ) -> Result<Vec<Option<Unrunnable>>, ClientError> {
        let live = self.store.live_nodes().await?;
        Ok(specs
            .iter()
            .map(|spec| match spec.target.clone().resolve(&self.local_node) {
                Target::All => None,
                Target::Node(node) => unrunnable(&spec.worker, Some(&node), &live),
                Target::Any | Target::Local => unrunnable(&spec.worker, None, &live),
            })
            .collect())
    }

    /// The key limit tasks are checked against (`[keys] limit`).
    pub(crate) fn key_limit(&self) -> u32 {
        self.key_limit
    }

    /// Why no live node could run `spec` now, or `None` when one could (or the task is a
    /// broadcast, target `all`). Such a task is still accepted: it waits for a node that can
    /// run it, at most `[tasks] unrunnable_after`, then ends `expired`. `submit` does not
    /// check (it would cost every enqueue a round trip); call this when you want to warn, as
    /// `bgnode do` does.
    pub async fn unrunnable(&self, spec: &TaskSpec) -> Result<Option<Unrunnable>, ClientError> {
        let pinned = match spec.target.clone().resolve(&self.local_node) {
            Target::All => return Ok(None),
            Target::Node(node) => Some(node),
            Target::Any | Target::Local => None,
        };
        let live = self.store.live_nodes().await?;
        Ok(unrunnable(&spec.worker, pinned.as_deref(), &live))
    }

    /// Enqueues a task and waits up to `timeout` for its result. When a task with the same id
    /// already exists, waits for that one.
    pub async fn call(&self, spec: TaskSpec, timeout: Duration) -> Result<Value, ClientError> {
        let mut spec = spec;
        spec.reply = true;
        let (id, accepted) = self.submit(vec![spec]).await?.remove(0);
        if accepted == Accepted::Exists {
            // Stored before, maybe without a reply list, maybe finished: wait as anyone would.
            return self.wait(&id, timeout).await;
        }
        self.wait_reply(&id, timeout).await
    }

    /// Waits up to `timeout` for task `id` to finish and returns its result: at once when it
    /// has finished, else when its final event comes. Any number of callers may wait for the
    /// same task, whether or not it was enqueued with a reply.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Listen before looking, so an end that comes between the two is not missed.
        let pubsub = self.subscribe(&self.events).await?;
        if let Some(end) = self.ending(id).await? {
            return end;
        }
        let mut events = pubsub.into_on_message();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, events.next()).await {
            // Any event of this task may be its last (a final `error` looks like a retried
            // one): the record says.
            let events = crate::events_in::<Value>(msg.get_payload_bytes()).unwrap_or_default();
            if events
                .iter()
                .any(|event| event.get("id").and_then(Value::as_str) == Some(id))
                && let Some(end) = self.ending(id).await?
            {
                return end;
            }
        }
        // The events may have been missed while Redis was away: the record has the last word.
        match self.ending(id).await? {
            Some(end) => end,
            None => Err(ClientError::Timeout {
                id: id.to_owned(),
                waited: timeout,
            }),
        }
    }

    /// A client on an existing store (a node's own connection), with `settings`' names.
    pub(crate) fn with_store(store: Store, settings: &Settings) -> Client {
        Client {
            store,
            key_limit: settings.keys.limit,
            local_node: settings.node.id.clone(),
            channel: settings.redis.channel.clone(),
            events: settings.redis.events.clone(),
        }
    }

    /// A dedicated connection subscribed to the events channel.
    pub(crate) async fn subscribe_events(&self) -> Result<redis::aio::PubSub, ClientError> {
        self.subscribe(&self.events).await
    }

    /// A dedicated connection subscribed to `channel`.
    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, ClientError> {
        let mut pubsub = self
            .store
            .client()
            .get_async_pubsub()
            .await
            .map_err(StoreError::from)?;
        pubsub.subscribe(channel).await.map_err(StoreError::from)?;
        Ok(pubsub)
    }

    /// How task `id` ended, when it has.
    async fn ending(&self, id: &str) -> Result<Option<Result<Value, ClientError>>, ClientError> {
        Ok(match self.result(id).await? {
            TaskResult::Done(v) => Some(Ok(v)),
            TaskResult::Failed { state, error } => Some(Err(ClientError::Failed {
                id: id.to_owned(),
                state,
                error,
            })),
            TaskResult::Pending(_) | TaskResult::NotFound => None,
        })
    }

    /// Waits for the final event a task enqueued with a reply pushes on its reply list (one
    /// waiter: `call`, which enqueued it).
    async fn wait_reply(&self, id: &str, timeout: Duration) -> Result<Value, ClientError> {
        let reply = self.store.wait_reply(id, timeout).await?;
        match reply.as_deref().and_then(ending_of) {
            Some(Ending::Done(v)) => Ok(v),
            Some(Ending::Failed { kind, error }) => Err(ClientError::Failed {
                id: id.to_owned(),
                state: if kind == "error" {
                    "failed".into()
                } else {
                    kind
                },
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
            Some(s) => match crate::model::task::TaskState::parse(&s.state) {
                Some(crate::model::task::TaskState::Done) => {
                    TaskResult::Done(s.result.unwrap_or(Value::Null))
                }
                Some(st) if st.is_finished() => TaskResult::Failed {
                    state: s.state,
                    error: s.error.unwrap_or_default(),
                },
                _ => TaskResult::Pending(s.state),
            },
        })
    }

    /// The latest result stored under a result key (BackgrounDRb's `ask_result`).
    pub async fn result_by_key(&self, name: &str) -> Result<Option<Value>, ClientError> {
        Ok(self
            .store
            .result_by_key(name)
            .await?
            .map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Deletes the result stored under a result key (BackgrounDRb's `reset`); true if one was.
    pub async fn reset_result_key(&self, name: &str) -> Result<bool, ClientError> {
        Ok(self.store.reset_result_key(name).await?)
    }

    /// Cancels a task: a waiting one at once, a held or running one by asking its node.
    pub async fn cancel(&self, id: &str) -> Result<CancelResult, ClientError> {
        Ok(self.store.cancel(id).await?)
    }

    /// Queues a finished task (dead, failed, cancelled, expired) again.
    pub async fn retry(&self, id: &str) -> Result<RetryResult, ClientError> {
        Ok(self.store.retry(id).await?)
    }

    /// Pauses worker type `worker` cluster-wide: no node claims its tasks until
    /// [`Client::resume`]; running ones finish, tasks a node had claimed but not started go
    /// back to the pending sets, and new ones are still accepted. Returns false when it was
    /// paused already.
    pub async fn pause(&self, worker: &str) -> Result<bool, ClientError> {
        validate_worker_name(worker).map_err(SpecError::Worker)?;
        Ok(self.store.set_paused(worker, true).await?)
    }

    /// Resumes a paused worker type: every node may claim its tasks again, at once. Returns
    /// false when it was not paused.
    pub async fn resume(&self, worker: &str) -> Result<bool, ClientError> {
        validate_worker_name(worker).map_err(SpecError::Worker)?;
        Ok(self.store.set_paused(worker, false).await?)
    }

    /// The worker types paused cluster-wide, sorted.
    pub async fn paused(&self) -> Result<Vec<String>, ClientError> {
        Ok(self.store.paused().await?)
    }

    /// Each group of tasks `bgnode bg` lists (pending, claimed, deferred, scheduled, running,
    /// dead), at most `limit` of each, newest first, with the counts.
    pub async fn overview(&self, limit: usize) -> Result<Overview, ClientError> {
        Ok(self.store.overview(limit).await?)
    }

    /// One page of tasks, newest first, filtered by `query` (the listing `bgnode bg` uses).
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage, ClientError> {
        Ok(self.store.tasks(query).await?)
    }

    /// How many tasks wait where, per state and per worker, and the paused workers.
    pub async fn counts(&self) -> Result<Counts, ClientError> {
        Ok(self.store.counts().await?)
    }

    /// Tasks that ended over about the last minute and hour (from samples of the counters the
    /// nodes' schedulers record every 10 s).
    pub async fn throughput(&self) -> Result<Throughput, ClientError> {
        Ok(self.store.throughput().await?)
    }

    /// A task's record with its attempts and timeline, or `None` when it does not exist.
    pub async fn detail(&self, id: &str) -> Result<Option<TaskDetail>, ClientError> {
        Ok(self.store.detail(id).await?)
    }

    /// Deletes a finished task (done, failed, dead, cancelled, expired) and its result.
    pub async fn delete(&self, id: &str) -> Result<DeleteResult, ClientError> {
        Ok(self.store.delete(id, None).await?)
    }

    /// Queues every dead task (of `worker` only, when given) again; returns how many.
    pub async fn retry_dead(&self, worker: Option<&str>) -> Result<usize, ClientError> {
        Ok(self.store.retry_dead(worker).await?)
    }

    /// Deletes every dead task (of `worker` only, when given); returns how many.
    pub async fn delete_dead(&self, worker: Option<&str>) -> Result<usize, ClientError> {
        Ok(self.store.delete_dead(worker).await?)
    }

    /// The live nodes with their workers and load.
    pub async fn info(&self) -> Result<Vec<MemberInfo>, ClientError> {
        let members = self.store.members().await?;
        let alive = self.store.alive(&members).await?;
        let live: Vec<String> = members
            .into_iter()
            .zip(alive)
            .filter_map(|(m, a)| a.then_some(m))
            .collect();
        let reports = self.store.infos(&live).await?;
        Ok(live
            .into_iter()
            .zip(reports)
            .map(|(id, report)| {
                let v: Value = report
                    .and_then(|r| serde_json::from_str(&r).ok())
                    .unwrap_or(Value::Null);
                let workers: BTreeMap<String, Load> =
                    serde_json::from_value(v["workers"].clone()).unwrap_or_default();
                let state = if v.is_null() {
                    "starting"
                } else if v["leaving"] == true {
                    "leaving"
                } else {
                    "up"
                };
                MemberInfo {
                    capacity: workers.values().map(|l| l.capacity).sum(),
                    running: workers.values().map(|l| l.running).sum(),
                    queued: workers.values().map(|l| l.queued).sum(),
                    generation: v["generation"].as_u64(),
                    addr: v["addr"].as_str().map(str::to_owned),
                    peers: serde_json::from_value(v["peers"].clone()).unwrap_or_default(),
                    settings: serde_json::from_value(v["settings"].clone()).unwrap_or_default(),
                    state: state.to_owned(),
                    workers,
                    id,
                }
            })
            .collect())
    }

    /// Asks one node (`Some`) or every node (`None`) to stop or to reload its workers, through
    /// the node holding the ingress lease and the cluster link. Returns each node's answer.
    pub async fn control(
        &self,
        op: ControlOp,
        node: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<ControlAnswer>, ClientError> {
        let expected = match node {
            Some(_) => 1,
            None => self.info().await?.len().max(1),
        };
        let reply = format!(
            "{}:reply:{}",
            self.channel,
            crate::model::task::new_task_id()
        );
        let pubsub = self.subscribe(&reply).await?;
        let op_name = match op {
            ControlOp::Stop => "stop",
            ControlOp::Reload => "reload",
        };
        let msg = serde_json::json!({"op": op_name, "node": node, "reply": reply}).to_string();
        if self.store.publish(&self.channel, &msg).await? == 0 {
            return Err(ClientError::NoCluster);
        }
        let mut answers = Vec::new();
        let mut stream = pubsub.into_on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        while answers.len() < expected {
            match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream)).await {
                Ok(Some(m)) => {
                    if let Ok(a) = serde_json::from_slice::<ControlAnswer>(m.get_payload_bytes()) {
                        answers.push(a);
                    }
                }
                _ => break,
            }
        }
        Ok(answers)
    }
}
