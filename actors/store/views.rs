//! What the cluster shows of its tasks: the one listing behind `bgnode bg` and the HTTP API's
//! `GET /api/v1/tasks` ([`TaskQuery`], [`TaskPage`]), the counts of both ([`Counts`]), and the
//! throughput over the last minute and hour ([`Throughput`]).
//!
//! A listing is newest first: by `created`, then by id, both descending; a page ends with a
//! cursor (`{created}:{id}` of its last task) from which the next page goes on. Tasks are found
//! where they wait, each place read in an order that lets the listing stop early:
//!
//! - pending sets (shared and pinned): scored `created - priority * 10^13`, so within one
//!   priority the score orders by creation; each priority band present is read from its newest;
//! - the owned sets of the members (claimed, not started; running) and the deferred lists of
//!   the keys in `{prefix}:deferring`: read whole (they are bounded by the nodes' queues and the
//!   key limits);
//! - the scheduled set (due time), the dead set (time of death) and `{prefix}:finished` (time of
//!   the end): each score is at least the task's `created`, so reading from the highest score
//!   stops once the scores fall below the oldest task the page still needs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::tasks::parse_status;
use super::{Store, StoreResult};
use crate::decide::runnable::unrunnable;

/// One task in a listing (`bgnode bg`, `GET /api/v1/tasks`).
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
    /// Owning node: the node that claimed it (a `queued` task with a node is claimed, not
    /// started), runs it, or ran it last.
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
    /// Where it must run: `all`, `node:<id>`, or `None` (any node).
    pub target: Option<String>,
    /// For a waiting task that no live node can run now, why (`node `n9` is not live`, `no
    /// live node offers worker `x``); it expires after `[tasks] unrunnable_after` so.
    pub unrunnable: Option<String>,
    /// Per-key limit group.
    pub key: Option<String>,
    /// Creation time, Unix ms.
    pub created: Option<u64>,
    /// Start of the latest attempt, Unix ms.
    pub started: Option<u64>,
    /// End, Unix ms.
    pub finished: Option<u64>,
}

/// Which tasks a listing shows, by where they are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Listed {
    /// Waiting in a pending set (state `queued`, no node yet), pinned ones included.
    Pending,
    /// Claimed by a node and queued there, not started (state `queued` with a node).
    Claimed,
    /// `pending` and `claimed` together: state `queued`.
    Queued,
    /// Waiting for a slot of its key.
    Deferred,
    /// Delayed, or a recurring template.
    Scheduled,
    /// Failed an attempt; runs again at its due time.
    Retrying,
    /// Running on a node.
    Running,
    /// Attempts exhausted.
    Dead,
    /// Finished with a result.
    Done,
    /// Failed, and the worker said not to retry.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Expired.
    Expired,
}

impl Listed {
    /// Every filter, in the order `bgnode bg` lists groups.
    pub const ALL: [Listed; 12] = [
        Listed::Pending,
        Listed::Claimed,
        Listed::Queued,
        Listed::Deferred,
        Listed::Scheduled,
        Listed::Retrying,
        Listed::Running,
        Listed::Dead,
        Listed::Done,
        Listed::Failed,
        Listed::Cancelled,
        Listed::Expired,
    ];

    /// Reads the spelling of a filter (`pending`, `claimed`, …, or a state).
    pub fn parse(text: &str) -> Option<Listed> {
        Listed::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// The spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Listed::Pending => "pending",
            Listed::Claimed => "claimed",
            Listed::Queued => "queued",
            Listed::Deferred => "deferred",
            Listed::Scheduled => "scheduled",
            Listed::Retrying => "retrying",
            Listed::Running => "running",
            Listed::Dead => "dead",
            Listed::Done => "done",
            Listed::Failed => "failed",
            Listed::Cancelled => "cancelled",
            Listed::Expired => "expired",
        }
    }

    /// Whether a record in `state`, owned by `node` (empty: none), is listed by this filter.
    fn admits(self, state: &str, node: &str) -> bool {
        match self {
            Listed::Pending => state == "queued" && node.is_empty(),
            Listed::Claimed => state == "queued" && !node.is_empty(),
            other => other.as_str() == state,
        }
    }

    /// The places tasks listed by this filter wait in.
    fn places(self) -> &'static [Place] {
        match self {
            Listed::Pending => &[Place::Pending],
            Listed::Claimed | Listed::Running => &[Place::Owned],
            Listed::Queued => &[Place::Pending, Place::Owned],
            Listed::Deferred => &[Place::Deferred],
            Listed::Scheduled | Listed::Retrying => &[Place::Scheduled],
            Listed::Dead => &[Place::Dead],
            Listed::Done | Listed::Failed | Listed::Cancelled | Listed::Expired => {
                &[Place::Finished]
            }
        }
    }
}

