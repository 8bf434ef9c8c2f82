//! The Redis store: key names, the atomic scripts, and every round trip the cluster makes.
//!
//! Each write that decides ownership or finishes a task is one Lua script, so it is atomic in
//! Redis; writes from the saver are pipelined in batches. Scripts are sent by hash and reloaded
//! when Redis answers NOSCRIPT (a restarted Redis has forgotten them).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Script};
use serde_json::Value;

use crate::task::{Task, TaskSpec, TaskState, TaskStatus, field, now_ms};

/// A store error: Redis unreachable or answering something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis call failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with data this version cannot read.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Key names under one prefix. PROTOCOL.md lists them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`bg` by default).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{p}:task:{id}`: the task hash.
    pub fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }
    /// `{p}:pending:{worker}`: tasks waiting for a node, by priority then age.
    pub fn pending(&self, worker: &str) -> String {
        format!("{}:pending:{worker}", self.prefix)
    }
    /// `{p}:workers`: names of every worker that has had a pending set.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// `{p}:node:{node}:owned`: ids of the tasks a node owns.
    pub fn owned(&self, node: &str) -> String {
        format!("{}:node:{node}:owned", self.prefix)
    }
    /// `{p}:node:{node}:alive`: the liveness lease of a node; its value is the generation.
    pub fn alive(&self, node: &str) -> String {
        format!("{}:node:{node}:alive", self.prefix)
    }
    /// `{p}:ingress`: the ingress lease; only its holder subscribes to the task channel.
    pub fn ingress(&self) -> String {
        format!("{}:ingress", self.prefix)
    }
    /// `{p}:reply:{id}`: the list a waiting caller pops the final event from.
    pub fn reply(&self, id: &str) -> String {
        format!("{}:reply:{id}", self.prefix)
    }
    /// `{p}:stats`: cluster-wide counters.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
}

macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    start: Script,
    finish: Script,
    release: Script,
    lease: Script,
    unlease: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            enqueue: Script::new(lua!("enqueue.lua")),
            claim: Script::new(lua!("claim.lua")),
            start: Script::new(lua!("start.lua")),
            finish: Script::new(lua!("finish.lua")),
            release: Script::new(lua!("release.lua")),
            lease: Script::new(lua!("lease.lua")),
            unlease: Script::new(lua!("unlease.lua")),
        }
    }

    fn all(&self) -> [&Script; 7] {
        [
            &self.enqueue,
            &self.claim,
            &self.start,
            &self.finish,
            &self.release,
            &self.lease,
            &self.unlease,
        ]
    }
}

/// A durable write made by the saver. Each is one fenced script call.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
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
    /// The task finished.
    Finish {
        /// Task id.
        id: String,
        /// Owning node (whose owned set loses the id).
        node: String,
        /// Epoch the node owns it under.
        epoch: u64,
        /// Attempt that finished.
        attempt: u32,
        /// Start time of the attempt, Unix ms.
        started: u64,
        /// End time, Unix ms.
        finished: u64,
        /// Final state: done or failed.
        state: TaskState,
        /// Result JSON text (done) or error message (failed).
        value: String,
        /// The final event (also the reply for a waiting caller).
        event: String,
        /// The `started` event when the start was folded into this write.
        started_event: Option<String>,
    },
    /// Publish an event that belongs to no task write (`rejected`).
    Event {
        /// The event JSON.
        event: String,
    },
}

/// What Redis said about one [`WriteOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written.
    Applied,
    /// Refused by fencing: the task has another epoch now (counted as a stale duplicate).
    Stale,
    /// The task was already finished under this epoch (a retried write).
    AlreadyDone,
    /// The task record no longer exists.
    Gone,
}

impl WriteResult {
    fn from_code(code: i64) -> WriteResult {
        match code {
            1 => WriteResult::Applied,
            0 => WriteResult::Stale,
            2 => WriteResult::AlreadyDone,
            _ => WriteResult::Gone,
        }
    }
}

