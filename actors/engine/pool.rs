//! Worker pools: one pool actor per worker type, supervising `concurrency` slot actors that each
//! run one attempt at a time.
//!
//! Restart policy: a slot that fails (a panicking Rust worker) fails only the attempt it was
//! running ("worker crashed: …", retried like any failure); the pool records that failure,
//! restarts the slot at once and hands it the next task. A worker that panics on every task
//! therefore fails those tasks and nothing else. A failing pool is a bug in the pool and
//! escalates to the dispatcher.
//!
//! After an attempt, [`crate::decide::policy::settle`] decides what follows (done, retry later, dead,
//! failed, cancelled, expired) and [`finish_op`] turns that into the one fenced write.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::decide::backoff::jitter;
use crate::decide::policy::{Settle, settle};
use crate::engine::dispatcher::DispatcherMsg;
use crate::engine::supervisor::NodeContext;
use crate::model::events;
use crate::model::task::{Outcome, Task, now_ms};
use crate::store::WriteOp;
use crate::workers::registry::{WorkerEntry, run_attempt};
use crate::workers::rust::CancelToken;

/// The pool actor of one worker type.
pub struct Pool;

/// What a pool needs.
pub struct PoolArgs {
    /// The worker it runs (its concurrency sizes the pool).
    pub entry: WorkerEntry,
    /// Shared node state: run environment, saver, the current registry.
    pub ctx: Arc<NodeContext>,
    /// The dispatcher, told when a slot frees up.
    pub dispatcher: ActorRef<DispatcherMsg>,
}

/// The pool's state.
pub struct PoolState {
    args: PoolArgs,
    slots: Vec<SlotInfo>,
    waiting: VecDeque<Task>,
}

struct SlotInfo {
    actor: ActorRef<SlotMsg>,
    running: Option<Running>,
}

struct Running {
    task: Task,
    started: u64,
    cancel: CancelToken,
}

