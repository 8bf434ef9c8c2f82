//! A node: start-up, the liveness lease, and the graceful shutdown sequence.
//!
//! [`NodeBuilder::run`] is the single entry point: `bgnode start` and the tests call it, and a
//! Rust program embedding a node does the same (or [`NodeBuilder::start`] for a handle).
//!
//! Start-up: connect to Redis; check the cluster cookie against the hash recorded for this key
//! prefix; take this node id's liveness lease (`{prefix}:node:{id}:alive`), waiting out a
//! previous incarnation's lease and refusing to start when another live process renews it;
//! build the worker registry; start the supervisor and its actors; join the members. The HTTP
//! API's address (`[http] listen`) and the socket service's (`[socket] listen`) are bound
//! before all that, so a taken address stops the start at once.
//!
//! Shutdown ([`NodeHandle::shutdown`]), one sequence (a graceful leave):
//! 1. stop intake: tell the peers this node is leaving, the ingress unsubscribes and drops its
//!    lease, the dispatcher stops claiming and starting tasks;
//! 2. hand the queued (not started) tasks back to the pending sets at once and wake the peers,
//!    so they run them while this node finishes its own;
//! 3. let running tasks finish, at most `node.shutdown_timeout`; then stop the dispatcher, which
//!    interrupts what still runs (script process groups are killed);
//! 4. flush the saver, so every result reached Redis;
//! 5. hand every task the node still owns (interrupted ones) back with a new epoch, leave the
//!    members, stop the actor tree and drop the liveness lease.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::client::{Client, ClientError};
use crate::cluster::handle::{ClusterHandle, cookie_hash};
use crate::cluster::membership::MembershipMsg;
use crate::cluster::wire::Body;
use crate::config::Settings;
use crate::decide::backoff::Backoff;
use crate::decide::restart::RestartPolicy;
use crate::engine::control::Control;
use crate::engine::dispatcher::{DispatcherMsg, LaneStats};
use crate::engine::ingress::IngressMsg;
use crate::engine::supervisor::{NodeParts, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::metrics::Metrics;
use crate::model::names::{shorten, validate_worker_name};
use crate::store::{CookieCheck, Guard, Lease, Store, StoreError};
use crate::wiring::{LeaseClock, Link, StopReason};
use crate::workers::registry::LiveRegistry;
use crate::workers::rust::{SharedWorker, Worker, WorkerOptions};

/// Why a node could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Redis could not be reached at start.
    #[error("cannot reach redis at {url}: {source}")]
    Redis {
        /// The configured URL.
        url: String,
        /// The error.
        source: StoreError,
    },
    /// This node's cookie is not the cluster's.
    #[error(
        "the running cluster with redis prefix `{prefix}` (node `{member}` is alive) has another cookie: give this node the cluster's cookie (node.cookie, BGNODE_NODE__COOKIE), or start a separate cluster with another redis.prefix and redis.channel"
    )]
    CookieMismatch {
        /// The key prefix.
        prefix: String,
        /// A live member of that cluster.
        member: String,
    },
    /// Another running cluster (another key prefix) uses the task channel.
    #[error(
        "the task channel `{channel}` on this Redis belongs to another running cluster (redis.prefix `{owner}`): both would run every raw publish; give this cluster its own channel (redis.channel, BGNODE_REDIS__CHANNEL) or stop the other one"
    )]
    ChannelTaken {
        /// The channel.
        channel: String,
        /// The key prefix of the cluster that uses it.
        owner: String,
    },
    /// Another live process uses this node id.
    #[error(
        "another node with id `{id}` is running (its liveness lease is held by {holder}); give this one another id with --id or BGNODE_NODE__ID"
    )]
    DuplicateId {
        /// The id.
        id: String,
        /// The holder of the lease.
        holder: String,
    },
    /// A Rust worker was registered under a name that fails the allowlist.
    #[error("worker `{name}` cannot be registered: {reason}")]
    BadWorkerName {
        /// The name, escaped.
        name: String,
        /// Why.
        reason: String,
    },
    /// The HTTP API's address cannot be listened on.
    #[error(
        "cannot serve the HTTP API on {addr}: {reason} (set another address with http.listen, BGNODE_HTTP__LISTEN or --http; empty turns the API off)"
    )]
    HttpBind {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The socket service's address cannot be listened on.
    #[error(
        "cannot serve the socket service on {addr} (TCP and UDP): {reason} (set another address with socket.listen or BGNODE_SOCKET__LISTEN; empty turns the service off)"
    )]
    SocketBind {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The actor tree could not be started.
    #[error("cannot start the node's actors: {0}")]
    Spawn(String),
    /// The supervisor gave up on a child, or the node lost its identity.
    #[error("node stopped: {0}")]
    Stopped(String),
}

