//! The cluster: gossip membership (chitchat over UDP), the ractor_cluster link between nodes
//! (TCP, cookie-authenticated, TLS optional), heartbeats, failover of dead nodes, and the peer
//! actor that receives what other nodes send.
//!
//! Each node gossips its cluster address and the load of each of its worker types. The
//! membership loop ([`Membership`]) turns the gossip view into a full mesh of ractor_cluster
//! sessions, reconnecting with backoff, and pings every peer over its session: a peer that stops
//! answering (a paused process, a hung host) has its session closed, since ractor_cluster itself
//! never notices. The peers that answer form the [`View`] placement uses.
//!
//! Failover: a member (in `{prefix}:members`) that is not in the view is failed over once its
//! liveness lease in Redis has expired: any survivor runs the hand-back script guarded by that
//! lease, which moves its owned tasks back to the pending sets with new epochs, then tells every
//! node to sweep. Redis is the arbiter: a node cut off from its peers but still renewing its
//! lease keeps its tasks, so a partition between nodes moves nothing.
//!
//! Peers find each other's [`PeerActor`] through the process group `bgnode.peer.{id}`.

pub mod codec;
pub mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::wire::{Body, ControlOp, Envelope, Handed, PeerMsg};
use crate::decide::placement::{Load, NodeLoad};
use crate::engine::dispatcher::DispatcherMsg;
use crate::engine::supervisor::{NodeContext, StopReason, watch_task};

/// How often peers are pinged and the view refreshed.
pub const TICK: Duration = Duration::from_millis(250);
/// A peer that has not answered a ping for this long is cut off.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a request to a peer may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest frame accepted from a peer.
pub const MAX_FRAME: u64 = 8 << 20;

/// A peer as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    /// Its incarnation.
    pub generation: u64,
    /// Its cluster address.
    pub addr: String,
    /// Load of each worker type it offers.
    pub load: NodeLoad,
    /// It is shutting down: send it nothing new.
    pub leaving: bool,
}

/// The peers this node can reach (answering heartbeats), by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Reachable peers.
    pub peers: BTreeMap<String, PeerInfo>,
}

/// The shared face of the cluster: the current view, and sending to peers.
#[derive(Debug)]
pub struct ClusterHandle {
    node: String,
    view: RwLock<View>,
}

impl ClusterHandle {
    /// The handle of node `node`, with an empty view.
    pub fn new(node: &str) -> ClusterHandle {
        ClusterHandle {
            node: node.to_owned(),
            view: RwLock::new(View::default()),
        }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_view(&self, view: View) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Reachable peers that offer `worker`, with their load of it (leaving ones excluded).
    pub fn peers_offering(&self, worker: &str) -> Vec<(String, Load)> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.peers
            .iter()
            .filter(|(_, p)| !p.leaving)
            .filter_map(|(id, p)| p.load.get(worker).map(|l| (id.clone(), *l)))
            .collect()
    }

    /// True when some reachable peer offers `worker`.
    pub fn offered_by_peer(&self, worker: &str) -> bool {
        !self.peers_offering(worker).is_empty()
    }

    fn peer_ref(node: &str) -> Option<ActorRef<PeerMsg>> {
        ractor::pg::get_members(&group(node))
            .into_iter()
            .find(|c| !c.get_id().is_local())
            .map(ActorRef::<PeerMsg>::from)
    }

    /// Sends `body` to `node`; false when it cannot be reached.
    pub fn send(&self, node: &str, body: Body) -> bool {
        let Some(peer) = Self::peer_ref(node) else {
            return false;
        };
        match Envelope::new(&self.node, body).to_bytes() {
            Ok(bytes) => peer.cast(PeerMsg::Cast(bytes)).is_ok(),
            Err(e) => {
                tracing::error!("cannot encode a message to {node}: {e}");
                false
            }
        }
    }

    /// Sends `body` to every reachable peer.
    pub fn broadcast(&self, body: &Body) {
        for node in self.view().peers.keys() {
            self.send(node, body.clone());
        }
    }

