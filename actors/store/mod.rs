//! The Redis store: key names, the atomic scripts, and every round trip the cluster makes.
//!
//! Each write that decides ownership, fires a schedule or finishes a task is one Lua script, so
//! it is atomic in Redis; writes from the saver are pipelined in batches. Scripts are sent by
//! hash and reloaded when Redis answers NOSCRIPT (a restarted Redis has forgotten them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Script};
use serde::Serialize;
use serde_json::Value;

use crate::config::{KeyPolicy, Settings};
use crate::decide::cron::Recurrence;
use crate::model::task::{Task, TaskSpec, TaskState, TaskStatus, field, now_ms};

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
    /// `{p}:scheduled`: delayed tasks, retrying tasks and recurring templates, by due time.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.prefix)
    }
    /// `{p}:deadlines`: tasks with a deadline that have not started, by deadline.
    pub fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }
    /// `{p}:dead`: tasks whose attempts were exhausted, by time of death.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
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
    /// `{p}:result:{name}`: a result stored under its result key.
    pub fn result(&self, name: &str) -> String {
        format!("{}:result:{name}", self.prefix)
    }
    /// `{p}:key:{key}`: ids holding a slot of a per-key limit.
    pub fn key_slots(&self, key: &str) -> String {
        format!("{}:key:{key}", self.prefix)
    }
    /// `{p}:deferred:{key}`: ids waiting for a slot of a key, oldest first.
    pub fn deferred(&self, key: &str) -> String {
        format!("{}:deferred:{key}", self.prefix)
    }
    /// `{p}:stats`: cluster-wide counters.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
    /// `{p}:pending:{worker}@{node}`: tasks pinned to one node.
    pub fn node_pending(&self, worker: &str, node: &str) -> String {
        format!("{}:pending:{worker}@{node}", self.prefix)
    }
    /// `{p}:members`: ids of the nodes in the cluster (joined, not yet left or failed over).
    pub fn members(&self) -> String {
        format!("{}:members", self.prefix)
    }
    /// `{p}:broadcasts`: ids of running broadcasts (target `all`).
    pub fn broadcasts(&self) -> String {
        format!("{}:broadcasts", self.prefix)
    }
    /// `{p}:node:{node}:info`: what a node reports about itself for `bgnode info`.
    pub fn info(&self, node: &str) -> String {
        format!("{}:node:{node}:info", self.prefix)
    }
    /// `{p}:cluster`: the hash of the cluster cookie; nodes with another cookie refuse to start.
    pub fn cluster(&self) -> String {
        format!("{}:cluster", self.prefix)
    }
}

