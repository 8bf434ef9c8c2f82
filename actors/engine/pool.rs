//! Worker pools: one pool actor per worker type, supervising `concurrency` slot actors that each
//! run one attempt at a time.
//!
//! The pool holds no list of tasks: the dispatcher's lane knows what is queued and running, and
//! hands the pool a task only when a slot is free. The pool knows which slot runs which task id,
//! so it can say which attempt a crashed slot took down.
//!
//! Restart policy: a slot that fails (a panicking Rust worker) fails only the attempt it was
//! running; the pool reports [`PoolEvent::Crashed`], and the dispatcher records "worker crashed:
//! …" for the task like any failure. The slot is restarted at once. A worker that panics on
//! every task therefore fails those tasks and nothing else. A failing pool is a bug in the pool
//! and escalates to the dispatcher.
//!
//! A slot ends every attempt with [`crate::decide::outcome::conclude`], the one fenced write.
//! It counts the attempts it starts in its worker type's metrics (started, queue wait, running,
//! run time); how an attempt ended is counted by the saver, once Redis applied its end.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio_util::sync::CancellationToken;

use crate::decide::outcome::conclude;
use crate::engine::saver::SaverHandle;
use crate::metrics::WorkerMetrics;
use crate::model::events;
use crate::model::task::{Outcome, Task};
use crate::store::Clock;
use crate::store::WriteOp;
use crate::wiring::child_end;
use crate::workers::registry::{LiveRegistry, WorkerEntry, run_attempt};

/// What a pool tells its owner.
#[derive(Debug)]
pub(crate) enum PoolEvent {
    /// A slot finished task `id` (its end is written) and is free.
    Freed {
        /// Worker type.
        worker: String,
        /// Task id.
        id: String,
    },
    /// The slot running task `id` crashed; the pool restarted it. Nothing was written for the
    /// attempt.
    Crashed {
        /// Worker type.
        worker: String,
        /// Task id.
        id: String,
        /// The panic or failure.
        why: String,
    },
    /// No slot was free for this task; it was not started.
    Refused {
        /// Worker type.
        worker: String,
        /// Task id.
        id: String,
    },
}

/// Where a pool sends its events.
pub(crate) type Report = Arc<dyn Fn(PoolEvent) + Send + Sync>;

/// The pool actor of one worker type.
pub(crate) struct Pool;

/// What a pool needs.
pub(crate) struct PoolArgs {
    /// The worker it runs (its concurrency sizes the pool).
    pub(crate) entry: WorkerEntry,
    /// The live registry: a slot runs the current version of its worker.
    pub(crate) workers: Arc<LiveRegistry>,
    /// Where attempts are recorded.
    pub(crate) saver: SaverHandle,
    /// This node's id.
    pub(crate) node: String,
    /// Redis's clock: an attempt's start and end, and the deadline check before it starts.
    pub(crate) clock: Clock,
    /// This worker type's metrics: attempts started, their queue wait and run time, and how
    /// many run now.
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// Told when a slot frees up or crashes.
    pub(crate) report: Report,
    /// Whether a start publishes its `started` event (`redis.event_level = "all"`); else the
    /// event is not even built.
    pub(crate) started_events: bool,
}

/// The pool's state: each slot and the id of the task it runs.
pub(crate) struct PoolState {
    args: PoolArgs,
    slots: Vec<(ActorRef<SlotMsg>, Option<String>)>,
}

/// Messages to a pool.
pub(crate) enum PoolMsg {
    /// Run this task on a free slot, stopping early when the token is cancelled.
    Run(Task, CancellationToken),
    /// A slot finished its task.
    SlotIdle {
        /// Slot index.
        slot: usize,
    },
}

impl ractor::Message for PoolMsg {}

impl Actor for Pool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut slots = Vec::with_capacity(args.entry.concurrency as usize);
        for index in 0..args.entry.concurrency as usize {
            slots.push((spawn_slot(&myself, &args, index).await?, None));
        }
        Ok(PoolState { args, slots })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Run(task, cancel) => state.run(task, cancel),
            PoolMsg::SlotIdle { slot } => {
                if let Some(id) = state.slots.get_mut(slot).and_then(|s| s.1.take()) {
                    state.report_freed(id);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((id, _, why)) = child_end(event) else {
            return Ok(());
        };
        let Some(index) = state.slot_of(id) else {
            return Ok(());
        };
        state.slots[index].0 = spawn_slot(&myself, &state.args, index).await?;
        if let Some(id) = state.slots[index].1.take() {
            tracing::warn!(task = %id, worker = %state.args.entry.name, "worker crashed: {why}");
            (state.args.report)(PoolEvent::Crashed {
                worker: state.args.entry.name.clone(),
                id,
                why,
            });
        }
        Ok(())
    }
}