/// The Redis store. Cheap to clone: clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    con: ConnectionManager,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

/// Where new tasks are announced.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// The task channel to publish wake notices on; `None` publishes none (the caller wakes the
    /// dispatcher itself).
    pub wake: Option<&'a str>,
    /// The events channel.
    pub events: &'a str,
}

/// The wake notice for new pending tasks of `worker`.
pub fn wake_message(worker: &str) -> String {
    serde_json::json!({"op": "wake", "worker": worker}).to_string()
}

impl Store {
    /// Connects to `url` with keys under `prefix`. Fails when Redis cannot be reached now.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<Store> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let con = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Store {
            client,
            con,
            keys: Keys::new(prefix),
            scripts: std::sync::Arc::new(Scripts::new()),
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The underlying client, for dedicated connections (pub/sub, blocking pops).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A clone of the shared connection for ad-hoc commands.
    pub fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// The record fields of a new task, in the order the enqueue script stores them.
    fn record_fields(id: &str, spec: &TaskSpec, created: u64) -> Vec<(&'static str, String)> {
        vec![
            (field::ID, id.to_owned()),
            (field::WORKER, spec.worker.clone()),
            (field::ARGS, spec.args.to_string()),
            (field::PRIORITY, spec.priority.to_string()),
            (field::ATTEMPTS, spec.attempts.to_string()),
            (field::ATTEMPT, "0".into()),
            (
                field::TIMEOUT,
                spec.timeout.map_or(0, |t| t.as_millis() as u64).to_string(),
            ),
            (field::REPLY, if spec.reply { "1" } else { "0" }.into()),
            (field::STATE, TaskState::Queued.as_str().into()),
            (field::NODE, String::new()),
            (field::EPOCH, "0".into()),
            (field::CREATED, created.to_string()),
        ]
    }

