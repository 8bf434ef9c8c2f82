//! Worker pools: one pool actor per worker type, supervising `concurrency` slot actors that each
//! run one attempt at a time.
//!
//! Restart policy: a slot that fails (a panicking Rust worker) fails only the attempt it was
//! running ("worker crashed: …"); the pool records that failure, restarts the slot at once and
//! hands it the next task. A worker that panics on every task therefore fails those tasks and
//! nothing else. A failing pool is a bug in the pool and escalates to the dispatcher.

use std::collections::VecDeque;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::dispatcher::DispatcherMsg;
use crate::events;
use crate::registry::{RunEnv, WorkerEntry, run_attempt};
use crate::saver::SaverHandle;
use crate::store::WriteOp;
use crate::task::{Outcome, Task, TaskState, now_ms};

/// The pool actor of one worker type.
pub struct Pool;

/// What a pool needs.
pub struct PoolArgs {
    /// The worker it runs.
    pub entry: WorkerEntry,
    /// Node id, folder and limits for runs.
    pub env: RunEnv,
    /// Where writes go.
    pub saver: SaverHandle,
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
    running: Option<(Task, u64)>,
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
                if let Some((task, _)) = state.slots.get_mut(slot).and_then(|s| s.running.take()) {
                    state.done(&task);
                }
                state.assign();
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
        if let Some((task, started)) = state.slots[index].running.take() {
            tracing::warn!(task = %task.id, worker = %task.worker, "worker crashed: {why}");
            let outcome = Outcome::Failed(format!("worker crashed: {why}"));
            let node = &state.args.env.node;
            let finished = now_ms();
            state.args.saver.write(WriteOp::Finish {
                id: task.id.clone(),
                node: node.clone(),
                epoch: task.epoch,
                attempt: task.attempt,
                started,
                finished,
                state: TaskState::Failed,
                value: format!("worker crashed: {why}"),
                event: events::finished(&task, node, &outcome, finished),
                started_event: None,
            });
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
            match self.slots[index].actor.cast(SlotMsg::Run(task.clone())) {
                Ok(()) => self.slots[index].running = Some((task, started)),
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
            env: args.env.clone(),
            saver: args.saver.clone(),
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
    env: RunEnv,
    saver: SaverHandle,
    pool: ActorRef<PoolMsg>,
}

/// Messages to a slot.
pub enum SlotMsg {
    /// Run one attempt.
    Run(Task),
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
        let SlotMsg::Run(task) = msg;
        let node = &state.env.node;
        let started = now_ms();
        state.saver.write(WriteOp::Start {
            id: task.id.clone(),
            epoch: task.epoch,
            attempt: task.attempt,
            at: started,
            event: events::started(&task, node, started),
        });
        let outcome = run_attempt(&state.entry, &task, &state.env).await;
        let finished = now_ms();
        let (final_state, value) = match &outcome {
            Outcome::Done(v) => (TaskState::Done, v.to_string()),
            Outcome::Failed(e) => (TaskState::Failed, e.clone()),
        };
        state.saver.write(WriteOp::Finish {
            id: task.id.clone(),
            node: node.clone(),
            epoch: task.epoch,
            attempt: task.attempt,
            started,
            finished,
            state: final_state,
            value,
            event: events::finished(&task, node, &outcome, finished),
            started_event: None,
        });
        let _ = state.pool.cast(PoolMsg::SlotIdle { slot: state.index });
        Ok(())
    }
}
