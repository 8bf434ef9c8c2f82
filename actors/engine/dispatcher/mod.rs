//! The dispatcher: claims pending tasks for this node and feeds the worker pools.
//!
//! One [`Lane`] per worker type holds a bounded local priority queue (higher priority first,
//! equal priorities oldest first) and the tasks running in that type's pool. A lane claims from
//! its pending set in Redis when it has room, in batches, and only while Redis said there may be
//! more (a wake, a sweep, or a full last batch). Claims run as tasks off the actor, so a slow
//! Redis never stalls completions.
//!
//! On start, and on every restart, the dispatcher first makes the node's owned tasks consistent
//! ([`recover`]): it waits for the saver to flush, then hands every task this node still owns
//! back to the pending sets with a new epoch (the work of a previous incarnation, or of pools
//! that died with the old dispatcher), and only then claims. Restart policy for pools: see
//! [`RestartTracker`]; past the limit the dispatcher fails and its own supervisor takes over.
//!
//! In a cluster ([`steal`]), every [`TICK`] a lane with free slots and nothing queued asks a
//! loaded peer for queued tasks; the peer hands them over and this node adopts them with an
//! atomic script. A lane with room also probes its pending set once a second, so a wake that
//! went elsewhere never strands a task. Tasks pinned to this node never move.
//!
//! Every [`TICK`] the dispatcher also publishes this node's load in the [`ClusterHandle`], where
//! the membership gossips it and the ingress places wakes by it.

mod lane;
mod recover;
mod steal;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use lane::Lane;
pub use lane::LaneStats;

use crate::cluster::handle::ClusterHandle;
use crate::decide::backoff::Backoff;
use crate::decide::outcome::conclude;
use crate::decide::placement::NodeLoad;
use crate::decide::policy::RetryPolicy;
use crate::decide::reconcile::Reconciler;
use crate::decide::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::engine::pool::{Pool, PoolArgs, PoolEvent, PoolMsg};
use crate::engine::saver::SaverHandle;
use crate::metrics::Metrics;
use crate::model::task::{Outcome, Task};
use crate::store::{Incarnation, Store};
use crate::wiring::{LeaseClock, child_end};
use crate::workers::registry::{LiveRegistry, WorkerEntry};

/// How often the dispatcher probes, steals and publishes its load.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// The dispatcher actor.
pub(crate) struct Dispatcher;

/// What the dispatcher needs.
pub(crate) struct DispatcherArgs {
    /// This incarnation: claims, hand-backs and ownership checks are made in its name.
    pub(crate) me: Incarnation,
    /// This incarnation (seeds placement's random choices).
    pub(crate) generation: u64,
    /// Claims, hand-backs, ownership checks.
    pub(crate) store: Store,
    /// Where cancellations of queued tasks and crashed attempts are recorded.
    pub(crate) saver: SaverHandle,
    /// The worker types offered.
    pub(crate) workers: Arc<LiveRegistry>,
    /// The peers (for stealing and spreading) and where this node's load is published.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// Whether the liveness lease is fresh: nothing starts while it may have lapsed.
    pub(crate) lease: Arc<LeaseClock>,
    /// Tasks a lane may hold queued beyond its concurrency.
    pub(crate) queue_cap: usize,
    /// Where each pool's slots count their attempts.
    pub(crate) metrics: Metrics,
}

/// Messages to the dispatcher from the rest of the node.
pub(crate) enum DispatcherMsg {
    /// The pending set of this worker may have grown.
    Wake(String),
    /// Check every pending set (after a subscription, a failover, a peer's leave).
    Sweep,
    /// Cancel a task this node holds (queued here or running).
    Cancel(String),
    /// Tasks this node now owns (adopted from a peer): queue them.
    Hold(Vec<Task>),
    /// A peer is idle for `worker`: hand it up to `n` queued tasks.
    Steal {
        /// Worker.
        worker: String,
        /// Most tasks.
        n: usize,
        /// The idle peer.
        thief: String,
    },
    /// Worker type `worker` was paused (`paused`) or resumed cluster-wide: a pause hands back
    /// its queued tasks and starts none; a resume claims at once.
    Paused {
        /// The worker.
        worker: String,
        /// Paused, or resumed.
        paused: bool,
    },
    /// The worker registry changed: add lanes for new worker types.
    Reload,
    /// This node's liveness lease had lapsed: drop the tasks it lost to a failover.
    Lapsed,
    /// Stop claiming and starting tasks; answer with the queued (not started) tasks, which are
    /// taken out of the lanes for the caller to hand back.
    StopIntake(RpcReplyPort<Vec<Task>>),
    /// Answer once no task is running (the caller bounds the wait).
    Idle(RpcReplyPort<()>),
    /// Load per worker type.
    Stats(RpcReplyPort<Vec<LaneStats>>),
    /// What the dispatcher's own tasks, timers and pools report back.
    Internal(Internal),
}