macro_rules! lua {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    write: Script,
    release: Script,
    lease: Script,
    unlease: Script,
    fire: Script,
    occur: Script,
    expire: Script,
    cancel: Script,
    retry: Script,
    adopt: Script,
    join: Script,
    leave: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            enqueue: lua!("enqueue.lua"),
            claim: lua!("claim.lua"),
            write: lua!("write.lua"),
            release: lua!("release.lua"),
            lease: lua!("lease.lua"),
            unlease: lua!("unlease.lua"),
            fire: lua!("fire.lua"),
            occur: lua!("occur.lua"),
            expire: lua!("expire.lua"),
            cancel: lua!("cancel.lua"),
            retry: lua!("retry.lua"),
            adopt: lua!("adopt.lua"),
            join: lua!("join.lua"),
            leave: lua!("leave.lua"),
        }
    }

    fn all(&self) -> [&Script; 14] {
        [
            &self.enqueue,
            &self.claim,
            &self.write,
            &self.release,
            &self.lease,
            &self.unlease,
            &self.fire,
            &self.occur,
            &self.expire,
            &self.cancel,
            &self.retry,
            &self.adopt,
            &self.join,
            &self.leave,
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
    /// The attempt ended: the task is done, retrying, dead, failed, cancelled or expired.
    Finish {
        /// Task id.
        id: String,
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
pub enum WriteResult {
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

/// What happened to a task handed to [`Store::enqueue_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accepted {
    /// Stored and queued for a node.
    Queued,
    /// Stored; waits for a slot of its key.
    Deferred,
    /// Stored; waits for its time (delayed or recurring).
    Scheduled,
    /// A task with this id exists; nothing changed.
    Exists,
    /// Refused: its key is at its limit and the policy is to reject. Nothing stored.
    Refused,
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// We held it and renewed it.
    Renewed,
    /// It was free (expired, or never taken) and is ours now.
    Taken,
    /// Someone else holds it.
    HeldBy(String),
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelResult {
    /// The task was waiting and is now cancelled.
    Cancelled,
    /// A node holds it; the node was asked to stop it.
    Requested,
    /// No such task.
    NotFound,
    /// It had finished already.
    Finished,
}

/// What `retry` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryResult {
    /// Queued again.
    Queued,
    /// Waiting for a slot of its key.
    Deferred,
    /// No such task.
    NotFound,
    /// It has not finished (or is a recurring template): nothing to retry.
    NotFinished,
}

/// A recurring template that came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTemplate {
    /// Template id.
    pub id: String,
    /// The due time (Unix ms).
    pub due: u64,
    /// How it recurs, as stored.
    pub every: Option<u64>,
    /// Cron expression, as stored.
    pub cron: Option<String>,
}

/// One line of `bgnode bg`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    /// Task id.
    pub id: String,
    /// Worker.
    pub worker: String,
    /// State.
    pub state: String,
    /// Priority.
    pub priority: i32,
    /// Owning node.
    pub node: Option<String>,
    /// Latest attempt.
    pub attempt: u32,
    /// Due time (scheduled, retrying), Unix ms.
    pub due: Option<u64>,
    /// Interval of a recurring template (ms).
    pub every: Option<u64>,
    /// Cron expression of a recurring template.
    pub cron: Option<String>,
    /// Latest error.
    pub error: Option<String>,
}

/// What `bgnode bg` lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Tasks waiting for a node, highest priority first.
    pub pending: Vec<TaskRow>,
    /// Delayed, retrying and recurring tasks, soonest first.
    pub scheduled: Vec<TaskRow>,
    /// Tasks running on a node.
    pub running: Vec<TaskRow>,
    /// Tasks whose attempts were exhausted, latest first.
    pub dead: Vec<TaskRow>,
    /// How many there are of each (the lists are cut at the limit).
    pub counts: HashMap<String, u64>,
}

/// Names and limits the store's scripts need, from [`Settings`].
#[derive(Debug, Clone)]
struct Names {
    channel: String,
    events: String,
    result_ttl: Duration,
    dead_ttl: Duration,
    key_limit: u32,
    key_policy: KeyPolicy,
}

/// The Redis store. Cheap to clone: clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    con: ConnectionManager,
    keys: Keys,
    names: Arc<Names>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

/// Most tasks or writes in one script call: one call per task costs Redis a call's overhead
/// each, and one call for a whole batch would hold Redis up for every other client meanwhile.
pub const SCRIPT_CHUNK: usize = 32;

/// Grace a node gets to start a claimed task whose deadline just passed.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

