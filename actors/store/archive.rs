//! The archive's outbox in Redis. A node that archives stages the rows of the tasks it ends on
//! its own outbox (`write.lua`, from the row the saver sends); the other ends are staged on the
//! cluster's outbox from the record (`stage_row` in `common.lua`) while `{prefix}:archive`
//! exists. An archiver reads its node's outbox (topped up from the cluster's), writes the rows
//! to PostgreSQL, then acknowledges them. A node that leaves or dies gives its outbox back to
//! the cluster's (`leave.lua`).

use std::time::Duration;

use super::{Incarnation, Store, StoreResult};

impl Store {
    /// Says the cluster archives, for `hold`: until then every finished task's row is staged.
    pub(crate) async fn archive_on(&self, hold: Duration) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("SET")
            .arg(self.keys.archive())
            .arg(1)
            .arg("PX")
            .arg(hold.as_millis() as u64)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Up to `n` rows for `node`'s archiver from the head of its own outbox, topped up from
    /// the cluster's outbox when it holds fewer.
    pub(crate) async fn take_archive(&self, node: &str, n: usize) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        self.scripts
            .archive_take
            .key(self.keys.outbox())
            .key(self.keys.node_outbox(node))
            .arg(n)
            .invoke_async(&mut con)
            .await
    }

    /// The first `n` rows of `me`'s outbox are in the archive: they go, unless another
    /// incarnation of the node holds its lease (then false, and nothing changes).
    pub(crate) async fn archived(&self, me: &Incarnation, n: usize) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let done: i64 = self
            .scripts
            .archive_ack
            .key(self.keys.node_outbox(&me.node))
            .key(self.keys.alive(&me.node))
            .arg(n)
            .arg(&me.holder)
            .invoke_async(&mut con)
            .await?;
        Ok(done == 1)
    }

    /// How many rows wait for the archive, cluster-wide: in the cluster's outbox and in every
    /// member's own.
    pub(crate) async fn outbox_len(&self) -> StoreResult<u64> {
        let mut con = self.con.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.members())
            .query_async(&mut con)
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(self.keys.outbox());
        for m in &members {
            pipe.cmd("LLEN").arg(self.keys.node_outbox(m));
        }
        let lens: Vec<u64> = pipe.query_async(&mut con).await?;
        Ok(lens.iter().sum())
    }

    /// Holds every node's claims for `hold` (the outbox is over its bound), or lets them go.
    pub(crate) async fn hold_claims(&self, hold: Option<Duration>) -> StoreResult<()> {
        let mut con = self.con.clone();
        match hold {
            Some(hold) => {
                redis::cmd("SET")
                    .arg(self.keys.archive_full())
                    .arg(1)
                    .arg("PX")
                    .arg(hold.as_millis() as u64)
                    .query_async::<()>(&mut con)
                    .await?;
            }
            None => {
                redis::cmd("DEL")
                    .arg(self.keys.archive_full())
                    .query_async::<()>(&mut con)
                    .await?;
            }
        }
        Ok(())
    }
}