impl ractor::Message for DispatcherMsg {}

/// Reports from the dispatcher's own claims, timers and pools.
pub(crate) enum Internal {
    /// The owned tasks were handed back; claiming may start.
    Recovered,
    /// A claim came back.
    Claimed {
        /// Worker.
        worker: String,
        /// The tasks.
        tasks: Vec<Task>,
        /// How many were asked for.
        asked: usize,
        /// The worker is paused: nothing was taken.
        paused: bool,
    },
    /// A claim failed (Redis unreachable); retry later.
    ClaimFailed {
        /// Worker.
        worker: String,
        /// Why.
        error: String,
    },
    /// The wait after a failed claim is over.
    RetryClaim(String),
    /// A pool's slot freed up, crashed, or had no room.
    Pool(PoolEvent),
    /// Restart a pool after its backoff.
    RestartPool(String),
    /// Periodic work: probe pending sets, steal when idle, publish the load.
    Tick,
    /// The result of the ownership check after a lapse: drop these tasks.
    Lost(Vec<String>),
    /// A hand-off to a peer is over: `given` left the lanes for it, `back` are those this node
    /// still owns, to queue again.
    Returned {
        /// Every task that was offered.
        given: Vec<String>,
        /// Those not adopted and still owned here.
        back: Vec<Task>,
    },
    /// A read of the owned set came back (see [`crate::decide::reconcile`]).
    Reconciled {
        /// Owned here, held nowhere here, with their epochs.
        candidates: HashMap<String, u64>,
        /// The saver's mark when the read was made.
        mark: u64,
        /// Held here but no longer owned: dropped.
        lost: Vec<String>,
    },
}

impl From<Internal> for DispatcherMsg {
    fn from(msg: Internal) -> DispatcherMsg {
        DispatcherMsg::Internal(msg)
    }
}

/// A lane, the pool that runs its tasks, and the worker as it was when the lane was made.
struct WorkerLane {
    lane: Lane,
    pool: Option<ActorRef<PoolMsg>>,
    entry: WorkerEntry,
    /// The worker type is no longer offered (its script was removed): the lane claims and
    /// starts nothing, is left out of the load, and goes once its running tasks have ended.
    retired: bool,
}