/// Entry point for building a node.
pub struct Node;

impl Node {
    /// A builder for a node with `settings`.
    pub fn builder(settings: Settings) -> NodeBuilder {
        NodeBuilder {
            settings,
            workers: Vec::new(),
            policy: RestartPolicy::default(),
        }
    }
}

/// Configures and starts a node.
pub struct NodeBuilder {
    settings: Settings,
    workers: Vec<(String, SharedWorker, WorkerOptions)>,
    policy: RestartPolicy,
}

impl NodeBuilder {
    /// Registers a Rust worker under `name` with the `[workers]` defaults.
    pub fn worker(self, name: &str, worker: impl Worker) -> NodeBuilder {
        self.worker_with(name, worker, WorkerOptions::default())
    }

    /// Registers a Rust worker with its own options.
    pub fn worker_with(
        mut self,
        name: &str,
        worker: impl Worker,
        opts: WorkerOptions,
    ) -> NodeBuilder {
        self.workers.push((name.to_owned(), Arc::new(worker), opts));
        self
    }

    /// Sets the restart policy of the node's actors.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> NodeBuilder {
        self.policy = policy;
        self
    }

    /// Starts the node and returns its handle. The node's supervisor is a root actor; a host
    /// program built on ractor may prefer [`NodeBuilder::start_linked`].
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        self.launch(None).await
    }

    /// Starts the node with its supervisor as a linked child of `parent`, an actor of a host
    /// program built on ractor. The parent then receives a supervision event when the node's
    /// actor tree stops or fails ([`NodeHandle::actor`] tells which cell is the node's), and
    /// decides what follows, as for any of its children. The node is still shut down
    /// gracefully with [`NodeHandle::shutdown`].
    pub async fn start_linked(self, parent: ActorCell) -> Result<NodeHandle, NodeError> {
        self.launch(Some(parent)).await
    }

    async fn launch(self, parent: Option<ActorCell>) -> Result<NodeHandle, NodeError> {
        let NodeBuilder {
            settings,
            workers,
            policy,
        } = self;
        for (name, _, _) in &workers {
            validate_worker_name(name).map_err(|e| NodeError::BadWorkerName {
                name: shorten(name, 40),
                reason: e.to_string(),
            })?;
        }
        // Bound first: an address that is taken or forbidden stops the start before anything
        // is done in the cluster's name.
        let http = match settings.http_addr() {
            Some(addr) => Some(Arc::new(crate::http::bind(addr).map_err(|e| {
                NodeError::HttpBind {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            })?)),
            None => None,
        };
        let socket = match settings.socket_addr() {
            Some(addr) => Some(Arc::new(crate::socket::bind(addr).map_err(|e| {
                NodeError::SocketBind {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            })?)),
            None => None,
        };
        let metrics = Metrics::new();
        let store = connect(&settings).await?.counted(metrics.redis());
        let node = settings.node.id.clone();
        // Redis's time, so that a later incarnation has a later generation whatever the clocks
        // of the hosts it ran on.
        let generation = store.clock().now_ms();
        let holder = format!("{node}:{generation}");
        let redis_error = |source| NodeError::Redis {
            url: settings.redis_url_shown(),
            source,
        };
        match store
            .check_cookie(&cookie_hash(&settings.node.cookie))
            .await
            .map_err(redis_error)?
        {
            CookieCheck::Same => {}
            CookieCheck::Replaced => tracing::warn!(
                prefix = %settings.redis.prefix,
                "the cluster's recorded cookie was another one, but none of its nodes is running: this node's cookie is the cluster's now"
            ),
            CookieCheck::Other { member } => {
                return Err(NodeError::CookieMismatch {
                    prefix: settings.redis.prefix.clone(),
                    member,
                });
            }
        }
        if let Some(owner) = store.claim_channel().await.map_err(redis_error)? {
            return Err(NodeError::ChannelTaken {
                channel: settings.redis.channel.clone(),
                owner,
            });
        }
        take_identity(&store, &settings, &holder).await?;
        let level = settings.redis.event_level;
        let was = store.set_event_level(level).await.map_err(redis_error)?;
        if was != level {
            tracing::info!(
                "the cluster's events are now `{}` (were `{}`): redis.event_level holds for every node and every enqueue",
                level.as_str(),
                was.as_str()
            );
        }
        if settings.uses_development_cookie() {
            tracing::warn!(
                "!!! this node uses the built-in development cookie: anyone who can reach {} can join the cluster; set node.cookie",
                settings.node.listen
            );
        }
        let workers = Arc::new(LiveRegistry::new(workers, &settings));
        tracing::info!(
            node,
            generation,
            workers = %workers.current().names().join(", "),
            "node starting"
        );
        let (stop, stopped) = mpsc::unbounded_channel();
        let dispatcher = Arc::new(Link::default());
        let parts = Arc::new(NodeParts {
            control: Arc::new(Control {
                node: node.clone(),
                stop: stop.clone(),
                workers: workers.clone(),
                dispatcher: dispatcher.clone(),
            }),
            lease: Arc::new(LeaseClock::new(settings.node.lease_ttl)),
            cluster: Arc::new(ClusterHandle::new(&node)),
            settings,
            store,
            node,
            generation,
            saver: Default::default(),
            workers,
            leaving: Arc::new(AtomicBool::new(false)),
            stop,
            schedule: Arc::new(Notify::new()),
            dispatcher,
            ingress: Arc::new(Link::default()),
            membership: Arc::new(Link::default()),
            http,
            socket,
            metrics,
        });
        let keep_alive = tokio::spawn(keep_alive(parts.clone()));
        let gauges = tokio::spawn(crate::metrics::refresh(
            parts.store.clone(),
            parts.metrics.clone(),
        ));
        // Watching the workers folder: an aborted task ends the watch (its watcher is dropped).
        let watcher = tokio::spawn({
            let (watch, dir, control) = (
                parts.settings.workers.watch,
                parts.workers.env().dir.clone(),
                parts.control.clone(),
            );
            async move {
                if watch {
                    crate::engine::watch::watch_workers(dir, control).await;
                }
            }
        });
        let args = SupervisorArgs {
            parts: parts.clone(),
            policy,
        };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, Supervisor, args, parent).await,
            None => Actor::spawn(None, Supervisor, args).await,
        };
        let supervisor = match spawned {
            Ok((supervisor, _)) => supervisor,
            Err(e) => {
                keep_alive.abort();
                gauges.abort();
                watcher.abort();
                return Err(NodeError::Spawn(e.to_string()));
            }
        };
        match parts.store.join(&parts.incarnation()).await {
            Ok(Some(n)) if n > 0 => tracing::info!(broadcasts = n, "joined running broadcasts"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot join the members yet ({e}); retried when the lease renews");
            }
        }
        Ok(NodeHandle {
            parts,
            supervisor,
            stopped,
            keep_alive,
            gauges,
            watcher,
        })
    }

    /// Starts the node and runs it until `shutdown` resolves (then shuts down gracefully) or
    /// the node stops on its own (then shuts down and returns the reason as an error).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport, NodeError> {
        let mut handle = self.start().await?;
        tokio::select! {
            () = shutdown => handle.shutdown().await,
            reason = handle.stopped() => {
                let report = handle.shutdown().await?;
                match reason {
                    StopReason::Requested(_) => Ok(report),
                    other => Err(NodeError::Stopped(other.to_string())),
                }
            }
        }
    }
}

