//! The node supervisor: the root of the actor tree.
//!
//! Children, started in this order: saver, dispatcher (which supervises the worker pools),
//! scheduler, membership (the cluster link and gossip), ingress.
//!
//! Restart policy (one for one): a child that fails or stops on its own is restarted after a
//! backoff of 100 ms doubling to 5 s. More than 5 restarts of one child within 60 s means the
//! fault is not transient: the supervisor logs why and shuts the node down cleanly, so the
//! cluster can take over its work, rather than crash-looping silently.
//!
//! Shared state that must survive a child's restart (the saver's write queue, the current
//! address of the dispatcher and ingress) lives in [`NodeContext`], owned here.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterHandle, Membership, MembershipArgs, MembershipMsg};
use crate::config::Settings;
use crate::decide::placement::{Load, NodeLoad};
use crate::engine::dispatcher::{Dispatcher, DispatcherArgs, DispatcherMsg};
use crate::engine::ingress::{Ingress, IngressArgs, IngressMsg};
use crate::engine::saver::{Saver, SaverArgs, SaverHandle};
use crate::engine::scheduler::{Scheduler, SchedulerArgs};
use crate::store::Store;
use crate::workers::registry::{Registry, RunEnv};
use crate::workers::rust::{SharedWorker, WorkerOptions};

/// How often and how fast a child may be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Most restarts within `window` before giving up.
    pub max_restarts: usize,
    /// The window restarts are counted in.
    pub window: Duration,
    /// First backoff; doubles with each restart inside the window.
    pub base: Duration,
    /// Longest backoff.
    pub cap: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay.
    Restart(Duration),
    /// Too many failures in the window: stop.
    GiveUp {
        /// Failures counted in the window, this one included.
        failures: usize,
    },
}

/// Counts failures of one child against a [`RestartPolicy`].
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(policy: RestartPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let n = self.failures.len();
        if n > self.policy.max_restarts {
            return RestartDecision::GiveUp { failures: n };
        }
        let factor = 1u32 << (n - 1).min(16);
        RestartDecision::Restart((self.policy.base * factor).min(self.policy.cap))
    }
}

/// The current address of a child that may be restarted; readers always get the live one.
pub struct Link<M: ractor::Message>(RwLock<Option<ActorRef<M>>>);

impl<M: ractor::Message> Default for Link<M> {
    fn default() -> Self {
        Link(RwLock::new(None))
    }
}

impl<M: ractor::Message> Link<M> {
    /// The live actor, if any.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets or clears the live actor.
    pub fn set(&self, actor: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    /// Sends a message to the live actor; false when there is none or it is gone.
    pub fn cast(&self, msg: M) -> bool {
        self.get().is_some_and(|a| a.cast(msg).is_ok())
    }
}

/// Why a node stops on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Asked to (`bgnode stop`): a graceful shutdown, not an error.
    Requested(String),
    /// The supervisor gave up on a child.
    GaveUp(String),
    /// Another process took this node's id.
    LostIdentity(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Requested(why)
            | StopReason::GaveUp(why)
            | StopReason::LostIdentity(why) => f.write_str(why),
        }
    }
}

/// What every actor of a node shares.
pub struct NodeContext {
    /// Settings.
    pub settings: Settings,
    /// The store.
    pub store: Store,
    /// Worker types offered (replaced by a reload).
    pub registry: RwLock<Arc<Registry>>,
    /// The Rust workers given to the builder (a reload keeps them).
    pub rust_workers: Vec<(String, SharedWorker, WorkerOptions)>,
    /// This node's id.
    pub node: String,
    /// This incarnation (start time in ms); a restarted node is a new generation.
    pub generation: u64,
    /// Run environment of workers.
    pub env: RunEnv,
    /// The write queue.
    pub saver: SaverHandle,
    /// The live dispatcher.
    pub dispatcher: Link<DispatcherMsg>,
    /// The live ingress.
    pub ingress: Link<IngressMsg>,
    /// The live membership actor.
    pub membership: Link<MembershipMsg>,
    /// Wakes the scheduler: something was scheduled.
    pub schedule: tokio::sync::Notify,
    /// The cluster view and the way to peers.
    pub cluster: ClusterHandle,
    /// This node's load per worker type, as last measured.
    pub load: RwLock<NodeLoad>,
    /// The node is shutting down.
    pub leaving: AtomicBool,
    /// Tells the node to stop, and why.
    pub stop: mpsc::UnboundedSender<StopReason>,
    /// When the liveness lease was last renewed (Unix ms).
    pub lease_renewed: AtomicU64,
}