/// Where tasks wait, as the listing reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Pending,
    Owned,
    Deferred,
    Scheduled,
    Dead,
    Finished,
}

const EVERY_PLACE: [Place; 6] = [
    Place::Pending,
    Place::Owned,
    Place::Deferred,
    Place::Scheduled,
    Place::Dead,
    Place::Finished,
];

/// A listing's filters and page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks so (`None`: every state).
    pub listed: Option<Listed>,
    /// Only tasks of this worker.
    pub worker: Option<String>,
    /// Only tasks pinned to, claimed by, running on or last run by this node.
    pub node: Option<String>,
    /// Most tasks in the page (at least 1).
    pub limit: usize,
    /// Go on after this cursor (from [`TaskPage::next`]).
    pub after: Option<Cursor>,
}

/// Where a page ended: the last task's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Creation time, Unix ms.
    pub created: u64,
    /// Task id.
    pub id: String,
}

impl Cursor {
    /// Reads `{created}:{id}`.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (created, id) = text.split_once(':')?;
        Some(Cursor {
            created: created.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created, self.id)
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskRow>,
    /// The cursor of the next page, when there is more.
    pub next: Option<String>,
}

/// How many tasks wait where, and which workers are paused.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Per state: `pending` (pinned ones too), `unrunnable` (pending ones no live node can run
    /// now), `claimed`, `running`, `deferred`, `scheduled` (retrying ones too), `dead`.
    pub states: BTreeMap<String, u64>,
    /// Per worker type: `pending` (its pending sets, pinned ones too).
    pub workers: BTreeMap<String, BTreeMap<String, u64>>,
    /// The worker types paused cluster-wide.
    pub paused: Vec<String>,
}

/// What `bgnode bg` lists: each group newest first, cut at the limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Tasks waiting for a node (pinned ones included); those no live node can run now say
    /// why (`unrunnable`).
    pub pending: Vec<TaskRow>,
    /// Tasks a node has claimed and queued, not started.
    pub claimed: Vec<TaskRow>,
    /// Tasks waiting for a slot of their key.
    pub deferred: Vec<TaskRow>,
    /// Delayed, retrying and recurring tasks.
    pub scheduled: Vec<TaskRow>,
    /// Tasks running on a node.
    pub running: Vec<TaskRow>,
    /// Tasks whose attempts were exhausted.
    pub dead: Vec<TaskRow>,
    /// How many there are of each (the lists are cut at the limit): `pending`, `unrunnable`,
    /// `claimed`, `deferred`, `scheduled`, `running`, `dead`.
    pub counts: BTreeMap<String, u64>,
    /// The worker types paused cluster-wide.
    pub paused: Vec<String>,
}

/// Tasks that ended in one window of time, from the samples of the counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// How long the window is, in ms (from the oldest sample in it to now).
    pub window_ms: u64,
    /// Tasks stored.
    pub accepted: u64,
    /// Tasks done.
    pub done: u64,
    /// Failed attempts: retried, failed and dead together.
    pub failures: u64,
    /// Each counter's change: `accepted`, `done`, `failed`, `dead`, `retried`, `cancelled`,
    /// `expired`, `stale`.
    pub counts: BTreeMap<String, u64>,
    /// Tasks done per second.
    pub done_per_second: f64,
}

/// Throughput over the last minute and hour, `None` where no sample is old enough yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// About the last minute.
    pub minute: Option<Window>,
    /// About the last hour.
    pub hour: Option<Window>,
    /// The counters since the cluster's start.
    pub total: BTreeMap<String, u64>,
    /// The samples of about the last hour, oldest first: the difference of two neighbours is
    /// what happened between them (a chart's bars).
    pub samples: Vec<Sample>,
}

/// One sample of the cluster's counters: their totals at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When it was taken (Redis's time, ms).
    pub at: u64,
    /// Tasks stored until then.
    pub accepted: u64,
    /// Tasks done until then.
    pub done: u64,
    /// Failed attempts until then: retried, failed and dead together.
    pub failures: u64,
}