/// The dispatcher's state.
pub(crate) struct DispatcherState {
    args: DispatcherArgs,
    lanes: HashMap<String, WorkerLane>,
    pools: HashMap<ActorId, String>,
    trackers: HashMap<String, RestartTracker>,
    recovered: bool,
    draining: bool,
    idle_waiters: Vec<RpcReplyPort<()>>,
    rng: fastrand::Rng,
    /// A lapse of the liveness lease is being checked: start nothing meanwhile.
    verifying: bool,
    /// Paces the ownership check after a lapse while Redis cannot answer it.
    lapse_backoff: Backoff,
    /// Tasks offered to a peer whose answer is pending: out of the lanes, still owned here.
    in_transit: HashSet<String>,
    /// Hands back what Redis says this node owns but it does not hold.
    reconciler: Reconciler,
    /// When the owned set was last read; whether a read is out.
    last_read: Option<Instant>,
    reading: bool,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let mut state = DispatcherState {
            rng: fastrand::Rng::with_seed(args.generation ^ 0x9e37_79b9_7f4a_7c15),
            args,
            lanes: HashMap::new(),
            pools: HashMap::new(),
            trackers: HashMap::new(),
            recovered: false,
            draining: false,
            idle_waiters: Vec::new(),
            verifying: false,
            lapse_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            in_transit: HashSet::new(),
            reconciler: Reconciler::default(),
            last_read: None,
            reading: false,
        };
        state.add_lanes(&myself).await?;
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let (store, saver, node) = (
            state.args.store.clone(),
            state.args.saver.clone(),
            state.args.me.clone(),
        );
        let me = myself.clone();
        tokio::spawn(async move {
            recover::recover(&store, &saver, &node).await;
            let _ = me.cast(Internal::Recovered.into());
        });
        myself.send_interval(TICK, || Internal::Tick.into());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Wake(worker) => {
                if let Some(w) = state.lanes.get_mut(&worker) {
                    w.lane.wake();
                    state.claim(&myself, &worker);
                }
            }
            DispatcherMsg::Sweep => state.sweep(&myself),
            DispatcherMsg::Cancel(id) => state.cancel(&id),
            DispatcherMsg::Hold(tasks) => state.hold(tasks),
            DispatcherMsg::Steal { worker, n, thief } => state.give(&myself, &worker, n, thief),
            DispatcherMsg::Paused { worker, paused } => state.pause(&myself, &worker, paused),
            DispatcherMsg::Reload => {
                state.add_lanes(&myself).await?;
                state.retire_lanes();
            }
            DispatcherMsg::Lapsed => {
                state.verifying = true;
                state.verify_ownership(&myself);
            }
            DispatcherMsg::StopIntake(reply) => {
                state.draining = true;
                let queued: Vec<Task> = state
                    .lanes
                    .values_mut()
                    .flat_map(|w| w.lane.take_queued())
                    .collect();
                let _ = reply.send(queued);
            }
            DispatcherMsg::Idle(reply) => {
                state.idle_waiters.push(reply);
                state.answer_idle();
            }
            DispatcherMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            DispatcherMsg::Internal(msg) => state.internal(&myself, msg).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<DispatcherMsg>,
        event: SupervisionEvent,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((id, _, why)) = child_end(event) else {
            return Ok(());
        };
        let Some(worker) = state.pools.remove(&id) else {
            return Ok(());
        };
        let Some(w) = state.lanes.get_mut(&worker) else {
            return Ok(());
        };
        w.pool = None;
        // The pool's slots died with it: their attempts were interrupted, so run them again.
        let interrupted = w.lane.take_running();
        tracing::error!(
            worker,
            interrupted = interrupted.len(),
            "pool failed ({why}); its running tasks are queued again"
        );
        w.lane.push(interrupted.into_iter().map(|mut t| {
            t.attempt += 1;
            t
        }));
        let tracker = state
            .trackers
            .entry(worker.clone())
            .or_insert_with(|| RestartTracker::new(RestartPolicy::default()));
        match tracker.on_failure(Instant::now()) {
            RestartDecision::Restart(after) => {
                myself.send_after(after, move || Internal::RestartPool(worker).into());
                Ok(())
            }
            RestartDecision::GiveUp { failures } => Err(format!(
                "pool `{worker}` failed {failures} times in a row (last: {why})"
            )
            .into()),
        }
    }
}

