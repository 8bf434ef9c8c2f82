//! bgnode: a distributed background-task cluster on Redis and ractor actors.
//!
//! Tasks arrive on a Redis channel (raw JSON from any language) or through [`Client`]; a node
//! claims them, runs them on Rust or script workers, and records results durably, fenced by
//! epoch so that a task is owned by exactly one node at a time.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use background::{Node, Settings, TaskContext, TaskError, Worker};
//! use serde_json::Value;
//!
//! struct Hello;
//!
//! #[async_trait::async_trait]
//! impl Worker for Hello {
//!     async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
//!         Ok(format!("hello, {}", ctx.args).into())
//!     }
//! }
//!
//! let node = Node::builder(Settings::defaults()).worker("hello", Hello).start().await?;
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`config`]: settings from `cluster.toml`, the environment and flags, with precise errors.
//! - [`duration`]: human durations (`90s`, `10 minutes`, `day`).
//! - [`names`]: the worker-name allowlist.
//! - [`task`]: the task model (spec, claimed task, outcome, status, record fields).
//! - [`envelope`]: parsing and validating channel messages.
//! - [`fencing`]: the epoch rule that decides whether a completion may be written.
//! - [`schedule`]: cron, intervals, coalescing, backoff, typed times (pure).
//! - [`policy`]: what an attempt leads to: done, retry, dead, failed, cancelled, expired (pure).
//! - [`store`]: Redis keys, the atomic Lua scripts, every round trip.
//! - [`events`]: event messages on the events channel.
//! - [`worker`]: the Rust [`Worker`] trait, its context and errors, the built-in workers.
//! - [`script`]: script workers: scanning the folder, running a script safely.
//! - [`registry`]: the worker types a node offers, and running one attempt of any of them.
//! - [`supervisor`]: the root actor, its restart policy, shared node context.
//! - [`saver`]: the single writer of task state: batched, pipelined, outage-proof.
//! - [`scheduler`]: fires due delayed, retrying and recurring tasks; expires late ones.
//! - [`dispatcher`]: claiming and the node-local priority queues.
//! - [`pool`]: per-worker pools of slot actors.
//! - [`ingress`]: the lease-holding subscriber of the task channel; routes wakes by placement.
//! - [`cluster`]: gossip membership, the cluster link, heartbeats, failover, the peer actor.
//! - [`placement`]: where a wake goes and whom an idle node steals from (pure).
//! - [`wire`]: the messages nodes exchange, versioned; [`codec`]: their encoding (bincode).
//! - [`tls`]: TLS for the cluster link.
//! - [`node`]: start-up, liveness lease, graceful shutdown; the entry point.
//! - [`client`]: the Rust client.

pub mod client;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod engine;
pub mod model;
pub mod node;
pub mod store;
pub mod wiring;
pub mod workers;

pub use client::{Client, ClientError, TaskResult};
pub use config::{Settings, Sources};
pub use decide::restart::RestartPolicy;
pub use engine::dispatcher::LaneStats;
pub use model::task::{Outcome, TaskSpec, TaskState, TaskStatus};
pub use node::{Node, NodeBuilder, NodeError, NodeHandle, ShutdownReport};
pub use wiring::StopReason;
pub use workers::eval::{EvalError, Evaluation, eval};
pub use workers::rust::{TaskContext, TaskError, Worker, WorkerOptions};
