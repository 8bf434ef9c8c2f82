//! Making what this node holds agree with what Redis says it owns: at (re)start, everything it
//! owns goes back to the pending sets before it claims ([`recover`]); after a lapse of its
//! liveness lease, it checks which held tasks it still owns and drops the rest
//! ([`DispatcherState::verify_ownership`]).

use std::time::Duration;

use ractor::ActorRef;

use super::{DispatcherMsg, DispatcherState, Internal};
use crate::decide::backoff::Backoff;
use crate::engine::saver::SaverHandle;
use crate::store::Store;

/// Makes the owned set consistent before claiming: flush the saver, then hand back everything
/// `node` still owns. Retries while Redis is unreachable.
pub(super) async fn recover(store: &Store, saver: &SaverHandle, node: &str) {
    let mut backoff = Backoff::default();
    saver.flush(Duration::from_secs(30)).await;
    loop {
        match store.release_owned(node).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(
                    tasks = n,
                    "handed back tasks this node owned before (re)start"
                );
                return;
            }
            Err(e) => {
                tracing::warn!("cannot recover owned tasks yet ({e}); retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

impl DispatcherState {
    /// After a lapse of the liveness lease, finds which held tasks this node no longer owns;
    /// the answer comes back as [`Internal::Lost`].
    pub(super) fn verify_ownership(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let held: Vec<(String, u64)> = self.lanes.values().flat_map(|w| w.lane.held()).collect();
        let (store, node) = (self.args.store.clone(), self.args.node.clone());
        let retry_after = self.lapse_backoff.next_delay();
        let me = myself.clone();
        tokio::spawn(async move {
            match store.still_owned(&node, &held).await {
                Ok(owned) => {
                    let lost: Vec<String> = held
                        .into_iter()
                        .zip(owned)
                        .filter_map(|((id, _), own)| (!own).then_some(id))
                        .collect();
                    if !lost.is_empty() {
                        tracing::warn!(
                            lost = lost.len(),
                            "this node was failed over while it could not renew its lease; dropping the tasks it lost"
                        );
                    }
                    let _ = me.cast(Internal::Lost(lost).into());
                }
                Err(e) => {
                    tracing::warn!("cannot check ownership after a lease lapse ({e}); retrying");
                    tokio::time::sleep(retry_after).await;
                    let _ = me.cast(DispatcherMsg::Lapsed);
                }
            }
            let _ = me.cast(DispatcherMsg::Sweep);
        });
    }
}
