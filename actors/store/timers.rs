//! Time-driven work: firing due delayed and retrying tasks and recurring templates, creating
//! occurrences, expiring tasks whose deadline passed, and the next time anything is due.

use std::time::Duration;

use super::{Store, StoreError, StoreResult};

/// A recurring template that came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueTemplate {
    /// Template id.
    pub id: String,
    /// The due time (Unix ms).
    pub due: u64,
    /// How it recurs, as stored.
    pub every: Option<u64>,
    /// Cron expression, as stored.
    pub cron: Option<String>,
}

/// Grace a node gets to start a claimed task whose deadline just passed.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

impl Store {
    /// Fires what is due by Redis's time (at most `max` entries): one-shot tasks become
    /// runnable; recurring templates are returned for [`Store::occur`]. Returns that time too
    /// (Unix ms), from which the templates' next times are computed.
    pub(crate) async fn fire_due(&self, max: usize) -> StoreResult<(u64, Vec<DueTemplate>)> {
        let mut con = self.con.clone();
        let (now, rows): (String, Vec<(String, String, String, String)>) = self
            .scripts
            .fire
            .key(self.keys.scheduled())
            .arg(self.keys.prefix())
            .arg(max)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        let now = now
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("fire.lua answered the time `{now}`")))?;
        let templates = rows
            .into_iter()
            .map(|(id, due, every, cron)| DueTemplate {
                id,
                due: due.parse::<f64>().map_or(0, |d| d as u64),
                every: every.parse().ok(),
                cron: Some(cron).filter(|c| !c.is_empty()),
            })
            .collect();
        Ok((now, templates))
    }

    /// Creates the occurrence of template `id` due at `due` and moves the template to `next`,
    /// if nobody did it first. Returns true when this call created it.
    pub(crate) async fn occur(&self, id: &str, due: u64, next: Option<u64>) -> StoreResult<bool> {
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
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Expires tasks whose deadline passed (by Redis's time) before they started. Returns the
    /// worker type of each task expired.
    pub(crate) async fn expire_due(&self, max: usize) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        self.scripts
            .expire
            .key(self.keys.deadlines())
            .arg(self.keys.prefix())
            .arg(max)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(DEADLINE_GRACE.as_millis() as u64)
            .invoke_async(&mut con)
            .await
    }

    /// Expires waiting tasks that no live node has been able to run for `limit` (see
    /// `unrunnable.lua`); a set's clock restarts when no sweep looked at it for `idle`.
    /// Returns the worker type of each task expired.
    pub(crate) async fn expire_unrunnable(
        &self,
        limit: Duration,
        idle: Duration,
        max: usize,
    ) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        let (expired, _blocked): (Vec<String>, usize) = self
            .scripts
            .unrunnable
            .key(self.keys.unrunnable())
            .key(self.keys.workers())
            .key(self.keys.pinned())
            .arg(self.keys.prefix())
            .arg(limit.as_millis() as u64)
            .arg(idle.as_millis() as u64)
            .arg(max)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(crate::decide::times::format_duration(limit))
            .invoke_async(&mut con)
            .await?;
        Ok(expired)
    }

    /// The earliest time something scheduled or a deadline is due, and Redis's time now (both
    /// Unix ms).
    pub(crate) async fn next_due(&self) -> StoreResult<(Option<u64>, u64)> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for key in [self.keys.scheduled(), self.keys.deadlines()] {
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(0).arg("WITHSCORES");
        }
        pipe.cmd("TIME");
        type Head = Vec<(String, f64)>;
        let (scheduled, deadlines, (seconds, micros)): (Head, Head, (u64, u64)) =
            pipe.query_async(&mut con).await?;
        let next = [scheduled, deadlines]
            .into_iter()
            .filter_map(|h| h.first().map(|(_, s)| *s as u64))
            .min();
        Ok((next, super::clock::time_us(seconds, micros) / 1_000))
    }
}