    /// Asks `node` and waits for its answer.
    pub async fn call(&self, node: &str, body: Body, timeout: Duration) -> Result<Body, String> {
        let peer = Self::peer_ref(node).ok_or_else(|| format!("node {node} is not reachable"))?;
        let bytes = Envelope::new(&self.node, body)
            .to_bytes()
            .map_err(|e| e.to_string())?;
        let reply = ractor::call_t!(peer, PeerMsg::Call, timeout.as_millis() as u64, bytes)
            .map_err(|e| format!("node {node} did not answer: {e}"))?;
        Envelope::from_bytes(&reply)
            .map(|e| e.body)
            .map_err(|e| format!("bad answer from {node}: {e}"))
    }
}

/// The process group of a node's peer actor.
pub fn group(node: &str) -> String {
    format!("bgnode.peer.{node}")
}

/// A short, stable hash of the cookie: the gossip cluster id and the Redis cookie check. The
/// cookie itself is never stored or gossiped.
pub fn cookie_hash(cookie: &str) -> String {
    let digest = Sha256::digest(format!("bgnode-cookie-v1:{cookie}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The peer actor: receives what other nodes send and hands it to the local actors.
pub struct PeerActor;

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = Arc<NodeContext>;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Arc<NodeContext>, ActorProcessingErr> {
        ractor::pg::join(group(&ctx.node), vec![myself.get_cell()]);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMsg>,
        msg: PeerMsg,
        ctx: &mut Arc<NodeContext>,
    ) -> Result<(), ActorProcessingErr> {
        let (bytes, reply) = match msg {
            PeerMsg::Cast(bytes) => (bytes, None),
            PeerMsg::Call(bytes, reply) => (bytes, Some(reply)),
        };
        let env = match Envelope::from_bytes(&bytes) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!("dropped a message from a peer: {e}");
                return Ok(());
            }
        };
        // Requests are answered from a task so a slow answer never blocks this actor.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let answer = receive(&ctx, env).await;
            if let (Some(reply), Some(body)) = (reply, answer) {
                match Envelope::new(&ctx.node, body).to_bytes() {
                    Ok(bytes) => {
                        let _ = reply.send(bytes);
                    }
                    Err(e) => tracing::error!("cannot encode an answer: {e}"),
                }
            }
        });
        Ok(())
    }
}

/// Acts on a message from a peer; returns the answer of a request.
async fn receive(ctx: &NodeContext, env: Envelope) -> Option<Body> {
    let from = env.from;
    match env.body {
        Body::Ping => Some(Body::Pong),
        Body::Wake { worker } => {
            ctx.dispatcher.cast(DispatcherMsg::Wake(worker));
            None
        }
        Body::Sweep => {
            ctx.dispatcher.cast(DispatcherMsg::Sweep);
            None
        }
        Body::Handoff { tasks } => {
            let ids = adopt(ctx, &from, tasks).await;
            Some(Body::Adopted { ids })
        }
        Body::Steal { worker, n } => {
            ctx.dispatcher.cast(DispatcherMsg::Steal {
                worker,
                n: n as usize,
                thief: from,
            });
            None
        }
        Body::Control { op } => Some(control(ctx, op, &from).await),
        Body::Pong | Body::Adopted { .. } | Body::Ack { .. } => None,
    }
}

/// Adopts tasks `from` hands over; returns the ids now owned here.
pub async fn adopt(ctx: &NodeContext, from: &str, tasks: Vec<Handed>) -> Vec<String> {
    let handed: Vec<(String, u64)> = tasks.into_iter().map(|t| (t.id, t.epoch)).collect();
    match ctx.store.adopt(from, &ctx.node, &handed).await {
        Ok(adopted) => {
            let ids = adopted.iter().map(|t| t.id.clone()).collect();
            if !adopted.is_empty() {
                ctx.dispatcher.cast(DispatcherMsg::Push(adopted));
            }
            ids
        }
        Err(e) => {
            tracing::warn!("cannot adopt tasks from {from}: {e}");
            Vec::new()
        }
    }
}

/// Carries out a control operation on this node.
pub async fn control(ctx: &NodeContext, op: ControlOp, from: &str) -> Body {
    match op {
        ControlOp::Stop => {
            tracing::info!("stop requested (via {from})");
            let _ = ctx
                .stop
                .send(StopReason::Requested(format!("stop requested via {from}")));
            Body::Ack {
                ok: true,
                message: format!("{} is stopping", ctx.node),
            }
        }
        ControlOp::Reload => {
            let registry =
                crate::workers::registry::Registry::build(&ctx.rust_workers, &ctx.settings);
            for note in &registry.notes {
                tracing::warn!("{note}");
            }
            let names = registry.names().join(", ");
            ctx.set_registry(registry);
            ctx.dispatcher.cast(DispatcherMsg::Reload);
            tracing::info!(workers = %names, "reloaded workers (via {from})");
            Body::Ack {
                ok: true,
                message: format!("{} reloaded: {names}", ctx.node),
            }
        }
    }
}

