//! The node supervisor: the root of the node's actor tree.
//!
//! Children, started in this order: saver, the archiver when `[saver] archive` is set, dispatcher (which supervises the worker pools),
//! scheduler, peer actor, membership (the cluster link and gossip), ingress, the HTTP API
//! when `[http] listen` is set, and the socket service when `[socket] listen` is set.
//!
//! Restart policy (one for one): a child that fails or stops on its own is restarted after a
//! backoff of 100 ms doubling to 5 s. More than 5 restarts of one child within 60 s means the
//! fault is not transient: the supervisor logs why and shuts the node down cleanly, so the
//! cluster can take over its work, rather than crash-looping silently (see
//! [`crate::decide::restart`]).
//!
//! The supervisor holds the node's [`NodeParts`] and gives each child only the parts it uses, in
//! its `Arguments`. What must survive a child's restart (the saver's write queue, the live
//! address of the dispatcher, ingress and membership) is in those parts, owned here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::Notify;

use crate::client::Client;
use crate::cluster::handle::ClusterHandle;
use crate::cluster::membership::{Membership, MembershipArgs, MembershipMsg};
use crate::config::Settings;
use crate::decide::restart::{RestartDecision, RestartPolicy, RestartTracker};
use crate::engine::archiver::{Archiver, ArchiverArgs};
use crate::engine::control::Control;
use crate::engine::dispatcher::{Dispatcher, DispatcherArgs, DispatcherMsg};
use crate::engine::ingress::{Ingress, IngressArgs, IngressMsg};
use crate::engine::peer::{PeerActor, PeerArgs};
use crate::engine::saver::{Saver, SaverArgs, SaverHandle};
use crate::engine::scheduler::{Scheduler, SchedulerArgs};
use crate::http::{Http, HttpArgs};
use crate::metrics::Metrics;
use crate::socket::{Socket, SocketArgs, Sockets};
use crate::store::{Incarnation, Store};
use crate::wiring::{LeaseClock, Link, StopReason, Stopper, child_end};
use crate::workers::registry::LiveRegistry;

/// Everything a node's actors are built from. The supervisor and the node's handle hold it;
/// each actor gets only the parts it uses.
pub(crate) struct NodeParts {
    /// Settings.
    pub(crate) settings: Settings,
    /// This node's id.
    pub(crate) node: String,
    /// This incarnation (start time in ms); a restarted node is a new generation.
    pub(crate) generation: u64,
    /// The store.
    pub(crate) store: Store,
    /// The write queue, which outlives restarts of the saver.
    pub(crate) saver: SaverHandle,
    /// Worker types offered (replaced by a reload).
    pub(crate) workers: Arc<LiveRegistry>,
    /// The cluster view, this node's load, and the way to peers.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// When the liveness lease was last renewed.
    pub(crate) lease: Arc<LeaseClock>,
    /// The node is shutting down.
    pub(crate) leaving: Arc<AtomicBool>,
    /// Tells the node to stop, and why.
    pub(crate) stop: Stopper,
    /// Wakes the scheduler: something was scheduled.
    pub(crate) schedule: Arc<Notify>,
    /// `stop` and `reload` for this node.
    pub(crate) control: Arc<Control>,
    /// The live dispatcher.
    pub(crate) dispatcher: Arc<Link<DispatcherMsg>>,
    /// The live ingress.
    pub(crate) ingress: Arc<Link<IngressMsg>>,
    /// The live membership actor.
    pub(crate) membership: Arc<Link<MembershipMsg>>,
    /// The HTTP API's listener, bound at start (`None`: no HTTP API).
    pub(crate) http: Option<Arc<std::net::TcpListener>>,
    /// The socket service's sockets, bound at start (`None`: no socket service).
    pub(crate) socket: Option<Arc<Sockets>>,
    /// What this node counts; the actors that count get it, or their part of it.
    pub(crate) metrics: Metrics,
}

impl NodeParts {
    /// This incarnation, as the scripts fence it.
    pub(crate) fn incarnation(&self) -> Incarnation {
        Incarnation::new(&self.node, self.generation)
    }

    /// `node:generation`, the holder name used for leases.
    pub(crate) fn holder(&self) -> String {
        self.incarnation().holder
    }
}

/// Children of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Child {
    /// The saver.
    Saver,
    /// The archiver (`[saver] archive`).
    Archiver,
    /// The dispatcher and, below it, the pools.
    Dispatcher,
    /// The scheduler.
    Scheduler,
    /// The peer actor: what other nodes send.
    Peer,
    /// The membership: cluster link, gossip, heartbeats, failover.
    Membership,
    /// The ingress.
    Ingress,
    /// The HTTP API.
    Http,
    /// The socket service.
    Socket,
}

/// The supervisor actor.
pub(crate) struct Supervisor;

/// What the supervisor needs.
pub(crate) struct SupervisorArgs {
    /// The node's parts.
    pub(crate) parts: Arc<NodeParts>,
    /// Restart policy of the children.
    pub(crate) policy: RestartPolicy,
}

/// The supervisor's state.
pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    trackers: HashMap<Child, RestartTracker>,
    stopping: bool,
}