/// A running node.
pub struct NodeHandle {
    parts: Arc<NodeParts>,
    supervisor: ActorRef<SupervisorMsg>,
    stopped: mpsc::UnboundedReceiver<StopReason>,
    keep_alive: JoinHandle<()>,
    /// Reads the cluster-wide gauges of the metrics.
    gauges: JoinHandle<()>,
    /// Watches the workers folder (`[workers] watch`).
    watcher: JoinHandle<()>,
}

/// What a shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every running task finished within the grace period.
    pub drained: bool,
    /// Every result reached Redis.
    pub flushed: bool,
    /// Tasks handed back to the pending sets.
    pub handed_back: usize,
}

impl NodeHandle {
    /// The node id.
    pub fn id(&self) -> &str {
        &self.parts.node
    }

    /// The generation (start time, Unix ms) of this incarnation.
    pub fn generation(&self) -> u64 {
        self.parts.generation
    }

    /// The node's supervisor, the root of its actor tree: a host that started the node with
    /// [`NodeBuilder::start_linked`] matches supervision events against it.
    pub fn actor(&self) -> ActorCell {
        self.supervisor.get_cell()
    }

    /// Load per worker type.
    pub async fn stats(&self) -> Vec<LaneStats> {
        let Some(d) = self.parts.dispatcher.get() else {
            return Vec::new();
        };
        ractor::call_t!(d, DispatcherMsg::Stats, 2_000).unwrap_or_default()
    }