/// Events from the node server, forwarded to the membership loop.
enum SessionEvent {
    Ready(NodeServerSessionInformation),
    Down(NodeServerSessionInformation),
}

struct Subscription(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Down(ses));
    }
    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Ready(ses));
    }
}

/// The membership actor: owns the node server, the gossip, the peer actor and the loop.
pub struct Membership;

/// What the membership actor needs.
pub struct MembershipArgs {
    /// Shared node state.
    pub ctx: Arc<NodeContext>,
}

/// Its state.
pub struct MembershipState {
    server: ActorRef<NodeServerMessage>,
    peer: ActorRef<PeerMsg>,
    chitchat: Arc<ChitchatHandle>,
    task: JoinHandle<()>,
}

/// Messages to the membership actor.
pub enum MembershipMsg {
    /// The loop ended unexpectedly.
    LoopDied(String),
    /// Gossip that this node is leaving, and answer.
    Leaving(RpcReplyPort<()>),
}

impl ractor::Message for MembershipMsg {}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let ctx = args.ctx;
        let s = &ctx.settings;
        let listen = s.listen_addr().ok_or("node.listen is not host:port")?;
        let advertise = s
            .advertise_addr()
            .ok_or("node.advertise is not host:port")?;
        let encryption = match crate::cluster::tls::acceptor(s)? {
            Some(acceptor) => IncomingEncryptionMode::Tls(acceptor),
            None => IncomingEncryptionMode::Raw,
        };
        let server = NodeServer::new(
            listen.port(),
            s.node.cookie.clone(),
            ctx.node.clone(),
            advertise.ip().to_string(),
            Some(encryption),
            None,
        )
        .with_listen_addr(listen.ip())
        .with_max_inbound_frame_size(MAX_FRAME);
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell())
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "bgnode-membership".into(),
            subscription: Box::new(Subscription(events_tx)),
        })?;
        let (peer, _) =
            Actor::spawn_linked(None, PeerActor, ctx.clone(), myself.get_cell()).await?;
        let chitchat = Arc::new(spawn_gossip(&ctx, listen, advertise).await?);
        let task = watch_task(
            run(ctx.clone(), server.clone(), chitchat.clone(), events_rx),
            myself,
            MembershipMsg::LoopDied,
        );
        tracing::info!(%listen, %advertise, tls = s.tls(), "cluster link listening");
        Ok(MembershipState {
            server,
            peer,
            chitchat,
            task,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        let _ = state.chitchat.initiate_shutdown();
        state.peer.stop(None);
        state.server.stop(None);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::LoopDied(why) => Err(format!("membership loop died: {why}").into()),
            MembershipMsg::Leaving(reply) => {
                state
                    .chitchat
                    .with_chitchat(|c| c.self_node_state().set("leaving", "1"))
                    .await;
                let _ = reply.send(());
                Ok(())
            }
        }
    }
}

