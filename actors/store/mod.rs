//! The Redis store: key names, the atomic scripts, and every round trip the cluster makes.
//!
//! Each write that decides ownership, fires a schedule or finishes a task is one Lua script, so
//! it is atomic in Redis; writes from the saver are pipelined in batches. The scripts are one
//! Redis function library, loaded when Redis answers that it has not got it (see `library.rs`).
//!
//! [`Store`] is one struct; its methods are spread over one file per concern:
//!
//! - `mod.rs`: connecting, errors, the script registry, running pipelines, publishing.
//! - `library.rs`: the scripts as one function library: loading it, calling its functions.
//! - `archive.rs`: the archive's outbox: taking rows, acknowledging them, holding claims.
//! - `clock.rs`: [`Clock`], Redis's time as read here (the one clock, see there).
//! - `keys.rs`: [`Keys`], the name of every key.
//! - `tasks.rs`: enqueueing, claiming, cancelling, retrying, status and results.
//! - `writes.rs`: the saver's fenced writes ([`WriteOp`], [`WriteResult`]).
//! - `ownership.rs`: hand-back, failover, adoption, and checking who owns what.
//! - `timers.rs`: firing due schedules and recurrences, expiring deadlines.
//! - `members.rs`: joining and leaving, liveness, node reports, the cookie, leases.
//! - `inbox.rs`: taking envelopes from the inbox list and settling them.
//! - `subscription.rs`: the ingress subscription, which a successor can close.
//! - `views.rs`: the listing behind `bgnode bg` and the HTTP API ([`TaskQuery`], [`Overview`]),
//!   the counts and the throughput.
//! - `gauges.rs`: the cluster-wide counts a node exports as metrics ([`ClusterCounts`]).
//! - `lua/`: the scripts; `common.lua` is shared by all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{KeyPolicy, RedisSettings, Settings};
use crate::metrics::RedisCounters;

mod archive;
mod clock;
mod gauges;
mod inbox;
mod keys;
mod library;
mod members;
mod ownership;
mod subscription;
mod tasks;
mod timers;
mod views;
mod writes;

pub(crate) use clock::Clock;
pub(crate) use gauges::ClusterCounts;
pub(crate) use inbox::InboxEntry;
pub(crate) use keys::Keys;
use library::Function;
pub(crate) use library::is_missing_function;
pub(crate) use members::{CookieCheck, Guard, Incarnation, Lease};
pub use tasks::{Accepted, CancelResult, DeleteResult, RetryResult, TaskDetail};
pub(crate) use timers::DueTemplate;
pub use views::{
    Counts, Cursor, Listed, Overview, Sample, TaskPage, TaskQuery, TaskRow, Throughput, Window,
};
pub(crate) use writes::{WriteOp, WriteResult};

/// A store error: Redis unreachable or answering something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis call failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with data this version cannot read.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
    /// A `[redis]` TLS setting cannot be used (a CA or client certificate file).
    #[error("redis TLS: {0}")]
    Tls(String),
    /// Redis refused to load the scripts' function library (older than 7.0, or a user not
    /// allowed `FUNCTION LOAD`): waiting does not help.
    #[error("{0}")]
    Library(String),
}

/// Result of store operations.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Most tasks or writes in one script call: one call per task costs Redis a call's overhead
/// each, and one call for a whole batch would hold Redis up for every other client meanwhile.
pub(crate) const SCRIPT_CHUNK: usize = 32;

