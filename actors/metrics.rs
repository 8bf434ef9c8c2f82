//! The node's Prometheus metrics: what this node counted, and the cluster's gauges as it last
//! read them, rendered as Prometheus text (format 0.0.4) by [`Metrics::render`].
//!
//! [`Metrics`] is a cheap handle (clones share everything). The node creates one at start and
//! hands each actor the part it counts with:
//!
//! - the ingress counts the raw tasks it stored (`accepted`);
//! - a pool's slots count the attempts they start, the queue wait, the run time and what runs
//!   now, through the [`WorkerMetrics`] of their worker type, resolved once per pool;
//! - the saver's flusher counts how attempts ended (done, failed, retried, dead, expired,
//!   cancelled) from the writes Redis applied, and the scheduler the tasks its deadline and
//!   unrunnable sweeps expired;
//! - the store's connection counts failed calls and reconnections ([`RedisCounters`]);
//! - the membership counts cluster sessions ([`SessionMetrics`]);
//! - [`refresh`], a loop of the node, reads the cluster-wide gauges (pending per worker,
//!   scheduled, dead, members, paused workers) from Redis every [`REFRESH`], so a scrape only
//!   formats memory: it costs no round trip and cannot load Redis, however often it comes.
//!
//! Counters are this node's: Prometheus sums them across nodes. The cluster-wide gauges are the
//! same on every node (take one, or the maximum, not the sum).
//!
//! Per-worker handles are cached: after the first task of a worker type, counting costs atomic
//! increments and, where only the name is at hand, one read-locked map lookup; no allocation.
//! A node labels at most [`MAX_WORKERS`] worker types (raw publishes may name any valid
//! worker); the rest are counted under `worker="(other)"`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::task::TaskState;
use crate::store::{Accepted, ClusterCounts, Store};

/// How often [`refresh`] reads the cluster-wide gauges.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// Most worker types a node gives a label of their own.
pub(crate) const MAX_WORKERS: usize = 256;

/// The label of the worker types beyond [`MAX_WORKERS`]; no worker name looks like it.
pub(crate) const OTHER: &str = "(other)";

/// Upper bounds of the time histograms' buckets, in seconds: 1 ms to 10 min.
pub(crate) const BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The one label of the per-worker metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

type Counters = Family<WorkerLabel, Counter>;
type Gauges = Family<WorkerLabel, Gauge>;
type Histograms = Family<WorkerLabel, Histogram, fn() -> Histogram>;

