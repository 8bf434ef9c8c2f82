//! The inbox drain: while this node holds the ingress lease, it takes the envelopes clients
//! pushed on `{prefix}:inbox` and stores them as tasks, durably.
//!
//! One round, repeated: `take.lua` hands out what the processing list holds (left by a holder
//! that died, or by a round whose store failed), else moves a new batch there, each message
//! behind the id it is stored under when it has none. The messages are read by the channel's
//! rules ([`crate::model::envelope`]) and the tasks stored with the one durable enqueue; only
//! then does `settle.lua` remove them from the processing list, keeping refused ones with their
//! reason on `{prefix}:rejected`. A holder that dies anywhere in a round leaves the messages in
//! the processing list, and the next round (its own or its successor's) stores them under the
//! same ids: the enqueue stores an id once. When there is nothing to take, the drain blocks on
//! the inbox (`BLMOVE`, on a connection of its own) for at most a second at a time.
//!
//! The drain runs as a task of the ingress listener, started when it subscribes and aborted
//! when it lets go of the lease; `take.lua` checks the lease itself, so a holder frozen while
//! its lease ran out takes nothing when it wakes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::decide::backoff::Backoff;
use crate::engine::ingress::{IngressArgs, Wakes, admit, announce_rejection, store_tasks};
use crate::model::envelope::{ChannelMessage, Rejection, parse_message};
use crate::model::names::shorten;
use crate::model::task::TaskSpec;
use crate::store::InboxEntry;

/// Most messages taken in one round.
pub(crate) const BATCH: usize = 512;

/// Longest message text kept on the rejected list; a longer one is cut and marked.
const KEPT_BYTES: usize = 64 * 1024;

/// Drains the inbox for as long as `holder` holds the ingress lease (returns when it does not).
pub(crate) async fn drain(ctx: Arc<IngressArgs>, holder: String) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut rng = fastrand::Rng::with_seed(ctx.generation ^ 0x1b0c);
    let mut waiting = None;
    loop {
        let entries = match ctx.store.take_inbox(&holder, BATCH).await {
            Ok(Some(entries)) => entries,
            Ok(None) => {
                tracing::debug!("inbox: the ingress lease is held elsewhere; stopped draining");
                return;
            }
            Err(e) => {
                tracing::warn!("cannot take from the inbox ({e}); retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if entries.is_empty() {
            if waiting.is_none() {
                match ctx.store.inbox_connection().await {
                    Ok(con) => waiting = Some(con),
                    Err(e) => {
                        tracing::warn!("cannot open the inbox's connection ({e}); retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
            }
            if let Some(con) = waiting.as_mut()
                && let Err(e) = ctx.store.wait_inbox(con).await
            {
                tracing::debug!("waiting on the inbox failed ({e}); reconnecting");
                waiting = None;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            continue;
        }
        match round(&ctx, &entries, &mut rng).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                // The messages stay in the processing list; the next round takes them again.
                tracing::warn!(
                    "cannot store {} inbox messages yet ({e}); retrying",
                    entries.len()
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Stores one batch of inbox messages and settles them.
async fn round(
    ctx: &Arc<IngressArgs>,
    entries: &[InboxEntry],
    rng: &mut fastrand::Rng,
) -> Result<(), crate::store::StoreError> {
    let limit = ctx.settings.limits.message_bytes as usize;
    let mut verdicts: Vec<Option<Rejection>> = vec![None; entries.len()];
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut places: Vec<usize> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let message = entry.message();
        let read = match parse_message(message, limit) {
            Ok(ChannelMessage::Task(spec)) => admit(ctx, *spec, message),
            Ok(_) => Err(Rejection {
                reason:
                    "the inbox takes task envelopes only; notices (`op`) go on the task channel"
                        .into(),
                id: None,
                worker: None,
                excerpt: shorten(&String::from_utf8_lossy(message), 120),
            }),
            Err(rejection) => Err(rejection),
        };
        match read {
            Ok(mut spec) => {
                spec.id.get_or_insert_with(|| entry.id.clone());
                specs.push(spec);
                places.push(i);
            }
            Err(rejection) => verdicts[i] = Some(rejection),
        }
    }
    let stored = if specs.is_empty() {
        Vec::new()
    } else {
        store_tasks(ctx, &specs).await?
    };
    let mut wakes = Wakes::default();
    for ((spec, (id, accepted)), i) in specs.iter().zip(&stored).zip(&places) {
        if let Some(mut rejection) = wakes.note(ctx, spec, id, *accepted) {
            rejection.excerpt = shorten(&String::from_utf8_lossy(entries[*i].message()), 120);
            verdicts[*i] = Some(rejection);
        }
    }
    let now = ctx.store.clock().now_ms();
    let records: Vec<Option<String>> = entries
        .iter()
        .zip(&verdicts)
        .map(|(entry, verdict)| verdict.as_ref().map(|r| record(r, entry, &ctx.node, now)))
        .collect();
    let settled: Vec<(&InboxEntry, Option<String>)> = entries.iter().zip(records).collect();
    let removed = ctx.store.settle_inbox(&settled).await?;
    wakes.send(ctx, rng);
    // Announced once: by the round that moved the message off the processing list.
    for (verdict, removed) in verdicts.iter().zip(removed) {
        if let (Some(rejection), true) = (verdict, removed) {
            tracing::warn!(
                id = rejection.id.as_deref().unwrap_or("-"),
                "rejected an inbox message: {} (message: {})",
                rejection.reason,
                rejection.excerpt
            );
            announce_rejection(ctx, rejection);
        }
    }
    Ok(())
}

/// A rejection as kept on `{prefix}:rejected`: the reason, what could be read, and the message
/// itself (cut at [`KEPT_BYTES`]), so that it can be mended and pushed again.
fn record(rejection: &Rejection, entry: &InboxEntry, node: &str, ts: u64) -> String {
    let message = entry.message();
    let cut = message.len() > KEPT_BYTES;
    let text = String::from_utf8_lossy(&message[..message.len().min(KEPT_BYTES)]);
    json!({
        "reason": rejection.reason,
        "id": rejection.id,
        "worker": rejection.worker,
        "message": text,
        "truncated": cut,
        "node": node,
        "ts": ts,
    })
    .to_string()
}