/// Every script, each a function of the library.
struct Scripts {
    enqueue: Function,
    claim: Function,
    write: Function,
    release: Function,
    lease: Function,
    unlease: Function,
    fire: Function,
    occur: Function,
    expire: Function,
    unrunnable: Function,
    cancel: Function,
    retry: Function,
    adopt: Function,
    join: Function,
    leave: Function,
    channel: Function,
    cookie: Function,
    pause: Function,
    delete: Function,
    tally: Function,
    take: Function,
    settle: Function,
    archive_take: Function,
    archive_ack: Function,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            enqueue: Function::new("enqueue"),
            claim: Function::new("claim"),
            write: Function::new("write"),
            release: Function::new("release"),
            lease: Function::new("lease"),
            unlease: Function::new("unlease"),
            fire: Function::new("fire"),
            occur: Function::new("occur"),
            expire: Function::new("expire"),
            unrunnable: Function::new("unrunnable"),
            cancel: Function::new("cancel"),
            retry: Function::new("retry"),
            adopt: Function::new("adopt"),
            join: Function::new("join"),
            leave: Function::new("leave"),
            channel: Function::new("channel"),
            cookie: Function::new("cookie"),
            pause: Function::new("pause"),
            delete: Function::new("delete"),
            tally: Function::new("tally"),
            take: Function::new("take"),
            settle: Function::new("settle"),
            archive_take: Function::new("archive_take"),
            archive_ack: Function::new("archive_ack"),
        }
    }
}

/// Names and limits the store's scripts need, from [`Settings`].
#[derive(Debug, Clone)]
struct Names {
    channel: String,
    events: String,
    result_ttl: Duration,
    dead_ttl: Duration,
    key_limit: u32,
    key_policy: KeyPolicy,
    /// This node archives (`[saver] archive`): its final writes carry their rows.
    archives: bool,
    /// `redis.event_level`: with `final`, starts carry no `started` event.
    event_level: crate::config::EventLevel,
}

/// The store's connection: one multiplexed, self-reconnecting connection, whose failed calls
/// and reconnections a node counts (a client's store counts nothing). Every command the store
/// sends on it passes through here, so this is the one place that sees them fail.
#[derive(Clone)]
struct Con {
    manager: ConnectionManager,
    counters: Option<RedisCounters>,
}

