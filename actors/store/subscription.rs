//! The ingress subscription: a subscription to the task channel on a connection of its own
//! whose Redis client id is recorded, so that the next holder of the ingress lease can close it
//! before subscribing. Then the channel never has two subscribers, even when a holder is frozen
//! (paused, swapped out) while its lease runs out: Redis cannot tell a frozen subscriber from a
//! live one, but it does close a client it is told to.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Store, StoreResult};

/// A subscription to one channel, with its messages in arrival order.
pub(crate) struct Subscription {
    con: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    channel: String,
    ended: bool,
}

/// What the previous subscriber left when it was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closed {
    /// The holder it belonged to.
    pub(crate) holder: String,
    /// Bytes Redis had queued for it and not yet sent (dropped with it).
    pub(crate) unsent: u64,
}

impl Store {
    /// Closes the recorded ingress subscription, if its client is still connected. Returns who
    /// held it, or `None` when there was none to close.
    pub(crate) async fn close_ingress_subscriber(&self) -> StoreResult<Option<Closed>> {
        let mut con = self.con.clone();
        let recorded: Option<String> = redis::cmd("GET")
            .arg(self.keys.ingress_subscriber())
            .query_async(&mut con)
            .await?;
        let Some((holder, id)) = recorded.as_deref().and_then(|r| r.rsplit_once(' ')) else {
            return Ok(None);
        };
        let Ok(id) = id.parse::<u64>() else {
            return Ok(None);
        };
        let listed: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("ID")
            .arg(id)
            .query_async(&mut con)
            .await?;
        if listed.trim().is_empty() {
            return Ok(None);
        }
        let unsent = listed
            .split_whitespace()
            .find_map(|f| f.strip_prefix("omem="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut con)
            .await?;
        Ok((killed > 0).then(|| Closed {
            holder: holder.to_owned(),
            unsent,
        }))
    }

    /// Subscribes to `channel` for `holder` on a new connection, after recording the
    /// connection's client id as the ingress subscriber (recorded first, so that no
    /// subscription exists that a successor could not find).
    pub(crate) async fn subscribe_ingress(
        &self,
        channel: &str,
        holder: &str,
    ) -> StoreResult<Subscription> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let info = self
            .client
            .get_connection_info()
            .clone()
            .set_redis_settings(
                self.client
                    .get_connection_info()
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            );
        let client = redis::Client::open(info)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_push_sender(tx);
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let id: u64 = redis::cmd("CLIENT").arg("ID").query_async(&mut con).await?;
        let mut main = self.con.clone();
        redis::cmd("SET")
            .arg(self.keys.ingress_subscriber())
            .arg(format!("{holder} {id}"))
            .query_async::<()>(&mut main)
            .await?;
        con.subscribe(channel).await?;
        Ok(Subscription {
            con,
            pushes,
            channel: channel.to_owned(),
            ended: false,
        })
    }
}

impl Subscription {
    /// The next message, or `None` once the connection has ended.
    pub(crate) async fn next(&mut self) -> Option<Vec<u8>> {
        while !self.ended {
            let push = self.pushes.recv().await;
            if let Some(payload) = self.take(push) {
                return Some(payload);
            }
        }
        None
    }

    /// A message that has arrived already, if any (`Some(None)` once the connection ended).
    pub(crate) fn ready(&mut self) -> Option<Option<Vec<u8>>> {
        while !self.ended {
            match self.pushes.try_recv() {
                Ok(push) => {
                    if let Some(payload) = self.take(Some(push)) {
                        return Some(Some(payload));
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => self.ended = true,
            }
        }
        Some(None)
    }

    /// Ends the subscription and returns every message Redis delivered before it ended: the
    /// node stores what it was given while it was the subscriber, even when it has lost the
    /// lease meanwhile. Waits at most `timeout` for the end to be confirmed.
    pub(crate) async fn close(mut self, timeout: Duration) -> Vec<Vec<u8>> {
        let _ = tokio::time::timeout(timeout, self.con.unsubscribe(&self.channel)).await;
        let mut rest = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Ok(Some(push)) if push.kind == PushKind::Unsubscribe => break,
                Ok(push) => rest.extend(self.take(push)),
                Err(_) => break,
            }
        }
        while let Some(Some(payload)) = self.ready() {
            rest.push(payload);
        }
        rest
    }

    /// The payload of a message push; marks the end on a disconnection.
    fn take(&mut self, push: Option<PushInfo>) -> Option<Vec<u8>> {
        let Some(push) = push else {
            self.ended = true;
            return None;
        };
        match push.kind {
            PushKind::Message => match push.data.into_iter().nth(1) {
                Some(Value::BulkString(bytes)) => Some(bytes),
                _ => None,
            },
            PushKind::Disconnection => {
                self.ended = true;
                None
            }
            _ => None,
        }
    }
}