impl NodeContext {
    /// True while the liveness lease is surely held (renewed within its time to live): a node
    /// starts tasks only then, since a node whose lease lapsed may have been failed over.
    pub fn lease_fresh(&self) -> bool {
        let renewed = self.lease_renewed.load(Ordering::SeqCst);
        crate::model::task::now_ms().saturating_sub(renewed)
            < self.settings.node.lease_ttl.as_millis() as u64
    }

    /// Notes a successful renewal of the liveness lease.
    pub fn lease_renewed_now(&self) {
        self.lease_renewed
            .store(crate::model::task::now_ms(), Ordering::SeqCst);
    }

    /// The worker types offered now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the worker types (a reload).
    pub fn set_registry(&self, registry: Registry) {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry);
    }

    /// This node's load of `worker`, if it offers it.
    pub fn local_load(&self, worker: &str) -> Option<Load> {
        let load = self.load.read().unwrap_or_else(|e| e.into_inner());
        load.get(worker).copied().or_else(|| {
            self.registry().get(worker).map(|e| Load {
                capacity: e.concurrency,
                running: 0,
                queued: 0,
            })
        })
    }

    /// `node:generation`, the holder name used for leases.
    pub fn holder(&self) -> String {
        format!("{}:{}", self.node, self.generation)
    }
}

/// Children of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    /// The saver.
    Saver,
    /// The dispatcher and, below it, the pools.
    Dispatcher,
    /// The scheduler.
    Scheduler,
    /// The membership: cluster link, gossip, heartbeats, failover.
    Membership,
    /// The ingress.
    Ingress,
}

/// The supervisor actor.
pub struct Supervisor;

/// What the supervisor needs.
pub struct SupervisorArgs {
    /// Shared node state.
    pub ctx: Arc<NodeContext>,
    /// Restart policy of the children.
    pub policy: RestartPolicy,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    trackers: HashMap<Child, RestartTracker>,
    stopping: bool,
}

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Start a child again (sent to itself after the backoff).
    Restart(Child),
    /// Stop restarting children: the node is shutting down.
    Stopping(ractor::RpcReplyPort<()>),
}

