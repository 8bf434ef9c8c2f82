//! A task's life outside a node: enqueueing, claiming, cancelling, retrying, and reading its
//! status, result and reply.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use serde::Serialize;
use serde_json::Value;

use super::{Incarnation, SCRIPT_CHUNK, Store, StoreError, StoreResult};
use crate::decide::cron::Recurrence;
use crate::decide::due::{FirstRun, first_run};
use crate::model::task::{Task, TaskSpec, TaskState, TaskStatus, field};
use crate::model::timeline::{AttemptRecord, Moment, story};

/// What happened to a task handed to the cluster (`Client::enqueue`, the channel).
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

/// What `delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteResult {
    /// The task and its result are gone.
    Deleted,
    /// No such task.
    NotFound,
    /// It may still run: only finished tasks are deleted.
    NotFinished,
}

/// Everything known about one task: its record, its attempts and its timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskDetail {
    /// The record.
    #[serde(flatten)]
    pub status: TaskStatus,
    /// Each attempt so far.
    pub attempts: Vec<AttemptRecord>,
    /// What happened, in order.
    pub timeline: Vec<Moment>,
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

impl Store {
    /// The record fields of a new task (the script adds `created`, `run_at` and `deadline`), and
    /// when it first comes due (script arguments). `now` is Redis's time, for a cron's first match.
    ///
    /// A field at its default is left out: no `priority` 0, `attempts` 0 (the worker's
    /// default), `timeout` 0, `reply` 0, `attempt` 0 or `epoch` 0, and no `id` (the key names
    /// the task). Every reader takes a missing field as its default, and a record half the size
    /// lets a deep queue cost Redis half the memory.
    fn record(spec: &TaskSpec, now: u64) -> (Vec<(&'static str, String)>, FirstRun) {
        let ms = |d: Duration| (d.as_millis() as u64).to_string();
        let mut fields = vec![
            (field::WORKER, spec.worker.clone()),
            (field::ARGS, spec.args.to_string()),
            (field::STATE, TaskState::Queued.as_str().into()),
            (field::NODE, String::new()),
        ];
        let defaulted = [
            (
                field::PRIORITY,
                (spec.priority != 0).then(|| spec.priority.to_string()),
            ),
            (
                field::ATTEMPTS,
                spec.attempts.filter(|a| *a > 0).map(|a| a.to_string()),
            ),
            (
                field::TIMEOUT,
                spec.timeout.filter(|t| !t.is_zero()).map(ms),
            ),
            (field::REPLY, spec.reply.then(|| "1".to_owned())),
        ];
        fields.extend(defaulted.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let optional = [
            (field::BACKOFF, spec.backoff.map(ms)),
            (field::BACKOFF_CAP, spec.backoff_cap.map(ms)),
            (field::KEY, spec.key.clone()),
            (field::RESULT_KEY, spec.result_key.clone()),
            (field::TARGET, spec.target.as_field()),
        ];
        fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        match &spec.repeat {
            Some(Recurrence::Every(d)) => fields.push((field::EVERY, ms(*d))),
            Some(Recurrence::Cron(c)) => fields.push((field::CRON, c.as_str().to_owned())),
            None => {}
        }
        if let (Some(_), Some(d)) = (&spec.repeat, spec.deadline) {
            fields.push((field::DEADLINE_IN, ms(d)));
        }
        (fields, first_run(spec, now))
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
        let (mut fields, when) = Self::record(spec, now);
        if spec.key.is_some() {
            fields.push((field::KEY_LIMIT, limit.to_string()));
        }
        let text = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_default();
        cmd.arg(id)
            .arg(&spec.worker)
            .arg(if wake { "1" } else { "0" })
            .arg(spec.priority)
            .arg(text(when.at))
            .arg(text(when.after))
            .arg(spec.key.as_deref().unwrap_or(""))
            .arg(text(when.deadline_in))
            .arg(fields.len() * 2);
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
    }

    /// Stores new tasks in one script call, each task on its own. With `wake`, the last runnable
    /// task of each worker and target in the batch publishes the wake notice (after the tasks
    /// before it were stored), and scheduled tasks announce themselves to the schedulers. Returns each id with
    /// what happened to it.
    pub(crate) async fn enqueue_many(
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
        // A wake notice says which worker's set grew and, for a pinned task, for which node;
        // a scheduled task announces itself to the schedulers instead. So the last runnable task
        // of each worker and target publishes for the ones before it, and every scheduled task
        // publishes its own.
        let mut wakes = vec![false; specs.len()];
        let mut woken: std::collections::HashSet<(&str, Option<String>)> =
            std::collections::HashSet::new();
        for (i, spec) in specs.iter().enumerate().rev() {
            let scheduled = spec.run_at.is_some() || spec.delay.is_some() || spec.repeat.is_some();
            wakes[i] =
                wake && (scheduled || woken.insert((spec.worker.as_str(), spec.target.as_field())));
        }
        let now = self.now_ms().await?;
        let limit = self.names.key_limit;
        let mut pipe = redis::pipe();
        let all: Vec<((&String, &TaskSpec), bool)> = ids.iter().zip(specs).zip(wakes).collect();
        for chunk in all.chunks(SCRIPT_CHUNK) {
            let mut cmd = self.scripts.enqueue.bare();
            cmd.arg(self.keys.prefix())
                .arg(&self.names.channel)
                .arg(&self.names.events)
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

    /// Claims up to `n` pending tasks of `worker` for `me`; none while another incarnation of
    /// the id holds its lease, or while the worker is paused.
    #[cfg(test)]
    pub(crate) async fn claim(
        &self,
        worker: &str,
        me: &Incarnation,
        n: usize,
    ) -> StoreResult<Vec<Task>> {
        Ok(self.claim_batch(worker, me, n).await?.tasks)
    }

    /// [`Store::claim`], saying also whether the worker is paused (then no task is taken).
    pub(crate) async fn claim_batch(
        &self,
        worker: &str,
        me: &Incarnation,
        n: usize,
    ) -> StoreResult<Claim> {
        let mut con = self.con.clone();
        let node = &me.node;
        let reply: Vec<Vec<String>> = self
            .scripts
            .claim
            .key(self.keys.pending(worker))
            .key(self.keys.owned(node))
            .key(self.keys.node_pending(worker, node))
            .key(self.keys.alive(node))
            .arg(self.keys.prefix())
            .arg(node)
            .arg(n)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(worker)
            .arg(&me.holder)
            .invoke_async(&mut con)
            .await?;
        if reply.first().is_some_and(|row| row == &[PAUSED]) {
            return Ok(Claim {
                tasks: Vec::new(),
                paused: true,
            });
        }
        Ok(Claim {
            tasks: parse_claimed_rows(reply)?,
            paused: false,
        })
    }

    /// Pauses (`true`) or resumes worker type `worker` cluster-wide (`pause.lua`): while it is
    /// paused no node claims its tasks; each member is told, and a resume wakes the cluster.
    /// Returns whether the state changed.
    pub(crate) async fn set_paused(&self, worker: &str, paused: bool) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .pause
            .arg(self.keys.prefix())
            .arg(&self.names.channel)
            .arg(worker)
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// The paused worker types, sorted.
    pub(crate) async fn paused(&self) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.paused())
            .query_async(&mut con)
            .await?;
        names.sort();
        Ok(names)
    }

    /// Cancels a task.
    pub(crate) async fn cancel(&self, id: &str) -> StoreResult<CancelResult> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .cancel
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
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
    pub(crate) async fn retry(&self, id: &str) -> StoreResult<RetryResult> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .retry
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
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
    pub(crate) async fn result_by_key(&self, name: &str) -> StoreResult<Option<String>> {
        let mut con = self.con.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.result(name))
            .query_async(&mut con)
            .await?)
    }

