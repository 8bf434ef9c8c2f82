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
//! The public API is re-exported at the crate root: [`Client`] to enqueue and inspect tasks,
//! [`Node`] to run a node in a program, [`Worker`] to write Rust workers, [`TaskSpec`] and
//! [`TaskStatus`] for tasks, [`Settings`] for configuration, [`time`] for human times. Inside,
//! one folder per concern:
//!
//! - `model/`: the task model and the formats tasks travel in: `task` (spec, claimed task,
//!   outcome, status, record fields), `envelope` (channel messages and HTTP bodies), `events`,
//!   `names`, `timeline` (a task's attempts and timeline, from its record).
//! - `decide/`: pure decisions, unit-tested without I/O: `policy` (what an attempt leads to),
//!   `outcome` (an attempt's end as one fenced write), `placement`, `fencing`, `cron`, `due`
//!   (a new task's first run), `times`, `backoff`, `outbox` (the archive outbox's bound), `restart` (supervisors' restart policy),
//!   `runnable` (whether any live node can run a waiting task).
//! - `store/`: every Redis round trip: `keys`, `tasks`, `writes`, `ownership`, `timers`,
//!   `members`, `inbox`, `views` (the listing of `bgnode bg` and the API, counts,
//!   throughput), and the atomic scripts in `lua/`.
//! - `archive/`: the PostgreSQL archive of finished tasks: connecting (`tls`), the versioned
//!   `schema`, writing `rows`, and reading the history back ([`Archive`]).
//! - `engine/`: the node's actors: `supervisor`, `archiver` (the outbox into the archive), `ingress` (and its `inbox` drain),
//!   `scheduler`, `dispatcher` (with its `lane`, stealing and recovery), `pool`, `saver`,
//!   `peer`, and `control` (stop, reload).
//! - `cluster/`: the link between nodes: `membership` (gossip, sessions, heartbeats,
//!   failover), `handle` (the view, this node's load, sending to peers), `wire`, `codec`,
//!   `tls`.
//! - `http/`: the node's HTTP side: the JSON API under `/api/v1` (`api`), its event stream
//!   (`sse`), the dashboard at `/` (`dashboard`, its files in `assets/`), the server actor, the
//!   router, authentication and errors.
//! - `socket/`: the socket service (BackgroundService's plain-text protocol on TCP and UDP):
//!   the server actor, and `request` (framing, parsing and answers, without I/O).
//! - `workers/`: the worker types a node offers: `registry`, `rust` (the [`Worker`] trait),
//!   `script`, `eval`.
//! - `wiring`: links to actors that may restart, background tasks tied to actors, the lease
//!   clock; `node`: start-up, liveness lease, graceful shutdown; `client`; `config`;
//!   `metrics`: what a node counts, rendered as Prometheus text.
//! - `tidy` (tests only): checks of the source's shape that the types do not enforce.

mod archive;
mod client;
mod cluster;
pub mod config;
mod decide;
mod engine;
mod http;
mod metrics;
mod model;
mod node;
mod socket;
mod store;
pub mod time;
mod wiring;
mod workers;

/// The tests' own `redis-server`, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/redis.rs"]
mod test_redis;
#[cfg(test)]
mod tidy;

pub use archive::{Archive, ArchiveError, FINAL_STATES, HistoryPage, HistoryQuery, HistoryRow};
pub use client::{Client, ClientError, ControlAnswer, MemberInfo, TaskResult, WorkerLimits};
pub use cluster::wire::ControlOp;
pub use config::{ConfigError, Settings, Sources};
pub use decide::cron::{Cron, Missed, Recurrence};
pub use decide::restart::RestartPolicy;
pub use decide::runnable::Unrunnable;
pub use engine::dispatcher::LaneStats;
pub use model::events::events_in;
pub use model::names::NameError;
pub use model::task::{
    Outcome, Retry, SpecError, Target, TaskSpec, TaskState, TaskStatus, new_task_id,
};
pub use model::timeline::{AttemptRecord, Moment};
pub use node::{Node, NodeBuilder, NodeError, NodeHandle, ShutdownReport};
pub use store::{
    Accepted, CancelResult, Counts, Cursor, DeleteResult, Listed, Overview, RetryResult, Sample,
    StoreError, TaskDetail, TaskPage, TaskQuery, TaskRow, Throughput, Window,
};
pub use wiring::StopReason;
pub use workers::eval::{EvalError, Evaluation, eval};
pub use workers::rust::{TaskContext, TaskError, Worker, WorkerOptions};
