//! The inbox: a list any client pushes envelopes on (`LPUSH {prefix}:inbox`), drained by the
//! ingress lease holder through a processing list, so that a holder dying between taking a
//! message and storing it loses nothing.
//!
//! `take.lua` moves a batch into `{prefix}:inbox:processing`, each message behind the id it will
//! be stored under when it carries none; the holder stores the tasks, then `settle.lua` removes
//! the messages (keeping refused ones, with the reason, on `{prefix}:rejected`). Whatever is
//! left in the processing list is taken again first, by the same holder or the next one, and
//! stored under the same ids: the enqueue stores an id once, so nothing is stored twice.

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Store, StoreResult};

/// Rejections kept on `{prefix}:rejected` (the newest).
pub(crate) const REJECTED_KEPT: usize = 1000;

/// One message taken from the inbox: the id fixed for it, and the message as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InboxEntry {
    /// The processing list's entry as it is stored (`{id} {message}`): what settling removes.
    pub(crate) raw: Vec<u8>,
    /// The id the task is stored under when the message does not carry one.
    pub(crate) id: String,
}

impl InboxEntry {
    /// The message as the client pushed it.
    pub(crate) fn message(&self) -> &[u8] {
        &self.raw[self.id.len() + 1..]
    }

    fn read(raw: Vec<u8>) -> Option<InboxEntry> {
        let space = raw.iter().position(|b| *b == b' ')?;
        let id = std::str::from_utf8(&raw[..space]).ok()?.to_owned();
        Some(InboxEntry { raw, id })
    }
}

impl Store {
    /// Takes up to `n` inbox messages for `holder`: what the processing list holds, else a new
    /// batch moved there. `None` when `holder` does not hold the ingress lease.
    pub(crate) async fn take_inbox(
        &self,
        holder: &str,
        n: usize,
    ) -> StoreResult<Option<Vec<InboxEntry>>> {
        let mut con = self.con.clone();
        let (holding, taken): (i64, Vec<Vec<u8>>) = self
            .scripts
            .take
            .arg(self.keys.prefix())
            .arg(holder)
            .arg(n)
            .invoke_async(&mut con)
            .await?;
        if holding != 1 {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(taken.len());
        for raw in taken {
            match InboxEntry::read(raw) {
                Some(entry) => entries.push(entry),
                None => {
                    return Err(super::StoreError::Corrupt(
                        "an entry of the inbox's processing list has no id".into(),
                    ));
                }
            }
        }
        Ok(Some(entries))
    }

    /// Removes settled messages from the processing list, keeping each refusal (JSON) on the
    /// rejected list. Returns, per message, whether this call removed it.
    pub(crate) async fn settle_inbox(
        &self,
        settled: &[(&InboxEntry, Option<String>)],
    ) -> StoreResult<Vec<bool>> {
        if settled.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut call = self.scripts.settle.call();
        call.arg(self.keys.prefix()).arg(REJECTED_KEPT);
        for (entry, rejection) in settled {
            call.arg(&entry.raw).arg(rejection.as_deref().unwrap_or(""));
        }
        let removed: Vec<i64> = call.invoke_async(&mut con).await?;
        Ok(removed.into_iter().map(|n| n > 0).collect())
    }

    /// A connection of its own for [`Store::wait_inbox`]: a blocking call would stall the
    /// shared one.
    pub(crate) async fn inbox_connection(&self) -> StoreResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(INBOX_WAIT + Duration::from_secs(5)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Blocks up to [`INBOX_WAIT`] until the inbox has a message, moving the oldest one to
    /// `{prefix}:inbox:taking` (where the next take finds it). True when one was moved.
    pub(crate) async fn wait_inbox(&self, con: &mut MultiplexedConnection) -> StoreResult<bool> {
        let moved: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(self.keys.inbox())
            .arg(self.keys.inbox_taking())
            .arg("RIGHT")
            .arg("LEFT")
            .arg(INBOX_WAIT.as_secs_f64())
            .query_async(con)
            .await?;
        Ok(moved.is_some())
    }
}

/// How long one blocking wait on the inbox lasts before the holder looks again (at the
/// processing list, its lease, a stop).
pub(crate) const INBOX_WAIT: Duration = Duration::from_secs(1);