impl Con {
    /// Counts a call's failure, or its answer and the error replies in it (one per command of
    /// a pipeline).
    fn tally(&self, result: Result<&[Value], &redis::RedisError>) {
        let Some(counters) = &self.counters else {
            return;
        };
        match result {
            Ok(values) => {
                counters.answered();
                for value in values {
                    if let Value::ServerError(error) = value {
                        counters.refused(error);
                    }
                }
            }
            Err(e) => counters.failed(e),
        }
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.manager.req_packed_command(cmd).await;
            self.tally(result.as_ref().map(std::slice::from_ref));
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.manager.req_packed_commands(cmd, offset, count).await;
            self.tally(result.as_ref().map(Vec::as_slice));
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// A client for `redis.url`, with the CA and client certificate of `[redis] tls_*` for a
/// `rediss://` URL. Every connection to Redis starts from it (or from a clone of its connection
/// info, which carries the certificates).
pub(crate) fn redis_client(redis: &RedisSettings) -> StoreResult<redis::Client> {
    if redis.uses_tls() {
        // rustls needs one process-wide crypto provider; this crate builds aws-lc-rs alone, and
        // installing it here keeps a program that links another provider too from panicking.
        // An error only says one is installed already.
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    match redis
        .tls_certificates()
        .map_err(|e| StoreError::Tls(e.to_string()))?
    {
        Some(certificates) => Ok(redis::Client::build_with_tls(
            redis.url.as_str(),
            certificates,
        )?),
        None => Ok(redis::Client::open(redis.url.as_str())?),
    }
}

/// `error`, from connecting to `redis.url`, with the setting to look at when it is a TLS
/// handshake that failed: the server's certificate was not trusted, or the server refused this
/// client's (missing) certificate.
fn tls_hint(redis: &RedisSettings, error: redis::RedisError) -> StoreError {
    if !redis.uses_tls() {
        return error.into();
    }
    let text = error.to_string();
    let hint = if text.contains("peer certificate") {
        "the server's certificate must chain to a CA in redis.tls_ca (empty: the system's trusted roots)"
    } else if text.contains("alert") || text.contains("certificate") {
        "the server refused the TLS handshake; if it asks for client certificates, set redis.tls_cert and redis.tls_key"
    } else {
        return error.into();
    };
    StoreError::Tls(format!("{text} ({hint})"))
}

/// The Redis store. Cheap to clone: clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub(crate) struct Store {
    client: redis::Client,
    con: Con,
    keys: Keys,
    names: Arc<Names>,
    scripts: Arc<Scripts>,
    clock: Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

/// How a store's connection reconnects and how long it waits.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl Store {
    /// Connects to `redis.url` with the names and limits of `settings`. Fails when Redis cannot
    /// be reached now.
    pub(crate) async fn connect(settings: &Settings) -> StoreResult<Store> {
        let client = redis_client(&settings.redis)?;
        let mut con = Con {
            manager: ConnectionManager::new_with_config(client.clone(), manager_config())
                .await
                .map_err(|e| tls_hint(&settings.redis, e))?,
            counters: None,
        };
        let (sent, answered, redis_us) = read_time(&mut con).await?;
        Ok(Store {
            clock: Clock::new(sent, answered, redis_us),
            client,
            con,
            keys: Keys::new(&settings.redis.prefix),
            names: Arc::new(Names {
                channel: settings.redis.channel.clone(),
                events: settings.redis.events.clone(),
                result_ttl: settings.saver.result_ttl,
                dead_ttl: settings.saver.dead_ttl,
                key_limit: settings.keys.limit,
                key_policy: settings.keys.policy,
                archives: settings.saver.archives(),
                event_level: settings.redis.event_level,
            }),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// This store on a connection of its own, driven by the runtime this is called on: a user
    /// whose large answers must not queue before the task path's (the archiver's batches).
    pub(crate) async fn on_own_connection(&self) -> StoreResult<Store> {
        let manager = ConnectionManager::new_with_config(self.client.clone(), manager_config())
            .await
            .map_err(StoreError::from)?;
        Ok(Store {
            con: Con {
                manager,
                counters: self.con.counters.clone(),
            },
            ..self.clone()
        })
    }

    /// Whether starts publish their `started` event (`redis.event_level = "all"`).
    pub(crate) fn tells_starts(&self) -> bool {
        self.names.event_level == crate::config::EventLevel::All
    }

    /// This store, its connection's failed calls and reconnections counted in `counters`
    /// (clones made before keep counting nothing).
    pub(crate) fn counted(mut self, counters: RedisCounters) -> Store {
        self.con.counters = Some(counters);
        self
    }

    /// The key names.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Redis's clock as read here: the time of everything this side computes or records.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Redis's time now (Unix ms), reading `TIME` first when the clock's anchor is older than
    /// [`clock::STALE`] (a client that has been idle; a node renews its anchor with its lease).
    pub(crate) async fn now_ms(&self) -> StoreResult<u64> {
        if self.clock.age(Instant::now()) >= clock::STALE {
            let mut con = self.con.clone();
            let (sent, answered, redis_us) = read_time(&mut con).await?;
            self.clock.offer(sent, answered, redis_us);
        }
        Ok(self.clock.now_ms())
    }

    /// The underlying client, for dedicated connections (pub/sub, blocking pops).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The control channel of `node` (cancellations reach it there).
    pub(crate) fn control_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.names.channel)
    }

    /// Checks that Redis answers.
    pub(crate) async fn ping(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Publishes `message` on `channel`; returns the number of subscribers that got it.
    pub(crate) async fn publish(&self, channel: &str, message: &str) -> StoreResult<i64> {
        let mut con = self.con.clone();
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut con)
            .await?)
    }

    /// Loads the scripts' function library now (a node does at start, so that a Redis that
    /// refuses it stops the node at once instead of failing its first task).
    pub(crate) async fn load_library(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        library::load(&mut con).await
    }

    /// Runs a pipeline of function calls, loading the library first if Redis has not got it.
    async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> StoreResult<T> {
        let mut con = self.con.clone();
        match pipe.query_async(&mut con).await {
            Err(e) if library::missing_library(&e) => {
                library::load(&mut con).await?;
                Ok(pipe.query_async(&mut con).await?)
            }
            other => Ok(other?),
        }
    }
}

/// Reads Redis's `TIME`: when the request was sent, when it was answered, and the time in µs.
async fn read_time(con: &mut Con) -> StoreResult<(Instant, Instant, u64)> {
    let sent = Instant::now();
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await?;
    Ok((sent, Instant::now(), clock::time_us(seconds, micros)))
}

#[cfg(test)]
mod tests;
