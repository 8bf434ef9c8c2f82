//! The ingress: the subscription to the task channel, held by one node at a time.
//!
//! A node subscribes only while it holds the ingress lease (`{prefix}:ingress`, a short TTL
//! renewed at a third of it), so a raw `PUBLISH` reaches exactly one node, or none: Redis answers
//! 1 when the cluster took the message and 0 when nobody listened. When the holder dies the lease
//! expires and another node takes it within the TTL.
//!
//! Messages are read in batches (whatever has arrived, up to 512). Each is size-checked and
//! validated ([`crate::model::envelope`]); a refused one is logged and announced as a `rejected` event
//! and does not affect its neighbours. Valid raw tasks are stored with the same atomic script
//! the client uses (record + pending entry; an id that exists is not stored again), then the
//! dispatcher is woken. Wake notices from the durable path only wake the dispatcher.
//!
//! After every (re)subscription the dispatcher sweeps the pending sets, so a task whose wake
//! was published while no one listened is still claimed.
//!
//! Independently of the lease, every node listens on its own control channel
//! (`{channel}:node:{id}`), where cancellations of the tasks it holds arrive, and the pauses and
//! resumptions of worker types.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cluster::handle::{CALL_TIMEOUT, ClusterHandle};
use crate::cluster::wire::{Body, ControlOp};
use crate::config::Settings;
use crate::decide::backoff::Backoff;
use crate::decide::placement::{Load, Target as Place, place};
use crate::engine::control::Control;
use crate::engine::dispatcher::DispatcherMsg;
use crate::engine::saver::SaverHandle;
use crate::metrics::Metrics;
use crate::model::envelope::{ChannelMessage, Rejection, parse_message};
use crate::model::events;
use crate::model::task::{Target, TaskSpec};
use crate::store::{Accepted, Lease, Store, WriteOp};
use crate::wiring::{Link, watch_task};
use crate::workers::registry::LiveRegistry;

/// Most messages handled in one batch.
pub(crate) const BATCH: usize = 512;

/// The ingress actor.
pub(crate) struct Ingress;

/// What the ingress needs.
pub(crate) struct IngressArgs {
    /// The channel, lease time, message limit and key limit.
    pub(crate) settings: Settings,
    /// This node's id.
    pub(crate) node: String,
    /// This incarnation (the lease holder is `node:generation`).
    pub(crate) generation: u64,
    /// The lease, the subscriptions and the enqueue script.
    pub(crate) store: Store,
    /// Where `rejected` events are written.
    pub(crate) saver: SaverHandle,
    /// The worker types this node offers.
    pub(crate) workers: Arc<LiveRegistry>,
    /// The peers: who offers what, how busy they are, and sending them wakes.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// The local dispatcher, woken for tasks placed here.
    pub(crate) dispatcher: Arc<Link<DispatcherMsg>>,
    /// Wakes the scheduler when something was scheduled.
    pub(crate) schedule: Arc<Notify>,
    /// Carries out `stop` and `reload` addressed to this node.
    pub(crate) control: Arc<Control>,
    /// Where the raw tasks it stores are counted (`accepted`).
    pub(crate) metrics: Metrics,
}

impl IngressArgs {
    fn holder(&self) -> String {
        format!("{}:{}", self.node, self.generation)
    }

    /// This node's load of `worker`, if it offers it.
    fn local_load(&self, worker: &str) -> Option<Load> {
        let entry = self.workers.get(worker)?;
        Some(
            self.cluster
                .own_load()
                .get(worker)
                .copied()
                .unwrap_or(Load {
                    capacity: entry.concurrency,
                    running: 0,
                    queued: 0,
                }),
        )
    }
}

