//! The dispatcher: claims pending tasks for this node and feeds the worker pools.
//!
//! One lane per worker type holds a bounded local priority queue (higher priority first, equal
//! priorities oldest first) and the tasks running in that type's pool. A lane claims from its
//! pending set in Redis when it has room, in batches, and only while Redis said there may be more
//! (a wake, a sweep, or a full last batch). Claims run as tasks off the actor, so a slow Redis
//! never stalls completions. The queueing rules are in [`Lane`], free of I/O.
//!
//! On start, and on every restart, the dispatcher first makes the node's owned tasks consistent:
//! it waits for the saver to flush, then hands every task this node still owns back to the
//! pending sets with a new epoch (the work of a previous incarnation, or of pools that died with
//! the old dispatcher), and only then claims. Restart policy for pools: see [`RestartTracker`];
//! past the limit the dispatcher fails and its own supervisor takes over.
//!
//! In a cluster, every [`TICK`] a lane with free slots and nothing queued asks a loaded peer for
//! queued tasks ([`crate::decide::placement::steal_from`]); the peer hands them over and this node adopts
//! them with an atomic script (a hand-off that is not acknowledged leaves the sender as owner,
//! and the sender queues them again). A lane with room also probes its pending set once a second,
//! so a wake that went elsewhere never strands a task. Tasks pinned to this node never move.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::cluster::wire::{Body, Handed};
use crate::decide::placement::{Load, Target as Place, XorShift, place, steal_from};
use crate::decide::policy::Settle;
use crate::engine::pool::{Pool, PoolArgs, PoolMsg, finish_op};
use crate::engine::supervisor::{NodeContext, RestartDecision, RestartPolicy, RestartTracker};
use crate::model::task::{Task, now_ms};
use crate::workers::registry::WorkerEntry;

/// The dispatcher actor.
pub struct Dispatcher;

/// What the dispatcher needs.
pub struct DispatcherArgs {
    /// Shared node state.
    pub ctx: Arc<NodeContext>,
}

/// Load of one worker type on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneStats {
    /// Worker name.
    pub worker: String,
    /// Concurrency.
    pub capacity: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks claimed and waiting for a slot.
    pub queued: usize,
}

/// Messages to the dispatcher.
pub enum DispatcherMsg {
    /// The pending set of this worker may have grown.
    Wake(String),
    /// Check every pending set (after start or a reconnect).
    Sweep,
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
    },
    /// A claim failed (Redis unreachable); retry later.
    ClaimFailed {
        /// Worker.
        worker: String,
        /// Why.
        error: String,
    },
    /// Retry a claim after a failure.
    RetryClaim(String),
    /// A task left its slot.
    Done {
        /// Worker.
        worker: String,
        /// Task id.
        id: String,
    },
    /// Stop claiming and starting tasks; answer with the queued (not started) tasks, which are
    /// taken out of the lanes for the caller to hand back.
    StopIntake(RpcReplyPort<Vec<Task>>),
    /// Answer once no task is running (the caller bounds the wait).
    Idle(RpcReplyPort<()>),
    /// Load per worker type.
    Stats(RpcReplyPort<Vec<LaneStats>>),
    /// Restart a pool after its backoff.
    RestartPool(String),
    /// Cancel a task this node holds (queued here or running).
    Cancel(String),
    /// Tasks adopted from a peer (or taken back after a hand-off failed): queue them.
    Push(Vec<Task>),
    /// A peer is idle for `worker`: hand it up to `n` queued tasks.
    Steal {
        /// Worker.
        worker: String,
        /// Most tasks.
        n: usize,
        /// The idle peer.
        thief: String,
    },
    /// The worker registry changed: add lanes for new worker types.
    Reload,
    /// Periodic work: probe pending sets, steal when idle.
    Tick,
    /// This node's liveness lease had lapsed: drop the tasks it lost to a failover.
    Lapsed,
    /// The result of the ownership check after a lapse: drop these queued tasks, stop these
    /// running ones.
    Lost(Vec<String>),
}

impl ractor::Message for DispatcherMsg {}