impl DispatcherState {
    async fn internal(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        msg: Internal,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Internal::Recovered => {
                self.recovered = true;
                self.sweep(myself);
            }
            Internal::Claimed {
                worker,
                tasks,
                asked,
                paused,
            } => {
                let Some(w) = self.lanes.get_mut(&worker) else {
                    return Ok(());
                };
                // A claim's answer is Redis's word at its time: a paused worker pauses the lane
                // (a pause notice that was missed), tasks resume it (a missed resume).
                let changed = w.lane.set_paused(paused);
                w.lane.claimed(tasks, asked);
                if changed && paused {
                    self.hand_back_queued(&worker);
                    return Ok(());
                }
                let more = w.lane.more();
                self.pump(&worker);
                if more {
                    self.spread(&worker);
                }
                self.claim(myself, &worker);
            }
            Internal::ClaimFailed { worker, error } => {
                if let Some(w) = self.lanes.get_mut(&worker) {
                    let (after, first) = w.lane.claim_failed();
                    if first {
                        tracing::warn!(worker, "claim failed ({error}); retrying with backoff");
                    }
                    myself.send_after(after, move || Internal::RetryClaim(worker).into());
                }
            }
            Internal::RetryClaim(worker) => {
                if let Some(w) = self.lanes.get_mut(&worker) {
                    w.lane.claim_retry_due();
                    self.claim(myself, &worker);
                }
            }
            Internal::Pool(event) => self.pool_event(myself, event),
            Internal::RestartPool(worker) => {
                if let Some(entry) = self.args.workers.get(&worker) {
                    self.spawn_pool(myself, &entry).await?;
                    self.pump(&worker);
                }
            }
            Internal::Tick => {
                self.pump_all();
                self.tick(myself);
                self.publish_load();
                self.read_owned(myself);
            }
            Internal::Lost(ids) => {
                self.drop_lost(&ids);
                self.verifying = false;
                self.lapse_backoff.reset();
                self.reconciler.reset();
                self.pump_all();
            }
            Internal::Returned { given, back } => {
                for id in &given {
                    self.in_transit.remove(id);
                }
                self.hold(back);
            }
            Internal::Reconciled {
                candidates,
                mark,
                lost,
            } => {
                self.reading = false;
                self.reconciled(myself, candidates, mark, &lost);
            }
        }
        Ok(())
    }

    /// Adds a lane and a pool for every worker type of the registry that has none.
    async fn add_lanes(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let registry = self.args.workers.current();
        for entry in registry.entries() {
            if let Some(w) = self.lanes.get_mut(&entry.name) {
                if w.retired {
                    // Offered again before its last task ended.
                    w.retired = false;
                    w.lane.set_paused(false);
                    w.lane.wake();
                    tracing::info!(worker = %entry.name, "worker offered again");
                    if self.recovered {
                        self.claim(myself, &entry.name);
                    }
                }
                continue;
            }
            let lane = Lane::new(entry.concurrency as usize, self.args.queue_cap);
            let lane = WorkerLane {
                lane,
                pool: None,
                entry: entry.clone(),
                retired: false,
            };
            self.lanes.insert(entry.name.clone(), lane);
            self.spawn_pool(myself, entry).await?;
            if self.recovered {
                self.claim(myself, &entry.name);
            }
        }
        Ok(())
    }

    /// Retires the lanes of worker types the registry no longer offers (a reload after a script
    /// was removed): their queued tasks go back to the pending sets for a node that offers them,
    /// their running tasks finish, and [`DispatcherState::drop_retired`] removes them after.
    fn retire_lanes(&mut self) {
        let registry = self.args.workers.current();
        let gone: Vec<String> = self
            .lanes
            .iter()
            .filter(|(name, w)| !w.retired && registry.get(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for worker in gone {
            if let Some(w) = self.lanes.get_mut(&worker) {
                w.retired = true;
                w.lane.set_paused(true);
                tracing::info!(
                    worker,
                    running = w.lane.running_count(),
                    "worker no longer offered: its queued tasks go back, its running ones finish"
                );
            }
            self.hand_back_queued(&worker);
        }
        self.drop_retired();
    }

    /// Removes the retired lanes whose last task has ended, and stops their pools.
    pub(super) fn drop_retired(&mut self) {
        let done: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, w)| w.retired && w.lane.running_count() == 0)
            .map(|(name, _)| name.clone())
            .collect();
        for worker in done {
            if let Some(w) = self.lanes.remove(&worker)
                && let Some(pool) = w.pool
            {
                // Out of `pools` first, so that its end is not taken for a failure.
                self.pools.remove(&pool.get_id());
                pool.stop(Some("worker no longer offered".into()));
            }
            tracing::debug!(worker, "retired lane removed");
        }
    }

    async fn spawn_pool(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        entry: &WorkerEntry,
    ) -> Result<(), ActorProcessingErr> {
        let me = myself.clone();
        let args = PoolArgs {
            entry: entry.clone(),
            workers: self.args.workers.clone(),
            saver: self.args.saver.clone(),
            node: self.args.me.node.clone(),
            clock: self.args.store.clock().clone(),
            metrics: self.args.metrics.worker(&entry.name),
            report: Arc::new(move |event| {
                let _ = me.cast(Internal::Pool(event).into());
            }),
            started_events: self.args.store.tells_starts(),
        };
        let (pool, _) = Actor::spawn_linked(None, Pool, args, myself.get_cell()).await?;
        self.pools.insert(pool.get_id(), entry.name.clone());
        if let Some(w) = self.lanes.get_mut(&entry.name) {
            w.pool = Some(pool);
        }
        Ok(())
    }

    fn sweep(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let workers: Vec<String> = self.lanes.keys().cloned().collect();
        for worker in workers {
            if let Some(w) = self.lanes.get_mut(&worker) {
                w.lane.wake();
            }
            self.claim(myself, &worker);
        }
    }

    /// Starts a claim for `worker` when the lane has room and Redis may have tasks.
    fn claim(&mut self, myself: &ActorRef<DispatcherMsg>, worker: &str) {
        if !self.recovered || self.draining {
            return;
        }
        let Some(w) = self.lanes.get_mut(worker) else {
            return;
        };
        if w.retired {
            return;
        }
        let n = w.lane.begin_claim(Instant::now());
        if n == 0 {
            return;
        }
        let store = self.args.store.clone();
        let node = self.args.me.clone();
        let worker = worker.to_owned();
        let me = myself.clone();
        tokio::spawn(async move {
            let msg = match store.claim_batch(&worker, &node, n).await {
                Ok(claim) => Internal::Claimed {
                    worker,
                    tasks: claim.tasks,
                    asked: n,
                    paused: claim.paused,
                },
                Err(e) => Internal::ClaimFailed {
                    worker,
                    error: e.to_string(),
                },
            };
            if let Err(ractor::MessagingErr::SendErr(DispatcherMsg::Internal(
                Internal::Claimed { tasks, .. },
            ))) = me.cast(msg.into())
            {
                // The dispatcher died while this claim was in flight: do not strand the tasks.
                let ids: Vec<(String, Option<u64>)> =
                    tasks.into_iter().map(|t| (t.id, Some(t.epoch))).collect();
                if let Err(e) = store.release_ids(&node, &ids, true).await {
                    tracing::warn!("could not hand back {} claimed tasks: {e}", ids.len());
                }
            }
        });
    }

    /// Worker type `worker` was paused or resumed cluster-wide. Paused: its queued tasks go
    /// back to the pending sets (they wait there, where any node claims them after the
    /// resume), running ones finish. Resumed: the lane claims at once.
    fn pause(&mut self, myself: &ActorRef<DispatcherMsg>, worker: &str, paused: bool) {
        let Some(w) = self.lanes.get_mut(worker) else {
            return;
        };
        if w.retired {
            return;
        }
        w.lane.set_paused(paused);
        if paused {
            self.hand_back_queued(worker);
        } else {
            w.lane.wake();
            self.claim(myself, worker);
            self.pump(worker);
        }
    }

    /// Hands the queued (not started) tasks of lane `worker` back to the pending sets.
    fn hand_back_queued(&mut self, worker: &str) {
        let Some(w) = self.lanes.get_mut(worker) else {
            return;
        };
        let ids: Vec<(String, Option<u64>)> = w
            .lane
            .take_queued()
            .into_iter()
            .map(|t| (t.id, Some(t.epoch)))
            .collect();
        if ids.is_empty() {
            return;
        }
        let (store, node) = (self.args.store.clone(), self.args.me.clone());
        let worker = worker.to_owned();
        tokio::spawn(async move {
            match store.release_ids(&node, &ids, true).await {
                Ok(n) => tracing::info!(worker, tasks = n, "handed queued tasks back"),
                Err(e) => tracing::warn!(
                    worker,
                    "paused, but cannot hand back {} queued tasks ({e}); the ownership check will",
                    ids.len()
                ),
            }
        });
    }

    /// Starts queued tasks of `worker` on free slots.
    fn pump(&mut self, worker: &str) {
        // Never start a task this node may no longer own: not while draining, not while the
        // liveness lease may have lapsed, not until a lapse has been checked.
        if !self.recovered || self.draining || self.verifying || !self.args.lease.fresh() {
            return;
        }
        let Some(WorkerLane {
            lane,
            pool: Some(pool),
            ..
        }) = self.lanes.get_mut(worker)
        else {
            return;
        };
        while let Some((task, cancel)) = lane.next_to_start(self.args.store.clock().now_ms()) {
            let id = task.id.clone();
            if pool.cast(PoolMsg::Run(task, cancel)).is_err() {
                // The pool is dying; its supervision event requeues what it ran. Keep this one.
                lane.unstart(&id);
                return;
            }
        }
    }

    fn pump_all(&mut self) {
        let workers: Vec<String> = self.lanes.keys().cloned().collect();
        for w in workers {
            self.pump(&w);
        }
    }

    /// A slot freed up, crashed or had no room.
    fn pool_event(&mut self, myself: &ActorRef<DispatcherMsg>, event: PoolEvent) {
        let worker = match event {
            PoolEvent::Freed { worker, id } => {
                if let Some(w) = self.lanes.get_mut(&worker) {
                    w.lane.finished(&id);
                }
                worker
            }
            PoolEvent::Crashed { worker, id, why } => {
                let run = self
                    .lanes
                    .get_mut(&worker)
                    .and_then(|w| w.lane.finished(&id));
                if let (Some(run), Some(lane)) = (run, self.lanes.get(&worker)) {
                    let policy = self.policy(&worker, lane, &run.task);
                    let outcome = Outcome::failed(format!("worker crashed: {why}"));
                    let op = conclude(
                        &run.task,
                        &self.args.me.node,
                        outcome,
                        &policy,
                        run.started,
                        self.args.store.clock().now_ms(),
                    );
                    self.args.saver.write(op);
                }
                worker
            }
            PoolEvent::Refused { worker, id } => {
                if let Some(w) = self.lanes.get_mut(&worker) {
                    w.lane.unstart(&id);
                }
                return;
            }
        };
        self.pump(&worker);
        self.claim(myself, &worker);
        self.answer_idle();
    }

    /// The retry policy of `task`, held in lane `worker`, under the worker's current settings
    /// (or those the lane was made with, if a reload removed the worker).
    fn policy(&self, worker: &str, lane: &WorkerLane, task: &Task) -> RetryPolicy {
        self.args
            .workers
            .get(worker)
            .unwrap_or_else(|| lane.entry.clone())
            .retry_policy(task)
    }

    /// Tasks this node now owns: queue them. Before recovery is over they go straight back to
    /// the pending sets instead: recovery hands back what this node owns, and a task queued here
    /// as well would then run twice.
    fn hold(&mut self, tasks: Vec<Task>) {
        if !self.recovered {
            let ids: Vec<(String, Option<u64>)> =
                tasks.into_iter().map(|t| (t.id, Some(t.epoch))).collect();
            let (store, node) = (self.args.store.clone(), self.args.me.clone());
            tokio::spawn(async move {
                if let Err(e) = store.release_ids(&node, &ids, true).await {
                    tracing::warn!(
                        "cannot hand back {} tasks adopted during recovery ({e}); the next recovery will",
                        ids.len()
                    );
                }
            });
            return;
        }
        let mut workers = Vec::new();
        for task in tasks {
            match self.lanes.get_mut(&task.worker) {
                Some(w) => {
                    workers.push(task.worker.clone());
                    w.lane.push([task]);
                }
                None => {
                    tracing::warn!(task = %task.id, "adopted a task of a worker this node lacks");
                }
            }
        }
        workers.dedup();
        for w in workers {
            self.pump(&w);
        }
    }

    /// Cancels a task held here: drop it from its queue (and record it cancelled) or stop its
    /// attempt. A task this node does not hold is not its business.
    fn cancel(&mut self, id: &str) {
        let queued = self
            .lanes
            .iter_mut()
            .find_map(|(name, w)| Some((name.clone(), w.lane.remove_queued(id)?)));
        if let Some((worker, task)) = queued {
            let policy = self.policy(&worker, &self.lanes[&worker], &task);
            let op = conclude(
                &task,
                &self.args.me.node,
                Outcome::Cancelled,
                &policy,
                0,
                self.args.store.clock().now_ms(),
            );
            self.args.saver.write(op);
        } else if !self.lanes.values().any(|w| w.lane.cancel_running(id)) {
            tracing::debug!(task = id, "cancel for a task this node does not hold");
        }
    }

    fn answer_idle(&mut self) {
        let running: usize = self.lanes.values().map(|w| w.lane.running_count()).sum();
        if running == 0 {
            for reply in self.idle_waiters.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    fn stats(&self) -> Vec<LaneStats> {
        let mut stats: Vec<LaneStats> = self
            .lanes
            .iter()
            .map(|(name, w)| w.lane.stats(name))
            .collect();
        stats.sort_by(|a, b| a.worker.cmp(&b.worker));
        stats
    }

    /// Publishes this node's load where the membership and the ingress read it.
    fn publish_load(&self) {
        let load: NodeLoad = self
            .lanes
            .iter()
            .filter(|(_, w)| !w.retired)
            .map(|(name, w)| (name.clone(), w.lane.load()))
            .collect();
        self.args.cluster.set_own_load(load);
    }

    /// Drops queued tasks this node lost, and stops the running ones (their results would be
    /// fenced out anyway).
    fn drop_lost(&mut self, ids: &[String]) {
        for w in self.lanes.values_mut() {
            for id in ids {
                if w.lane.remove_queued(id).is_none() {
                    w.lane.cancel_running(id);
                }
            }
        }
    }
}
