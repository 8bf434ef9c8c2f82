//! The archive's outbox in Redis. The scripts stage every finished task's row on the cluster's
//! outbox (`stage_row` in `common.lua`) while `{prefix}:archive` exists; an archiver takes rows
//! into its node's own outbox, writes them to PostgreSQL, then acknowledges them. A node that
//! leaves or dies gives what it took back to the cluster's outbox (`leave.lua`).

use std::time::Duration;

use super::{Store, StoreResult};

/// How full the outbox is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OutboxLen {
    /// Rows waiting for any archiver.
    pub(crate) waiting: u64,
    /// Rows that nodes took and have not acknowledged yet.
    pub(crate) taken: u64,
}

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

    /// Rows for `node`'s archiver: what its own outbox holds, else up to `n` rows moved there
    /// from the cluster's outbox.
    pub(crate) async fn take_archive(&self, node: &str, n: usize) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        Ok(self
            .scripts
            .archive_take
            .key(self.keys.outbox())
            .key(self.keys.node_outbox(node))
            .arg(n)
            .invoke_async(&mut con)
            .await?)
    }

    /// The rows `node` took are in the archive: its own outbox is emptied.
    pub(crate) async fn archived(&self, node: &str) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("DEL")
            .arg(self.keys.node_outbox(node))
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// How many rows wait in the cluster's outbox, and in `node`'s.
    pub(crate) async fn outbox_len(&self, node: &str) -> StoreResult<OutboxLen> {
        let mut con = self.con.clone();
        let (waiting, taken): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(self.keys.outbox())
            .cmd("LLEN")
            .arg(self.keys.node_outbox(node))
            .query_async(&mut con)
            .await?;
        Ok(OutboxLen { waiting, taken })
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