async fn spawn_gossip(
    ctx: &NodeContext,
    listen: SocketAddr,
    advertise: SocketAddr,
) -> Result<ChitchatHandle, ActorProcessingErr> {
    let s = &ctx.settings;
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(ctx.node.clone(), ctx.generation, advertise),
        cluster_id: format!("bgnode-{}", cookie_hash(&s.node.cookie)),
        gossip_interval: Duration::from_millis(200),
        listen_addr: listen,
        seed_nodes: s.node.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1_000,
            max_interval: Duration::from_secs(2),
            initial_interval: Duration::from_millis(400),
            dead_node_grace_period: Duration::from_secs(3_600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3_600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let initial = vec![
        ("addr".to_owned(), advertise.to_string()),
        ("load".to_owned(), "{}".to_owned()),
    ];
    chitchat::spawn_chitchat(config, initial, &UdpTransport)
        .await
        .map_err(|e| format!("cannot start gossip on {listen} (udp): {e}").into())
}

/// Per-peer bookkeeping of the membership loop.
#[derive(Default)]
struct Link {
    session: Option<NodeServerSessionInformation>,
    last_pong: Option<Instant>,
    next_connect: Option<Instant>,
    backoff: Duration,
    seen_since: Option<Instant>,
}

async fn run(
    ctx: Arc<NodeContext>,
    server: ActorRef<NodeServerMessage>,
    chitchat: Arc<ChitchatHandle>,
    mut events: mpsc::UnboundedReceiver<SessionEvent>,
) {
    let (pong_tx, mut pongs) = mpsc::unbounded_channel::<String>();
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    let mut last_load = String::new();
    let mut last_info = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(event) = events.recv() => {
                on_session_event(&mut links, event);
                continue;
            }
            Some(node) = pongs.recv() => {
                links.entry(node).or_default().last_pong = Some(Instant::now());
                continue;
            }
        }
        // Our own load, gossiped when it changes.
        let load = own_load(&ctx).await;
        *ctx.load.write().unwrap_or_else(|e| e.into_inner()) = load.clone();
        let load_text = serde_json::to_string(&load).unwrap_or_else(|_| "{}".into());
        if load_text != last_load {
            let text = load_text.clone();
            chitchat
                .with_chitchat(|c| c.self_node_state().set("load", text.clone()))
                .await;
            last_load = load_text;
        }
        // Who gossip says is alive.
        let gossip: BTreeMap<String, PeerInfo> = chitchat
            .with_chitchat(|c| {
                let live: Vec<ChitchatId> = c.live_nodes().cloned().collect();
                live.into_iter()
                    .filter(|id| *id.node_id != *ctx.node)
                    .filter_map(|id| {
                        let state = c.node_state(&id)?;
                        let addr = state.get("addr")?.to_owned();
                        let load: NodeLoad =
                            serde_json::from_str(state.get("load").unwrap_or("{}")).ok()?;
                        Some((
                            id.node_id.to_string(),
                            PeerInfo {
                                generation: id.generation_id,
                                addr,
                                load,
                                leaving: state.get("leaving").is_some(),
                            },
                        ))
                    })
                    .collect()
            })
            .await;
        let now = Instant::now();
        for (node, info) in &gossip {
            let link = links.entry(node.clone()).or_default();
            link.seen_since.get_or_insert(now);
            if link.session.is_none() && link.next_connect.is_none_or(|t| now >= t) {
                // The smaller id dials; the other waits a little, then dials too.
                let dial = ctx.node < *node
                    || now.duration_since(link.seen_since.unwrap_or(now)) > Duration::from_secs(2);
                if dial {
                    link.backoff = (link.backoff * 2)
                        .clamp(Duration::from_millis(200), Duration::from_secs(5));
                    link.next_connect = Some(now + link.backoff);
                    connect(&ctx, &server, node.clone(), info.addr.clone());
                }
            }
        }
        // Heartbeats; a peer that stopped answering is cut off.
        let mut view = View::default();
        for (node, link) in links.iter_mut() {
            let Some(session) = &link.session else {
                continue;
            };
            let fresh = link
                .last_pong
                .is_some_and(|t| now.duration_since(t) < HEARTBEAT_TIMEOUT);
            if !fresh && link.last_pong.is_some() {
                tracing::warn!(peer = %node, "no heartbeat for {HEARTBEAT_TIMEOUT:?}; closing the session");
                session.actor.stop(Some("heartbeat timeout".into()));
                link.session = None;
                link.last_pong = None;
                continue;
            }
            ping(&ctx, node.clone(), pong_tx.clone());
            if fresh && let Some(info) = gossip.get(node) {
                view.peers.insert(node.clone(), info.clone());
            }
        }
        if view != ctx.cluster.view() {
            let members: Vec<&String> = view.peers.keys().collect();
            tracing::debug!(?members, "cluster view changed");
            ctx.cluster.set_view(view);
        }
        fail_over(&ctx).await;
        if now.duration_since(last_info) >= Duration::from_secs(1) {
            last_info = now;
            write_info(&ctx, &load).await;
        }
    }
}

