//! The cluster-wide counts a node exports as metrics: tasks pending per worker type, scheduled
//! and dead tasks, members and paused worker types. Two round trips, bounded: the names of at
//! most `max` worker types and pinned sets are read, and one count per name.

use std::collections::BTreeMap;

use super::{Store, StoreResult};

/// What [`Store::cluster_counts`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterCounts {
    /// Tasks waiting in the pending sets of each worker type, its pinned sets included.
    pub(crate) pending: BTreeMap<String, u64>,
    /// Entries of `{prefix}:scheduled`: delayed, retrying and recurring tasks.
    pub(crate) scheduled: u64,
    /// Entries of `{prefix}:dead`.
    pub(crate) dead: u64,
    /// Members of `{prefix}:members`.
    pub(crate) members: u64,
    /// Worker types in `{prefix}:paused` (0 when the set does not exist).
    pub(crate) paused: u64,
}

impl Store {
    /// Reads the cluster-wide counts; of the worker types and pinned sets, the first `max` of
    /// each by name.
    pub(crate) async fn cluster_counts(&self, max: usize) -> StoreResult<ClusterCounts> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.keys.workers());
        pipe.cmd("SMEMBERS").arg(self.keys.pinned());
        pipe.cmd("ZCARD").arg(self.keys.scheduled());
        pipe.cmd("ZCARD").arg(self.keys.dead());
        pipe.cmd("SCARD").arg(self.keys.members());
        pipe.cmd("SCARD").arg(self.keys.paused());
        let (mut workers, mut pinned, scheduled, dead, members, paused): (
            Vec<String>,
            Vec<String>,
            u64,
            u64,
            u64,
            u64,
        ) = pipe.query_async(&mut con).await?;
        workers.sort_unstable();
        workers.truncate(max);
        pinned.sort_unstable();
        pinned.truncate(max);
        // A pinned set `{worker}@{node}` counts for its worker type.
        let sets: Vec<(&str, String)> = workers
            .iter()
            .map(|w| (w.as_str(), self.keys.pending(w)))
            .chain(pinned.iter().filter_map(|p| {
                let (worker, node) = p.split_once('@')?;
                Some((worker, self.keys.node_pending(worker, node)))
            }))
            .collect();
        let mut pending = BTreeMap::new();
        if !sets.is_empty() {
            let mut pipe = redis::pipe();
            for (_, key) in &sets {
                pipe.cmd("ZCARD").arg(key);
            }
            let sizes: Vec<u64> = pipe.query_async(&mut con).await?;
            for ((worker, _), n) in sets.iter().zip(sizes) {
                *pending.entry((*worker).to_owned()).or_default() += n;
            }
        }
        Ok(ClusterCounts {
            pending,
            scheduled,
            dead,
            members,
            paused,
        })
    }
}
