//! Moving queued work between nodes: an idle lane asks a loaded peer for tasks ([`tick`]), a
//! lane that claimed a full batch wakes a less busy peer ([`spread`]), and a node asked by an
//! idle peer hands tasks over ([`give`]). The receiver adopts handed tasks with an atomic script
//! in Redis; a hand-off that is not acknowledged leaves the sender as owner, and the sender
//! queues again whatever it still owns. Tasks pinned to a node never move.
//!
//! [`tick`]: DispatcherState::tick
//! [`spread`]: DispatcherState::spread
//! [`give`]: DispatcherState::give

use std::time::Instant;

use ractor::ActorRef;

use super::{DispatcherMsg, DispatcherState, Internal};
use crate::cluster::handle::CALL_TIMEOUT;
use crate::cluster::wire::{Body, Handed};
use crate::decide::placement::{Target as Place, place, steal_from};
use crate::model::task::Task;

impl DispatcherState {
    /// Periodic: lanes with room look at their pending set now and then (a wake may have gone
    /// to another node), and idle lanes ask a loaded peer for queued work.
    pub(super) fn tick(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if !self.recovered || self.draining {
            return;
        }
        self.drop_retired();
        let now = Instant::now();
        let workers: Vec<String> = self.lanes.keys().cloned().collect();
        for worker in workers {
            let probe = self
                .lanes
                .get_mut(&worker)
                .is_some_and(|w| w.lane.probe_due(now));
            if probe {
                self.claim(myself, &worker);
            }
            let Some(w) = self.lanes.get_mut(&worker) else {
                continue;
            };
            if w.lane.is_paused() {
                continue;
            }
            let peers = self.args.cluster.peers_offering(&worker);
            let Some((victim, n)) = steal_from(w.lane.load(), &peers, &mut self.rng) else {
                continue;
            };
            if !w.lane.steal_due(now) {
                continue;
            }
            tracing::debug!(worker, %victim, n, "idle: asking a peer for work");
            self.args.cluster.send(
                &victim,
                Body::Steal {
                    worker: worker.clone(),
                    n,
                },
            );
        }
    }

    /// The pending set had more than this node took: when this node is now busier than its
    /// peers, wake the less busy of two of them too (local first, else power of two choices).
    pub(super) fn spread(&mut self, worker: &str) {
        let Some(w) = self.lanes.get(worker) else {
            return;
        };
        let peers = self.args.cluster.wake_targets(worker);
        if let Place::Peer(peer) = place(Some(w.lane.load()), &peers, &mut self.rng) {
            self.args.cluster.wake(&peer, worker);
        }
    }

    /// Hands up to `n` queued tasks of `worker` to the idle peer `thief`. The thief adopts them
    /// atomically in Redis; those it did not adopt come back here if this node still owns them.
    pub(super) fn give(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        worker: &str,
        n: usize,
        thief: String,
    ) {
        if self.draining {
            return;
        }
        let Some(w) = self.lanes.get_mut(worker) else {
            return;
        };
        let tasks = w.lane.take_for_peer(n);
        if tasks.is_empty() {
            return;
        }
        let given: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        self.in_transit.extend(given.iter().cloned());
        let (cluster, store, node) = (
            self.args.cluster.clone(),
            self.args.store.clone(),
            self.args.me.node.clone(),
        );
        let me = myself.clone();
        tokio::spawn(async move {
            let handed = tasks
                .iter()
                .map(|t| Handed {
                    id: t.id.clone(),
                    epoch: t.epoch,
                })
                .collect();
            let adopted = match cluster
                .call(&thief, Body::Handoff { tasks: handed }, CALL_TIMEOUT)
                .await
            {
                Ok(Body::Adopted { ids }) => ids,
                Ok(other) => {
                    tracing::warn!(%thief, "unexpected answer to a hand-off: {other:?}");
                    Vec::new()
                }
                Err(e) => {
                    tracing::debug!(%thief, "hand-off not acknowledged: {e}");
                    Vec::new()
                }
            };
            let rest: Vec<Task> = tasks
                .into_iter()
                .filter(|t| !adopted.contains(&t.id))
                .collect();
            tracing::debug!(%thief, adopted = adopted.len(), kept = rest.len(), "handed tasks to an idle peer");
            if rest.is_empty() {
                let _ = me.cast(
                    Internal::Returned {
                        given,
                        back: Vec::new(),
                    }
                    .into(),
                );
                return;
            }
            let check: Vec<(String, u64)> = rest.iter().map(|t| (t.id.clone(), t.epoch)).collect();
            let owned = store.still_owned(&node, &check).await.unwrap_or_else(|e| {
                tracing::warn!("cannot check ownership after a hand-off ({e}); keeping the tasks");
                vec![true; check.len()]
            });
            let back: Vec<Task> = rest
                .into_iter()
                .zip(owned)
                .filter_map(|(t, own)| own.then_some(t))
                .collect();
            let _ = me.cast(Internal::Returned { given, back }.into());
        });
    }
}
