//! The membership actor: gossip (chitchat over UDP), the ractor_cluster node server (TCP,
//! cookie-authenticated, TLS optional), heartbeats, and failover of dead nodes.
//!
//! The public cluster port is bound here and served by the guard ([`crate::cluster::guard`]),
//! which admits connections within its limits, does their TLS handshake and hands them to the
//! node server; the node server's own listener is on an ephemeral loopback port. The node
//! server's session events tell the guard which connections have logged in.
//!
//! Each node gossips its cluster address and the load of each of its worker types. The
//! membership loop turns the gossip view into a full mesh of ractor_cluster sessions,
//! reconnecting with backoff, and pings every peer over its session: a peer that stops
//! answering (a paused process, a hung host) has its session closed, since ractor_cluster itself
//! never notices. The peers that answer form the [`View`] placement uses. The loop counts the
//! sessions that became ready and that closed, and how many are ready, in the node's metrics.
//!
//! Failover: a member (in `{prefix}:members`) that is not in the view is failed over once its
//! liveness lease in Redis has expired: any survivor runs the hand-back script guarded by that
//! lease, which moves its owned tasks back to the pending sets with new epochs, then tells every
//! node to sweep. Redis is the arbiter: a node cut off from its peers but still renewing its
//! lease keeps its tasks, so a partition between nodes moves nothing. Such a node is a *remote*
//! member: placement still counts it, from the load its last report in Redis shows, and its
//! wakes go through Redis (`relay_wakes`), so it keeps taking its share.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::guard::Gate;
use crate::cluster::handle::{ClusterHandle, MAX_FRAME, PeerInfo, View, cookie_hash};
use crate::cluster::wire::Body;
use crate::config::Settings;
use crate::decide::backoff::Backoff;
use crate::decide::placement::NodeLoad;
use crate::metrics::SessionMetrics;
use crate::store::{Guard, Store};
use crate::wiring::watch_task;

/// How often peers are pinged and the view refreshed.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// A peer that has not answered a ping for this long is cut off.
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Events from the node server, forwarded to the membership loop.
enum SessionEvent {
    Ready(NodeServerSessionInformation),
    Down(NodeServerSessionInformation),
}

/// The node server's session events: ready and closed sessions go to the membership loop; an
/// incoming session that passed the cookie challenge is marked logged in at the guard (its peer
/// address is the label the guard gave it) in the node server's own turn, before the session
/// is ready for messages. Until then the peer sends only its small first state (the actors and
/// groups it offers), well within the guard's limits for a login.
struct Subscription {
    events: mpsc::UnboundedSender<SessionEvent>,
    gate: Arc<Gate>,
}

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.events.send(SessionEvent::Down(ses));
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if ses.is_server {
            self.gate.logged_in(&ses.peer_addr);
        }
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.events.send(SessionEvent::Ready(ses));
    }
}

/// The membership actor: owns the node server, the gossip and the loop.
pub(crate) struct Membership;

/// What the membership actor needs.
pub(crate) struct MembershipArgs {
    /// Listen and advertised addresses, cookie, seeds, TLS, lease time.
    pub(crate) settings: Settings,
    /// This node's id.
    pub(crate) node: String,
    /// This incarnation (gossiped, so a restarted node is a new member).
    pub(crate) generation: u64,
    /// Members, leases, failover.
    pub(crate) store: Store,
    /// The view this actor keeps current, and this node's load to gossip.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// The node is shutting down (reported in its info).
    pub(crate) leaving: Arc<AtomicBool>,
    /// Where sessions are counted: ready now, opened, closed.
    pub(crate) sessions: SessionMetrics,
    /// Called after this node failed another over: the local dispatcher should sweep.
    pub(crate) on_failover: Box<dyn Fn() + Send + Sync>,
    /// The settings of each worker type this node offers, for its report (`bgnode info`).
    pub(crate) worker_settings: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
}

/// Its state.
pub(crate) struct MembershipState {
    cluster: Arc<ClusterHandle>,
    server: ActorRef<NodeServerMessage>,
    chitchat: Arc<ChitchatHandle>,
    task: JoinHandle<()>,
    duties: JoinHandle<()>,
    relay: JoinHandle<()>,
    /// The guard's accept loop, which owns the public listener.
    guard: JoinHandle<()>,
}