    /// Deletes the result stored under a result key; true when there was one.
    pub(crate) async fn reset_result_key(&self, name: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = redis::cmd("DEL")
            .arg(self.keys.result(name))
            .query_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Deletes a finished task (done, failed, dead, cancelled, expired); with `worker`, only
    /// a task of that worker.
    pub(crate) async fn delete(&self, id: &str, worker: Option<&str>) -> StoreResult<DeleteResult> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .delete
            .key(self.keys.task(id))
            .arg(self.keys.prefix())
            .arg(id)
            .arg(worker.unwrap_or(""))
            .invoke_async(&mut con)
            .await?;
        Ok(match n {
            1 => DeleteResult::Deleted,
            0 => DeleteResult::NotFound,
            _ => DeleteResult::NotFinished,
        })
    }

    /// The ids in the dead set, of `worker` only when given.
    async fn dead_ids(&self, worker: Option<&str>) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.dead())
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await?;
        let Some(worker) = worker else {
            return Ok(ids);
        };
        let mut kept = Vec::new();
        for chunk in ids.chunks(512) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGET").arg(self.keys.task(id)).arg(field::WORKER);
            }
            let workers: Vec<Option<String>> = pipe.query_async(&mut con).await?;
            kept.extend(
                chunk
                    .iter()
                    .zip(workers)
                    .filter(|(_, w)| w.as_deref() == Some(worker))
                    .map(|(id, _)| id.clone()),
            );
        }
        Ok(kept)
    }

    /// Queues every dead task (of `worker` only when given) again; returns how many.
    pub(crate) async fn retry_dead(&self, worker: Option<&str>) -> StoreResult<usize> {
        let mut n = 0;
        for id in self.dead_ids(worker).await? {
            if matches!(
                self.retry(&id).await?,
                RetryResult::Queued | RetryResult::Deferred
            ) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes every dead task (of `worker` only when given); returns how many.
    pub(crate) async fn delete_dead(&self, worker: Option<&str>) -> StoreResult<usize> {
        let mut n = 0;
        for chunk in self.dead_ids(worker).await?.chunks(SCRIPT_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.add_command(
                    self.scripts
                        .delete
                        .key(self.keys.task(id))
                        .arg(self.keys.prefix())
                        .arg(id)
                        .arg(worker.unwrap_or(""))
                        .cmd(),
                );
            }
            let codes: Vec<i64> = self.run_pipeline(&pipe).await?;
            n += codes.iter().filter(|c| **c == 1).count();
        }
        Ok(n)
    }

    /// A task's record as Redis holds it, or `None` when it does not exist.
    async fn read_record(&self, id: &str) -> StoreResult<Option<HashMap<String, String>>> {
        let mut con = self.con.clone();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.task(id))
            .query_async(&mut con)
            .await?;
        Ok((!map.is_empty()).then_some(map))
    }

    /// A task's record with its attempts and timeline, or `None` when it does not exist.
    pub(crate) async fn detail(&self, id: &str) -> StoreResult<Option<TaskDetail>> {
        let Some(map) = self.read_record(id).await? else {
            return Ok(None);
        };
        let status = parse_status(id, &map);
        let (attempts, timeline) = story(&status, &map);
        Ok(Some(TaskDetail {
            status,
            attempts,
            timeline,
        }))
    }

    /// Reads a task's record.
    pub(crate) async fn status(&self, id: &str) -> StoreResult<Option<TaskStatus>> {
        Ok(self
            .read_record(id)
            .await?
            .map(|map| parse_status(id, &map)))
    }

    /// Waits up to `timeout` for the final event of a task that was enqueued with `reply`.
    /// Uses its own connection: a blocking pop must not stall the shared one.
    pub(crate) async fn wait_reply(
        &self,
        id: &str,
        timeout: Duration,
    ) -> StoreResult<Option<String>> {
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
}