    /// This node's metrics handle (the HTTP server's `/metrics` renders it).
    pub(crate) fn metrics(&self) -> Metrics {
        self.parts.metrics.clone()
    }

    /// This node's metrics in the Prometheus text format (version 0.0.4, content type
    /// `text/plain; version=0.0.4`), ready to serve to a scraper: counters of what this node
    /// did (tasks accepted from raw publishes, attempts started, and how they ended, per worker
    /// type), queue-wait and run-time histograms, the attempts running here, Redis errors and
    /// reconnections, cluster sessions, and the cluster-wide gauges (pending per worker type,
    /// scheduled, dead, members, paused worker types) as read from Redis at most 5 s ago. The
    /// README's "Metrics" section lists every metric.
    ///
    /// It reads only memory, so it is cheap and never waits on Redis.
    pub fn metrics_text(&self) -> String {
        self.metrics().render()
    }

    /// Resolves when the node must stop on its own: asked to (`bgnode stop`), its supervisor
    /// gave up, or it lost its id.
    pub async fn stopped(&mut self) -> StopReason {
        self.stopped
            .recv()
            .await
            .unwrap_or_else(|| StopReason::GaveUp("supervisor gone".into()))
    }

    /// A client for this node's cluster whose `local` target means this node.
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::from_settings(&self.parts.settings).await
    }

    /// Shuts the node down gracefully; see the module documentation for the sequence.
    pub async fn shutdown(self) -> Result<ShutdownReport, NodeError> {
        let ctx = &self.parts;
        let grace = ctx.settings.node.shutdown_timeout;
        let began = Instant::now();
        tracing::info!("shutting down: stopping intake");
        self.watcher.abort();
        ctx.leaving.store(true, Ordering::SeqCst);
        let _ = ractor::call_t!(self.supervisor, SupervisorMsg::Stopping, 2_000);
        if let Some(membership) = ctx.membership.get() {
            let _ = ractor::call_t!(membership, MembershipMsg::Leaving, 2_000);
        }
        if let Some(ingress) = ctx.ingress.get() {
            let _ = ractor::call_t!(ingress, IngressMsg::Stop, 6_000);
        }
        let mut drained = true;
        let mut handed_back = 0;
        if let Some(dispatcher) = ctx.dispatcher.get() {
            // Queued tasks go to the peers now, while running ones finish here.
            let queued =
                ractor::call_t!(dispatcher, DispatcherMsg::StopIntake, 2_000).unwrap_or_default();
            if !queued.is_empty() {
                let ids: Vec<(String, Option<u64>)> = queued
                    .iter()
                    .map(|t| (t.id.clone(), Some(t.epoch)))
                    .collect();
                match ctx.store.release_ids(&ctx.incarnation(), &ids, true).await {
                    Ok(n) => {
                        handed_back += n;
                        tracing::info!(tasks = n, "handed queued tasks to the peers");
                        ctx.cluster.broadcast(&Body::Sweep);
                    }
                    Err(e) => tracing::warn!("cannot hand back queued tasks yet ({e})"),
                }
            }
            let running: usize = ractor::call_t!(dispatcher, DispatcherMsg::Stats, 2_000)
                .map(|s| s.iter().map(|l| l.running).sum())
                .unwrap_or(0);
            if running > 0 {
                tracing::info!(running, "waiting up to {grace:?} for running tasks");
            }
            drained =
                ractor::call_t!(dispatcher, DispatcherMsg::Idle, grace.as_millis() as u64).is_ok();
            if !drained {
                tracing::warn!("running tasks did not finish within {grace:?}; interrupting them");
            }
            dispatcher
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await
                .ok();
        }
        let flushed = ctx.saver.flush(Duration::from_secs(10)).await;
        if !flushed {
            tracing::error!(
                unwritten = ctx.saver.backlog(),
                "could not write every result to redis before exiting"
            );
        }
        handed_back += match ctx.store.release_owned(&ctx.incarnation()).await {
            Ok(n) => {
                if n > 0 {
                    ctx.cluster.broadcast(&Body::Sweep);
                }
                n
            }
            Err(e) => {
                tracing::error!(
                    "could not hand back this node's tasks ({e}); they run again when node `{}` restarts",
                    ctx.node
                );
                0
            }
        };
        if let Err(e) = ctx
            .store
            .leave(&ctx.node, Guard::Myself(&ctx.incarnation()))
            .await
        {
            tracing::warn!("cannot leave the members ({e}); peers will fail this node over");
        }
        self.supervisor
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await
            .ok();
        self.keep_alive.abort();
        self.gauges.abort();
        let _ = ctx
            .store
            .unlease(&ctx.store.keys().alive(&ctx.node), &ctx.holder())
            .await;
        tracing::info!(
            drained,
            flushed,
            handed_back,
            "node stopped after {:.1}s",
            began.elapsed().as_secs_f64()
        );
        Ok(ShutdownReport {
            drained,
            flushed,
            handed_back,
        })
    }
}