/// Messages to the membership actor.
pub(crate) enum MembershipMsg {
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
        let ctx = Arc::new(args);
        let s = &ctx.settings;
        let listen = s.listen_addr().ok_or("node.listen is not host:port")?;
        let advertise = s
            .advertise_addr()
            .ok_or("node.advertise is not host:port")?;
        let tls = crate::cluster::tls::acceptor(s)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        // The node server listens on loopback only, on a port of its own: every connection from
        // outside comes through the guard. It names itself after its advertised address and the
        // port it got (ractor_cluster tells a self-connection by that name).
        let loopback = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
        let server = NodeServer::new(
            0,
            s.node.cookie.clone(),
            ctx.node.clone(),
            advertise.ip().to_string(),
            Some(IncomingEncryptionMode::Raw),
            None,
        )
        .with_listen_addr(loopback)
        .with_max_inbound_frame_size(MAX_FRAME);
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell())
            .await
            .map_err(|e| format!("cannot start the cluster node server on {loopback}: {e}"))?;
        let gate = Gate::new();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "bgnode-membership".into(),
            subscription: Box::new(Subscription {
                events: events_tx,
                gate: gate.clone(),
            }),
        })?;
        let chitchat = Arc::new(spawn_gossip(&ctx, listen, advertise).await?);
        let task = watch_task(
            run(ctx.clone(), server.clone(), chitchat.clone(), events_rx),
            myself.clone(),
            MembershipMsg::LoopDied,
        );
        let duties = watch_task(
            redis_duties(ctx.clone()),
            myself.clone(),
            MembershipMsg::LoopDied,
        );
        let relay = watch_task(
            relay_wakes(ctx.clone(), ctx.cluster.relayed()),
            myself.clone(),
            MembershipMsg::LoopDied,
        );
        let guard = watch_task(
            crate::cluster::guard::serve(listener, server.clone(), tls, gate),
            myself,
            MembershipMsg::LoopDied,
        );
        tracing::info!(%listen, %advertise, tls = s.tls(), "cluster link listening");
        Ok(MembershipState {
            cluster: ctx.cluster.clone(),
            server,
            chitchat,
            task,
            duties,
            relay,
            guard,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        state.duties.abort();
        state.relay.abort();
        // Wait until the public listener is closed, so that a restarted membership can bind it.
        state.guard.abort();
        let _ = (&mut state.guard).await;
        let _ = state.chitchat.initiate_shutdown();
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
                // Gossip may not reach the peers before the sessions close: tell each one over
                // its session too, and wait (briefly) until it has noted it, so that it takes
                // the close for a leave.
                let peers: Vec<String> = state.cluster.view().peers.into_keys().collect();
                let told = peers.iter().map(|peer| {
                    state
                        .cluster
                        .call(peer, Body::Leaving, Duration::from_millis(500))
                });
                futures::future::join_all(told).await;
                let _ = reply.send(());
                Ok(())
            }
        }
    }
}

async fn spawn_gossip(
    ctx: &MembershipArgs,
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
struct Link {
    session: Option<NodeServerSessionInformation>,
    last_pong: Option<Instant>,
    next_connect: Option<Instant>,
    /// Between dials of a peer with no session: 200 ms doubling to 5 s.
    backoff: Backoff,
    seen_since: Option<Instant>,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            session: None,
            last_pong: None,
            next_connect: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            seen_since: None,
        }
    }
}

async fn run(
    ctx: Arc<MembershipArgs>,
    server: ActorRef<NodeServerMessage>,
    chitchat: Arc<ChitchatHandle>,
    mut events: mpsc::UnboundedReceiver<SessionEvent>,
) {
    let (pong_tx, mut pongs) = mpsc::unbounded_channel::<String>();
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    let mut last_load = String::new();
    // A new loop (the membership restarted) starts with no session.
    ctx.sessions.ready(0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(event) = events.recv() => {
                on_session_event(&ctx, &mut links, event);
                ctx.sessions.ready(links.values().filter(|l| l.session.is_some()).count());
                continue;
            }
            Some(node) = pongs.recv() => {
                links.entry(node).or_default().last_pong = Some(Instant::now());
                continue;
            }
        }
        // Our own load, gossiped when it changes.
        let load = ctx.cluster.own_load();
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
                                leaving: state.get("leaving").is_some()
                                    || ctx.cluster.is_leaving(&id.node_id),
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
                    link.next_connect = Some(now + link.backoff.next_delay());
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
                ctx.sessions.closed();
                link.session = None;
                link.last_pong = None;
                continue;
            }
            ping(&ctx, node.clone(), pong_tx.clone());
            if fresh && let Some(info) = gossip.get(node) {
                view.peers.insert(node.clone(), info.clone());
            }
        }
        ctx.sessions
            .ready(links.values().filter(|l| l.session.is_some()).count());
        if view != ctx.cluster.view() {
            let members: Vec<&String> = view.peers.keys().collect();
            tracing::debug!(?members, "cluster view changed");
            ctx.cluster.set_view(view);
        }
    }
}