impl ractor::Message for SupervisorMsg {}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            children: HashMap::new(),
            trackers: HashMap::new(),
            stopping: false,
        };
        for child in [
            Child::Saver,
            Child::Dispatcher,
            Child::Scheduler,
            Child::Membership,
            Child::Ingress,
        ] {
            state.spawn(child, myself.get_cell()).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(child) if !state.stopping => {
                if let Err(e) = state.spawn(child, myself.get_cell()).await {
                    state.failed(&myself, child, &format!("restart failed: {e}"));
                } else {
                    tracing::info!(?child, "restarted");
                }
            }
            SupervisorMsg::Restart(_) => {}
            SupervisorMsg::Stopping(reply) => {
                state.stopping = true;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.unlink(child);
        if !state.stopping {
            state.failed(&myself, child, &why);
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn(&mut self, child: Child, me: ActorCell) -> Result<(), ActorProcessingErr> {
        let ctx = &self.args.ctx;
        let id = match child {
            Child::Saver => {
                let args = SaverArgs {
                    handle: ctx.saver.clone(),
                    store: ctx.store.clone(),
                    batch: ctx.settings.saver.batch as usize,
                };
                Actor::spawn_linked(None, Saver, args, me).await?.0.get_id()
            }
            Child::Scheduler => {
                let args = SchedulerArgs { ctx: ctx.clone() };
                Actor::spawn_linked(None, Scheduler, args, me)
                    .await?
                    .0
                    .get_id()
            }
            Child::Dispatcher => {
                let args = DispatcherArgs { ctx: ctx.clone() };
                let (actor, _) = Actor::spawn_linked(None, Dispatcher, args, me).await?;
                ctx.dispatcher.set(Some(actor.clone()));
                actor.get_id()
            }
            Child::Membership => {
                let args = MembershipArgs { ctx: ctx.clone() };
                let (actor, _) = Actor::spawn_linked(None, Membership, args, me).await?;
                ctx.membership.set(Some(actor.clone()));
                actor.get_id()
            }
            Child::Ingress => {
                let args = IngressArgs { ctx: ctx.clone() };
                let (actor, _) = Actor::spawn_linked(None, Ingress, args, me).await?;
                ctx.ingress.set(Some(actor.clone()));
                actor.get_id()
            }
        };
        self.children.insert(id, child);
        Ok(())
    }

    fn unlink(&self, child: Child) {
        match child {
            Child::Saver | Child::Scheduler => {}
            Child::Membership => self.args.ctx.membership.set(None),
            Child::Dispatcher => self.args.ctx.dispatcher.set(None),
            Child::Ingress => self.args.ctx.ingress.set(None),
        }
    }

    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child, why: &str) {
        let tracker = self
            .trackers
            .entry(child)
            .or_insert_with(|| RestartTracker::new(self.args.policy));
        match tracker.on_failure(Instant::now()) {
            RestartDecision::Restart(after) => {
                tracing::error!(?child, "{why}; restarting in {after:?}");
                myself.send_after(after, move || SupervisorMsg::Restart(child));
            }
            RestartDecision::GiveUp { failures } => {
                let reason = format!(
                    "{child:?} failed {failures} times within {:?} (last: {why}); shutting the node down so the cluster can take over its work",
                    self.args.policy.window
                );
                tracing::error!("{reason}");
                self.stopping = true;
                let _ = self.args.ctx.stop.send(StopReason::GaveUp(reason));
            }
        }
    }
}

/// Runs `fut` as a task tied to `actor`: if the future ends or panics, the actor is sent
/// `died(reason)` (and should fail, so its supervisor restarts it). Aborting the returned handle
/// drops the future and sends nothing.
pub fn watch_task<M, F>(fut: F, actor: ActorRef<M>, died: fn(String) -> M) -> JoinHandle<()>
where
    M: ractor::Message,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let why = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(()) => "ended".to_owned(),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".into()),
        };
        let _ = actor.cast(died(why));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up() {
        let policy = RestartPolicy::default();
        let mut t = RestartTracker::new(policy);
        let t0 = Instant::now();
        let delays: Vec<RestartDecision> = (0..6)
            .map(|i| t.on_failure(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            delays[0],
            RestartDecision::Restart(Duration::from_millis(100))
        );
        assert_eq!(
            delays[1],
            RestartDecision::Restart(Duration::from_millis(200))
        );
        assert_eq!(
            delays[4],
            RestartDecision::Restart(Duration::from_millis(1600))
        );
        assert_eq!(delays[5], RestartDecision::GiveUp { failures: 6 });
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(10),
            ..RestartPolicy::default()
        });
        let t0 = Instant::now();
        assert!(matches!(t.on_failure(t0), RestartDecision::Restart(_)));
        assert!(matches!(t.on_failure(t0), RestartDecision::Restart(_)));
        assert_eq!(
            t.on_failure(t0 + Duration::from_secs(11)),
            RestartDecision::Restart(Duration::from_millis(100)),
            "the first two fell out of the window"
        );
    }

    #[test]
    fn backoff_is_capped() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 100,
            ..RestartPolicy::default()
        });
        let t0 = Instant::now();
        let mut last = RestartDecision::Restart(Duration::ZERO);
        for _ in 0..40 {
            last = t.on_failure(t0);
        }
        assert_eq!(last, RestartDecision::Restart(Duration::from_secs(5)));
    }
}