/// Messages to the supervisor.
pub(crate) enum SupervisorMsg {
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
            Child::Archiver,
            Child::Dispatcher,
            Child::Scheduler,
            Child::Peer,
            Child::Membership,
            Child::Ingress,
            Child::Http,
            Child::Socket,
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
        let Some((id, failed, why)) = child_end(event) else {
            return Ok(());
        };
        let why = format!("{}: {why}", if failed { "failed" } else { "stopped" });
        let Some(child) = state.children.remove(&id) else {
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
        let p = &self.args.parts;
        let id = match child {
            Child::Saver => {
                let args = SaverArgs {
                    handle: p.saver.clone(),
                    store: p.store.clone(),
                    batch: p.settings.saver.batch as usize,
                    metrics: p.metrics.clone(),
                };
                Actor::spawn_linked(None, Saver, args, me).await?.0.get_id()
            }
            Child::Archiver => {
                if !p.settings.saver.archives() {
                    return Ok(());
                }
                let args = ArchiverArgs {
                    store: p.store.clone(),
                    node: p.node.clone(),
                    me: p.incarnation(),
                    settings: p.settings.clone(),
                    metrics: p.metrics.archive(),
                };
                Actor::spawn_linked(None, Archiver, args, me)
                    .await?
                    .0
                    .get_id()
            }
            Child::Dispatcher => {
                let args = DispatcherArgs {
                    me: p.incarnation(),
                    generation: p.generation,
                    store: p.store.clone(),
                    saver: p.saver.clone(),
                    workers: p.workers.clone(),
                    cluster: p.cluster.clone(),
                    lease: p.lease.clone(),
                    queue_cap: p.settings.queue_len(),
                    metrics: p.metrics.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Dispatcher, args, me).await?;
                p.dispatcher.set(Some(actor.clone()));
                actor.get_id()
            }
            Child::Scheduler => {
                let args = SchedulerArgs {
                    store: p.store.clone(),
                    wake: p.schedule.clone(),
                    missed: p.settings.scheduler.missed,
                    unrunnable_after: p.settings.tasks.unrunnable_after,
                    metrics: p.metrics.clone(),
                };
                Actor::spawn_linked(None, Scheduler, args, me)
                    .await?
                    .0
                    .get_id()
            }
            Child::Peer => {
                let args = PeerArgs {
                    me: p.incarnation(),
                    store: p.store.clone(),
                    dispatcher: p.dispatcher.clone(),
                    control: p.control.clone(),
                    cluster: p.cluster.clone(),
                };
                Actor::spawn_linked(None, PeerActor, args, me)
                    .await?
                    .0
                    .get_id()
            }
            Child::Membership => {
                let dispatcher = p.dispatcher.clone();
                let args = MembershipArgs {
                    settings: p.settings.clone(),
                    node: p.node.clone(),
                    generation: p.generation,
                    store: p.store.clone(),
                    cluster: p.cluster.clone(),
                    leaving: p.leaving.clone(),
                    sessions: p.metrics.sessions(),
                    on_failover: Box::new(move || {
                        dispatcher.cast(DispatcherMsg::Sweep);
                    }),
                    worker_settings: {
                        let workers = p.workers.clone();
                        Box::new(move || {
                            let current = workers.current();
                            let described: std::collections::BTreeMap<_, _> = current
                                .entries()
                                .map(|e| (e.name.clone(), e.described()))
                                .collect();
                            serde_json::to_value(described).unwrap_or_default()
                        })
                    },
                };
                let (actor, _) = Actor::spawn_linked(None, Membership, args, me).await?;
                p.membership.set(Some(actor.clone()));
                actor.get_id()
            }
            Child::Ingress => {
                let args = IngressArgs {
                    settings: p.settings.clone(),
                    node: p.node.clone(),
                    generation: p.generation,
                    store: p.store.clone(),
                    saver: p.saver.clone(),
                    workers: p.workers.clone(),
                    cluster: p.cluster.clone(),
                    dispatcher: p.dispatcher.clone(),
                    schedule: p.schedule.clone(),
                    control: p.control.clone(),
                    metrics: p.metrics.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Ingress, args, me).await?;
                p.ingress.set(Some(actor.clone()));
                actor.get_id()
            }
            Child::Http => {
                let Some(listener) = &p.http else {
                    return Ok(());
                };
                let args = HttpArgs {
                    listener: listener.clone(),
                    client: Client::with_store(p.store.clone(), &p.settings),
                    cluster: p.cluster.clone(),
                    settings: p.settings.clone(),
                    node: p.node.clone(),
                    metrics: p.metrics.clone(),
                };
                Actor::spawn_linked(None, Http, args, me).await?.0.get_id()
            }
            Child::Socket => {
                let Some(sockets) = &p.socket else {
                    return Ok(());
                };
                let args = SocketArgs {
                    sockets: sockets.clone(),
                    store: p.store.clone(),
                    saver: p.saver.clone(),
                    settings: p.settings.clone(),
                    node: p.node.clone(),
                    metrics: p.metrics.clone(),
                };
                Actor::spawn_linked(None, Socket, args, me)
                    .await?
                    .0
                    .get_id()
            }
        };
        self.children.insert(id, child);
        Ok(())
    }

    fn unlink(&self, child: Child) {
        let p = &self.args.parts;
        match child {
            Child::Saver
            | Child::Archiver
            | Child::Scheduler
            | Child::Peer
            | Child::Http
            | Child::Socket => {}
            Child::Membership => p.membership.set(None),
            Child::Dispatcher => p.dispatcher.set(None),
            Child::Ingress => p.ingress.set(None),
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
                let _ = self.args.parts.stop.send(StopReason::GaveUp(reason));
            }
        }
    }
}