/// The ingress state: the listener tasks and their stop switch.
pub(crate) struct IngressState {
    listener: Option<JoinHandle<()>>,
    control: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Messages to the ingress.
pub(crate) enum IngressMsg {
    /// Unsubscribe, give up the lease, and answer.
    Stop(RpcReplyPort<()>),
    /// The listener task ended unexpectedly.
    ListenerDied(String),
}

impl ractor::Message for IngressMsg {}

impl Actor for Ingress {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = IngressArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IngressMsg>,
        args: IngressArgs,
    ) -> Result<IngressState, ActorProcessingErr> {
        let (stop, stop_rx) = watch::channel(false);
        let args = Arc::new(args);
        let control = watch_task(
            control(args.clone()),
            myself.clone(),
            IngressMsg::ListenerDied,
        );
        let listener = watch_task(listen(args, stop_rx), myself, IngressMsg::ListenerDied);
        Ok(IngressState {
            listener: Some(listener),
            control,
            stop,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IngressMsg>,
        state: &mut IngressState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(listener) = state.listener.take() {
            listener.abort();
        }
        state.control.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<IngressMsg>,
        msg: IngressMsg,
        state: &mut IngressState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IngressMsg::Stop(reply) => {
                let _ = state.stop.send(true);
                if let Some(listener) = state.listener.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), listener).await;
                }
                let _ = reply.send(());
                Ok(())
            }
            IngressMsg::ListenerDied(_) if state.listener.is_none() => Ok(()),
            IngressMsg::ListenerDied(why) => Err(format!("ingress listener died: {why}").into()),
        }
    }
}

