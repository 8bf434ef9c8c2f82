//! Who owns a task: handing tasks back (on stop, on failover), adopting tasks a peer hands
//! over, and checking that this node still owns what it holds.

use std::collections::HashMap;

use super::tasks::parse_claimed_rows;
use super::{Guard, Incarnation, Store, StoreResult};
use crate::model::task::{Task, field};

impl Store {
    /// Hands every unfinished task `me` owns back to the pending sets with new epochs (at a
    /// stop, or before claiming after a start). Returns how many ids were taken from the owned
    /// set; 0 when another incarnation of the id holds its lease (nothing moves).
    pub(crate) async fn release_owned(&self, me: &Incarnation) -> StoreResult<usize> {
        Ok(self
            .hand_back(&me.node, Guard::Myself(me))
            .await?
            .unwrap_or(0))
    }

    /// Fails over a dead node: hands its owned tasks back to the pending sets with new epochs,
    /// unless its liveness lease exists. Returns `None` when the lease exists (it is alive),
    /// else how many tasks were moved.
    pub(crate) async fn failover(&self, dead: &str) -> StoreResult<Option<usize>> {
        self.hand_back(dead, Guard::Survivor).await
    }

    /// Runs the hand-back script in batches until the owned set is empty (`None` when the
    /// guard held back the first batch).
    async fn hand_back(&self, node: &str, guard: Guard<'_>) -> StoreResult<Option<usize>> {
        let mut total = 0;
        loop {
            let mut con = self.con.clone();
            let n: i64 = self
                .scripts
                .release
                .key(self.keys.owned(node))
                .key(self.keys.workers())
                .key(self.keys.alive(node))
                .arg(self.keys.prefix())
                .arg(200)
                .arg(guard.arg())
                .arg("0")
                .invoke_async(&mut con)
                .await?;
            match n {
                -1 if total == 0 => return Ok(None),
                n if n <= 0 => return Ok(Some(total)),
                n => total += n as usize,
            }
        }
    }

    /// Hands the given tasks back to the pending sets if `me` still owns them (under the given
    /// epoch, where one is given). `unstarted`: they never started here, so the attempt their
    /// claim counted is given back. Returns how many were handed back.
    pub(crate) async fn release_ids(
        &self,
        me: &Incarnation,
        tasks: &[(String, Option<u64>)],
        unstarted: bool,
    ) -> StoreResult<usize> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let mut con = self.con.clone();
        let mut call = self.scripts.release.key(self.keys.owned(&me.node));
        call.key(self.keys.workers())
            .key(self.keys.alive(&me.node))
            .arg(self.keys.prefix())
            .arg(tasks.len())
            .arg(&me.holder)
            .arg(if unstarted { "1" } else { "0" });
        for (id, epoch) in tasks {
            call.arg(id)
                .arg(epoch.map(|e| e.to_string()).unwrap_or_default());
        }
        let n: i64 = call.invoke_async(&mut con).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Adopts tasks `from` hands over to `to` (only those `from` still owns under the given
    /// epochs). Returns them, owned by `to` under new epochs; none while another incarnation of
    /// `to` holds its lease.
    pub(crate) async fn adopt(
        &self,
        from: &str,
        to: &Incarnation,
        tasks: &[(String, u64)],
    ) -> StoreResult<Vec<Task>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut call = self.scripts.adopt.key(self.keys.owned(from));
        call.key(self.keys.owned(&to.node))
            .key(self.keys.alive(&to.node))
            .arg(self.keys.prefix())
            .arg(&to.node)
            .arg(&to.holder);
        for (id, epoch) in tasks {
            call.arg(id).arg(epoch);
        }
        let reply: Vec<Vec<String>> = call.invoke_async(&mut con).await?;
        parse_claimed_rows(reply)
    }

    /// What Redis says `node` owns: each id of its owned set with the task's epoch (a record
    /// that is gone or has no epoch is left out).
    pub(crate) async fn owned_with_epochs(&self, node: &str) -> StoreResult<HashMap<String, u64>> {
        let mut con = self.con.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.owned(node))
            .query_async(&mut con)
            .await?;
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET").arg(self.keys.task(id)).arg(field::EPOCH);
        }
        let epochs: Vec<Option<u64>> = pipe.query_async(&mut con).await?;
        Ok(ids
            .into_iter()
            .zip(epochs)
            .filter_map(|(id, e)| Some((id, e?)))
            .collect())
    }

    /// Which of `tasks` `node` still owns under the given epochs.
    pub(crate) async fn still_owned(
        &self,
        node: &str,
        tasks: &[(String, u64)],
    ) -> StoreResult<Vec<bool>> {
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
}