/// What the membership does in Redis, on a loop of its own so that a slow or hung Redis never
/// holds back the heartbeats: every [`TICK`] it fails over members that left the view and whose
/// lease expired, and every second it writes this node's report for `bgnode info` and notes the
/// remote members.
///
/// Redis is the arbiter of failover only while it answers: after it was unreachable (or hung),
/// nobody is failed over until a full lease period has passed with Redis answering, so that
/// every member had its chance to renew the lease that lapsed meanwhile.
async fn redis_duties(ctx: Arc<MembershipArgs>) {
    let ttl = ctx.settings.node.lease_ttl;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answering_since = Instant::now().checked_sub(ttl);
    let mut last_info: Option<Instant> = None;
    let mut remote_since = BTreeMap::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let settled = answering_since.is_some_and(|t| now.duration_since(t) >= ttl);
        let answered = fail_over(&ctx, settled).await;
        match (answered, answering_since) {
            (true, None) => {
                tracing::info!("redis answers again; failover waits one lease period");
                answering_since = Some(now);
            }
            (false, Some(_)) => answering_since = None,
            _ => {}
        }
        if last_info.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            last_info = Some(now);
            write_info(&ctx, &ctx.cluster.own_load()).await;
            refresh_remote(&ctx, &mut remote_since).await;
        }
    }
}

fn on_session_event(ctx: &MembershipArgs, links: &mut HashMap<String, Link>, event: SessionEvent) {
    let name = |ses: &NodeServerSessionInformation| {
        ses.peer_name
            .as_ref()
            .map(|n| n.name.split('@').next().unwrap_or_default().to_owned())
    };
    match event {
        SessionEvent::Ready(ses) => {
            if let Some(node) = name(&ses) {
                tracing::info!(peer = %node, addr = %ses.peer_addr, "cluster session ready");
                ctx.cluster.set_leaving(&node, false);
                let link = links.entry(node).or_default();
                ctx.sessions.opened();
                if link.session.is_some() {
                    // A new session in place of one that never reported its close.
                    ctx.sessions.closed();
                }
                link.session = Some(ses);
                link.last_pong = Some(Instant::now());
                link.backoff.reset();
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
                // A close is news only when nobody said it was coming.
                if ctx.cluster.is_leaving(&node) {
                    tracing::info!(peer = %node, "node {node} left the cluster; cluster session closed");
                } else if ctx.leaving.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::debug!(peer = %node, "cluster session closed as this node leaves");
                } else {
                    tracing::warn!(peer = %node, "cluster session closed");
                }
                ctx.sessions.closed();
                link.session = None;
                link.last_pong = None;
            }
        }
    }
}

fn connect(
    ctx: &Arc<MembershipArgs>,
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

fn ping(ctx: &Arc<MembershipArgs>, node: String, pongs: mpsc::UnboundedSender<String>) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Ok(Body::Pong) = ctx.cluster.call(&node, Body::Ping, HEARTBEAT_TIMEOUT).await {
            let _ = pongs.send(node);
        }
    });
}