/// Least time between two samples of the counters (`tally.lua`).
pub(crate) const TALLY_EVERY_MS: u64 = 10_000;
/// How long samples are kept: a little more than the longest window.
const TALLY_KEEP_MS: u64 = 3_700_000;

/// A task found while listing: its creation time and id, the order of a listing.
type Found = (u64, String);

/// The record fields a listing filters by.
const FILTER_FIELDS: [&str; 4] = ["created", "worker", "node", "state"];

impl Store {
    /// Reads full rows of `ids`, in order, leaving out those whose record is gone.
    async fn rows(&self, ids: &[String]) -> StoreResult<Vec<TaskRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.task(id));
        }
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        Ok(ids
            .iter()
            .zip(maps)
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, m)| {
                let s = parse_status(id, &m);
                let due = match s.state.as_str() {
                    "retrying" => s.retry_at,
                    "scheduled" => s.run_at,
                    _ => None,
                };
                TaskRow {
                    id: s.id,
                    worker: s.worker,
                    state: s.state,
                    priority: s.priority,
                    node: s.node,
                    attempt: s.attempt,
                    due,
                    every: s.every,
                    cron: s.cron,
                    error: s.error,
                    target: s.target,
                    unrunnable: None,
                    key: s.key,
                    created: s.created,
                    started: s.started,
                    finished: s.finished,
                }
            })
            .collect())
    }

    /// One page of the tasks `query` asks for, newest first (see the module documentation).
    pub(crate) async fn tasks(&self, query: &TaskQuery) -> StoreResult<TaskPage> {
        let limit = query.limit.max(1);
        let places: &[Place] = match query.listed {
            Some(l) => l.places(),
            None => &EVERY_PLACE,
        };
        let live = self.live_nodes().await?;
        let mut found: Vec<Found> = Vec::new();
        let mut why: HashMap<String, String> = HashMap::new();
        for place in places {
            match place {
                Place::Pending => {
                    for (key, worker, node) in self.pending_sets(query).await? {
                        let ids = self.pending_newest(&key, limit + 1, query).await?;
                        if let Some(reason) = unrunnable(&worker, node.as_deref(), &live) {
                            why.extend(ids.iter().map(|(_, id)| (id.clone(), reason.to_string())));
                        }
                        found.extend(ids);
                    }
                }
                Place::Owned => {
                    let mut ids = Vec::new();
                    for node in self.members().await? {
                        if query.node.as_ref().is_none_or(|n| *n == node) {
                            ids.extend(self.set_members(&self.keys.owned(&node)).await?);
                        }
                    }
                    found.extend(self.filtered(ids, query).await?);
                }
                Place::Deferred => {
                    let mut ids = Vec::new();
                    for key in self.set_members(&self.keys.deferring()).await? {
                        let mut con = self.con.clone();
                        let list: Vec<String> = redis::cmd("LRANGE")
                            .arg(self.keys.deferred(&key))
                            .arg(0)
                            .arg(-1)
                            .query_async(&mut con)
                            .await?;
                        ids.extend(list);
                    }
                    found.extend(self.filtered(ids, query).await?);
                }
                Place::Scheduled => {
                    let key = self.keys.scheduled();
                    found.extend(self.scored_newest(&key, limit + 1, query).await?);
                }
                Place::Dead => {
                    let key = self.keys.dead();
                    found.extend(self.scored_newest(&key, limit + 1, query).await?);
                }
                Place::Finished => {
                    let key = self.keys.finished();
                    found.extend(self.scored_newest(&key, limit + 1, query).await?);
                }
            }
        }
        found.sort_by(|a, b| b.cmp(a));
        let mut seen = HashSet::new();
        found.retain(|(_, id)| seen.insert(id.clone()));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more.then(|| {
            let (created, id) = found.last().cloned().unwrap_or_default();
            Cursor { created, id }.to_string()
        });
        let ids: Vec<String> = found.into_iter().map(|(_, id)| id).collect();
        let mut rows = self.rows(&ids).await?;
        for row in &mut rows {
            if row.state == "queued" && row.node.is_none() {
                row.unrunnable = why.remove(&row.id);
            }
        }
        Ok(TaskPage { tasks: rows, next })
    }

    /// The members of a set.
    async fn set_members(&self, key: &str) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        Ok(redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut con)
            .await?)
    }

    /// The pending sets a query reads: (key, worker, pinned node).
    async fn pending_sets(
        &self,
        query: &TaskQuery,
    ) -> StoreResult<Vec<(String, String, Option<String>)>> {
        let mut sets = Vec::new();
        if query.node.is_none() {
            for w in self.set_members(&self.keys.workers()).await? {
                if query.worker.as_ref().is_none_or(|q| *q == w) {
                    sets.push((self.keys.pending(&w), w, None));
                }
            }
        }
        for entry in self.set_members(&self.keys.pinned()).await? {
            let Some((w, node)) = entry.split_once('@') else {
                continue;
            };
            if query.worker.as_ref().is_none_or(|q| q == w)
                && query.node.as_ref().is_none_or(|q| q == node)
            {
                sets.push((
                    self.keys.node_pending(w, node),
                    w.to_owned(),
                    Some(node.to_owned()),
                ));
            }
        }
        sets.sort();
        Ok(sets)
    }

    /// The newest `want` tasks of a pending set before the query's cursor. The set is scored
    /// `created - priority * 10^13` with `created` in `0..10^13`, so each priority is a band of
    /// width 10^13 ordered by creation within; every band present is read from its newest.
    async fn pending_newest(
        &self,
        key: &str,
        want: usize,
        query: &TaskQuery,
    ) -> StoreResult<Vec<Found>> {
        const BAND: i64 = 10_000_000_000_000;
        let mut con = self.con.clone();
        let mut out = Vec::new();
        let mut upper = "+inf".to_owned();
        loop {
            let top: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(key)
                .arg(&upper)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut con)
                .await?;
            let Some((_, score)) = top.first() else {
                break;
            };
            let low = (*score as i64).div_euclid(BAND) * BAND;
            let high = low
                + query
                    .after
                    .as_ref()
                    .map_or(BAND - 1, |c| (c.created as i64).min(BAND - 1));
            let mut taken = 0;
            let mut offset = 0;
            let chunk = want.max(64);
            'band: loop {
                let batch: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                    .arg(key)
                    .arg(high)
                    .arg(low)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(chunk)
                    .query_async(&mut con)
                    .await?;
                offset += batch.len();
                let short = batch.len() < chunk;
                for (id, score) in batch {
                    let found = ((score as i64 - low) as u64, id);
                    if before(&found, query) {
                        out.push(found);
                        taken += 1;
                        if taken >= want {
                            break 'band;
                        }
                    }
                }
                if short {
                    break;
                }
            }
            upper = format!("({low}");
        }
        Ok(out)
    }

    /// The tasks of `ids` (read whole) that the query admits, with their creation times.
    async fn filtered(&self, ids: Vec<String>, query: &TaskQuery) -> StoreResult<Vec<Found>> {
        let fields = self.filter_fields(&ids).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .filter_map(|(id, f)| admitted(id, &f, query))
            .collect())
    }

    /// `FILTER_FIELDS` of each task.
    async fn filter_fields(&self, ids: &[String]) -> StoreResult<Vec<Vec<Option<String>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.keys.task(id))
                .arg(&FILTER_FIELDS);
        }
        Ok(pipe.query_async(&mut con).await?)
    }

    /// The newest `want` tasks the query admits in a sorted set whose scores are at least the
    /// creation time of each task (due time, time of death, time of the end): read from the
    /// highest score down, until the scores fall below the oldest task still wanted.
    async fn scored_newest(
        &self,
        key: &str,
        want: usize,
        query: &TaskQuery,
    ) -> StoreResult<Vec<Found>> {
        let mut con = self.con.clone();
        let chunk = want.max(100);
        let mut offset = 0;
        let mut out: Vec<Found> = Vec::new();
        loop {
            let batch: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
                .arg(key)
                .arg(offset)
                .arg(offset + chunk - 1)
                .arg("WITHSCORES")
                .query_async(&mut con)
                .await?;
            offset += batch.len();
            let lowest = batch.last().map(|(_, s)| *s as u64);
            let ids: Vec<String> = batch.into_iter().map(|(id, _)| id).collect();
            let n = ids.len();
            out.extend(self.filtered(ids, query).await?);
            if n < chunk {
                break;
            }
            if out.len() >= want {
                out.sort_by(|a, b| b.cmp(a));
                out.truncate(want);
                if lowest.is_some_and(|l| out.last().is_some_and(|(c, _)| l < *c)) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// How many tasks wait where, and the paused worker types.
    pub(crate) async fn counts(&self) -> StoreResult<Counts> {
        let mut con = self.con.clone();
        let live = self.live_nodes().await?;
        let mut counts = Counts {
            paused: self.paused().await?,
            ..Counts::default()
        };
        let all = TaskQuery::default();
        let (mut pending, mut unrunnable_n) = (0, 0);
        for (key, worker, node) in self.pending_sets(&all).await? {
            let n: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut con).await?;
            pending += n;
            if n > 0 && unrunnable(&worker, node.as_deref(), &live).is_some() {
                unrunnable_n += n;
            }
            *counts
                .workers
                .entry(worker)
                .or_default()
                .entry("pending".into())
                .or_default() += n;
        }
        let mut owned = Vec::new();
        for node in self.members().await? {
            owned.extend(self.set_members(&self.keys.owned(&node)).await?);
        }
        let fields = self.filter_fields(&owned).await?;
        let (mut claimed, mut running) = (0, 0);
        for f in &fields {
            match f.get(3).cloned().flatten().as_deref() {
                Some("queued") => claimed += 1,
                Some("running") => running += 1,
                _ => {}
            }
        }
        let mut deferred = 0;
        for key in self.set_members(&self.keys.deferring()).await? {
            let n: u64 = redis::cmd("LLEN")
                .arg(self.keys.deferred(&key))
                .query_async(&mut con)
                .await?;
            deferred += n;
        }
        let (scheduled, dead): (u64, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(self.keys.scheduled())
            .cmd("ZCARD")
            .arg(self.keys.dead())
            .query_async(&mut con)
            .await?;
        for (name, n) in [
            ("pending", pending),
            ("unrunnable", unrunnable_n),
            ("claimed", claimed),
            ("running", running),
            ("deferred", deferred),
            ("scheduled", scheduled),
            ("dead", dead),
        ] {
            counts.states.insert(name.to_owned(), n);
        }
        Ok(counts)
    }

    /// Each group of `bgnode bg`, at most `limit` tasks, newest first: the same listing as
    /// [`Store::tasks`].
    pub(crate) async fn overview(&self, limit: usize) -> StoreResult<Overview> {
        let group = |listed| async move {
            let query = TaskQuery {
                listed: Some(listed),
                limit,
                ..TaskQuery::default()
            };
            self.tasks(&query).await.map(|p| p.tasks)
        };
        let mut scheduled = group(Listed::Scheduled).await?;
        scheduled.extend(group(Listed::Retrying).await?);
        scheduled.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        scheduled.truncate(limit);
        let counts = self.counts().await?;
        Ok(Overview {
            pending: group(Listed::Pending).await?,
            claimed: group(Listed::Claimed).await?,
            deferred: group(Listed::Deferred).await?,
            scheduled,
            running: group(Listed::Running).await?,
            dead: group(Listed::Dead).await?,
            counts: counts.states,
            paused: counts.paused,
        })
    }

    /// Records a sample of the counters for the throughput, unless one was recorded less than
    /// [`TALLY_EVERY_MS`] ago (by any node). Returns whether it did.
    pub(crate) async fn tally(&self) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .tally
            .arg(self.keys.prefix())
            .arg(TALLY_EVERY_MS)
            .arg(TALLY_KEEP_MS)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Tasks that ended over the last minute and hour: the counters now against the oldest
    /// sample within each window.
    pub(crate) async fn throughput(&self) -> StoreResult<Throughput> {
        let mut con = self.con.clone();
        let now = self.now_ms().await?;
        let total: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.keys.stats())
            .query_async(&mut con)
            .await?;
        let mut window = async |span: u64| -> StoreResult<Option<Window>> {
            let oldest: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.tally())
                .arg(now.saturating_sub(span))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut con)
                .await?;
            Ok(oldest
                .first()
                .and_then(|sample| difference(sample, &total, now)))
        };
        let minute = window(60_000).await?;
        let hour = window(3_600_000).await?;
        let recent: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.tally())
            .arg(now.saturating_sub(3_600_000))
            .arg("+inf")
            .query_async(&mut con)
            .await?;
        Ok(Throughput {
            minute,
            hour,
            total: total.into_iter().collect(),
            samples: recent.iter().filter_map(|s| sample(s)).collect(),
        })
    }
}