fn on_session_event(links: &mut HashMap<String, Link>, event: SessionEvent) {
    let name = |ses: &NodeServerSessionInformation| {
        ses.peer_name
            .as_ref()
            .map(|n| n.name.split('@').next().unwrap_or_default().to_owned())
    };
    match event {
        SessionEvent::Ready(ses) => {
            if let Some(node) = name(&ses) {
                tracing::info!(peer = %node, addr = %ses.peer_addr, "cluster session ready");
                let link = links.entry(node).or_default();
                link.session = Some(ses);
                link.last_pong = Some(Instant::now());
                link.backoff = Duration::ZERO;
                link.next_connect = None;
            }
        }
        SessionEvent::Down(ses) => {
            if let Some(node) = name(&ses)
                && let Some(link) = links.get_mut(&node)
                && link
                    .session
                    .as_ref()
                    .is_some_and(|s| s.actor.get_id() == ses.actor.get_id())
            {
                tracing::warn!(peer = %node, "cluster session closed");
                link.session = None;
                link.last_pong = None;
            }
        }
    }
}

fn connect(
    ctx: &Arc<NodeContext>,
    server: &ActorRef<NodeServerMessage>,
    node: String,
    addr: String,
) {
    let server = server.clone();
    let settings = ctx.settings.clone();
    tokio::spawn(async move {
        let result = match crate::cluster::tls::connector(&settings) {
            Ok(Some(connector)) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_owned();
                match rustls_pki_types::ServerName::try_from(host) {
                    Ok(name) => {
                        ractor_cluster::client_connect_enc(&server, addr.as_str(), connector, name)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(None) => ractor_cluster::client_connect(&server, addr.as_str())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(peer = %node, %addr, "cannot connect yet: {e}");
        }
    });
}

fn ping(ctx: &Arc<NodeContext>, node: String, pongs: mpsc::UnboundedSender<String>) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Ok(Body::Pong) = ctx.cluster.call(&node, Body::Ping, HEARTBEAT_TIMEOUT).await {
            let _ = pongs.send(node);
        }
    });
}

async fn own_load(ctx: &NodeContext) -> NodeLoad {
    let Some(d) = ctx.dispatcher.get() else {
        return NodeLoad::new();
    };
    ractor::call_t!(d, DispatcherMsg::Stats, 500)
        .unwrap_or_default()
        .into_iter()
        .map(|l| {
            (
                l.worker,
                Load {
                    capacity: l.capacity as u32,
                    running: l.running as u32,
                    queued: l.queued as u32,
                },
            )
        })
        .collect()
}

/// Fails over every member that is not in the view and whose lease has expired.
async fn fail_over(ctx: &NodeContext) {
    let view = ctx.cluster.view();
    let members = match ctx.store.members().await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("cannot read the members ({e})");
            return;
        }
    };
    let gone: Vec<String> = members
        .into_iter()
        .filter(|m| *m != ctx.node && !view.peers.contains_key(m))
        .collect();
    if gone.is_empty() {
        return;
    }
    let Ok(alive) = ctx.store.alive(&gone).await else {
        return;
    };
    for (node, alive) in gone.iter().zip(alive) {
        if alive {
            continue;
        }
        let started = Instant::now();
        match ctx.store.failover(node).await {
            Ok(Some(moved)) => {
                let left = ctx.store.leave(node).await.unwrap_or(false);
                if moved > 0 || left {
                    tracing::warn!(
                        peer = %node,
                        moved,
                        "failed over node {node}: it left the view and its lease expired; {moved} tasks handed back in {:?}",
                        started.elapsed()
                    );
                    ctx.cluster.broadcast(&Body::Sweep);
                    ctx.dispatcher.cast(DispatcherMsg::Sweep);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(peer = %node, "failover of {node} failed ({e}); retrying"),
        }
    }
}

async fn write_info(ctx: &NodeContext, load: &NodeLoad) {
    let view = ctx.cluster.view();
    let info = serde_json::json!({
        "id": ctx.node,
        "generation": ctx.generation,
        "addr": ctx.settings.advertise_addr().map(|a| a.to_string()),
        "workers": load,
        "peers": view.peers.keys().collect::<Vec<_>>(),
        "leaving": ctx.leaving.load(std::sync::atomic::Ordering::SeqCst),
        "ts": crate::model::task::now_ms(),
    });
    let ttl = ctx.settings.node.lease_ttl * 2;
    if let Err(e) = ctx
        .store
        .write_info(&ctx.node, &info.to_string(), ttl)
        .await
    {
        tracing::debug!("cannot write node info ({e})");
    }
}