    /// One enqueue script call; `wake` is the (channel, message) to publish, if any.
    fn enqueue_cmd(
        &self,
        id: &str,
        spec: &TaskSpec,
        wake: Option<(&str, &str)>,
        events: &str,
    ) -> redis::Cmd {
        let created = now_ms();
        let event = serde_json::json!({
            "event": "available", "id": id, "worker": spec.worker, "ts": created,
        })
        .to_string();
        let (channel, wake) = wake.unwrap_or(("", ""));
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.enqueue.get_hash())
            .arg(4)
            .arg(self.keys.task(id))
            .arg(self.keys.pending(&spec.worker))
            .arg(self.keys.workers())
            .arg(self.keys.stats())
            .arg(id)
            .arg(&spec.worker)
            .arg(channel)
            .arg(wake)
            .arg(events)
            .arg(event)
            .arg(spec.priority)
            .arg(created);
        for (name, value) in Self::record_fields(id, spec, created) {
            cmd.arg(name).arg(value);
        }
        cmd
    }

    /// Stores new tasks atomically each (record + pending entry + events) in one pipeline. The
    /// last task of each worker in the batch carries the wake notice, published after the
    /// tasks before it were stored. Returns, per spec, its id and whether it was new (false: the
    /// id existed, nothing changed).
    pub async fn enqueue_many(
        &self,
        specs: &[TaskSpec],
        publish: &Publish<'_>,
    ) -> StoreResult<Vec<(String, bool)>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = specs
            .iter()
            .map(|s| s.id.clone().unwrap_or_else(crate::task::new_task_id))
            .collect();
        let mut wakes: HashMap<&str, String> = HashMap::new();
        let mut cmds = Vec::with_capacity(specs.len());
        for (id, spec) in ids.iter().zip(specs).rev() {
            let wake = match publish.wake {
                Some(channel) if !wakes.contains_key(spec.worker.as_str()) => {
                    let msg = wakes
                        .entry(&spec.worker)
                        .or_insert_with(|| wake_message(&spec.worker));
                    Some((channel, msg.as_str()))
                }
                _ => None,
            };
            cmds.push(self.enqueue_cmd(id, spec, wake, publish.events));
        }
        let mut pipe = redis::pipe();
        for cmd in cmds.into_iter().rev() {
            pipe.add_command(cmd);
        }
        let codes: Vec<i64> = self.run_pipeline(&pipe).await?;
        Ok(ids
            .into_iter()
            .zip(codes.into_iter().map(|c| c == 1))
            .collect())
    }

    /// Claims up to `n` pending tasks of `worker` for `node`.
    pub async fn claim(&self, worker: &str, node: &str, n: usize) -> StoreResult<Vec<Task>> {
        let mut con = self.con.clone();
        let rows: Vec<Vec<Option<String>>> = self
            .scripts
            .claim
            .key(self.keys.pending(worker))
            .key(self.keys.owned(node))
            .arg(self.keys.prefix())
            .arg(node)
            .arg(n)
            .invoke_async(&mut con)
            .await?;
        rows.iter().map(|r| parse_claimed(r)).collect()
    }

    fn write_cmd(&self, op: &WriteOp, events: &str, ttl: Duration) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        match op {
            WriteOp::Start {
                id,
                epoch,
                attempt,
                at,
                event,
            } => {
                cmd.arg(self.scripts.start.get_hash())
                    .arg(1)
                    .arg(self.keys.task(id))
                    .arg(epoch)
                    .arg(attempt)
                    .arg(at)
                    .arg(events)
                    .arg(event);
            }
            WriteOp::Finish {
                id,
                node,
                epoch,
                attempt,
                started,
                finished,
                state,
                value,
                event,
                started_event,
            } => {
                let slot = if *state == TaskState::Done {
                    field::RESULT
                } else {
                    field::ERROR
                };
                cmd.arg(self.scripts.finish.get_hash())
                    .arg(4)
                    .arg(self.keys.task(id))
                    .arg(self.keys.owned(node))
                    .arg(self.keys.reply(id))
                    .arg(self.keys.stats())
                    .arg(epoch)
                    .arg(state.as_str())
                    .arg(slot)
                    .arg(value)
                    .arg(attempt)
                    .arg(started)
                    .arg(finished)
                    .arg(ttl.as_millis() as u64)
                    .arg(id)
                    .arg(events)
                    .arg(event)
                    .arg(started_event.as_deref().unwrap_or(""));
            }
            WriteOp::Event { event } => {
                cmd = redis::cmd("PUBLISH");
                cmd.arg(events).arg(event);
            }
        }
        cmd
    }

    /// Applies a batch of writes in one pipeline. Each write is atomic on its own.
    pub async fn write(
        &self,
        ops: &[WriteOp],
        events: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<WriteResult>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for op in ops {
            pipe.add_command(self.write_cmd(op, events, ttl));
        }
        let codes: Vec<i64> = self.run_pipeline(&pipe).await?;
        Ok(ops
            .iter()
            .zip(codes)
            .map(|(op, code)| match op {
                // PUBLISH answers with the number of subscribers, not a fencing code.
                WriteOp::Event { .. } => WriteResult::Applied,
                _ => WriteResult::from_code(code),
            })
            .collect())
    }

    /// Hands every unfinished task owned by `node` back to the pending sets with new epochs.
    /// Returns how many ids were taken from the owned set.
    pub async fn release_owned(&self, node: &str) -> StoreResult<usize> {
        let mut total = 0;
        loop {
            let mut con = self.con.clone();
            let n: usize = self
                .scripts
                .release
                .key(self.keys.owned(node))
                .key(self.keys.workers())
                .arg(self.keys.prefix())
                .arg(200)
                .invoke_async(&mut con)
                .await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Hands the given tasks back to the pending sets if `node` still owns them.
    pub async fn release_ids(&self, node: &str, ids: &[String]) -> StoreResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut con = self.con.clone();
        let mut call = self.scripts.release.key(self.keys.owned(node));
        call.key(self.keys.workers())
            .arg(self.keys.prefix())
            .arg(ids.len());
        for id in ids {
            call.arg(id);
        }
        Ok(call.invoke_async(&mut con).await?)
    }

    /// Takes or renews the lease `key` for `holder`. Returns `Ok(None)` when held by us,
    /// `Ok(Some(other))` when someone else holds it.
    pub async fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<String>> {
        let mut con = self.con.clone();
        let (ok, who): (i64, String) = self
            .scripts
            .lease
            .key(key)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(if ok == 1 { None } else { Some(who) })
    }

    /// Drops the lease `key` if `holder` has it.
    pub async fn unlease(&self, key: &str, holder: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .unlease
            .key(key)
            .arg(holder)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Reads a task's record.
    pub async fn status(&self, id: &str) -> StoreResult<Option<TaskStatus>> {
        let mut con = self.con.clone();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut con)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse_status(id, &map).map(Some)
    }

    /// Waits up to `timeout` for the final event of a task that was enqueued with `reply`.
    /// Uses its own connection: a blocking pop must not stall the shared one.
    pub async fn wait_reply(&self, id: &str, timeout: Duration) -> StoreResult<Option<String>> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(timeout + Duration::from_secs(5)));
        let mut con = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.keys.reply(id))
            .arg(timeout.as_secs_f64().max(0.01))
            .query_async(&mut con)
            .await?;
        Ok(popped.map(|(_, v)| v))
    }

    /// Publishes `message` on `channel`; returns the number of subscribers that got it.
    pub async fn publish(&self, channel: &str, message: &str) -> StoreResult<i64> {
        let mut con = self.con.clone();
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut con)
            .await?)
    }

    /// Runs a pipeline of script calls, loading the scripts once if Redis has forgotten them.
    async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> StoreResult<T> {
        let mut con = self.con.clone();
        match pipe.query_async(&mut con).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                Ok(pipe.query_async(&mut con).await?)
            }
            other => Ok(other?),
        }
    }

    /// Loads every script into Redis's script cache.
    pub async fn load_scripts(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        for script in self.scripts.all() {
            script.load_async(&mut con).await?;
        }
        Ok(())
    }
}