/// True when a found task comes after the query's cursor (newest first).
fn before(found: &Found, query: &TaskQuery) -> bool {
    query
        .after
        .as_ref()
        .is_none_or(|c| (found.0, found.1.as_str()) < (c.created, c.id.as_str()))
}

/// The task `id` with `FILTER_FIELDS` `f`, if the query admits it.
fn admitted(id: String, f: &[Option<String>], query: &TaskQuery) -> Option<Found> {
    let get = |i: usize| f.get(i).cloned().flatten().unwrap_or_default();
    let state = get(3);
    if state.is_empty() {
        return None;
    }
    let (worker, node) = (get(1), get(2));
    if query.listed.is_some_and(|l| !l.admits(&state, &node))
        || query.worker.as_ref().is_some_and(|w| *w != worker)
        || query.node.as_ref().is_some_and(|n| *n != node)
    {
        return None;
    }
    let found = (get(0).parse().unwrap_or(0), id);
    before(&found, query).then_some(found)
}

/// A sample `{ms} {counters as JSON}` as read from `{prefix}:tally`; `None` when it is not one.
fn sample(text: &str) -> Option<Sample> {
    let (at, counters) = text.split_once(' ')?;
    let counts: HashMap<String, u64> = serde_json::from_str(counters).ok()?;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    Some(Sample {
        at: at.parse().ok()?,
        accepted: get("accepted"),
        done: get("done"),
        failures: get("retried") + get("failed") + get("dead"),
    })
}