impl Store {
    /// Connects to `redis.url` with the names and limits of `settings`. Fails when Redis cannot
    /// be reached now.
    pub async fn connect(settings: &Settings) -> StoreResult<Store> {
        let client = redis::Client::open(settings.redis.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let con = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Store {
            client,
            con,
            keys: Keys::new(&settings.redis.prefix),
            names: Arc::new(Names {
                channel: settings.redis.channel.clone(),
                events: settings.redis.events.clone(),
                result_ttl: settings.saver.result_ttl,
                dead_ttl: settings.saver.dead_ttl,
                key_limit: settings.keys.limit,
                key_policy: settings.keys.policy,
            }),
            scripts: Arc::new(Scripts::new()),
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

    /// The control channel of `node` (cancellations reach it there).
    pub fn control_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.names.channel)
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// The record fields of a new task, and its due time and deadline (script arguments).
    fn record(
        id: &str,
        spec: &TaskSpec,
        now: u64,
    ) -> (Vec<(&'static str, String)>, String, String) {
        let ms = |d: Duration| (d.as_millis() as u64).to_string();
        let mut fields = vec![
            (field::ID, id.to_owned()),
            (field::WORKER, spec.worker.clone()),
            (field::ARGS, spec.args.to_string()),
            (field::PRIORITY, spec.priority.to_string()),
            (field::ATTEMPTS, spec.attempts.unwrap_or(0).to_string()),
            (field::ATTEMPT, "0".into()),
            (field::TIMEOUT, spec.timeout.map_or("0".into(), ms)),
            (field::REPLY, if spec.reply { "1" } else { "0" }.into()),
            (field::STATE, TaskState::Queued.as_str().into()),
            (field::NODE, String::new()),
            (field::EPOCH, "0".into()),
            (field::CREATED, now.to_string()),
        ];
        let optional = [
            (field::BACKOFF, spec.backoff.map(ms)),
            (field::BACKOFF_CAP, spec.backoff_cap.map(ms)),
            (field::KEY, spec.key.clone()),
            (field::RESULT_KEY, spec.result_key.clone()),
            (field::TARGET, spec.target.as_field()),
        ];
        fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let run_at = spec
            .run_at
            .or_else(|| spec.delay.map(|d| now + d.as_millis() as u64));
        let mut due = run_at.filter(|at| *at > now);
        let mut deadline = String::new();
        match &spec.repeat {
            Some(rec) => {
                match rec {
                    Recurrence::Every(d) => fields.push((field::EVERY, ms(*d))),
                    Recurrence::Cron(c) => fields.push((field::CRON, c.as_str().to_owned())),
                }
                // The first occurrence: the given time, else now for an interval, else the
                // next match of the cron expression.
                let first = run_at.or_else(|| match rec {
                    Recurrence::Every(_) => Some(now),
                    Recurrence::Cron(c) => c.next_after(now),
                });
                due = Some(first.unwrap_or(u64::MAX / 2));
                if let Some(d) = spec.deadline {
                    fields.push((field::DEADLINE_IN, ms(d)));
                }
            }
            None => {
                if let Some(d) = spec.deadline {
                    deadline = (now + d.as_millis() as u64).to_string();
                    fields.push((field::DEADLINE, deadline.clone()));
                }
            }
        }
        if let Some(due) = due {
            fields.push((field::RUN_AT, due.to_string()));
        }
        (
            fields,
            due.map(|d| d.to_string()).unwrap_or_default(),
            deadline,
        )
    }

    /// Appends one task to an enqueue call; `wake` publishes its wake notice.
    fn enqueue_args(
        cmd: &mut redis::Cmd,
        id: &str,
        spec: &TaskSpec,
        wake: bool,
        now: u64,
        limit: u32,
    ) {
        let (mut fields, due, deadline) = Self::record(id, spec, now);
        if spec.key.is_some() {
            fields.push((field::KEY_LIMIT, limit.to_string()));
        }
        cmd.arg(id)
            .arg(&spec.worker)
            .arg(if wake { "1" } else { "0" })
            .arg(spec.priority)
            .arg(now)
            .arg(due)
            .arg(spec.key.as_deref().unwrap_or(""))
            .arg(deadline)
            .arg(fields.len() * 2);
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
    }

    /// Stores new tasks in one script call, each task on its own. With `wake`, the last task of
    /// each worker in the batch publishes the wake notice (after the tasks before it were
    /// stored), and scheduled tasks announce themselves to the schedulers. Returns each id with
    /// what happened to it.
    pub async fn enqueue_many(
        &self,
        specs: &[TaskSpec],
        wake: bool,
    ) -> StoreResult<Vec<(String, Accepted)>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = specs
            .iter()
            .map(|s| s.id.clone().unwrap_or_else(crate::model::task::new_task_id))
            .collect();
        let mut wakes = vec![false; specs.len()];
        let mut woken: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (i, spec) in specs.iter().enumerate().rev() {
            let last_of_worker = woken.insert(spec.worker.as_str());
            let scheduled = spec.run_at.is_some() || spec.delay.is_some() || spec.repeat.is_some();
            wakes[i] = wake && (last_of_worker || scheduled);
        }
        let now = now_ms();
        let limit = self.names.key_limit;
        let mut pipe = redis::pipe();
        let all: Vec<((&String, &TaskSpec), bool)> = ids.iter().zip(specs).zip(wakes).collect();
        for chunk in all.chunks(SCRIPT_CHUNK) {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.scripts.enqueue.get_hash())
                .arg(0)
                .arg(self.keys.prefix())
                .arg(&self.names.channel)
                .arg(&self.names.events)
                .arg(now)
                .arg(limit)
                .arg(self.names.key_policy.as_str());
            for ((id, spec), wake) in chunk {
                Self::enqueue_args(&mut cmd, id, spec, *wake, now, limit);
            }
            pipe.add_command(cmd);
        }
        let codes: Vec<i64> = self
            .run_pipeline::<Vec<Vec<i64>>>(&pipe)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if codes.len() != ids.len() {
            return Err(StoreError::Corrupt(format!(
                "enqueue answered {} codes for {} tasks",
                codes.len(),
                ids.len()
            )));
        }
        ids.into_iter()
            .zip(codes)
            .map(|(id, code)| {
                let accepted = match code {
                    1 => Accepted::Queued,
                    2 => Accepted::Deferred,
                    3 => Accepted::Scheduled,
                    0 => Accepted::Exists,
                    -1 => Accepted::Refused,
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "task {id} could not be stored (the script failed on it)"
                        )));
                    }
                };
                Ok((id, accepted))
            })
            .collect()
    }

    /// Claims up to `n` pending tasks of `worker` for `node`.
    pub async fn claim(&self, worker: &str, node: &str, n: usize) -> StoreResult<Vec<Task>> {
        let mut con = self.con.clone();
        let rows: Vec<Vec<Option<String>>> = self
            .scripts
            .claim
            .key(self.keys.pending(worker))
            .key(self.keys.owned(node))
            .key(self.keys.node_pending(worker, node))
            .arg(self.keys.prefix())
            .arg(node)
            .arg(n)
            .arg(now_ms())
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        rows.iter().map(|r| parse_claimed(r)).collect()
    }

    /// Applies a batch of writes, in order, each on its own: one round trip, one script call
    /// per [`SCRIPT_CHUNK`] writes (a longer script would hold Redis up for everyone else).
    pub async fn write(&self, ops: &[WriteOp]) -> StoreResult<Vec<WriteResult>> {
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

    /// Hands every unfinished task owned by `node` back to the pending sets with new epochs.
    /// Returns how many ids were taken from the owned set.
    pub async fn release_owned(&self, node: &str) -> StoreResult<usize> {
        Ok(self.hand_back(node, false).await?.unwrap_or(0))
    }

    /// Fails over a dead node: hands its owned tasks back to the pending sets with new epochs,
    /// unless its liveness lease exists. Returns `None` when the lease exists (it is alive),
    /// else how many tasks were moved.
    pub async fn failover(&self, dead: &str) -> StoreResult<Option<usize>> {
        self.hand_back(dead, true).await
    }

    /// Runs the hand-back script in batches until the owned set is empty; `guarded`: only while
    /// the node's lease is absent (`None` when it exists before anything moved).
    async fn hand_back(&self, node: &str, guarded: bool) -> StoreResult<Option<usize>> {
        let mut total = 0;
        loop {
            let mut con = self.con.clone();
            let mut call = self.scripts.release.key(self.keys.owned(node));
            call.key(self.keys.workers());
            if guarded {
                call.key(self.keys.alive(node));
            }
            let n: i64 = call
                .arg(self.keys.prefix())
                .arg(200)
                .invoke_async(&mut con)
                .await?;
            match n {
                -1 if total == 0 => return Ok(None),
                n if n <= 0 => return Ok(Some(total)),
                n => total += n as usize,
            }
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

    /// Adopts tasks `from` hands over to `to` (only those `from` still owns under the given
    /// epochs). Returns them, owned by `to` under new epochs.
    pub async fn adopt(
        &self,
        from: &str,
        to: &str,
        tasks: &[(String, u64)],
    ) -> StoreResult<Vec<Task>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut call = self.scripts.adopt.key(self.keys.owned(from));
        call.key(self.keys.owned(to))
            .arg(self.keys.prefix())
            .arg(to);
        for (id, epoch) in tasks {
            call.arg(id).arg(epoch);
        }
        let rows: Vec<Vec<Option<String>>> = call.invoke_async(&mut con).await?;
        rows.iter().map(|r| parse_claimed(r)).collect()
    }

    /// Which of `tasks` `node` still owns under the given epochs.
    pub async fn still_owned(&self, node: &str, tasks: &[(String, u64)]) -> StoreResult<Vec<bool>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for (id, _) in tasks {
            pipe.cmd("HMGET")
                .arg(self.keys.task(id))
                .arg(field::NODE)
                .arg(field::EPOCH);
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut con).await?;
        Ok(tasks
            .iter()
            .zip(rows)
            .map(|((_, epoch), (n, e))| {
                n.as_deref() == Some(node) && e.and_then(|e| e.parse::<u64>().ok()) == Some(*epoch)
            })
            .collect())
    }

    /// Makes `node` a member; it gets its occurrence of every running broadcast.
    pub async fn join(&self, node: &str) -> StoreResult<usize> {
        let mut con = self.con.clone();
        Ok(self
            .scripts
            .join
            .arg(self.keys.prefix())
            .arg(node)
            .arg(now_ms())
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?)
    }

    /// Removes `node` from the members; its unfinished broadcast occurrences are cancelled.
    pub async fn leave(&self, node: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .leave
            .arg(self.keys.prefix())
            .arg(node)
            .arg(now_ms())
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// The member node ids.
    pub async fn members(&self) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.members())
            .query_async(&mut con)
            .await?;
        members.sort();
        Ok(members)
    }

    /// Which of `nodes` hold their liveness lease.
    pub async fn alive(&self, nodes: &[String]) -> StoreResult<Vec<bool>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("EXISTS").arg(self.keys.alive(n));
        }
        let found: Vec<i64> = pipe.query_async(&mut con).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }

    /// Stores what a node reports about itself, for `ttl`.
    pub async fn write_info(&self, node: &str, info: &str, ttl: Duration) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("SET")
            .arg(self.keys.info(node))
            .arg(info)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// The reports of `nodes` (`None` for a node that has none: down, or not started yet).
    pub async fn infos(&self, nodes: &[String]) -> StoreResult<Vec<Option<String>>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("GET").arg(self.keys.info(n));
        }
        Ok(pipe.query_async(&mut con).await?)
    }

    /// Records the cookie hash for this key prefix, or checks it against the recorded one.
    /// Returns false when another cookie is recorded.
    pub async fn check_cookie(&self, hash: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let (_, stored): ((), String) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.cluster())
            .arg(hash)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(self.keys.cluster())
            .query_async(&mut con)
            .await
            .map(|(stored,): (String,)| ((), stored))?;
        Ok(stored == hash)
    }

    /// Fires what is due at `now` (at most `max` entries): one-shot tasks become runnable;
    /// recurring templates are returned for [`Store::occur`].
    pub async fn fire_due(&self, now: u64, max: usize) -> StoreResult<Vec<DueTemplate>> {
        let mut con = self.con.clone();
        let rows: Vec<(String, String, String, String)> = self
            .scripts
            .fire
            .key(self.keys.scheduled())
            .arg(self.keys.prefix())
            .arg(now)
            .arg(max)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, due, every, cron)| DueTemplate {
                id,
                due: due.parse::<f64>().map_or(0, |d| d as u64),
                every: every.parse().ok(),
                cron: Some(cron).filter(|c| !c.is_empty()),
            })
            .collect())
    }

    /// Creates the occurrence of template `id` due at `due` and moves the template to `next`,
    /// if nobody did it first. Returns true when this call created it.
    pub async fn occur(
        &self,
        id: &str,
        due: u64,
        next: Option<u64>,
        now: u64,
    ) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .occur
            .key(self.keys.scheduled())
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
            .arg(due)
            .arg(next.map(|n| n.to_string()).unwrap_or_default())
            .arg(now)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Expires tasks whose deadline passed before they started. Returns how many.
    pub async fn expire_due(&self, now: u64, max: usize) -> StoreResult<usize> {
        let mut con = self.con.clone();
        Ok(self
            .scripts
            .expire
            .key(self.keys.deadlines())
            .arg(self.keys.prefix())
            .arg(now)
            .arg(max)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(DEADLINE_GRACE.as_millis() as u64)
            .invoke_async(&mut con)
            .await?)
    }

    /// The earliest time something scheduled or a deadline is due.
    pub async fn next_due(&self) -> StoreResult<Option<u64>> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for key in [self.keys.scheduled(), self.keys.deadlines()] {
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(0).arg("WITHSCORES");
        }
        let heads: Vec<Vec<(String, f64)>> = pipe.query_async(&mut con).await?;
        Ok(heads
            .into_iter()
            .filter_map(|h| h.first().map(|(_, s)| *s as u64))
            .min())
    }

    /// Cancels a task.
    pub async fn cancel(&self, id: &str) -> StoreResult<CancelResult> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .cancel
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
            .arg(now_ms())
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(match n {
            1 => CancelResult::Cancelled,
            2 => CancelResult::Requested,
            0 => CancelResult::NotFound,
            _ => CancelResult::Finished,
        })
    }

    /// Queues a finished task again.
    pub async fn retry(&self, id: &str) -> StoreResult<RetryResult> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .retry
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
            .arg(now_ms())
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(match n {
            1 => RetryResult::Queued,
            2 => RetryResult::Deferred,
            0 => RetryResult::NotFound,
            _ => RetryResult::NotFinished,
        })
    }

    /// The result stored under a result key, as JSON text.
    pub async fn result_by_key(&self, name: &str) -> StoreResult<Option<String>> {
        let mut con = self.con.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.result(name))
            .query_async(&mut con)
            .await?)
    }

    /// Deletes the result stored under a result key; true when there was one.
    pub async fn reset_result_key(&self, name: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = redis::cmd("DEL")
            .arg(self.keys.result(name))
            .query_async(&mut con)
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
        Ok(Some(parse_status(id, &map)))
    }

    async fn rows(&self, ids: &[(String, Option<u64>)]) -> StoreResult<Vec<TaskRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for (id, _) in ids {
            pipe.cmd("HGETALL").arg(self.keys.task(id));
        }
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        Ok(ids
            .iter()
            .zip(maps)
            .filter(|(_, m)| !m.is_empty())
            .map(|((id, due), m)| {
                let s = parse_status(id, &m);
                TaskRow {
                    id: s.id,
                    worker: s.worker,
                    state: s.state,
                    priority: s.priority,
                    node: s.node,
                    attempt: s.attempt,
                    due: due.or(s.retry_at).or(s.run_at),
                    every: s.every,
                    cron: s.cron,
                    error: s.error,
                }
            })
            .collect())
    }

    /// Lists pending, scheduled, running and dead tasks, at most `limit` of each.
    pub async fn overview(&self, limit: usize) -> StoreResult<Overview> {
        let mut con = self.con.clone();
        let stop = limit.max(1) as isize - 1;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.workers())
            .query_async(&mut con)
            .await?;
        let mut counts = HashMap::new();
        let mut pending_ids = Vec::new();
        let mut pending_total = 0;
        for w in &workers {
            let (n, ids): (u64, Vec<String>) = redis::pipe()
                .cmd("ZCARD")
                .arg(self.keys.pending(w))
                .cmd("ZRANGE")
                .arg(self.keys.pending(w))
                .arg(0)
                .arg(stop)
                .query_async(&mut con)
                .await?;
            pending_total += n;
            pending_ids.extend(ids.into_iter().map(|id| (id, None)));
        }
        pending_ids.truncate(limit);
        counts.insert("pending".to_owned(), pending_total);
        let zrange = |key: String, rev: bool| {
            let mut p = redis::pipe();
            p.cmd("ZCARD").arg(&key);
            p.cmd(if rev { "ZREVRANGE" } else { "ZRANGE" })
                .arg(&key)
                .arg(0)
                .arg(stop)
                .arg("WITHSCORES");
            p
        };
        let (n, scheduled): (u64, Vec<(String, f64)>) = zrange(self.keys.scheduled(), false)
            .query_async(&mut con)
            .await?;
        counts.insert("scheduled".to_owned(), n);
        let (n, dead): (u64, Vec<(String, f64)>) =
            zrange(self.keys.dead(), true).query_async(&mut con).await?;
        counts.insert("dead".to_owned(), n);
        // Running tasks sit in the owned sets of the nodes.
        let mut owned_keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.keys.owned("*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            owned_keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut owned = Vec::new();
        for key in owned_keys {
            let ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut con)
                .await?;
            owned.extend(ids.into_iter().map(|id| (id, None)));
        }
        let running: Vec<TaskRow> = self
            .rows(&owned)
            .await?
            .into_iter()
            .filter(|r| r.state == "running")
            .collect();
        counts.insert("running".to_owned(), running.len() as u64);
        let with_due = |v: Vec<(String, f64)>| -> Vec<(String, Option<u64>)> {
            v.into_iter().map(|(id, s)| (id, Some(s as u64))).collect()
        };
        Ok(Overview {
            pending: self.rows(&pending_ids).await?,
            scheduled: self.rows(&with_due(scheduled)).await?,
            running: running.into_iter().take(limit).collect(),
            dead: self.rows(&with_due(dead)).await?,
            counts,
        })
    }

    /// Takes or renews the lease `key` for `holder`.
    pub async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<Lease> {
        let mut con = self.con.clone();
        let (code, who): (i64, String) = self
            .scripts
            .lease
            .key(key)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(match code {
            1 => Lease::Renewed,
            2 => Lease::Taken,
            _ => Lease::HeldBy(who),
        })
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
    let get = |i: usize| row.get(i).cloned().flatten().filter(|s| !s.is_empty());
    let num = |i: usize| get(i).and_then(|s| s.parse::<u64>().ok());
    let ms = |i: usize| num(i).filter(|ms| *ms > 0).map(Duration::from_millis);
    let id = get(0).ok_or_else(|| StoreError::Corrupt("claimed task without id".into()))?;
    let worker = get(2).ok_or_else(|| StoreError::Corrupt(format!("task {id} has no worker")))?;
    Ok(Task {
        epoch: num(1).unwrap_or(0),
        worker,
        args: get(3).unwrap_or_else(|| "null".into()),
        priority: get(4).and_then(|s| s.parse().ok()).unwrap_or(0),
        // The stored attempt is the last one that started; this run is the next.
        attempt: num(5).unwrap_or(0) as u32 + 1,
        attempts: num(6).filter(|a| *a > 0).map(|a| a as u32),
        timeout: ms(7),
        created: num(8).unwrap_or(0),
        reply: get(9).as_deref() == Some("1"),
        deadline: num(10),
        backoff: ms(11),
        backoff_cap: ms(12),
        pinned: get(13).is_some_and(|t| t.starts_with("node:")),
        id,
    })
}

fn parse_status(id: &str, map: &HashMap<String, String>) -> TaskStatus {
    let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let state = get(field::STATE).unwrap_or_else(|| "unknown".into());
    let progress = TaskState::parse(&state).map_or(0, TaskState::progress);
    let json = |k: &str| {
        get(k).map(|text| serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)))
    };
    TaskStatus {
        id: id.to_owned(),
        worker: get(field::WORKER).unwrap_or_default(),
        state,
        progress,
        node: get(field::NODE),
        attempt: num(field::ATTEMPT).unwrap_or(0) as u32,
        attempts: num(field::ATTEMPTS).filter(|a| *a > 0).map(|a| a as u32),
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
        run_at: num(field::RUN_AT),
        retry_at: num(field::RETRY_AT),
        every: num(field::EVERY),
        cron: get(field::CRON),
        deadline: num(field::DEADLINE),
        key: get(field::KEY),
        result_key: get(field::RESULT_KEY),
        template: get(field::TEMPLATE),
        target: get(field::TARGET),
        parent: get(field::PARENT),
    }
}