fn parse_claimed(row: &[Option<String>]) -> StoreResult<Task> {
    let get = |i: usize| row.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|s| s.parse::<i64>().ok());
    let id = get(0).ok_or_else(|| StoreError::Corrupt("claimed task without id".into()))?;
    let worker = get(2).ok_or_else(|| StoreError::Corrupt(format!("task {id} has no worker")))?;
    Ok(Task {
        epoch: num(1).unwrap_or(0) as u64,
        worker,
        args: get(3).unwrap_or_else(|| "null".into()),
        priority: num(4).unwrap_or(0) as i32,
        // The stored attempt is the last one that started; this run is the next.
        attempt: num(5).unwrap_or(0) as u32 + 1,
        attempts: num(6).unwrap_or(1).max(1) as u32,
        timeout: num(7)
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64)),
        created: num(8).unwrap_or(0) as u64,
        reply: get(9).as_deref() == Some("1"),
        id,
    })
}

fn parse_status(id: &str, map: &HashMap<String, String>) -> StoreResult<TaskStatus> {
    let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let state = get(field::STATE).unwrap_or_else(|| "unknown".into());
    let progress = TaskState::parse(&state).map_or(0, TaskState::progress);
    let json = |k: &str| {
        get(k).map(|text| serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)))
    };
    Ok(TaskStatus {
        id: id.to_owned(),
        worker: get(field::WORKER).unwrap_or_default(),
        state,
        progress,
        node: get(field::NODE),
        attempt: num(field::ATTEMPT).unwrap_or(0) as u32,
        attempts: num(field::ATTEMPTS).unwrap_or(1) as u32,
        priority: get(field::PRIORITY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        args: json(field::ARGS).unwrap_or(Value::Null),
        result: json(field::RESULT),
        error: get(field::ERROR),
        epoch: num(field::EPOCH).unwrap_or(0),
        created: num(field::CREATED),
        started: num(field::STARTED),
        finished: num(field::FINISHED),
    })
}