/// What a claim took.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The tasks, now owned by the claiming node.
    pub(crate) tasks: Vec<Task>,
    /// The worker is paused cluster-wide: nothing was taken.
    pub(crate) paused: bool,
}

/// The single row `claim.lua` answers for a paused worker (`PAUSED` in `common.lua`).
const PAUSED: &str = "paused";

/// The name in a claimed-task row of whether the task is pinned to a node (`1`) or may move
/// (`0`). Not a record field: `claim.lua` and `adopt.lua` decide it (`pinned_node` in
/// `common.lua`) from the record's `target`.
const PINNED: &str = "pinned";

/// A claimed-task row, by field name.
pub(super) type ClaimedRow<'a> = HashMap<&'a str, String>;

/// Reads the answer of `claim.lua` or `adopt.lua`: the header `ROW` (the field names), then one
/// row of values per task in the header's order.
pub(super) fn parse_claimed_rows(reply: Vec<Vec<String>>) -> StoreResult<Vec<Task>> {
    let mut rows = reply.into_iter();
    let Some(header) = rows.next() else {
        return Err(StoreError::Corrupt(
            "a claim answered without its header".into(),
        ));
    };
    rows.map(|values| {
        if values.len() != header.len() {
            return Err(StoreError::Corrupt(format!(
                "a claimed row has {} values for {} names",
                values.len(),
                header.len()
            )));
        }
        let row: ClaimedRow = header.iter().map(String::as_str).zip(values).collect();
        parse_claimed(&row)
    })
    .collect()
}

