//! Making what this node holds agree with what Redis says it owns: at (re)start, everything it
//! owns goes back to the pending sets before it claims ([`recover`]); after a lapse of its
//! liveness lease, it checks which held tasks it still owns and drops the rest
//! ([`DispatcherState::verify_ownership`]); and all along, every few seconds, it reads its owned
//! set, hands back what it owns but does not hold and drops what it holds but no longer owns
//! ([`DispatcherState::read_owned`], decided by [`crate::decide::reconcile`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::{DispatcherMsg, DispatcherState, Internal};
use crate::decide::backoff::Backoff;
use crate::decide::reconcile::{EVERY, Round};
use crate::engine::saver::SaverHandle;
use crate::store::{Incarnation, Store};

/// Makes the owned set consistent before claiming: flush the saver, then hand back everything
/// `node` still owns. Retries while Redis is unreachable.
pub(super) async fn recover(store: &Store, saver: &SaverHandle, node: &Incarnation) {
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
        let (store, node) = (self.args.store.clone(), self.args.me.node.clone());
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

impl DispatcherState {
    /// Every [`EVERY`]: reads the owned set and compares it with what this node holds; the
    /// answer comes back as [`Internal::Reconciled`]. Not while recovering, draining or checking
    /// a lapse, and not while the saver has yet to write what was queued before the last read.
    pub(super) fn read_owned(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let now = Instant::now();
        if !self.recovered
            || self.draining
            || self.verifying
            || self.reading
            || self
                .last_read
                .is_some_and(|t| now.duration_since(t) < EVERY)
            || !self.reconciler.may_read(self.args.saver.written())
        {
            return;
        }
        self.reading = true;
        self.last_read = Some(now);
        let mark = self.args.saver.queued();
        let held: HashMap<String, u64> = self
            .lanes
            .values()
            .flat_map(|w| w.lane.held())
            .chain(self.in_transit.iter().map(|id| (id.clone(), 0)))
            .collect();
        let (store, node) = (self.args.store.clone(), self.args.me.node.clone());
        let me = myself.clone();
        tokio::spawn(async move {
            let msg = match store.owned_with_epochs(&node).await {
                Ok(owned) => {
                    let candidates: HashMap<String, u64> = owned
                        .iter()
                        .filter(|(id, _)| !held.contains_key(*id))
                        .map(|(id, epoch)| (id.clone(), *epoch))
                        .collect();
                    // Held but not in the owned set: ask the records, the truth, which of them
                    // are still this node's (a claim may have landed after the read).
                    let missing: Vec<(String, u64)> = held
                        .into_iter()
                        .filter(|(id, epoch)| *epoch > 0 && !owned.contains_key(id))
                        .collect();
                    let lost = match store.still_owned(&node, &missing).await {
                        Ok(own) => missing
                            .into_iter()
                            .zip(own)
                            .filter_map(|((id, _), own)| (!own).then_some(id))
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    Internal::Reconciled {
                        candidates,
                        mark,
                        lost,
                    }
                }
                Err(e) => {
                    tracing::debug!("cannot read the owned set ({e}); trying again later");
                    Internal::Reconciled {
                        candidates: HashMap::new(),
                        mark: u64::MAX,
                        lost: Vec::new(),
                    }
                }
            };
            let _ = me.cast(msg.into());
        });
    }

    /// A read of the owned set came back: drop what was lost, and hand back what has been owned
    /// here without being held for longer than any answer can take.
    pub(super) fn reconciled(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        candidates: HashMap<String, u64>,
        mark: u64,
        lost: &[String],
    ) {
        if !lost.is_empty() {
            tracing::warn!(
                lost = lost.len(),
                "dropping tasks this node held but no longer owns (handed elsewhere while an answer was lost)"
            );
            self.drop_lost(lost);
        }
        if mark == u64::MAX {
            return;
        }
        // Anything held or in transit by now (a claim answered meanwhile) is not a candidate.
        let held: HashSet<String> = self
            .lanes
            .values()
            .flat_map(|w| w.lane.held())
            .map(|(id, _)| id)
            .chain(self.in_transit.iter().cloned())
            .collect();
        let candidates = candidates
            .into_iter()
            .filter(|(id, _)| !held.contains(id))
            .collect();
        let back = self
            .reconciler
            .answered(Instant::now(), Round { candidates, mark });
        if back.is_empty() {
            return;
        }
        tracing::warn!(
            tasks = back.len(),
            "handing back tasks Redis says this node owns but it never received (a claim or hand-off whose answer was lost)"
        );
        let (store, me) = (self.args.store.clone(), self.args.me.clone());
        let ids: Vec<(String, Option<u64>)> =
            back.into_iter().map(|(id, e)| (id, Some(e))).collect();
        let cluster = self.args.cluster.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            match store.release_ids(&me, &ids, true).await {
                Ok(n) if n > 0 => {
                    cluster.broadcast(&crate::cluster::wire::Body::Sweep);
                    let _ = myself.cast(DispatcherMsg::Sweep);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot hand back unheld tasks yet ({e})"),
            }
        });
    }
}