/// The window from a sample `{ms} {counters}` to `now` and the counters `total`.
fn difference(sample: &str, total: &HashMap<String, u64>, now: u64) -> Option<Window> {
    let (at, text) = sample.split_once(' ')?;
    let at: u64 = at.parse().ok()?;
    let then: HashMap<String, u64> = serde_json::from_str(text).unwrap_or_default();
    let counts: BTreeMap<String, u64> = total
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(then.get(k).copied().unwrap_or(0)),
            )
        })
        .collect();
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    let window_ms = now.saturating_sub(at).max(1);
    Some(Window {
        window_ms,
        accepted: get("accepted"),
        done: get("done"),
        failures: get("retried") + get("failed") + get("dead"),
        done_per_second: get("done") as f64 * 1000.0 / window_ms as f64,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_what_they_print() {
        let c = Cursor {
            created: 1_700_000_000_123,
            id: "01a2:b-c".into(),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse("x:1"), None);
        assert_eq!(Cursor::parse("12"), None);
    }

    #[test]
    fn filters_read_their_spelling_and_admit_by_state_and_owner() {
        for l in Listed::ALL {
            assert_eq!(Listed::parse(l.as_str()), Some(l));
        }
        assert_eq!(Listed::parse("Pending"), None);
        assert!(Listed::Pending.admits("queued", ""));
        assert!(!Listed::Pending.admits("queued", "n1"));
        assert!(Listed::Claimed.admits("queued", "n1"));
        assert!(Listed::Queued.admits("queued", "n1") && Listed::Queued.admits("queued", ""));
        assert!(Listed::Retrying.admits("retrying", ""));
        assert!(!Listed::Scheduled.admits("retrying", ""));
    }

    #[test]
    fn a_window_is_the_difference_of_the_counters() {
        let total: HashMap<String, u64> = [("done", 130), ("retried", 4), ("dead", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let w = difference(r#"1000 {"done":10,"retried":1}"#, &total, 61_000).unwrap();
        assert_eq!(w.window_ms, 60_000);
        assert_eq!(w.done, 120);
        assert_eq!(w.failures, 4);
        assert!((w.done_per_second - 2.0).abs() < 1e-9);
        let w = difference("1000 {}", &total, 61_000).unwrap();
        assert_eq!(w.done, 130, "an empty sample counts from zero");
    }

    #[test]
    fn samples_read_the_totals_of_their_moment() {
        assert_eq!(
            sample(r#"1000 {"accepted":9,"done":5,"retried":2,"failed":1,"dead":1,"stale":3}"#),
            Some(Sample {
                at: 1000,
                accepted: 9,
                done: 5,
                failures: 4
            })
        );
        assert_eq!(sample("2000 {}").map(|s| (s.at, s.done)), Some((2000, 0)));
        for bad in ["", "1000", "x {}", "1000 [1]", "1000 {\"done\":-1}"] {
            assert_eq!(sample(bad), None, "{bad:?}");
        }
    }
}