/// Reads a row of `claim.lua` or `adopt.lua` into a task, by field name. The fields the script
/// always writes (`id`, `epoch`, `pinned`) and the worker are required; a record field the row
/// lacks takes its default.
pub(super) fn parse_claimed(row: &ClaimedRow) -> StoreResult<Task> {
    let get = |name: &str| row.get(name).filter(|v| !v.is_empty()).cloned();
    let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let ms = |name: &str| num(name).filter(|ms| *ms > 0).map(Duration::from_millis);
    let id = get(field::ID).ok_or_else(|| StoreError::Corrupt("claimed task without id".into()))?;
    let missing = |name: &str| StoreError::Corrupt(format!("claimed task {id} has no {name}"));
    let epoch = num(field::EPOCH).ok_or_else(|| missing(field::EPOCH))?;
    let pinned = get(PINNED).ok_or_else(|| missing(PINNED))? == "1";
    let worker = get(field::WORKER).ok_or_else(|| missing(field::WORKER))?;
    Ok(Task {
        worker,
        args: get(field::ARGS).unwrap_or_else(|| "null".into()),
        priority: get(field::PRIORITY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        // A claim recorded the attempt it took the task for; an adoption kept it.
        attempt: num(field::ATTEMPT).unwrap_or(0).max(1) as u32,
        attempts: num(field::ATTEMPTS).filter(|a| *a > 0).map(|a| a as u32),
        timeout: ms(field::TIMEOUT),
        backoff: ms(field::BACKOFF),
        backoff_cap: ms(field::BACKOFF_CAP),
        deadline: num(field::DEADLINE),
        epoch,
        created: num(field::CREATED).unwrap_or(0),
        pinned,
        id,
    })
}

/// Reads a task record (HGETALL) into its status.
pub(super) fn parse_status(id: &str, map: &HashMap<String, String>) -> TaskStatus {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of `RUN_FIELDS`, as `common.lua` defines them.
    fn run_fields() -> Vec<String> {
        let lua = include_str!("lua/common.lua");
        let start = lua
            .find("local RUN_FIELDS = {")
            .expect("common.lua defines RUN_FIELDS");
        let list = &lua[start..start + lua[start..].find('}').unwrap()];
        list.split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// A row with what every claimed row carries, plus `extra`.
    fn row<'a>(extra: &[(&'a str, &str)]) -> ClaimedRow<'a> {
        [
            ("id", "t"),
            ("epoch", "3"),
            ("pinned", "0"),
            ("worker", "w"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect()
    }

    #[test]
    fn every_run_field_is_read_by_name() {
        let names = run_fields();
        assert!(names.len() >= 10, "{names:?}");
        let bare = format!("{:?}", parse_claimed(&row(&[])).unwrap());
        for name in &names {
            let with = parse_claimed(&row(&[(name, "7")])).unwrap();
            assert_ne!(
                format!("{with:?}"),
                bare,
                "`{name}` is in the row but the store does not read it"
            );
        }
    }

    #[test]
    fn a_row_without_what_the_script_always_writes_is_refused() {
        for missing in ["id", "epoch", "pinned", "worker"] {
            let mut r = row(&[]);
            r.remove(missing);
            assert!(parse_claimed(&r).is_err(), "a row without `{missing}`");
        }
    }
}
