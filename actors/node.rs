//! A node: start-up, the liveness lease, and the graceful shutdown sequence.
//!
//! [`NodeBuilder::run`] is the single entry point: `bgnode start` and the tests call it, and a
//! Rust program embedding a node does the same (or [`NodeBuilder::start`] for a handle).
//!
//! Start-up: connect to Redis; take this node id's liveness lease (`{prefix}:node:{id}:alive`),
//! waiting out a previous incarnation's lease and refusing to start when another live process
//! renews it; build the worker registry; start the supervisor and its actors.
//!
//! Shutdown ([`NodeHandle::shutdown`]), one sequence:
//! 1. stop intake: the ingress unsubscribes and drops its lease, the dispatcher stops claiming
//!    and starting tasks;
//! 2. let running tasks finish, at most `node.shutdown_timeout`; then stop the dispatcher, which
//!    interrupts what still runs (script process groups are killed);
//! 3. flush the saver, so every result reached Redis;
//! 4. hand every task the node still owns (queued, or interrupted) back to the pending sets with
//!    a new epoch, so another node, or this one after a restart, runs it;
//! 5. stop the actor tree and drop the liveness lease.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::dispatcher::{DispatcherMsg, LaneStats};
use crate::ingress::IngressMsg;
use crate::names::validate_worker_name;
use crate::registry::{Registry, RunEnv};
use crate::saver::SaverHandle;
use crate::store::{Store, StoreError};
use crate::supervisor::{
    Link, NodeContext, RestartPolicy, Supervisor, SupervisorArgs, SupervisorMsg,
};
use crate::task::now_ms;
use crate::worker::{SharedWorker, Worker, WorkerOptions};

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

    /// Starts the node and returns its handle.
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        let NodeBuilder {
            settings,
            workers,
            policy,
        } = self;
        for (name, _, _) in &workers {
            validate_worker_name(name).map_err(|e| NodeError::BadWorkerName {
                name: crate::names::shorten(name, 40),
                reason: e.to_string(),
            })?;
        }
        let store = connect(&settings).await?;
        let node = settings.node.id.clone();
        let generation = now_ms();
        let holder = format!("{node}:{generation}");
        take_identity(&store, &settings, &holder).await?;
        if settings.uses_development_cookie() {
            tracing::warn!(
                "!!! this node uses the built-in development cookie: anyone who can reach {} can join the cluster; set node.cookie",
                settings.node.listen
            );
        }
        let registry = Registry::build(&workers, &settings);
        for note in &registry.notes {
            tracing::warn!("{note}");
        }
        let env = RunEnv {
            node: node.clone(),
            dir: registry
                .dir
                .clone()
                .unwrap_or_else(|| settings.workers.dir.clone()),
            output_limit: settings.limits.message_bytes as usize,
        };
        tracing::info!(
            node,
            generation,
            workers = %registry.names().join(", "),
            "node starting"
        );
        let ctx = Arc::new(NodeContext {
            settings,
            store,
            registry: Arc::new(registry),
            node,
            generation,
            env,
            saver: SaverHandle::default(),
            dispatcher: Link::default(),
            ingress: Link::default(),
            schedule: tokio::sync::Notify::new(),
        });
        let (give_up, stopped) = mpsc::unbounded_channel();
        let keep_alive = tokio::spawn(keep_alive(ctx.clone(), give_up.clone()));
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                ctx: ctx.clone(),
                give_up,
                policy,
            },
        )
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
        Ok(NodeHandle {
            ctx,
            supervisor,
            stopped,
            keep_alive,
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
                handle.shutdown().await?;
                Err(NodeError::Stopped(reason))
            }
        }
    }
}

/// A running node.
pub struct NodeHandle {
    ctx: Arc<NodeContext>,
    supervisor: ActorRef<SupervisorMsg>,
    stopped: mpsc::UnboundedReceiver<String>,
    keep_alive: JoinHandle<()>,
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
        &self.ctx.node
    }

    /// The generation (start time, Unix ms) of this incarnation.
    pub fn generation(&self) -> u64 {
        self.ctx.generation
    }

    /// Load per worker type.
    pub async fn stats(&self) -> Vec<LaneStats> {
        let Some(d) = self.ctx.dispatcher.get() else {
            return Vec::new();
        };
        ractor::call_t!(d, DispatcherMsg::Stats, 2_000).unwrap_or_default()
    }

    /// Resolves when the node stops on its own (its supervisor gave up, or it lost its id).
    pub async fn stopped(&mut self) -> String {
        self.stopped
            .recv()
            .await
            .unwrap_or_else(|| "supervisor gone".into())
    }

    /// Shuts the node down gracefully; see the module documentation for the sequence.
    pub async fn shutdown(self) -> Result<ShutdownReport, NodeError> {
        let ctx = &self.ctx;
        let grace = ctx.settings.node.shutdown_timeout;
        let began = Instant::now();
        tracing::info!("shutting down: stopping intake");
        let _ = ractor::call_t!(self.supervisor, SupervisorMsg::Stopping, 2_000);
        if let Some(ingress) = ctx.ingress.get() {
            let _ = ractor::call_t!(ingress, IngressMsg::Stop, 6_000);
        }
        let mut drained = true;
        if let Some(dispatcher) = ctx.dispatcher.get() {
            let running: usize = ractor::call_t!(dispatcher, DispatcherMsg::Stats, 2_000)
                .map(|s| s.iter().map(|l| l.running).sum())
                .unwrap_or(0);
            if running > 0 {
                tracing::info!(running, "waiting up to {grace:?} for running tasks");
            }
            drained =
                ractor::call_t!(dispatcher, DispatcherMsg::Drain, grace.as_millis() as u64).is_ok();
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
        let handed_back = match ctx.store.release_owned(&ctx.node).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(
                    "could not hand back this node's tasks ({e}); they run again when node `{}` restarts",
                    ctx.node
                );
                0
            }
        };
        self.supervisor
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await
            .ok();
        self.keep_alive.abort();
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
    let url = &settings.redis.url;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let store = Store::connect(settings).await?;
            store.ping().await?;
            Ok::<Store, StoreError>(store)
        };
        match attempt.await {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("waiting for redis at {url}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
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
        let held = store
            .lease(&key, holder, ttl)
            .await
            .map_err(|source| NodeError::Redis {
                url: settings.redis.url.clone(),
                source,
            })?;
        let Some(other) = held else {
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

/// Renews the liveness lease at a third of its TTL. Losing it to another holder means another
/// process took this id: the node must stop. Redis being away is not a reason to stop.
async fn keep_alive(ctx: Arc<NodeContext>, give_up: mpsc::UnboundedSender<String>) {
    let key = ctx.store.keys().alive(&ctx.node);
    let holder = ctx.holder();
    let ttl = ctx.settings.node.lease_ttl;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tick.tick().await;
        match ctx.store.lease(&key, &holder, ttl).await {
            Ok(None) => {}
            Ok(Some(other)) => {
                let _ = give_up.send(format!(
                    "the liveness lease of node `{}` is now held by {other}: another process took this id",
                    ctx.node
                ));
                return;
            }
            Err(e) => tracing::debug!("cannot renew the liveness lease ({e}); retrying"),
        }
    }
}