impl PoolState {
    fn slot_of(&self, id: ActorId) -> Option<usize> {
        self.slots.iter().position(|s| s.0.get_id() == id)
    }

    fn report_freed(&self, id: String) {
        (self.args.report)(PoolEvent::Freed {
            worker: self.args.entry.name.clone(),
            id,
        });
    }

    /// Hands `task` to a free slot, or refuses it.
    fn run(&mut self, task: Task, cancel: CancellationToken) {
        let id = task.id.clone();
        let free = self.slots.iter().position(|s| s.1.is_none());
        let sent = free.is_some_and(|index| {
            let ok = self.slots[index].0.cast(SlotMsg::Run(task, cancel)).is_ok();
            if ok {
                self.slots[index].1 = Some(id.clone());
            }
            ok
        });
        if !sent {
            // No free slot (or it is dying; its supervision event restarts it): the lane keeps
            // the task and starts it later.
            (self.args.report)(PoolEvent::Refused {
                worker: self.args.entry.name.clone(),
                id,
            });
        }
    }
}

async fn spawn_slot(
    pool: &ActorRef<PoolMsg>,
    args: &PoolArgs,
    index: usize,
) -> Result<ActorRef<SlotMsg>, ActorProcessingErr> {
    let (actor, _) = Actor::spawn_linked(
        None,
        Slot,
        SlotArgs {
            index,
            entry: args.entry.clone(),
            workers: args.workers.clone(),
            saver: args.saver.clone(),
            node: args.node.clone(),
            clock: args.clock.clone(),
            metrics: args.metrics.clone(),
            pool: pool.clone(),
            started_events: args.started_events,
        },
        pool.get_cell(),
    )
    .await?;
    Ok(actor)
}

/// A slot: runs one attempt at a time.
pub(crate) struct Slot;

/// What a slot needs.
pub(crate) struct SlotArgs {
    index: usize,
    entry: WorkerEntry,
    workers: Arc<LiveRegistry>,
    saver: SaverHandle,
    node: String,
    clock: Clock,
    metrics: Arc<WorkerMetrics>,
    pool: ActorRef<PoolMsg>,
    started_events: bool,
}

/// Messages to a slot.
pub(crate) enum SlotMsg {
    /// Run one attempt, stopping early when the token is cancelled.
    Run(Task, CancellationToken),
}

impl ractor::Message for SlotMsg {}

impl Actor for Slot {
    type Msg = SlotMsg;
    type State = SlotArgs;
    type Arguments = SlotArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SlotMsg>,
        args: SlotArgs,
    ) -> Result<SlotArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SlotMsg>,
        msg: SlotMsg,
        state: &mut SlotArgs,
    ) -> Result<(), ActorProcessingErr> {
        let SlotMsg::Run(task, cancel) = msg;
        let node = &state.node;
        // The current version of the worker: a reload applies to the next task it runs.
        let entry = state
            .workers
            .get(&task.worker)
            .unwrap_or_else(|| state.entry.clone());
        let policy = entry.retry_policy(&task);
        let now = state.clock.now_ms();
        let op = if task.deadline.is_some_and(|d| now > d) {
            conclude(&task, node, Outcome::Expired, &policy, 0, now)
        } else if cancel.is_cancelled() {
            conclude(&task, node, Outcome::Cancelled, &policy, 0, now)
        } else {
            state.saver.write(WriteOp::Start {
                id: task.id.clone(),
                epoch: task.epoch,
                attempt: task.attempt,
                at: now,
                // '': nothing to publish (write.lua skips it).
                event: if state.started_events {
                    events::started(&task, node, now)
                } else {
                    String::new()
                },
            });
            let waited = Duration::from_millis(now.saturating_sub(task.created));
            let attempt = state.metrics.start(waited);
            let outcome = run_attempt(&entry, &task, state.workers.env(), &cancel).await;
            drop(attempt);
            conclude(&task, node, outcome, &policy, now, state.clock.now_ms())
        };
        state.saver.write(op);
        let _ = state.pool.cast(PoolMsg::SlotIdle { slot: state.index });
        Ok(())
    }
}