/// Fails over every member that is not in the view and whose lease has expired, when `allowed`
/// (Redis has answered for a lease period). Returns whether Redis answered.
async fn fail_over(ctx: &MembershipArgs, allowed: bool) -> bool {
    let view = ctx.cluster.view();
    let members = match ctx.store.members().await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("cannot read the members ({e})");
            return false;
        }
    };
    let gone: Vec<String> = members
        .into_iter()
        .filter(|m| *m != ctx.node && !view.peers.contains_key(m))
        .collect();
    if gone.is_empty() || !allowed {
        return true;
    }
    let Ok(alive) = ctx.store.alive(&gone).await else {
        return false;
    };
    for (node, alive) in gone.iter().zip(alive) {
        if alive {
            continue;
        }
        let started = Instant::now();
        match ctx.store.failover(node).await {
            Ok(Some(moved)) => {
                let left = ctx
                    .store
                    .leave(node, Guard::Survivor)
                    .await
                    .unwrap_or(false);
                if moved > 0 || left {
                    tracing::warn!(
                        peer = %node,
                        moved,
                        "failed over node {node}: it left the view and its lease expired; {moved} tasks handed back in {:?}",
                        started.elapsed()
                    );
                    ctx.cluster.broadcast(&Body::Sweep);
                    (ctx.on_failover)();
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(peer = %node, "failover of {node} failed ({e}); retrying"),
        }
    }
    true
}

/// Notes the members this node's links do not reach but whose lease is alive (a partition
/// between nodes), with the worker types and load of their last report, so that wakes reach them
/// through Redis. Left as it was when Redis does not answer.
///
/// A node that just died or just started is briefly such a member too, so one is reported only
/// once it has stayed out of reach for two lease periods (`since` keeps when each was first
/// seen so), and then once.
async fn refresh_remote(ctx: &MembershipArgs, since: &mut BTreeMap<String, (Instant, bool)>) {
    let view = ctx.cluster.view();
    let Ok(members) = ctx.store.members().await else {
        return;
    };
    let out: Vec<String> = members
        .into_iter()
        .filter(|m| *m != ctx.node && !view.peers.contains_key(m))
        .collect();
    let Ok(alive) = ctx.store.alive(&out).await else {
        return;
    };
    let out: Vec<String> = out
        .into_iter()
        .zip(alive)
        .filter_map(|(m, alive)| alive.then_some(m))
        .collect();
    let Ok(infos) = ctx.store.infos(&out).await else {
        return;
    };
    let mut remote = BTreeMap::new();
    for (node, info) in out.into_iter().zip(infos) {
        let Some(info) = info.and_then(|i| serde_json::from_str::<serde_json::Value>(&i).ok())
        else {
            continue;
        };
        if info["leaving"].as_bool() == Some(true) {
            continue;
        }
        if let Ok(load) = serde_json::from_value::<NodeLoad>(info["workers"].clone()) {
            remote.insert(node, load);
        }
    }
    let now = Instant::now();
    let settle = ctx.settings.node.lease_ttl * 2;
    since.retain(|node, (_, told)| {
        let stays = remote.contains_key(node);
        if !stays && *told {
            tracing::info!(peer = %node, "node {node} is reachable over the cluster link again, or gone");
        }
        stays
    });
    for node in remote.keys() {
        let (first, told) = since.entry(node.clone()).or_insert((now, false));
        if !*told && now.duration_since(*first) >= settle {
            *told = true;
            tracing::warn!(
                peer = %node,
                "node {node} renews its lease in redis but the cluster link cannot reach it (a partition?): it gets its wakes through redis meanwhile"
            );
        }
    }
    ctx.cluster.set_remote(remote);
}

/// Publishes the wakes for remote members on their control channels, a batch at a time (a wake
/// asked for twice while the previous batch was being published goes once).
async fn relay_wakes(
    ctx: Arc<MembershipArgs>,
    mut wakes: mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some(first) = wakes.recv().await {
        let mut batch = std::collections::BTreeSet::from([first]);
        while let Ok(more) = wakes.try_recv() {
            batch.insert(more);
        }
        for (node, worker) in batch {
            let message = serde_json::json!({"op": "wake", "worker": worker}).to_string();
            match ctx
                .store
                .publish(&ctx.store.control_channel(&node), &message)
                .await
            {
                // Nobody listens there: the node died and its lease has not expired yet. Send
                // it nothing more until its next report says otherwise; the tasks are taken by
                // the nodes that probe their pending sets.
                Ok(0) => {
                    let mut remote = ctx.cluster.remote();
                    if remote.remove(&node).is_some() {
                        ctx.cluster.set_remote(remote);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%node, "cannot relay a wake through redis ({e})"),
            }
        }
    }
}

async fn write_info(ctx: &MembershipArgs, load: &NodeLoad) {
    let view = ctx.cluster.view();
    let info = serde_json::json!({
        "id": ctx.node,
        "generation": ctx.generation,
        "addr": ctx.settings.advertise_addr().map(|a| a.to_string()),
        "workers": load,
        "settings": (ctx.worker_settings)(),
        "peers": view.peers.keys().collect::<Vec<_>>(),
        "leaving": ctx.leaving.load(std::sync::atomic::Ordering::SeqCst),
        "ts": ctx.store.clock().now_ms(),
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