/// Messages to a pool.
pub enum PoolMsg {
    /// Run this task on a free slot.
    Run(Task),
    /// A slot finished its task.
    SlotIdle {
        /// Slot index.
        slot: usize,
    },
    /// Cancel this task if it waits or runs here.
    Cancel(String),
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
            slots.push(SlotInfo {
                actor: spawn_slot(&myself, &args, index).await?,
                running: None,
            });
        }
        Ok(PoolState {
            args,
            slots,
            waiting: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Run(task) => {
                state.waiting.push_back(task);
                state.assign();
            }
            PoolMsg::SlotIdle { slot } => {
                if let Some(run) = state.slots.get_mut(slot).and_then(|s| s.running.take()) {
                    state.done(&run.task);
                }
                state.assign();
            }
            PoolMsg::Cancel(id) => {
                if let Some(pos) = state.waiting.iter().position(|t| t.id == id) {
                    if let Some(task) = state.waiting.remove(pos) {
                        let now = now_ms();
                        let op = finish_op(&task, &state.args.ctx.node, &Settle::Cancelled, 0, now);
                        state.args.ctx.saver.write(op);
                        state.done(&task);
                    }
                } else if let Some(run) = state
                    .slots
                    .iter()
                    .filter_map(|s| s.running.as_ref())
                    .find(|r| r.task.id == id)
                {
                    run.cancel.cancel();
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
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(index) = state.slot_of(cell.get_id()) else {
            return Ok(());
        };
        if let Some(run) = state.slots[index].running.take() {
            let task = run.task;
            tracing::warn!(task = %task.id, worker = %task.worker, "worker crashed: {why}");
            let outcome = Outcome::failed(format!("worker crashed: {why}"));
            let now = now_ms();
            let policy = state.args.entry.retry_policy(&task);
            let next = settle(outcome, task.attempt, &policy, now, jitter(&task.id));
            let op = finish_op(&task, &state.args.ctx.node, &next, run.started, now);
            state.args.ctx.saver.write(op);
            state.done(&task);
        }
        state.slots[index].actor = spawn_slot(&myself, &state.args, index).await?;
        state.assign();
        Ok(())
    }
}

impl PoolState {
    fn slot_of(&self, id: ActorId) -> Option<usize> {
        self.slots.iter().position(|s| s.actor.get_id() == id)
    }

    fn done(&self, task: &Task) {
        let _ = self.args.dispatcher.cast(DispatcherMsg::Done {
            worker: task.worker.clone(),
            id: task.id.clone(),
        });
    }

    /// Hands waiting tasks to idle slots.
    fn assign(&mut self) {
        while let Some(index) = self.slots.iter().position(|s| s.running.is_none()) {
            let Some(task) = self.waiting.pop_front() else {
                return;
            };
            let started = now_ms();
            let cancel = CancelToken::default();
            match self.slots[index]
                .actor
                .cast(SlotMsg::Run(task.clone(), cancel.clone()))
            {
                Ok(()) => {
                    self.slots[index].running = Some(Running {
                        task,
                        started,
                        cancel,
                    });
                }
                Err(_) => {
                    // The slot is dying; its supervision event will restart it. Keep the task.
                    self.waiting.push_front(task);
                    return;
                }
            }
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
            ctx: args.ctx.clone(),
            pool: pool.clone(),
        },
        pool.get_cell(),
    )
    .await?;
    Ok(actor)
}

/// A slot: runs one attempt at a time.
pub struct Slot;

/// What a slot needs.
pub struct SlotArgs {
    index: usize,
    entry: WorkerEntry,
    ctx: Arc<NodeContext>,
    pool: ActorRef<PoolMsg>,
}

/// Messages to a slot.
pub enum SlotMsg {
    /// Run one attempt, stopping early when the token is cancelled.
    Run(Task, CancelToken),
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
        let ctx = &state.ctx;
        let node = &ctx.node;
        // The current version of the worker: a reload applies to the next task it runs.
        let entry = ctx
            .registry()
            .get(&task.worker)
            .cloned()
            .unwrap_or_else(|| state.entry.clone());
        let now = now_ms();
        let before_start = if task.deadline.is_some_and(|d| now > d) {
            Some(Settle::Expired)
        } else if cancel.is_cancelled() {
            Some(Settle::Cancelled)
        } else {
            None
        };
        let op = match before_start {
            Some(end) => finish_op(&task, node, &end, 0, now),
            None => {
                ctx.saver.write(WriteOp::Start {
                    id: task.id.clone(),
                    epoch: task.epoch,
                    attempt: task.attempt,
                    at: now,
                    event: events::started(&task, node, now),
                });
                let outcome = run_attempt(&entry, &task, &ctx.env, &cancel).await;
                let finished = now_ms();
                let policy = entry.retry_policy(&task);
                let unit = jitter(&format!("{}:{}", task.id, task.attempt));
                let next = settle(outcome, task.attempt, &policy, finished, unit);
                finish_op(&task, node, &next, now, finished)
            }
        };
        ctx.saver.write(op);
        let _ = state.pool.cast(PoolMsg::SlotIdle { slot: state.index });
        Ok(())
    }
}

/// The fenced write that ends an attempt of `task` on `node` with `settle`. A `started` of 0
/// means the attempt never began (expired or cancelled while queued).
pub fn finish_op(task: &Task, node: &str, settle: &Settle, started: u64, now: u64) -> WriteOp {
    let (value, retry_at) = match settle {
        Settle::Done(v) => (v.to_string(), 0),
        Settle::Retry { error, at } => (error.clone(), *at),
        Settle::Dead { error } | Settle::Failed { error } => (error.clone(), 0),
        Settle::Cancelled => ("cancelled".to_owned(), 0),
        Settle::Expired => ("deadline passed before the task started".to_owned(), 0),
    };
    let error_event = match settle {
        Settle::Retry { error, .. } | Settle::Dead { error } => {
            Some(events::error(task, node, error, now))
        }
        _ => None,
    };
    WriteOp::Finish {
        id: task.id.clone(),
        node: node.to_owned(),
        epoch: task.epoch,
        attempt: task.attempt,
        started,
        finished: now,
        state: settle.state(),
        value,
        retry_at,
        event: events::transition(task, node, settle, now),
        started_event: None,
        error_event,
    }
}
