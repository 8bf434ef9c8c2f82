//! Who owns a task: handing tasks back (on stop, on failover), adopting tasks a peer hands
//! over, and checking that this node still owns what it holds.

use super::tasks::parse_claimed_rows;
use super::{Store, StoreResult};
use crate::model::task::{Task, field};

impl Store {
    /// Hands every unfinished task owned by `node` back to the pending sets with new epochs.
    /// Returns how many ids were taken from the owned set.
    pub(crate) async fn release_owned(&self, node: &str) -> StoreResult<usize> {
        Ok(self.hand_back(node, false).await?.unwrap_or(0))
    }

    /// Fails over a dead node: hands its owned tasks back to the pending sets with new epochs,
    /// unless its liveness lease exists. Returns `None` when the lease exists (it is alive),
    /// else how many tasks were moved.
    pub(crate) async fn failover(&self, dead: &str) -> StoreResult<Option<usize>> {
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
    pub(crate) async fn release_ids(&self, node: &str, ids: &[String]) -> StoreResult<usize> {
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
    pub(crate) async fn adopt(
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
        let reply: Vec<Vec<String>> = call.invoke_async(&mut con).await?;
        parse_claimed_rows(reply)
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