/// The listener: take the lease, subscribe, handle batches, renew; start over on any loss.
async fn listen(ctx: Arc<IngressArgs>, mut stop: watch::Receiver<bool>) {
    let key = ctx.store.keys().ingress();
    let holder = ctx.holder();
    let ttl = ctx.settings.node.lease_ttl;
    let channel = ctx.settings.redis.channel.clone();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut warned = false;
    let mut rng = fastrand::Rng::with_seed(ctx.generation);
    while !*stop.borrow() {
        match ctx.store.lease(&key, &holder, ttl).await {
            Ok(Lease::Renewed | Lease::Taken) => {}
            Ok(Lease::HeldBy(other)) => {
                tracing::debug!("ingress lease held by {other}");
                if wait_or_stop(&mut stop, ttl / 3).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("ingress cannot reach redis ({e}); retrying");
                    warned = true;
                }
                if wait_or_stop(&mut stop, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
        }
        // Whoever subscribed before (a holder frozen while its lease ran out, or this node's
        // own lost connection) is closed first: the channel has one subscriber at most.
        match ctx.store.close_ingress_subscriber().await {
            Ok(Some(closed)) if closed.holder != holder => tracing::warn!(
                previous = %closed.holder,
                unsent_bytes = closed.unsent,
                "closed the subscription of the previous ingress holder, which still had it after its lease ran out"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot close the previous ingress subscription ({e}); retrying");
                if wait_or_stop(&mut stop, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
        }
        let mut sub = match ctx.store.subscribe_ingress(&channel, &holder).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!("ingress cannot subscribe to {channel} ({e}); retrying");
                if wait_or_stop(&mut stop, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        warned = false;
        tracing::info!(channel, "holding the ingress lease; subscribed");
        ctx.dispatcher.cast(DispatcherMsg::Sweep);
        let drain = tokio::spawn(crate::engine::inbox::drain(ctx.clone(), holder.clone()));
        let mut renew = tokio::time::interval(ttl / 3);
        renew.tick().await;
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                msg = sub.next() => {
                    let Some(first) = msg else {
                        tracing::warn!("subscription to {channel} lost; subscribing again");
                        break;
                    };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match sub.ready() {
                            Some(Some(m)) => batch.push(m),
                            _ => break,
                        }
                    }
                    handle_batch(&ctx, &batch, &mut rng).await;
                }
                _ = renew.tick() => {
                    match ctx.store.lease(&key, &holder, ttl).await {
                        Ok(Lease::Renewed | Lease::Taken) => renewed = Instant::now(),
                        Ok(Lease::HeldBy(other)) => {
                            tracing::warn!("lost the ingress lease to {other}; unsubscribing");
                            break;
                        }
                        Err(e) if renewed.elapsed() >= ttl => {
                            tracing::warn!("ingress lease expired while redis was unreachable ({e}); unsubscribing");
                            break;
                        }
                        Err(_) => {}
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Wherever the drain was, its messages are in the processing list for the next holder.
        drain.abort();
        // What Redis delivered while this node was the subscriber is stored, lease or not:
        // Redis counted it as taken (`PUBLISH` answered 1) and no other node received it.
        let rest = sub.close(Duration::from_secs(2)).await;
        if !rest.is_empty() {
            tracing::info!(
                messages = rest.len(),
                "storing what arrived before the subscription ended"
            );
            for chunk in rest.chunks(BATCH) {
                handle_batch(&ctx, chunk, &mut rng).await;
            }
        }
    }
    if let Err(e) = ctx.store.unlease(&key, &holder).await {
        tracing::debug!("could not drop the ingress lease ({e}); it expires by itself");
    }
}

/// Listens on this node's control channel for as long as the node runs: cancellations, and
/// wakes relayed through Redis by nodes that cannot reach this one over the cluster link.
async fn control(ctx: Arc<IngressArgs>) {
    let channel = ctx.store.control_channel(&ctx.node);
    let mut backoff = Backoff::default();
    loop {
        let subscribed = async {
            let mut pubsub = ctx.store.client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match subscribed.await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("control channel not subscribed yet ({e})");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let limit = ctx.settings.limits.message_bytes as usize;
            match parse_message(msg.get_payload_bytes(), limit) {
                Ok(ChannelMessage::Cancel { id }) => {
                    tracing::info!(task = %id, "cancellation requested");
                    ctx.dispatcher.cast(DispatcherMsg::Cancel(id));
                }
                // A wake relayed through Redis by a node whose links cannot reach this one.
                Ok(ChannelMessage::Wake { worker, .. }) => {
                    ctx.dispatcher.cast(DispatcherMsg::Wake(worker));
                }
                Ok(ChannelMessage::Pause { worker, paused }) => {
                    tracing::info!(
                        worker,
                        "worker {} cluster-wide",
                        if paused { "paused" } else { "resumed" }
                    );
                    ctx.dispatcher
                        .cast(DispatcherMsg::Paused { worker, paused });
                }
                Ok(_) => tracing::debug!("ignored a control message that is not for a node"),
                Err(r) => tracing::warn!("bad control message: {}", r.reason),
            }
        }
    }
}

/// Sleeps `d`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Validates, stores and announces one batch of channel messages.
async fn handle_batch(ctx: &Arc<IngressArgs>, batch: &[Vec<u8>], rng: &mut fastrand::Rng) {
    let limit = ctx.settings.limits.message_bytes as usize;
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut wakes = Wakes::default();
    for payload in batch {
        match parse_message(payload, limit) {
            Ok(ChannelMessage::Wake { worker, node: None }) => {
                wakes.any.insert(worker);
            }
            Ok(ChannelMessage::Wake {
                worker,
                node: Some(node),
            }) => {
                wakes.pinned.insert((worker, node));
            }
            Ok(ChannelMessage::Control { op, node, reply }) => {
                tokio::spawn(relay_control(ctx.clone(), op, node, reply));
            }
            Ok(ChannelMessage::Schedule) => ctx.schedule.notify_one(),
            Ok(ChannelMessage::Cancel { id }) => {
                ctx.dispatcher.cast(DispatcherMsg::Cancel(id));
            }
            Ok(ChannelMessage::Pause { .. }) => {
                tracing::debug!(
                    "ignored a pause notice on the task channel (it goes to the nodes' control channels)"
                );
            }
            Ok(ChannelMessage::Task(spec)) => match admit(ctx, *spec, payload) {
                Ok(spec) => specs.push(spec),
                Err(rejection) => reject(ctx, &rejection),
            },
            Err(rejection) => reject(ctx, &rejection),
        }
    }
    if !specs.is_empty() {
        // Ids are fixed before the first try, so a retried pipeline cannot store a task twice.
        for spec in &mut specs {
            spec.id.get_or_insert_with(crate::model::task::new_task_id);
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        // Given up after 5 s of failures and at least three tries: a process that was paused
        // meanwhile (its first try timing out on resume) still tries again.
        let mut failing_since: Option<Instant> = None;
        let mut tries = 0;
        loop {
            tries += 1;
            match store_tasks(ctx, &specs).await {
                Ok(stored) => {
                    for (spec, (id, accepted)) in specs.iter().zip(&stored) {
                        if let Some(rejection) = wakes.note(ctx, spec, id, *accepted) {
                            reject(ctx, &rejection);
                        }
                    }
                    break;
                }
                Err(e)
                    if tries < 3
                        || failing_since.get_or_insert_with(Instant::now).elapsed()
                            < Duration::from_secs(5) =>
                {
                    tracing::warn!("cannot store {} raw tasks yet ({e}); retrying", specs.len());
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    tracing::error!(
                        "dropped {} raw tasks: redis unreachable for 5s ({e}); raw publishes are at most once",
                        specs.len()
                    );
                    break;
                }
            }
        }
    }
    wakes.send(ctx, rng);
}

/// A task read from a channel or inbox message, made ready to store: `local` resolved to this
/// node, and refused when no node this one knows of offers its worker.
pub(super) fn admit(
    ctx: &IngressArgs,
    mut spec: TaskSpec,
    payload: &[u8],
) -> Result<TaskSpec, Rejection> {
    // `local` means the node that took the message: this one.
    spec.target = spec.target.resolve(&ctx.node);
    if ctx.workers.get(&spec.worker).is_some() || ctx.cluster.offered_by_peer(&spec.worker) {
        return Ok(spec);
    }
    Err(Rejection {
        reason: format!(
            "unknown worker `{}` (offered: {})",
            spec.worker,
            offered(ctx).join(", ")
        ),
        id: spec.id.clone(),
        worker: Some(spec.worker.clone()),
        excerpt: crate::model::names::shorten(&String::from_utf8_lossy(payload), 120),
    })
}

/// Stores tasks (ids already fixed) with the one durable enqueue, and counts them.
pub(super) async fn store_tasks(
    ctx: &IngressArgs,
    specs: &[TaskSpec],
) -> Result<Vec<(String, Accepted)>, crate::store::StoreError> {
    let stored = ctx.store.enqueue_many(specs, false).await?;
    ctx.metrics
        .stored(specs.iter().map(|s| s.worker.as_str()), &stored);
    Ok(stored)
}

/// The wakes a batch calls for: workers whose shared pending sets grew, pinned sets, and
/// broadcasts. Sent once the batch is stored.
#[derive(Default)]
pub(super) struct Wakes {
    any: BTreeSet<String>,
    pinned: BTreeSet<(String, String)>,
    everywhere: BTreeSet<String>,
}

impl Wakes {
    /// Notes what storing `spec` (as `id`) did; returns the rejection of a task refused for its
    /// key's limit.
    pub(super) fn note(
        &mut self,
        ctx: &IngressArgs,
        spec: &TaskSpec,
        id: &str,
        accepted: Accepted,
    ) -> Option<Rejection> {
        match accepted {
            Accepted::Queued => match &spec.target {
                Target::Node(node) => {
                    self.pinned.insert((spec.worker.clone(), node.clone()));
                }
                Target::All => {
                    self.everywhere.insert(spec.worker.clone());
                }
                _ => {
                    self.any.insert(spec.worker.clone());
                }
            },
            Accepted::Scheduled => ctx.schedule.notify_one(),
            Accepted::Deferred => {
                tracing::debug!(task = %id, "deferred: its key is at its limit");
            }
            Accepted::Exists => {
                tracing::debug!(task = %id, "task id already known; message ignored");
            }
            Accepted::Refused => {
                return Some(Rejection {
                    reason: key_full(spec, ctx.settings.keys.limit),
                    id: Some(id.to_owned()),
                    worker: Some(spec.worker.clone()),
                    excerpt: String::new(),
                });
            }
        }
        None
    }

    /// Wakes the nodes placement picks, the pinned tasks' nodes and every node for broadcasts.
    pub(super) fn send(self, ctx: &IngressArgs, rng: &mut fastrand::Rng) {
        for worker in self.any {
            route_wake(ctx, &worker, rng);
        }
        for (worker, node) in self.pinned {
            if node == ctx.node {
                ctx.dispatcher.cast(DispatcherMsg::Wake(worker));
            } else if !ctx.cluster.wake(&node, &worker) {
                tracing::debug!(%node, "a task waits for its node, which is not reachable now");
            }
        }
        for worker in self.everywhere {
            ctx.cluster.wake_everywhere(&worker);
            ctx.dispatcher.cast(DispatcherMsg::Wake(worker));
        }
    }
}

/// Worker names this node or a reachable peer offers.
fn offered(ctx: &IngressArgs) -> Vec<String> {
    let mut names: BTreeSet<String> = ctx.workers.current().names().into_iter().collect();
    for peer in ctx.cluster.view().peers.values() {
        names.extend(peer.load.keys().cloned());
    }
    for load in ctx.cluster.remote().values() {
        names.extend(load.keys().cloned());
    }
    names.into_iter().collect()
}

/// Sends a wake where placement says: here when this node is not busier than the other nodes
/// that offer the worker (reachable peers, and remote members through Redis), else the less busy
/// of two of them.
fn route_wake(ctx: &IngressArgs, worker: &str, rng: &mut fastrand::Rng) {
    let local = ctx.local_load(worker);
    let peers = ctx.cluster.wake_targets(worker);
    match place(local, &peers, rng) {
        Place::Local => {
            ctx.dispatcher.cast(DispatcherMsg::Wake(worker.to_owned()));
        }
        Place::Peer(peer) => {
            if !ctx.cluster.wake(&peer, worker) {
                ctx.dispatcher.cast(DispatcherMsg::Wake(worker.to_owned()));
            }
        }
        Place::Nowhere => tracing::debug!(worker, "no node offers this worker now; tasks wait"),
    }
}

/// Carries a `bgnode stop`/`reload` to its nodes through the cluster and publishes each node's
/// answer on the caller's reply channel.
async fn relay_control(ctx: Arc<IngressArgs>, op: ControlOp, node: Option<String>, reply: String) {
    let targets: Vec<String> = match node {
        Some(n) => vec![n],
        None => std::iter::once(ctx.node.clone())
            .chain(ctx.cluster.view().peers.into_keys())
            .collect(),
    };
    for target in targets {
        let answer = if target == ctx.node {
            ctx.control.apply(op, "bgnode")
        } else {
            match ctx
                .cluster
                .call(&target, Body::Control { op }, CALL_TIMEOUT)
                .await
            {
                Ok(body) => body,
                Err(e) => Body::Ack {
                    ok: false,
                    message: e,
                },
            }
        };
        let (ok, message) = match answer {
            Body::Ack { ok, message } => (ok, message),
            other => (false, format!("unexpected answer {other:?}")),
        };
        let msg = serde_json::json!({"node": target, "ok": ok, "message": message}).to_string();
        if let Err(e) = ctx.store.publish(&reply, &msg).await {
            tracing::warn!("cannot publish the answer of {target}: {e}");
        }
    }
}

/// The message for a task refused because its key is at its limit.
pub(crate) fn key_full(spec: &TaskSpec, limit: u32) -> String {
    format!(
        "key `{}` is at its limit of {limit} pending or running tasks ([keys] limit)",
        spec.key.as_deref().unwrap_or_default()
    )
}

fn reject(ctx: &IngressArgs, rejection: &Rejection) {
    tracing::warn!(
        id = rejection.id.as_deref().unwrap_or("-"),
        "rejected a channel message: {} (message: {})",
        rejection.reason,
        rejection.excerpt
    );
    announce_rejection(ctx, rejection);
}

/// Publishes the `rejected` event of `rejection`.
pub(super) fn announce_rejection(ctx: &IngressArgs, rejection: &Rejection) {
    ctx.saver.write(WriteOp::Event {
        event: events::rejected(rejection, &ctx.node, ctx.store.clock().now_ms()),
    });
}