fn time_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The metrics of one node. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    accepted: Counters,
    started: Counters,
    done: Counters,
    failed: Counters,
    retried: Counters,
    dead: Counters,
    expired: Counters,
    cancelled: Counters,
    running: Gauges,
    wait: Histograms,
    run: Histograms,
    pending: Gauges,
    scheduled: Gauge,
    dead_now: Gauge,
    members: Gauge,
    paused: Gauge,
    redis: RedisCounters,
    sessions: SessionMetrics,
    archive: ArchiveMetrics,
    /// The per-worker handles made so far, by worker name.
    workers: RwLock<HashMap<String, Arc<WorkerMetrics>>>,
    /// The worker types that have a pending gauge.
    pending_known: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered in the order they are rendered.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let counters = |registry: &mut Registry, name: &str, help: &str| {
            let family = Counters::default();
            registry.register(name, help, family.clone());
            family
        };
        let gauges = |registry: &mut Registry, name: &str, help: &str| {
            let family = Gauges::default();
            registry.register(name, help, family.clone());
            family
        };
        let histograms = |registry: &mut Registry, name: &str, help: &str| {
            let family = Histograms::new_with_constructor(time_histogram as fn() -> Histogram);
            registry.register(name, help, family.clone());
            family
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        // Counters are registered without `_total`: the encoder appends it. Help texts have
        // no final full stop: the encoder adds one.
        let r = &mut registry;
        let accepted = counters(
            r,
            "bgnode_tasks_accepted",
            "Tasks this node stored as new from raw publishes and its HTTP API (ids not seen before)",
        );
        let started = counters(r, "bgnode_tasks_started", "Attempts started on this node");
        let done = counters(
            r,
            "bgnode_tasks_done",
            "Attempts this node ended done (writes Redis applied)",
        );
        let failed = counters(
            r,
            "bgnode_tasks_failed",
            "Attempts this node ended failed: the worker said not to retry",
        );
        let retried = counters(
            r,
            "bgnode_tasks_retried",
            "Failed attempts this node scheduled to run again",
        );
        let dead = counters(
            r,
            "bgnode_tasks_dead",
            "Failed attempts this node ended dead: no attempt was left",
        );
        let expired = counters(
            r,
            "bgnode_tasks_expired",
            "Tasks this node expired: held here, or closed by its scheduler's deadline and unrunnable sweeps",
        );
        let cancelled = counters(
            r,
            "bgnode_tasks_cancelled",
            "Tasks held by this node that it ended cancelled",
        );
        let running = gauges(
            r,
            "bgnode_running_tasks",
            "Attempts running on this node now",
        );
        let wait = histograms(
            r,
            "bgnode_task_wait_seconds",
            "Queue wait of the attempts started on this node: start minus the task's creation",
        );
        let run = histograms(
            r,
            "bgnode_task_run_seconds",
            "Run time of the attempts that ended on this node",
        );
        let pending = gauges(
            r,
            "bgnode_pending_tasks",
            "Tasks waiting for a node in the cluster, pinned ones included (read from Redis every 5 s)",
        );
        let scheduled = gauge(
            r,
            "bgnode_scheduled_tasks",
            "Delayed, retrying and recurring tasks in the cluster (read from Redis every 5 s)",
        );
        let dead_now = gauge(
            r,
            "bgnode_dead_tasks",
            "Tasks in the cluster's dead set (read from Redis every 5 s)",
        );
        let members = gauge(
            r,
            "bgnode_members",
            "Nodes in the cluster: joined, not yet left or failed over (read from Redis every 5 s)",
        );
        let paused = gauge(
            r,
            "bgnode_paused_workers",
            "Worker types paused cluster-wide (read from Redis every 5 s)",
        );
        let redis = RedisCounters {
            errors: counter(
                r,
                "bgnode_redis_errors",
                "Calls on this node's Redis connection that failed",
            ),
            reconnects: counter(
                r,
                "bgnode_redis_reconnects",
                "Times this node's Redis connection answered again after it was lost",
            ),
            lost: Arc::new(AtomicBool::new(false)),
        };
        let sessions = SessionMetrics {
            ready: gauge(
                r,
                "bgnode_cluster_sessions",
                "Cluster sessions to peers ready now",
            ),
            opened: counter(
                r,
                "bgnode_cluster_sessions_opened",
                "Cluster sessions to peers that became ready",
            ),
            closed: counter(
                r,
                "bgnode_cluster_sessions_closed",
                "Cluster sessions to peers that closed, or were closed for a missed heartbeat",
            ),
        };
        let archive = ArchiveMetrics {
            rows: counter(
                r,
                "bgnode_archive_rows",
                "Finished tasks this node wrote to the PostgreSQL archive",
            ),
            failures: counter(
                r,
                "bgnode_archive_failures",
                "Archive writes of this node that failed and were retried",
            ),
            outbox: gauge(
                r,
                "bgnode_archive_outbox",
                "Finished tasks waiting in Redis for the archive, cluster-wide (read every second by archiving nodes)",
            ),
            bound: gauge(
                r,
                "bgnode_archive_outbox_bound",
                "The outbox's bound (saver.archive_outbox): past it, no node claims new tasks",
            ),
        };
        Metrics {
            inner: Arc::new(Inner {
                registry,
                accepted,
                started,
                done,
                failed,
                retried,
                dead,
                expired,
                cancelled,
                running,
                wait,
                run,
                pending,
                scheduled,
                dead_now,
                members,
                paused,
                redis,
                sessions,
                archive,
                workers: RwLock::new(HashMap::new()),
                pending_known: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The metrics in the Prometheus text format (0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }

    /// Counts the tasks of one enqueue that were stored as new (`accepted`): `workers` are the
    /// worker types of the tasks, in the order of `stored`, Redis's answers.
    pub(crate) fn stored<'a>(
        &self,
        workers: impl IntoIterator<Item = &'a str>,
        stored: &[(String, Accepted)],
    ) {
        for (worker, (_, accepted)) in workers.into_iter().zip(stored) {
            if matches!(
                accepted,
                Accepted::Queued | Accepted::Scheduled | Accepted::Deferred
            ) {
                self.worker(worker).accepted();
            }
        }
    }

    /// The handles of worker type `worker`, made on first use (beyond [`MAX_WORKERS`] types,
    /// those of [`OTHER`]).
    pub(crate) fn worker(&self, worker: &str) -> Arc<WorkerMetrics> {
        {
            let all = self.inner.workers.read().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = all.get(worker) {
                return found.clone();
            }
            if all.len() >= MAX_WORKERS
                && let Some(other) = all.get(OTHER)
            {
                return other.clone();
            }
        }
        let mut all = self
            .inner
            .workers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let name = if all.contains_key(worker) || all.len() < MAX_WORKERS {
            worker
        } else {
            OTHER
        };
        all.entry(name.to_owned())
            .or_insert_with(|| Arc::new(self.make_worker(name)))
            .clone()
    }

    fn make_worker(&self, name: &str) -> WorkerMetrics {
        let label = WorkerLabel {
            worker: name.to_owned(),
        };
        let i = &self.inner;
        WorkerMetrics {
            accepted: i.accepted.get_or_create_owned(&label),
            started: i.started.get_or_create_owned(&label),
            done: i.done.get_or_create_owned(&label),
            failed: i.failed.get_or_create_owned(&label),
            retried: i.retried.get_or_create_owned(&label),
            dead: i.dead.get_or_create_owned(&label),
            expired: i.expired.get_or_create_owned(&label),
            cancelled: i.cancelled.get_or_create_owned(&label),
            running: i.running.get_or_create_owned(&label),
            wait: i.wait.get_or_create_owned(&label),
            run: i.run.get_or_create_owned(&label),
        }
    }

    /// The counters of the store's connection.
    pub(crate) fn redis(&self) -> RedisCounters {
        self.inner.redis.clone()
    }

    /// The archiver's part.
    pub(crate) fn archive(&self) -> ArchiveMetrics {
        self.inner.archive.clone()
    }

    /// The session metrics, for the membership.
    pub(crate) fn sessions(&self) -> SessionMetrics {
        self.inner.sessions.clone()
    }

    /// Sets the cluster-wide gauges to what was read from Redis. A worker type no longer
    /// listed loses its pending gauge.
    pub(crate) fn set_cluster(&self, counts: &ClusterCounts) {
        let i = &self.inner;
        i.scheduled.set(gauge_value(counts.scheduled));
        i.dead_now.set(gauge_value(counts.dead));
        i.members.set(gauge_value(counts.members));
        i.paused.set(gauge_value(counts.paused));
        let mut now: HashMap<&str, u64> = HashMap::new();
        for (worker, n) in &counts.pending {
            let labelled = now.len() < MAX_WORKERS || now.contains_key(worker.as_str());
            *now.entry(if labelled { worker } else { OTHER })
                .or_default() += n;
        }
        let mut known = i.pending_known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|worker| {
            let listed = now.contains_key(worker.as_str());
            if !listed {
                i.pending.remove(&WorkerLabel {
                    worker: worker.clone(),
                });
            }
            listed
        });
        for (worker, n) in now {
            let label = WorkerLabel {
                worker: worker.to_owned(),
            };
            i.pending.get_or_create(&label).set(gauge_value(n));
            known.insert(label.worker);
        }
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The metrics of one worker type on this node. The counting sites hold it (a pool keeps its
/// worker type's for its life), so counting is a few atomic operations.
pub(crate) struct WorkerMetrics {
    accepted: Counter,
    started: Counter,
    done: Counter,
    failed: Counter,
    retried: Counter,
    dead: Counter,
    expired: Counter,
    cancelled: Counter,
    running: Gauge,
    wait: Histogram,
    run: Histogram,
}

impl WorkerMetrics {
    /// A task stored from a raw publish.
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// An attempt starts now, after waiting `waited` since its task was created. It runs
    /// (and counts in the running gauge) until the returned guard is dropped, which records
    /// its run time: an attempt that ends by a panic is measured too.
    pub(crate) fn start(self: &Arc<Self>, waited: Duration) -> Attempt {
        self.started.inc();
        self.wait.observe(waited.as_secs_f64());
        self.running.inc();
        Attempt {
            worker: self.clone(),
            began: Instant::now(),
        }
    }

    /// An attempt's end that Redis applied, by the state it left the task in. States that are
    /// no end (queued, running...) count nothing.
    pub(crate) fn ended(&self, state: TaskState) {
        let counter = match state {
            TaskState::Done => &self.done,
            TaskState::Failed => &self.failed,
            TaskState::Retrying => &self.retried,
            TaskState::Dead => &self.dead,
            TaskState::Expired => &self.expired,
            TaskState::Cancelled => &self.cancelled,
            TaskState::Scheduled | TaskState::Deferred | TaskState::Queued | TaskState::Running => {
                return;
            }
        };
        counter.inc();
    }
}

/// A running attempt, from [`WorkerMetrics::start`]; dropping it ends the attempt's run.
pub(crate) struct Attempt {
    worker: Arc<WorkerMetrics>,
    began: Instant,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.worker.running.dec();
        self.worker.run.observe(self.began.elapsed().as_secs_f64());
    }
}

/// The counters of the store's shared connection: calls that failed (the connection lost,
/// refused or timed out, or Redis answering an error), and reconnections (a call answered
/// after a call failed for the connection's sake).
#[derive(Clone)]
pub(crate) struct RedisCounters {
    errors: Counter,
    reconnects: Counter,
    lost: Arc<AtomicBool>,
}

impl RedisCounters {
    /// A call failed with `error`.
    pub(crate) fn failed(&self, error: &redis::RedisError) {
        self.errors.inc();
        if error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    /// Redis answered a command with `error`. `Function not found` (Redis does not have the
    /// script library yet, or forgot it on a restart; it is loaded and the call made again) is
    /// no failure.
    pub(crate) fn refused(&self, error: &redis::ServerError) {
        if !crate::store::is_missing_function(error) {
            self.errors.inc();
        }
    }

    /// A call was answered: if the connection had been lost, it is back.
    pub(crate) fn answered(&self) {
        if self.lost.load(Ordering::Relaxed) && self.lost.swap(false, Ordering::Relaxed) {
            self.reconnects.inc();
        }
    }
}

/// The archiver's metrics.
#[derive(Clone)]
pub(crate) struct ArchiveMetrics {
    rows: Counter,
    failures: Counter,
    outbox: Gauge,
    bound: Gauge,
}

impl ArchiveMetrics {
    /// `n` rows were written.
    pub(crate) fn wrote(&self, n: usize) {
        self.rows.inc_by(n as u64);
    }

    /// A write failed.
    pub(crate) fn failed(&self) {
        self.failures.inc();
    }

    /// The outbox holds `n` rows; its bound is `bound`.
    pub(crate) fn outbox(&self, n: u64, bound: u64) {
        self.outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
        self.bound.set(i64::try_from(bound).unwrap_or(i64::MAX));
    }
}

/// The membership's metrics of cluster sessions.
#[derive(Clone)]
pub(crate) struct SessionMetrics {
    ready: Gauge,
    opened: Counter,
    closed: Counter,
}

impl SessionMetrics {
    /// A session became ready.
    pub(crate) fn opened(&self) {
        self.opened.inc();
    }

    /// A session closed, or was closed.
    pub(crate) fn closed(&self) {
        self.closed.inc();
    }

    /// `n` sessions are ready now.
    pub(crate) fn ready(&self, n: usize) {
        self.ready.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Reads the cluster-wide gauges every [`REFRESH`], for ever (the node aborts it at shutdown).
/// A failed read leaves the previous values; the store's counters note the failure.
pub(crate) async fn refresh(store: Store, metrics: Metrics) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.cluster_counts(MAX_WORKERS).await {
            Ok(counts) => metrics.set_cluster(&counts),
            Err(e) => tracing::debug!("cannot read the cluster's gauges ({e}); kept the last ones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The rendered text, read back: each family's help and type, and each sample's value by
    /// its name and labels as written (`name{worker="a"}`).
    #[derive(Default)]
    struct Scrape {
        help: BTreeMap<String, String>,
        kind: BTreeMap<String, String>,
        samples: BTreeMap<String, f64>,
    }

    fn scrape(text: &str) -> Scrape {
        let mut out = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                out.help.insert(name.into(), help.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.kind.insert(name.into(), kind.into());
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value = if value == "+Inf" {
                    f64::INFINITY
                } else {
                    value.parse().unwrap()
                };
                assert!(
                    out.samples.insert(series.into(), value).is_none(),
                    "{series} twice"
                );
            }
        }
        out
    }

    impl Scrape {
        fn get(&self, series: &str) -> f64 {
            *self
                .samples
                .get(series)
                .unwrap_or_else(|| panic!("no {series} in {:?}", self.samples.keys()))
        }
    }

    #[test]
    fn every_metric_has_its_help_type_and_convention() {
        let m = Metrics::new();
        m.worker("hello");
        m.set_cluster(&ClusterCounts {
            pending: [("hello".to_owned(), 1)].into(),
            ..Default::default()
        });
        let s = scrape(&m.render());
        let want = [
            ("bgnode_tasks_accepted_total", "counter"),
            ("bgnode_tasks_started_total", "counter"),
            ("bgnode_tasks_done_total", "counter"),
            ("bgnode_tasks_failed_total", "counter"),
            ("bgnode_tasks_retried_total", "counter"),
            ("bgnode_tasks_dead_total", "counter"),
            ("bgnode_tasks_expired_total", "counter"),
            ("bgnode_tasks_cancelled_total", "counter"),
            ("bgnode_running_tasks", "gauge"),
            ("bgnode_task_wait_seconds", "histogram"),
            ("bgnode_task_run_seconds", "histogram"),
            ("bgnode_pending_tasks", "gauge"),
            ("bgnode_scheduled_tasks", "gauge"),
            ("bgnode_dead_tasks", "gauge"),
            ("bgnode_members", "gauge"),
            ("bgnode_paused_workers", "gauge"),
            ("bgnode_redis_errors_total", "counter"),
            ("bgnode_redis_reconnects_total", "counter"),
            ("bgnode_cluster_sessions", "gauge"),
            ("bgnode_cluster_sessions_opened_total", "counter"),
            ("bgnode_cluster_sessions_closed_total", "counter"),
            ("bgnode_archive_rows_total", "counter"),
            ("bgnode_archive_failures_total", "counter"),
            ("bgnode_archive_outbox", "gauge"),
            ("bgnode_archive_outbox_bound", "gauge"),
        ];
        let names: Vec<&str> = s.kind.keys().map(String::as_str).collect();
        let mut wanted: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
        wanted.sort_unstable();
        assert_eq!(names, wanted, "every metric, and no other");
        for (name, kind) in want {
            assert_eq!(s.kind[name], kind, "{name}");
            let help = &s.help[name];
            assert!(help.len() > 20 && help.ends_with('.'), "{name}: {help}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            assert_eq!(
                kind == "histogram",
                name.ends_with("_seconds"),
                "{name}: times are in seconds"
            );
        }
    }

    #[test]
    fn counts_are_per_worker_and_ends_go_by_state() {
        let m = Metrics::new();
        let a = m.worker("a");
        for state in [
            TaskState::Done,
            TaskState::Done,
            TaskState::Failed,
            TaskState::Retrying,
            TaskState::Dead,
            TaskState::Expired,
            TaskState::Cancelled,
            TaskState::Running,
            TaskState::Queued,
        ] {
            a.ended(state);
        }
        m.worker("b").accepted();
        m.worker("b").ended(TaskState::Dead);
        let s = scrape(&m.render());
        for (name, a, b) in [
            ("done", 2.0, 0.0),
            ("failed", 1.0, 0.0),
            ("retried", 1.0, 0.0),
            ("dead", 1.0, 1.0),
            ("expired", 1.0, 0.0),
            ("cancelled", 1.0, 0.0),
            ("accepted", 0.0, 1.0),
            ("started", 0.0, 0.0),
        ] {
            assert_eq!(
                s.get(&format!("bgnode_tasks_{name}_total{{worker=\"a\"}}")),
                a
            );
            assert_eq!(
                s.get(&format!("bgnode_tasks_{name}_total{{worker=\"b\"}}")),
                b
            );
        }
        assert!(Arc::ptr_eq(&a, &m.worker("a")), "one handle per worker");
    }

    #[test]
    fn an_attempt_counts_its_start_wait_run_and_while_it_runs() {
        let m = Metrics::new();
        let w = m.worker("w");
        let first = w.start(Duration::from_micros(500));
        let second = w.start(Duration::from_secs(700));
        let s = scrape(&m.render());
        assert_eq!(s.get("bgnode_running_tasks{worker=\"w\"}"), 2.0);
        assert_eq!(s.get("bgnode_tasks_started_total{worker=\"w\"}"), 2.0);
        assert_eq!(s.get("bgnode_task_run_seconds_count{worker=\"w\"}"), 0.0);
        drop(first);
        drop(second);
        let s = scrape(&m.render());
        assert_eq!(s.get("bgnode_running_tasks{worker=\"w\"}"), 0.0);
        assert_eq!(s.get("bgnode_task_run_seconds_count{worker=\"w\"}"), 2.0);
        assert_eq!(s.get("bgnode_task_wait_seconds_count{worker=\"w\"}"), 2.0);
        assert!((s.get("bgnode_task_wait_seconds_sum{worker=\"w\"}") - 700.0005).abs() < 1e-6);
    }

    #[test]
    fn time_buckets_run_from_a_millisecond_to_ten_minutes_and_accumulate() {
        let m = Metrics::new();
        let w = m.worker("w");
        for waited in [0.0005, 0.003, 0.003, 42.0, 700.0] {
            drop(w.start(Duration::from_secs_f64(waited)));
        }
        let s = scrape(&m.render());
        let bounds: Vec<String> = s
            .samples
            .keys()
            .filter_map(|k| k.strip_prefix("bgnode_task_wait_seconds_bucket{worker=\"w\",le=\""))
            .map(|k| k.trim_end_matches("\"}").to_owned())
            .collect();
        let mut want: Vec<String> = BUCKETS.iter().map(|b| b.to_string()).collect();
        want.push("+Inf".into());
        let mut sorted = bounds.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want, "1 ms … 10 min and +Inf");
        let bucket = |le: &str| {
            s.get(&format!(
                "bgnode_task_wait_seconds_bucket{{worker=\"w\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.001"), 1.0);
        assert_eq!(bucket("0.0025"), 1.0);
        assert_eq!(bucket("0.005"), 3.0);
        assert_eq!(bucket("30"), 3.0);
        assert_eq!(bucket("60"), 4.0);
        assert_eq!(bucket("600"), 4.0);
        assert_eq!(bucket("+Inf"), 5.0);
        assert_eq!(s.get("bgnode_task_wait_seconds_count{worker=\"w\"}"), 5.0);
    }

    #[test]
    fn worker_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_WORKERS + 10 {
            m.worker(&format!("w{i}")).accepted();
        }
        let s = scrape(&m.render());
        let series: Vec<&String> = s
            .samples
            .keys()
            .filter(|k| k.starts_with("bgnode_tasks_accepted_total{"))
            .collect();
        assert_eq!(series.len(), MAX_WORKERS + 1);
        assert_eq!(
            s.get("bgnode_tasks_accepted_total{worker=\"(other)\"}"),
            10.0
        );
        assert_eq!(s.get("bgnode_tasks_accepted_total{worker=\"w0\"}"), 1.0);
    }

    #[test]
    fn cluster_gauges_show_the_latest_read() {
        let m = Metrics::new();
        let mut counts = ClusterCounts {
            pending: [("a".to_owned(), 3), ("b".to_owned(), 1)].into(),
            scheduled: 4,
            dead: 2,
            members: 3,
            paused: 1,
        };
        m.set_cluster(&counts);
        let s = scrape(&m.render());
        assert_eq!(s.get("bgnode_pending_tasks{worker=\"a\"}"), 3.0);
        assert_eq!(s.get("bgnode_pending_tasks{worker=\"b\"}"), 1.0);
        assert_eq!(s.get("bgnode_scheduled_tasks"), 4.0);
        assert_eq!(s.get("bgnode_dead_tasks"), 2.0);
        assert_eq!(s.get("bgnode_members"), 3.0);
        assert_eq!(s.get("bgnode_paused_workers"), 1.0);
        counts.pending = [("a".to_owned(), 0)].into();
        counts.paused = 0;
        m.set_cluster(&counts);
        let s = scrape(&m.render());
        assert_eq!(s.get("bgnode_pending_tasks{worker=\"a\"}"), 0.0);
        assert!(!s.samples.contains_key("bgnode_pending_tasks{worker=\"b\"}"));
        assert_eq!(s.get("bgnode_paused_workers"), 0.0);
    }

    #[test]
    fn a_lost_connection_counts_one_reconnect_when_it_answers_again() {
        let m = Metrics::new();
        let redis = m.redis();
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        // Error replies as Redis sends them.
        let reply = |wire: &[u8]| match redis::parse_redis_value(wire).unwrap() {
            redis::Value::ServerError(e) => e,
            other => panic!("not an error reply: {other:?}"),
        };
        redis.answered();
        redis.refused(&reply(b"-ERR Function not found\r\n"));
        redis.refused(&reply(
            b"-WRONGTYPE Operation against a key holding the wrong kind\r\n",
        ));
        redis.failed(&io);
        redis.failed(&io);
        redis.answered();
        redis.answered();
        let s = scrape(&m.render());
        assert_eq!(
            s.get("bgnode_redis_errors_total"),
            3.0,
            "an error reply and two failed calls; a library not loaded yet is none"
        );
        assert_eq!(s.get("bgnode_redis_reconnects_total"), 1.0);
    }

    #[test]
    fn sessions_are_counted() {
        let m = Metrics::new();
        let sessions = m.sessions();
        sessions.opened();
        sessions.opened();
        sessions.closed();
        sessions.ready(1);
        let s = scrape(&m.render());
        assert_eq!(s.get("bgnode_cluster_sessions_opened_total"), 2.0);
        assert_eq!(s.get("bgnode_cluster_sessions_closed_total"), 1.0);
        assert_eq!(s.get("bgnode_cluster_sessions"), 1.0);
    }
}