async fn connect(settings: &Settings) -> Result<Store, NodeError> {
    let url = settings.redis_url_shown();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let store = Store::connect(settings).await?;
            store.ping().await?;
            store.load_library().await?;
            Ok::<Store, StoreError>(store)
        };
        match attempt.await {
            Ok(store) => return Ok(store),
            // A certificate that is not trusted or not shown stays so, and so does a Redis that
            // refuses the scripts: waiting cannot help.
            Err(e)
                if Instant::now() < deadline
                    && !matches!(e, StoreError::Tls(_) | StoreError::Library(_)) =>
            {
                tracing::warn!("waiting for redis at {url}: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(source) => {
                return Err(NodeError::Redis {
                    url: url.clone(),
                    source,
                });
            }
        }
    }
}

/// Takes this id's liveness lease, waiting out a dead incarnation's lease (it expires within
/// one TTL); a lease still renewed after two TTLs belongs to a live process.
async fn take_identity(store: &Store, settings: &Settings, holder: &str) -> Result<(), NodeError> {
    let id = &settings.node.id;
    let ttl = settings.node.lease_ttl;
    let key = store.keys().alive(id);
    let deadline = Instant::now() + ttl * 2 + Duration::from_millis(500);
    let mut logged = false;
    loop {
        let lease = store
            .lease(&key, holder, ttl)
            .await
            .map_err(|source| NodeError::Redis {
                url: settings.redis_url_shown(),
                source,
            })?;
        let Lease::HeldBy(other) = lease else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(NodeError::DuplicateId {
                id: id.clone(),
                holder: other,
            });
        }
        if !logged {
            tracing::info!("node id `{id}` is leased by {other}; waiting for it to expire");
            logged = true;
        }
        tokio::time::sleep(ttl / 4).await;
    }
}

/// Renews the liveness lease four times per TTL. Losing it to another holder means another
/// process took this id: the node must stop. Finding it expired (this process was paused, or
/// could not reach Redis) means the cluster may have failed this node over: the dispatcher
/// drops what it lost and the node joins the members again. Redis being away is not a reason to
/// stop.
async fn keep_alive(ctx: Arc<NodeParts>) {
    let key = ctx.store.keys().alive(&ctx.node);
    let holder = ctx.holder();
    let ttl = ctx.settings.node.lease_ttl;
    let mut tick = tokio::time::interval(ttl / 4);
    tick.tick().await;
    loop {
        tick.tick().await;
        let sent = Instant::now();
        match ctx.store.lease(&key, &holder, ttl).await {
            Ok(Lease::Renewed) => ctx.lease.renewed(sent),
            Ok(Lease::Taken) => {
                ctx.lease.renewed(sent);
                tracing::warn!(
                    "this node's liveness lease had expired; checking what it still owns"
                );
                ctx.dispatcher.cast(DispatcherMsg::Lapsed);
                if let Err(e) = ctx.store.join(&ctx.incarnation()).await {
                    tracing::warn!("cannot rejoin the members ({e})");
                }
            }
            Ok(Lease::HeldBy(other)) => {
                let _ = ctx.stop.send(StopReason::LostIdentity(format!(
                    "the liveness lease of node `{}` is now held by {other}: another process took this id",
                    ctx.node
                )));
                return;
            }
            Err(e) => tracing::debug!("cannot renew the liveness lease ({e}); retrying"),
        }
    }
}