/// A task waiting in a lane, ordered by priority, then age, then arrival.
#[derive(Debug)]
struct Queued {
    task: Task,
    seq: u64,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.task
            .priority
            .cmp(&other.task.priority)
            .then_with(|| other.task.created.cmp(&self.task.created))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// How often the dispatcher probes and steals.
pub const TICK: Duration = Duration::from_millis(250);
/// How often an idle lane probes its pending set even without a wake.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The queueing rules of one worker type, without I/O.
#[derive(Debug)]
pub struct Lane {
    queue: BinaryHeap<Queued>,
    running: HashMap<String, Task>,
    capacity: usize,
    queue_cap: usize,
    seq: u64,
    /// Redis may hold more pending tasks of this type.
    pub more: bool,
    /// A claim is in flight.
    pub claiming: bool,
    /// A wake arrived while a claim was in flight: the claim's answer may predate that task.
    woken: bool,
    /// Delay before the next claim after a failure.
    pub backoff: Duration,
    /// When the pending set was last looked at.
    last_claim: Option<Instant>,
    /// When this lane last asked a peer for work.
    last_steal: Option<Instant>,
}

impl Lane {
    /// A lane running `capacity` at once and queueing up to `queue_cap` more.
    pub fn new(capacity: usize, queue_cap: usize) -> Lane {
        Lane {
            queue: BinaryHeap::new(),
            running: HashMap::new(),
            capacity,
            queue_cap,
            seq: 0,
            more: true,
            claiming: false,
            woken: false,
            backoff: Duration::ZERO,
            last_claim: None,
            last_steal: None,
        }
    }

    /// Adds claimed tasks to the queue.
    pub fn push(&mut self, tasks: impl IntoIterator<Item = Task>) {
        for task in tasks {
            self.seq += 1;
            self.queue.push(Queued {
                task,
                seq: self.seq,
            });
        }
    }

    /// Redis may hold new tasks of this type.
    pub fn wake(&mut self) {
        self.more = true;
        if self.claiming {
            self.woken = true;
        }
    }

    /// A claim for `asked` tasks returned `tasks`. A short answer means the pending set was
    /// empty at that moment, unless a wake arrived since.
    pub fn claimed(&mut self, tasks: Vec<Task>, asked: usize) {
        self.claiming = false;
        self.backoff = Duration::ZERO;
        self.more = tasks.len() >= asked || std::mem::take(&mut self.woken);
        self.push(tasks);
    }

    /// How many tasks to claim now: none while a claim is in flight, while Redis has nothing,
    /// or while the lane is at least half full; else enough to fill it.
    pub fn claim_size(&self) -> usize {
        let held = self.queue.len() + self.running.len();
        let full = self.capacity + self.queue_cap;
        if self.claiming || !self.more || held * 2 > full {
            0
        } else {
            full - held
        }
    }

    /// The next task to start, if a slot is free.
    pub fn next_to_start(&mut self) -> Option<Task> {
        if self.running.len() >= self.capacity {
            return None;
        }
        let task = self.queue.pop()?.task;
        self.running.insert(task.id.clone(), task.clone());
        Some(task)
    }

    /// A task left its slot.
    pub fn finished(&mut self, id: &str) {
        self.running.remove(id);
    }

