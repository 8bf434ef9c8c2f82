//! The CLI's views: what `bgnode bg` lists.

use std::collections::HashMap;

use serde::Serialize;

use super::tasks::parse_status;
use super::{Store, StoreResult};
use crate::decide::runnable::unrunnable;

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
    /// Where it must run: `all`, `node:<id>`, or `None` (any node).
    pub target: Option<String>,
    /// For a waiting task that no live node can run now, why (`node `n9` is not live`, `no
    /// live node offers worker `x``); it expires after `[tasks] unrunnable_after` so.
    pub unrunnable: Option<String>,
}

/// What `bgnode bg` lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Tasks waiting for a node (pinned ones included), highest priority first within each
    /// worker type; those no live node can run now say why (`unrunnable`).
    pub pending: Vec<TaskRow>,
    /// Delayed, retrying and recurring tasks, soonest first.
    pub scheduled: Vec<TaskRow>,
    /// Tasks running on a node.
    pub running: Vec<TaskRow>,
    /// Tasks whose attempts were exhausted, latest first.
    pub dead: Vec<TaskRow>,
    /// How many there are of each (the lists are cut at the limit), and `unrunnable`: how
    /// many of the pending ones no live node can run now.
    pub counts: HashMap<String, u64>,
}

impl Store {
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
                    target: s.target,
                    unrunnable: None,
                }
            })
            .collect())
    }

    /// Lists pending, scheduled, running and dead tasks, at most `limit` of each.
    pub(crate) async fn overview(&self, limit: usize) -> StoreResult<Overview> {
        let mut con = self.con.clone();
        let stop = limit.max(1) as isize - 1;
        let (workers, pinned): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.keys.workers())
            .cmd("SMEMBERS")
            .arg(self.keys.pinned())
            .query_async(&mut con)
            .await?;
        let live = self.live_nodes().await?;
        let mut sets: Vec<(String, &str, Option<&str>)> = workers
            .iter()
            .map(|w| (self.keys.pending(w), w.as_str(), None))
            .collect();
        sets.extend(pinned.iter().filter_map(|entry| {
            let (w, node) = entry.split_once('@')?;
            Some((self.keys.node_pending(w, node), w, Some(node)))
        }));
        let mut counts = HashMap::new();
        let mut pending_ids = Vec::new();
        let mut why: HashMap<String, String> = HashMap::new();
        let (mut pending_total, mut unrunnable_total) = (0, 0);
        for (key, worker, node) in sets {
            let (n, ids): (u64, Vec<String>) = redis::pipe()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(stop)
                .query_async(&mut con)
                .await?;
            pending_total += n;
            if n > 0
                && let Some(reason) = unrunnable(worker, node, &live)
            {
                unrunnable_total += n;
                why.extend(ids.iter().map(|id| (id.clone(), reason.to_string())));
            }
            pending_ids.extend(ids.into_iter().map(|id| (id, None)));
        }
        pending_ids.truncate(limit);
        counts.insert("pending".to_owned(), pending_total);
        counts.insert("unrunnable".to_owned(), unrunnable_total);
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
            pending: self
                .rows(&pending_ids)
                .await?
                .into_iter()
                .map(|mut r| {
                    r.unrunnable = why.remove(&r.id);
                    r
                })
                .collect(),
            scheduled: self.rows(&with_due(scheduled)).await?,
            running: running.into_iter().take(limit).collect(),
            dead: self.rows(&with_due(dead)).await?,
            counts,
        })
    }
}