    /// Takes a queued (not started) task out of the queue.
    pub fn remove_queued(&mut self, id: &str) -> Option<Task> {
        let mut found = None;
        self.queue.retain(|q| {
            if found.is_none() && q.task.id == id {
                found = Some(q.task.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// True when the task runs in this lane.
    pub fn is_running(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// Takes up to `n` queued tasks that may move to another node (not pinned), most urgent
    /// first.
    pub fn take_for_peer(&mut self, n: usize) -> Vec<Task> {
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        while taken.len() < n {
            let Some(q) = self.queue.pop() else {
                break;
            };
            if q.task.pinned {
                kept.push(q);
            } else {
                taken.push(q.task);
            }
        }
        self.queue.extend(kept);
        taken
    }

    /// Takes every queued task.
    pub fn take_queued(&mut self) -> Vec<Task> {
        self.queue.drain().map(|q| q.task).collect()
    }

    /// The ids and epochs of every task held (queued or running).
    pub fn held(&self) -> Vec<(String, u64)> {
        self.queue
            .iter()
            .map(|q| &q.task)
            .chain(self.running.values())
            .map(|t| (t.id.clone(), t.epoch))
            .collect()
    }

    /// Load, as placement sees it.
    pub fn load(&self) -> Load {
        Load {
            capacity: self.capacity as u32,
            running: self.running.len() as u32,
            queued: self.queue.len() as u32,
        }
    }

    /// Takes the running tasks (their pool died); they will be queued again.
    pub fn take_running(&mut self) -> Vec<Task> {
        self.running.drain().map(|(_, t)| t).collect()
    }

    /// Load figures.
    pub fn stats(&self, worker: &str) -> LaneStats {
        LaneStats {
            worker: worker.to_owned(),
            capacity: self.capacity,
            running: self.running.len(),
            queued: self.queue.len(),
        }
    }
}

/// The dispatcher's state.
pub struct DispatcherState {
    ctx: Arc<NodeContext>,
    lanes: HashMap<String, (Lane, Option<ActorRef<PoolMsg>>)>,
    pools: HashMap<ActorId, String>,
    trackers: HashMap<String, RestartTracker>,
    recovered: bool,
    draining: bool,
    idle_waiters: Vec<RpcReplyPort<()>>,
    rng: XorShift,
    /// A lapse of the liveness lease is being checked: start nothing meanwhile.
    verifying: bool,
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
        let ctx = args.ctx;
        let mut state = DispatcherState {
            lanes: HashMap::new(),
            pools: HashMap::new(),
            trackers: HashMap::new(),
            recovered: false,
            draining: false,
            idle_waiters: Vec::new(),
            verifying: false,
            rng: XorShift::new(ctx.generation ^ 0x9e37_79b9_7f4a_7c15),
            ctx: ctx.clone(),
        };
        state.add_lanes(&myself).await?;
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<DispatcherMsg>,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = state.ctx.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            recover(&ctx).await;
            let _ = me.cast(DispatcherMsg::Recovered);
        });
        myself.send_interval(TICK, || DispatcherMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Recovered => {
                state.recovered = true;
                state.sweep(&myself);
            }
            DispatcherMsg::Sweep => state.sweep(&myself),
            DispatcherMsg::Wake(worker) => {
                if let Some((lane, _)) = state.lanes.get_mut(&worker) {
                    lane.wake();
                    state.claim(&myself, &worker);
                }
            }
            DispatcherMsg::Claimed {
                worker,
                tasks,
                asked,
            } => {
                let Some((lane, _)) = state.lanes.get_mut(&worker) else {
                    return Ok(());
                };
                lane.claimed(tasks, asked);
                let more = lane.more;
                state.pump(&worker);
                if more {
                    state.spread(&worker);
                }
                state.claim(&myself, &worker);
            }
            DispatcherMsg::ClaimFailed { worker, error } => {
                if let Some((lane, _)) = state.lanes.get_mut(&worker) {
                    lane.backoff = (lane.backoff * 2)
                        .clamp(Duration::from_millis(100), Duration::from_secs(2));
                    if lane.backoff == Duration::from_millis(100) {
                        tracing::warn!(worker, "claim failed ({error}); retrying with backoff");
                    }
                    myself.send_after(lane.backoff, move || DispatcherMsg::RetryClaim(worker));
                }
            }
            DispatcherMsg::RetryClaim(worker) => {
                if let Some((lane, _)) = state.lanes.get_mut(&worker) {
                    lane.claiming = false;
                    state.claim(&myself, &worker);
                }
            }
            DispatcherMsg::Done { worker, id } => {
                if let Some((lane, _)) = state.lanes.get_mut(&worker) {
                    lane.finished(&id);
                }
                state.pump(&worker);
                state.claim(&myself, &worker);
                state.answer_idle();
            }
            DispatcherMsg::StopIntake(reply) => {
                state.draining = true;
                let queued: Vec<Task> = state
                    .lanes
                    .values_mut()
                    .flat_map(|(lane, _)| lane.take_queued())
                    .collect();
                let _ = reply.send(queued);
            }
            DispatcherMsg::Idle(reply) => {
                state.idle_waiters.push(reply);
                state.answer_idle();
            }
            DispatcherMsg::Stats(reply) => {
                let mut stats: Vec<LaneStats> = state
                    .lanes
                    .iter()
                    .map(|(w, (lane, _))| lane.stats(w))
                    .collect();
                stats.sort_by(|a, b| a.worker.cmp(&b.worker));
                let _ = reply.send(stats);
            }
            DispatcherMsg::Cancel(id) => state.cancel(&id),
            DispatcherMsg::RestartPool(worker) => {
                if let Some(entry) = state.ctx.registry().get(&worker).cloned() {
                    state.spawn_pool(&myself, &entry).await?;
                    state.pump(&worker);
                }
            }
            DispatcherMsg::Push(tasks) => {
                let mut workers = Vec::new();
                for task in tasks {
                    match state.lanes.get_mut(&task.worker) {
                        Some((lane, _)) => {
                            workers.push(task.worker.clone());
                            lane.push([task]);
                        }
                        None => {
                            tracing::warn!(task = %task.id, "adopted a task of a worker this node lacks");
                        }
                    }
                }
                workers.dedup();
                for w in workers {
                    state.pump(&w);
                }
            }
            DispatcherMsg::Steal { worker, n, thief } => state.give(&myself, &worker, n, thief),
            DispatcherMsg::Reload => state.add_lanes(&myself).await?,
            DispatcherMsg::Tick => {
                state.pump_all();
                state.tick(&myself);
            }
            DispatcherMsg::Lapsed => {
                state.verifying = true;
                state.verify_ownership(&myself);
            }
            DispatcherMsg::Lost(ids) => {
                state.drop_lost(&ids);
                state.verifying = false;
                state.pump_all();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<DispatcherMsg>,
        event: SupervisionEvent,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(worker) = state.pools.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some((lane, pool)) = state.lanes.get_mut(&worker) else {
            return Ok(());
        };
        *pool = None;
        // The pool's slots died with it: their attempts were interrupted, so run them again.
        let interrupted = lane.take_running();
        tracing::error!(
            worker,
            interrupted = interrupted.len(),
            "pool failed ({why}); its running tasks are queued again"
        );
        lane.push(interrupted.into_iter().map(|mut t| {
            t.attempt += 1;
            t
        }));
        let tracker = state
            .trackers
            .entry(worker.clone())
            .or_insert_with(|| RestartTracker::new(RestartPolicy::default()));
        match tracker.on_failure(Instant::now()) {
            RestartDecision::Restart(after) => {
                myself.send_after(after, move || DispatcherMsg::RestartPool(worker));
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
    /// Adds a lane and a pool for every worker type of the registry that has none.
    async fn add_lanes(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let queue_cap = self.ctx.settings.queue_len();
        let registry = self.ctx.registry();
        for entry in registry.entries() {
            if self.lanes.contains_key(&entry.name) {
                continue;
            }
            let lane = Lane::new(entry.concurrency as usize, queue_cap);
            self.lanes.insert(entry.name.clone(), (lane, None));
            self.spawn_pool(myself, entry).await?;
            if self.recovered {
                self.claim(myself, &entry.name);
            }
        }
        Ok(())
    }

    async fn spawn_pool(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        entry: &WorkerEntry,
    ) -> Result<(), ActorProcessingErr> {
        let args = PoolArgs {
            entry: entry.clone(),
            ctx: self.ctx.clone(),
            dispatcher: myself.clone(),
        };
        let (pool, _) = Actor::spawn_linked(None, Pool, args, myself.get_cell()).await?;
        self.pools.insert(pool.get_id(), entry.name.clone());
        if let Some((_, slot)) = self.lanes.get_mut(&entry.name) {
            *slot = Some(pool);
        }
        Ok(())
    }

    fn sweep(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let workers: Vec<String> = self.lanes.keys().cloned().collect();
        for worker in workers {
            if let Some((lane, _)) = self.lanes.get_mut(&worker) {
                lane.wake();
            }
            self.claim(myself, &worker);
        }
    }

    /// Starts a claim for `worker` when the lane has room and Redis may have tasks.
    fn claim(&mut self, myself: &ActorRef<DispatcherMsg>, worker: &str) {
        if !self.recovered || self.draining {
            return;
        }
        let Some((lane, _)) = self.lanes.get_mut(worker) else {
            return;
        };
        let n = lane.claim_size();
        if n == 0 {
            return;
        }
        lane.claiming = true;
        lane.last_claim = Some(Instant::now());
        let store = self.ctx.store.clone();
        let node = self.ctx.node.clone();
        let worker = worker.to_owned();
        let me = myself.clone();
        tokio::spawn(async move {
            let msg = match store.claim(&worker, &node, n).await {
                Ok(tasks) => DispatcherMsg::Claimed {
                    worker,
                    tasks,
                    asked: n,
                },
                Err(e) => DispatcherMsg::ClaimFailed {
                    worker,
                    error: e.to_string(),
                },
            };
            if let Err(ractor::MessagingErr::SendErr(DispatcherMsg::Claimed { tasks, .. })) =
                me.cast(msg)
            {
                // The dispatcher died while this claim was in flight: do not strand the tasks.
                let ids: Vec<String> = tasks.into_iter().map(|t| t.id).collect();
                if let Err(e) = store.release_ids(&node, &ids).await {
                    tracing::warn!("could not hand back {} claimed tasks: {e}", ids.len());
                }
            }
        });
    }

    /// Starts queued tasks of `worker` on free slots.
    fn pump(&mut self, worker: &str) {
        // Never start a task this node may no longer own: not while draining, not while the
        // liveness lease may have lapsed, not until a lapse has been checked.
        if self.draining || self.verifying || !self.ctx.lease_fresh() {
            return;
        }
        let Some((lane, Some(pool))) = self.lanes.get_mut(worker) else {
            return;
        };
        while let Some(task) = lane.next_to_start() {
            if let Err(ractor::MessagingErr::SendErr(PoolMsg::Run(task))) =
                pool.cast(PoolMsg::Run(task))
            {
                // The pool is dying; its supervision event requeues what it ran. Keep this one.
                lane.finished(&task.id);
                lane.push([task]);
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

    /// Cancels a task held here: drop it from its queue (and record it cancelled) or ask its
    /// pool to stop it. A task this node does not hold is not its business.
    fn cancel(&mut self, id: &str) {
        for (lane, pool) in self.lanes.values_mut() {
            if let Some(task) = lane.remove_queued(id) {
                let op = finish_op(&task, &self.ctx.node, &Settle::Cancelled, 0, now_ms());
                self.ctx.saver.write(op);
                return;
            }
            if lane.is_running(id) {
                if let Some(pool) = pool {
                    let _ = pool.cast(PoolMsg::Cancel(id.to_owned()));
                }
                return;
            }
        }
        tracing::debug!(task = id, "cancel for a task this node does not hold");
    }

    fn answer_idle(&mut self) {
        let running: usize = self.lanes.values().map(|(l, _)| l.running.len()).sum();
        if running == 0 {
            for reply in self.idle_waiters.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Periodic: lanes with room look at their pending set now and then (a wake may have gone
    /// to another node), and idle lanes ask a loaded peer for queued work.
    fn tick(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if !self.recovered || self.draining {
            return;
        }
        let now = Instant::now();
        let workers: Vec<String> = self.lanes.keys().cloned().collect();
        for worker in workers {
            let Some((lane, _)) = self.lanes.get_mut(&worker) else {
                continue;
            };
            if !lane.more
                && lane
                    .last_claim
                    .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY)
            {
                lane.more = true;
                self.claim(myself, &worker);
            }
            let Some((lane, _)) = self.lanes.get_mut(&worker) else {
                continue;
            };
            if lane
                .last_steal
                .is_some_and(|t| now.duration_since(t) < TICK * 2)
            {
                continue;
            }
            let peers = self.ctx.cluster.peers_offering(&worker);
            if let Some((victim, n)) = steal_from(lane.load(), &peers, &mut self.rng) {
                lane.last_steal = Some(now);
                tracing::debug!(worker, %victim, n, "idle: asking a peer for work");
                self.ctx.cluster.send(
                    &victim,
                    Body::Steal {
                        worker: worker.clone(),
                        n,
                    },
                );
            }
        }
    }

    /// The pending set had more than this node took: when this node is now busier than its
    /// peers, wake the less busy of two of them too (local first, else power of two choices).
    fn spread(&mut self, worker: &str) {
        let Some((lane, _)) = self.lanes.get(worker) else {
            return;
        };
        let peers = self.ctx.cluster.peers_offering(worker);
        if let Place::Peer(peer) = place(Some(lane.load()), &peers, &mut self.rng) {
            self.ctx.cluster.send(
                &peer,
                Body::Wake {
                    worker: worker.to_owned(),
                },
            );
        }
    }

    /// Hands up to `n` queued tasks of `worker` to the idle peer `thief`. The thief adopts them
    /// atomically in Redis; those it did not adopt come back here if this node still owns them.
    fn give(&mut self, myself: &ActorRef<DispatcherMsg>, worker: &str, n: usize, thief: String) {
        if self.draining {
            return;
        }
        let Some((lane, _)) = self.lanes.get_mut(worker) else {
            return;
        };
        let tasks = lane.take_for_peer(n);
        if tasks.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let handed = tasks
                .iter()
                .map(|t| Handed {
                    id: t.id.clone(),
                    epoch: t.epoch,
                })
                .collect();
            let adopted = match ctx
                .cluster
                .call(
                    &thief,
                    Body::Handoff { tasks: handed },
                    crate::cluster::CALL_TIMEOUT,
                )
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
                return;
            }
            let check: Vec<(String, u64)> = rest.iter().map(|t| (t.id.clone(), t.epoch)).collect();
            let owned = ctx
                .store
                .still_owned(&ctx.node, &check)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(
                        "cannot check ownership after a hand-off ({e}); keeping the tasks"
                    );
                    vec![true; check.len()]
                });
            let back: Vec<Task> = rest
                .into_iter()
                .zip(owned)
                .filter_map(|(t, own)| own.then_some(t))
                .collect();
            let _ = me.cast(DispatcherMsg::Push(back));
        });
    }

    /// After a lapse of the liveness lease, finds which held tasks this node no longer owns.
    fn verify_ownership(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let held: Vec<(String, u64)> = self.lanes.values().flat_map(|(l, _)| l.held()).collect();
        let ctx = self.ctx.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            match ctx.store.still_owned(&ctx.node, &held).await {
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
                    let _ = me.cast(DispatcherMsg::Lost(lost));
                }
                Err(e) => {
                    tracing::warn!("cannot check ownership after a lease lapse ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = me.cast(DispatcherMsg::Lapsed);
                }
            }
            let _ = me.cast(DispatcherMsg::Sweep);
        });
    }

    /// Drops queued tasks this node lost, and stops the running ones (their results would be
    /// fenced out anyway).
    fn drop_lost(&mut self, ids: &[String]) {
        for (lane, pool) in self.lanes.values_mut() {
            for id in ids {
                if lane.remove_queued(id).is_some() {
                    continue;
                }
                if lane.is_running(id)
                    && let Some(pool) = pool
                {
                    let _ = pool.cast(PoolMsg::Cancel(id.clone()));
                }
            }
        }
    }
}

/// Makes the owned set consistent before claiming: flush the saver, then hand back everything
/// this node still owns. Retries while Redis is unreachable.
async fn recover(ctx: &NodeContext) {
    let mut backoff = Duration::from_millis(100);
    ctx.saver.flush(Duration::from_secs(30)).await;
    loop {
        match ctx.store.release_owned(&ctx.node).await {
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
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, priority: i32, created: u64) -> Task {
        Task {
            id: id.into(),
            worker: "w".into(),
            args: "null".into(),
            priority,
            attempt: 1,
            attempts: None,
            timeout: None,
            backoff: None,
            backoff_cap: None,
            deadline: None,
            epoch: 1,
            created,
            reply: false,
            pinned: false,
        }
    }

    #[test]
    fn higher_priority_first_then_oldest() {
        let mut lane = Lane::new(1, 10);
        lane.push([
            task("low", 0, 1),
            task("high", 5, 3),
            task("old-high", 5, 2),
            task("mid", 1, 0),
        ]);
        let mut order = Vec::new();
        while let Some(t) = lane.next_to_start() {
            order.push(t.id.clone());
            lane.finished(&t.id);
        }
        assert_eq!(order, ["old-high", "high", "mid", "low"]);
    }

    #[test]
    fn equal_priority_and_age_keep_arrival_order() {
        let mut lane = Lane::new(1, 10);
        lane.push([task("a", 0, 5), task("b", 0, 5), task("c", 0, 5)]);
        let mut order = Vec::new();
        while let Some(t) = lane.next_to_start() {
            order.push(t.id.clone());
            lane.finished(&t.id);
        }
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn capacity_bounds_running() {
        let mut lane = Lane::new(2, 10);
        lane.push((0..5).map(|i| task(&i.to_string(), 0, i)));
        assert!(lane.next_to_start().is_some());
        assert!(lane.next_to_start().is_some());
        assert!(lane.next_to_start().is_none());
        lane.finished("0");
        assert!(lane.next_to_start().is_some());
    }

    #[test]
    fn claims_only_with_room_and_hope() {
        let mut lane = Lane::new(2, 8);
        assert_eq!(lane.claim_size(), 10);
        lane.claiming = true;
        assert_eq!(lane.claim_size(), 0, "one claim at a time");
        lane.claiming = false;
        lane.push((0..6).map(|i| task(&i.to_string(), 0, i)));
        assert_eq!(lane.claim_size(), 0, "more than half full");
        lane.next_to_start();
        lane.next_to_start();
        lane.finished("0");
        lane.finished("1");
        assert_eq!(lane.claim_size(), 6);
        lane.more = false;
        assert_eq!(lane.claim_size(), 0, "redis said it is empty");
    }

    #[test]
    fn a_wake_during_a_claim_is_not_forgotten() {
        let mut lane = Lane::new(2, 8);
        lane.claiming = true;
        lane.wake();
        lane.claimed(Vec::new(), 10);
        assert!(
            lane.more,
            "the task woken for may have arrived after the claim read the set"
        );
        assert_eq!(lane.claim_size(), 10);
        lane.claiming = true;
        lane.claimed(Vec::new(), 10);
        assert!(!lane.more, "a short answer with no wake since means empty");
    }

    #[test]
    fn a_queued_task_can_be_taken_out() {
        let mut lane = Lane::new(1, 8);
        lane.push([task("a", 0, 1), task("b", 0, 2), task("c", 0, 3)]);
        assert_eq!(lane.remove_queued("b").map(|t| t.id), Some("b".into()));
        assert!(lane.remove_queued("b").is_none());
        let first = lane.next_to_start().unwrap();
        assert_eq!(first.id, "a");
        assert!(lane.is_running("a"));
        assert_eq!(lane.stats("w").queued, 1);
    }

    #[test]
    fn pinned_tasks_are_never_given_away() {
        let mut lane = Lane::new(1, 8);
        let mut pinned = task("pinned", 9, 1);
        pinned.pinned = true;
        lane.push([pinned, task("a", 5, 2), task("b", 0, 3)]);
        let given: Vec<String> = lane.take_for_peer(5).into_iter().map(|t| t.id).collect();
        assert_eq!(given, ["a", "b"]);
        assert_eq!(lane.stats("w").queued, 1);
        assert_eq!(lane.held(), vec![("pinned".to_string(), 1)]);
    }

    #[test]
    fn a_dead_pool_gives_back_its_running_tasks() {
        let mut lane = Lane::new(2, 8);
        lane.push([task("a", 0, 1), task("b", 0, 2)]);
        lane.next_to_start();
        lane.next_to_start();
        let mut back = lane.take_running();
        back.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(back.len(), 2);
        assert_eq!(lane.stats("w").running, 0);
    }
}
