//! Throughput and latency of real `bgnode` nodes (one, or a cluster of `--nodes N`) running the
//! built-in `bg-noop` worker on a private `redis-server`. Run it (release mode) with
//! `cargo bench --bench throughput -- [--mode drain|paced|both] [--ingress client|inbox|publish]
//! [--tasks N] [--nodes N]
//! [--concurrency N] [--rate R] [--seconds S] [--json] [--redis-stats] [--unix]`; `--help` lists every
//! option.
//!
//! With `--nodes N` above 1 the bench starts `bench-1` .. `bench-N` on the same Redis, each on its
//! own free port, seeded with the others, each with `--concurrency` slots, and waits (polling,
//! under a deadline) until every node reports all the others as peers and one of them holds the
//! ingress subscription, before the warm-up. Each mode reports how many of its completed tasks
//! each node ran (the `node` field of the `done` events) and the CPU time each node process used.
//!
//! - **drain** enqueues `--tasks` tasks as fast as it can with `Client::enqueue_all` (chunks of
//!   `--chunk`, `--in-flight` chunks at once, each enqueuer on its own connection) and waits for
//!   every `done` event. Throughput = tasks / (first enqueue sent .. last `done` event);
//!   "enqueue alone" = tasks / (first enqueue sent .. last enqueue returned), measured while the
//!   node is already draining. Drain latencies are mostly time spent queued. `--ingress inbox`
//!   pushes each chunk with one `LPUSH` on the inbox instead, `--ingress publish` sends it as a
//!   pipeline of raw `PUBLISH`es: the ingress holder's drain rate through each door.
//! - **paced** enqueues one task per `Client::enqueue` call at `--rate` tasks/s (default: half
//!   the drain throughput of the same run, else 5000) for `--seconds`, issuing the due tasks
//!   every 1 ms. This is the load of the "p99 enqueue→done under 10 ms at half the peak" target.
//!
//! Latency is measured per task from the local `Instant` taken just before the enqueue call
//! that carried it was issued (drain: the call carrying its whole chunk) to the `Instant` its
//! `done` event arrived on a dedicated subscription to the events channel. The bench chooses
//! the task ids before sending, so an event that overtakes the enqueue reply still matches.
//! Completion is awaited through events only (never a fixed sleep), up to `--deadline`. At the
//! deadline each task still missing is looked up in Redis and reported: done with its event
//! late or lost, still queued (claimed or not), running, or lost. The exit status is non-zero
//! when any task did not complete or failed. Each mode also reports the CPU time
//! `redis-server` used (`--redis-stats` adds its busiest commands).
//!
//! The shared test helper starts Redis with `appendfsync always`; the bench switches the
//! append-only file off right after start (`CONFIG SET appendonly no`) so it measures the
//! system, not the disk.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use background::{Client, Settings, TaskSpec, new_task_id};
use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The built-in worker that returns `null` at once.
const NOOP: &str = "bg-noop";

/// The most nodes `--nodes` accepts.
const MAX_NODES: usize = 32;

/// How long the nodes of a cluster may take to form a full mesh.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

/// The command line: `--flag value` or `--flag=value`; a repeated option takes its last value.
/// `cargo bench` adds `--bench` (and the filter of `cargo bench FILTER`), which are accepted and
/// ignored; any other unknown flag is an error, so a typo cannot silently run the defaults.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "throughput",
    about = "throughput bench: bgnode nodes (one, or a cluster), bg-noop tasks, a private redis-server",
    override_usage = "cargo bench --bench throughput -- [options]",
    args_override_self = true,
    allow_negative_numbers = true
)]
struct Options {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Tasks in the drain.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = at_least_one)]
    tasks: usize,
    /// bgnode processes forming one cluster on the redis.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_NODES as u64))]
    nodes: usize,
    /// Concurrency of each node, BGNODE_WORKERS__CONCURRENCY.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Paced rate in tasks/s [default: half the drain throughput of this run when the drain ran,
    /// else 5000].
    #[arg(long, value_name = "R", value_parser = above_zero)]
    rate: Option<f64>,
    /// Paced duration in seconds.
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = above_zero)]
    seconds: f64,
    /// Tasks per `enqueue_all` call in the drain.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = at_least_one)]
    chunk: usize,
    /// The door the drain enqueues through: `client` (`Client::enqueue_all`, the durable
    /// enqueue script), `inbox` (`LPUSH {prefix}:inbox`, a chunk per call) or `publish` (a
    /// pipeline of raw `PUBLISH`es, a chunk per round trip).
    #[arg(long, value_enum, default_value_t = Door::Client)]
    ingress: Door,
    /// Tasks left pending (of a worker no node runs) before anything is measured, so the
    /// drain and paced figures show the cost of a deep queue; Redis's memory per pending task
    /// is printed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    backlog: usize,
    /// Drain enqueue calls in flight, one connection each.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = at_least_one)]
    in_flight: usize,
    /// Tasks run (and not measured) before the first mode.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    warmup: usize,
    /// How long to wait for completion before giving up, in seconds.
    #[arg(long, value_name = "S", default_value = "120", value_parser = seconds)]
    deadline: Duration,
    /// Also print one JSON object with every figure.
    #[arg(long)]
    json: bool,
    /// Also print redis-server's busiest commands per mode.
    #[arg(long)]
    redis_stats: bool,
    /// Archive every finished task to a private PostgreSQL (`[saver] archive`), and report how
    /// fast the archive keeps up after the drain.
    #[arg(long)]
    archive: bool,
    /// The niceness of that PostgreSQL (0 to 19). On this bench's machine it shares the cores
    /// with Redis and the nodes; 19 lets it run only on what they leave, standing in for a
    /// database on a host of its own.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    archive_nice: u8,
    /// Reach Redis through its Unix socket (`redis+unix://`) instead of TCP on 127.0.0.1, the
    /// nodes and the bench's clients alike: what a node on Redis's own host can save on every
    /// round trip and every event delivered.
    #[arg(long)]
    unix: bool,
    /// `cargo bench` passes `--bench` to every bench binary.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
    /// `cargo bench FILTER` passes the filter on; this bench has nothing to filter.
    #[arg(value_name = "FILTER", hide = true)]
    _filters: Vec<String>,
}

/// What to measure: `drain`, `paced`, or the drain and then paced (`both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Drain,
    Paced,
    Both,
}

/// The door the drain's tasks go in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Door {
    Client,
    Inbox,
    Publish,
}

/// A whole number of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(_) => Err("is not a whole number".into()),
    }
}

/// A finite number above zero.
fn above_zero(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        Ok(_) => Err("must be a number above zero".into()),
        Err(_) => Err("is not a number".into()),
    }
}

/// A number of seconds above zero.
fn seconds(text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(above_zero(text)?).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    match runtime.block_on(run(&opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: FAILED: some tasks did not complete (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A final event for a task, stamped when it arrived.
struct Finished {
    id: String,
    error: Option<String>,
    /// The node that ran the task.
    node: Option<String>,
    at: Instant,
}

/// The fields of an event the bench reads.
#[derive(serde::Deserialize)]
struct EventMsg {
    event: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    node: Option<String>,
}

/// Subscribes to the events channel on a dedicated pub/sub connection and forwards every final
/// event (`done` or `error`). The receiver yields `None` once the subscription is lost.
async fn subscribe(
    url: &str,
    channel: &str,
) -> anyhow::Result<(
    mpsc::UnboundedReceiver<Finished>,
    tokio::task::JoinHandle<()>,
)> {
    let client = redis::Client::open(url).context("events: bad redis url")?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .context("events: cannot open a pub/sub connection")?;
    pubsub
        .subscribe(channel)
        .await
        .with_context(|| format!("events: cannot subscribe to {channel}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let at = Instant::now();
            let Ok(events) = background::events_in::<EventMsg>(msg.get_payload_bytes()) else {
                continue;
            };
            for ev in events {
                let error = match ev.event.as_str() {
                    "done" => None,
                    "error" => Some(ev.error.unwrap_or_default()),
                    _ => continue,
                };
                let Some(id) = ev.id else { continue };
                let node = ev.node;
                if tx
                    .send(Finished {
                        id,
                        error,
                        node,
                        at,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok((rx, task))
}

/// When the enqueue call carrying tasks `first..first + len` was issued and when it returned
/// (and, in paced mode, when the pacer meant to issue it).
struct Sent {
    first: usize,
    len: usize,
    scheduled: Option<Instant>,
    sent: Instant,
    acked: Instant,
}

/// The enqueuers of a phase: their tasks, and each call's [`Sent`] as soon as it returns.
struct Enqueuers {
    tasks: JoinSet<anyhow::Result<()>>,
    sent: mpsc::UnboundedReceiver<Sent>,
}

/// One measured run: its tasks and what was seen of each.
struct Phase {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    sent: Vec<Option<Instant>>,
    acked: Vec<Option<Instant>>,
    /// When the pacer meant to send each task (paced mode).
    scheduled: Vec<Option<Instant>>,
    finished: Vec<Option<Instant>>,
    errors: Vec<Option<String>>,
    /// The node named by each task's final event.
    ran_on: Vec<Option<String>>,
    seen: usize,
    failed: usize,
    enqueued: usize,
}

impl Phase {
    /// A phase of `n` new no-op tasks; returns it with their specs.
    fn new(n: usize) -> (Phase, Vec<TaskSpec>) {
        let ids: Vec<String> = (0..n).map(|_| new_task_id()).collect();
        let specs = ids
            .iter()
            .map(|id| TaskSpec::new(NOOP, Value::Null).id(id.clone()))
            .collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let phase = Phase {
            ids,
            index,
            sent: vec![None; n],
            acked: vec![None; n],
            scheduled: vec![None; n],
            finished: vec![None; n],
            errors: vec![None; n],
            ran_on: vec![None; n],
            seen: 0,
            failed: 0,
            enqueued: 0,
        };
        (phase, specs)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn record_event(&mut self, ev: Finished) {
        let Some(&i) = self.index.get(&ev.id) else {
            return;
        };
        if self.finished[i].is_some() {
            return;
        }
        self.finished[i] = Some(ev.at);
        self.ran_on[i] = ev.node;
        self.seen += 1;
        if let Some(error) = ev.error {
            self.failed += 1;
            self.errors[i] = Some(error);
        }
    }

    fn record_sent(&mut self, s: &Sent) {
        for i in s.first..s.first + s.len {
            if self.acked[i].is_none() {
                self.enqueued += 1;
            }
            self.scheduled[i] = s.scheduled;
            self.sent[i] = Some(s.sent);
            self.acked[i] = Some(s.acked);
        }
    }

    fn complete(&self) -> bool {
        self.seen == self.len() && self.enqueued == self.len()
    }
}

/// How a phase ended.
struct Ending {
    /// Every task was enqueued and its final event arrived before the deadline.
    complete: bool,
    /// Tasks without a final event by the deadline, by what Redis says of them.
    missing: BTreeMap<&'static str, usize>,
}

/// Waits for the enqueuers and every final event of the phase, at most until `deadline`.
/// Returns true when the phase completed.
async fn collect(
    phase: &mut Phase,
    enqueuers: &mut Enqueuers,
    events: &mut mpsc::UnboundedReceiver<Finished>,
    nodes: &mut [common::NodeProc],
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let mut sent_open = true;
    loop {
        if phase.complete() {
            return Ok(true);
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => phase.record_event(ev),
                None => {
                    eprintln!("bench: the events subscription was lost; checking redis instead");
                    return Ok(false);
                }
            },
            sent = enqueuers.sent.recv(), if sent_open => match sent {
                Some(sent) => phase.record_sent(&sent),
                None => sent_open = false,
            },
            joined = enqueuers.tasks.join_next(), if !enqueuers.tasks.is_empty() => match joined {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => return Err(e.context("enqueue failed")),
                Some(Err(e)) => bail!("an enqueuer task died: {e}"),
            },
            _ = check.tick() => check_alive(nodes)?,
            () = &mut sleep => return Ok(false),
        }
    }
}

/// Fails with its log when a node has exited.
fn check_alive(nodes: &mut [common::NodeProc]) -> anyhow::Result<()> {
    for node in nodes {
        if let Some(status) = node.try_exit() {
            bail!(
                "node {} exited ({status}); its log:\n{}",
                node.id,
                node.log()
            );
        }
    }
    Ok(())
}

/// How long to keep listening, after the deadline, for the events of tasks Redis says are done.
const GRACE: Duration = Duration::from_secs(2);

/// Explains the tasks without a final event: reads their state in Redis; for those that are
/// done, listens a little longer to tell a late event from a lost one.
async fn diagnose(rig: &mut Rig, phase: &Phase) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let missing: Vec<usize> = (0..phase.len())
        .filter(|&i| phase.finished[i].is_none())
        .collect();
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = HashSet::new();
    for chunk in missing.chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("HMGET")
                .arg(format!("{}:task:{}", rig.prefix, phase.ids[i]))
                .arg("state")
                .arg("node");
        }
        let states: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(&mut rig.admin)
            .await
            .context("cannot read task states from redis")?;
        for (&i, (state, node)) in chunk.iter().zip(states) {
            let claimed = node.is_some_and(|n| !n.is_empty());
            let label = match state.as_deref() {
                Some("done") => {
                    done.insert(phase.ids[i].as_str());
                    continue;
                }
                Some("failed") => "failed without an event",
                Some("queued") if claimed => "queued, claimed by the node, not started (slow)",
                Some("queued") => "queued, unclaimed in the pending set (slow, or a missed wake)",
                Some("running") => "still running (slow)",
                Some(_) => "in an unknown state",
                None if phase.acked[i].is_some() => "LOST: no record after enqueue returned",
                None => "not enqueued: the enqueue call had not returned",
            };
            *by_state.entry(label).or_insert(0) += 1;
        }
    }
    let done_total = done.len();
    let until = tokio::time::Instant::now() + GRACE;
    while !done.is_empty() {
        match tokio::time::timeout_at(until, rig.events.recv()).await {
            Ok(Some(ev)) => {
                done.remove(ev.id.as_str());
            }
            Ok(None) | Err(_) => break,
        }
    }
    if done.len() < done_total {
        by_state.insert(
            "done, event arrived after the deadline",
            done_total - done.len(),
        );
    }
    if !done.is_empty() {
        by_state.insert("done, event LOST", done.len());
    }
    Ok(by_state)
}

/// Sends one chunk through `door`: one `enqueue_all` call, one `LPUSH`, or one pipeline of
/// `PUBLISH`es.
async fn send_chunk(
    door: Door,
    client: &Client,
    con: &mut redis::aio::MultiplexedConnection,
    names: &(String, String),
    part: Vec<TaskSpec>,
) -> anyhow::Result<()> {
    let want: Vec<String> = part.iter().filter_map(|s| s.id.clone()).collect();
    let envelopes = || -> Vec<String> {
        part.iter()
            .map(|s| json!({"worker": s.worker, "args": s.args, "id": s.id}).to_string())
            .collect()
    };
    match door {
        Door::Client => {
            let ids = client.enqueue_all(part.clone()).await?;
            if ids != want {
                bail!("enqueue_all returned other ids than the ones given");
            }
        }
        Door::Inbox => {
            redis::cmd("LPUSH")
                .arg(format!("{}:inbox", names.0))
                .arg(envelopes())
                .query_async::<()>(con)
                .await?;
        }
        Door::Publish => {
            let mut pipe = redis::pipe();
            for e in envelopes() {
                pipe.cmd("PUBLISH").arg(&names.1).arg(e);
            }
            let took: Vec<i64> = pipe.query_async(con).await?;
            if took.iter().any(|n| *n != 1) {
                bail!("a PUBLISH reached no subscriber");
            }
        }
    }
    Ok(())
}

/// Enqueues `specs` through `door` in chunks, `clients.len()` calls in flight.
fn spawn_drain(
    clients: &[Client],
    cons: &[redis::aio::MultiplexedConnection],
    names: &(String, String),
    door: Door,
    specs: Vec<TaskSpec>,
    chunk: usize,
) -> Enqueuers {
    let mut queue = VecDeque::new();
    let mut specs = specs.into_iter();
    let mut first = 0;
    loop {
        let part: Vec<TaskSpec> = specs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let len = part.len();
        queue.push_back((first, part));
        first += len;
    }
    let queue = Arc::new(Mutex::new(queue));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for (client, con) in clients.iter().zip(cons) {
        let client = client.clone();
        let mut con = con.clone();
        let names = names.clone();
        let queue = queue.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            loop {
                let next = queue.lock().expect("chunk queue poisoned").pop_front();
                let Some((first, part)) = next else {
                    return Ok(());
                };
                let len = part.len();
                let sent = Instant::now();
                send_chunk(door, &client, &mut con, &names, part).await?;
                let acked = Instant::now();
                let _ = tx.send(Sent {
                    first,
                    len,
                    scheduled: None,
                    sent,
                    acked,
                });
            }
        });
    }
    Enqueuers { tasks, sent: rx }
}

/// Enqueues one task per `enqueue` call at `rate` tasks/s, issuing the due ones every 1 ms.
fn spawn_paced(clients: &[Client], specs: Vec<TaskSpec>, rate: f64) -> Enqueuers {
    let clients = clients.to_vec();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let total = specs.len();
        let mut specs = specs.into_iter().enumerate();
        let mut calls: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = Instant::now();
        let mut issued = 0;
        while issued < total {
            tick.tick().await;
            // Task i is due at start + i / rate.
            let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
            while issued < due {
                let Some((i, spec)) = specs.next() else { break };
                let client = clients[i % clients.len()].clone();
                let tx = tx.clone();
                let scheduled = Some(start + Duration::from_secs_f64(i as f64 / rate));
                let sent = Instant::now();
                calls.spawn(async move {
                    client.enqueue(spec).await?;
                    let _ = tx.send(Sent {
                        first: i,
                        len: 1,
                        scheduled,
                        sent,
                        acked: Instant::now(),
                    });
                    Ok(())
                });
                issued += 1;
            }
            while let Some(done) = calls.try_join_next() {
                done.map_err(|e| anyhow!("an enqueue call died: {e}"))??;
            }
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| anyhow!("an enqueue call died: {e}"))??;
        }
        Ok(())
    });
    Enqueuers { tasks, sent: rx }
}

/// Latency figures in milliseconds.
struct Latency {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |p: f64| {
            let rank = (p / 100.0 * samples.len() as f64).ceil() as usize;
            ms(samples[rank.clamp(1, samples.len()) - 1])
        };
        let total: Duration = samples.iter().sum();
        Some(Latency {
            count: samples.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: ms(samples[samples.len() - 1]),
            mean: ms(total) / samples.len() as f64,
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms (mean {:.2} ms)",
            self.p50, self.p90, self.p99, self.max, self.mean
        )
    }

    fn json(&self) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "count": self.count, "p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99),
            "max": r(self.max), "mean": r(self.mean),
        })
    }
}

/// What a phase measured.
struct Report {
    tasks: usize,
    completed: usize,
    failed: usize,
    /// Tasks whose enqueue call returned.
    enqueued: usize,
    /// The error of the first failed task, if any.
    first_error: Option<String>,
    /// First enqueue sent to last final event, seconds.
    elapsed: f64,
    /// First enqueue sent to last enqueue returned, seconds.
    enqueue_elapsed: f64,
    /// Enqueue sent to final event.
    latency: Option<Latency>,
    /// Enqueue call sent to returned.
    enqueue_call: Option<Latency>,
    /// How far behind its schedule the pacer sent a task (paced mode).
    pacer_lag: Option<Latency>,
    /// CPU time redis-server used during the phase, seconds.
    redis_cpu: Option<f64>,
    /// redis-server's command statistics for the phase, busiest first (with --redis-stats).
    redis_commands: Vec<CommandStat>,
    /// Completed tasks by the node that ran them (the `node` field of their `done` event).
    per_node: BTreeMap<String, usize>,
    /// CPU time each node process used during the phase, seconds (empty without /proc).
    node_cpu: BTreeMap<String, f64>,
    ok: bool,
    missing: BTreeMap<&'static str, usize>,
}

fn per_second(n: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// `n` as a fraction of `total` (0 when `total` is 0).
fn share(n: usize, total: usize) -> f64 {
    if total > 0 {
        n as f64 / total as f64
    } else {
        0.0
    }
}

/// Node ids without duplicates, `bench-2` before `bench-10`.
fn node_order<'a>(ids: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut ids: Vec<&String> = ids.collect::<HashSet<_>>().into_iter().collect();
    ids.sort_by_key(|id| (id.len(), id.as_str()));
    ids
}

impl Report {
    fn of(phase: &Phase, ending: Ending) -> Report {
        let first_sent = phase.sent.iter().flatten().min().copied();
        let last_acked = phase.acked.iter().flatten().max().copied();
        let last_finished = phase.finished.iter().flatten().max().copied();
        let span = |end: Option<Instant>| match (first_sent, end) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let pairs = |from: &[Option<Instant>], to: &[Option<Instant>]| -> Vec<Duration> {
            from.iter()
                .zip(to)
                .filter_map(|(a, b)| Some(b.as_ref()?.saturating_duration_since(*a.as_ref()?)))
                .collect()
        };
        let done: Vec<Option<Instant>> = (0..phase.len())
            .map(|i| phase.finished[i].filter(|_| phase.errors[i].is_none()))
            .collect();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for (i, node) in phase.ran_on.iter().enumerate() {
            if done[i].is_some() {
                let node = node.as_deref().unwrap_or("(no node in the event)");
                *per_node.entry(node.to_owned()).or_insert(0) += 1;
            }
        }
        let pacer_lag = if phase.scheduled.iter().any(Option::is_some) {
            Latency::of(pairs(&phase.scheduled, &phase.sent))
        } else {
            None
        };
        Report {
            tasks: phase.len(),
            completed: phase.seen - phase.failed,
            failed: phase.failed,
            enqueued: phase.enqueued,
            first_error: phase.errors.iter().flatten().next().cloned(),
            elapsed: span(last_finished),
            enqueue_elapsed: span(last_acked),
            latency: Latency::of(pairs(&phase.sent, &done)),
            enqueue_call: Latency::of(pairs(&phase.sent, &phase.acked)),
            pacer_lag,
            redis_cpu: None,
            redis_commands: Vec::new(),
            per_node,
            node_cpu: BTreeMap::new(),
            ok: ending.complete && phase.failed == 0,
            missing: ending.missing,
        }
    }

    /// Tasks finished (done or failed) per second, first enqueue to last final event.
    fn throughput(&self) -> f64 {
        per_second(self.completed + self.failed, self.elapsed)
    }

    /// Tasks enqueued per second, first enqueue sent to last enqueue returned.
    fn enqueue_rate(&self) -> f64 {
        per_second(self.enqueued, self.enqueue_elapsed)
    }

    fn latency_text(&self) -> String {
        self.latency
            .as_ref()
            .map_or_else(|| "no latency samples".into(), Latency::text)
    }

    /// The count line: all tasks, or how many of them completed.
    fn count_text(&self) -> String {
        if self.completed == self.tasks {
            format!("{}", self.tasks)
        } else {
            format!("INCOMPLETE: {} of {}", self.completed, self.tasks)
        }
    }

    /// Prints where redis-server's time went.
    fn print_redis(&self, name: &str) {
        if let Some(cpu) = self.redis_cpu {
            let share = if self.elapsed > 0.0 {
                format!(
                    "{:.0}% of one core over the run, ",
                    100.0 * cpu / self.elapsed
                )
            } else {
                String::new()
            };
            println!(
                "{name}: redis-server used {cpu:.2} s of CPU ({share}{:.1} µs per task)",
                1e6 * cpu / self.tasks as f64
            );
        }
        if !self.redis_commands.is_empty() {
            println!(
                "{name}: redis-server's busiest commands (those run by scripts are counted again \
                 inside evalsha):"
            );
        }
        for c in self.redis_commands.iter().take(12) {
            println!(
                "{name}:   {:<12} {:>8} calls {:>5.2} per task {:>6.1} µs per task",
                c.name,
                c.calls,
                c.calls as f64 / self.tasks as f64,
                c.usec as f64 / self.tasks as f64,
            );
        }
    }

    /// Prints each node's share of the completed tasks and the CPU time it used.
    fn print_nodes(&self, name: &str) {
        for id in node_order(self.per_node.keys().chain(self.node_cpu.keys())) {
            let n = self.per_node.get(id).copied().unwrap_or(0);
            let cpu = match self.node_cpu.get(id) {
                Some(cpu) if self.elapsed > 0.0 => format!(
                    ", {cpu:.2} s of CPU ({:.0}% of one core over the run)",
                    100.0 * cpu / self.elapsed
                ),
                Some(cpu) => format!(", {cpu:.2} s of CPU"),
                None => String::new(),
            };
            println!(
                "{name}: node {id}: {n} tasks ({:.1}% of those completed){cpu}",
                100.0 * share(n, self.completed)
            );
        }
        if self.node_cpu.len() > 1 {
            let total: f64 = self.node_cpu.values().sum();
            println!(
                "{name}: the nodes used {total:.2} s of CPU together ({:.1} µs per task)",
                1e6 * total / self.tasks as f64
            );
        }
    }

    /// Prints what went wrong, if anything.
    fn print_problems(&self, name: &str) {
        if self.failed > 0 {
            println!(
                "{name}: {} tasks FAILED (error events); the first: {}",
                self.failed,
                self.first_error.as_deref().unwrap_or("")
            );
        }
        if !self.missing.is_empty() {
            let total: usize = self.missing.values().sum();
            println!(
                "{name}: {total} of {} tasks had no final event by the deadline; what redis says \
                 of them:",
                self.tasks
            );
            for (what, n) in &self.missing {
                println!("{name}:   {n:>7} {what}");
            }
        }
    }

    fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "tasks": self.tasks,
            "completed": self.completed,
            "failed": self.failed,
            "enqueued": self.enqueued,
            "ok": self.ok,
            "seconds": r(self.elapsed),
            "throughput_per_s": self.throughput().round(),
            "enqueue_seconds": r(self.enqueue_elapsed),
            "enqueue_per_s": self.enqueue_rate().round(),
            "latency_ms": self.latency.as_ref().map(Latency::json),
            "enqueue_call_ms": self.enqueue_call.as_ref().map(Latency::json),
            "pacer_lag_ms": self.pacer_lag.as_ref().map(Latency::json),
            "redis_cpu_s": self.redis_cpu.map(r),
            "redis_commands": self.redis_commands.iter().map(|c| json!({
                "command": c.name, "calls": c.calls, "usec": c.usec,
            })).collect::<Vec<_>>(),
            "missing_by_state": self.missing,
            "per_node": node_order(self.per_node.keys().chain(self.node_cpu.keys()))
                .into_iter()
                .map(|id| {
                    let n = self.per_node.get(id).copied().unwrap_or(0);
                    let v = json!({
                        "tasks": n,
                        "share": r(share(n, self.completed)),
                        "cpu_s": self.node_cpu.get(id).copied().map(r),
                    });
                    (id.clone(), v)
                })
                .collect::<serde_json::Map<String, Value>>(),
        })
    }
}

/// One line of `INFO commandstats`.
struct CommandStat {
    name: String,
    calls: u64,
    usec: u64,
}

/// The `INFO` section `section` as name → value.
async fn info(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .with_context(|| format!("INFO {section}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// CPU time redis-server has used so far (user + system), seconds.
async fn redis_cpu(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    Ok(info(con, "cpu")
        .await?
        .iter()
        .filter(|(k, _)| k == "used_cpu_user" || k == "used_cpu_sys")
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum())
}

/// redis-server's `used_memory` (bytes).
async fn redis_memory(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    info(con, "memory")
        .await?
        .iter()
        .find(|(k, _)| k == "used_memory")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .context("INFO memory has no used_memory")
}

/// The worker of the backlog's tasks: no node runs it, so they stay pending.
const BACKLOG: &str = "bench-backlog";

/// What filling the backlog took.
struct Backlog {
    elapsed: f64,
    /// Redis's `used_memory` after, less before.
    bytes: i64,
}

/// redis-server's command statistics since the last reset, busiest first. Commands run from
/// scripts are counted under their own names as well as under the script call.
async fn command_stats(
    con: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<CommandStat>> {
    let mut stats: Vec<CommandStat> = info(con, "commandstats")
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("cmdstat_")?.to_owned();
            let field = |f: &str| {
                v.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| *key == f)
                    .and_then(|(_, n)| n.parse::<u64>().ok())
            };
            Some(CommandStat {
                name,
                calls: field("calls")?,
                usec: field("usec")?,
            })
        })
        .collect();
    stats.sort_by_key(|c| std::cmp::Reverse(c.usec));
    Ok(stats)
}

/// CPU time (user + system) PostgreSQL's processes have used so far, seconds: the postmaster's
/// own and its finished children's, plus each live child's (the backends). 0 without /proc.
fn postgres_cpu(postmaster: u32) -> f64 {
    const USER_HZ: f64 = 100.0;
    let read = |pid: &str| -> Option<(String, Vec<f64>)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let times = fields
            .get(11..15)?
            .iter()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .collect();
        Some(((*fields.get(1)?).to_owned(), times))
    };
    let me = postmaster.to_string();
    let mut ticks = read(&me).map_or(0.0, |(_, t)| t.iter().sum());
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if let Some((parent, t)) = read(pid).filter(|(parent, _)| *parent == me) {
                let _ = parent;
                ticks += t[0] + t[1];
            }
        }
    }
    ticks / USER_HZ
}

/// CPU time (user + system, all threads) each `bgnode` child of this process has used so far,
/// seconds, by node id. The test helper does not expose the child's pid, so the children are
/// found in /proc by parent pid and told apart by their `BGNODE_NODE__ID`. Empty where /proc
/// cannot be read.
fn node_cpu() -> BTreeMap<String, f64> {
    // /proc/<pid>/stat counts in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    const USER_HZ: f64 = 100.0;
    let me = std::process::id().to_string();
    let mut cpu = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: utime and stime are fields 14 and 15; comm may hold
        // spaces and parentheses, so the fields are counted from the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if !head.ends_with("(bgnode") || fields.get(1) != Some(&me.as_str()) {
            continue;
        }
        let ticks: f64 = fields
            .get(11..13)
            .into_iter()
            .flatten()
            .filter_map(|f| f.parse::<f64>().ok())
            .sum();
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let id = environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"BGNODE_NODE__ID="))
            .map(|id| String::from_utf8_lossy(id).into_owned());
        if let Some(id) = id {
            cpu.insert(id, ticks / USER_HZ);
        }
    }
    cpu
}

/// Waits (polling, under `--deadline`) until the archive holds `expect` rows, then prints how
/// far behind the drain it was and the rate it wrote at.
async fn archive_catch_up(
    pg: &common::Postgres,
    rig: &mut Rig,
    expect: u64,
    began: Instant,
    drained: Instant,
    opts: &Options,
) -> anyhow::Result<Value> {
    let rows = || async {
        pg.query_async("SELECT count(*) FROM bgnode_tasks")
            .await
            .first()
            .and_then(|r| r[0].as_deref().and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let behind_at_end: u64 = redis::cmd("LLEN")
        .arg(format!("{}:archive:outbox", rig.prefix))
        .query_async(&mut rig.admin)
        .await
        .unwrap_or(0);
    let rows_at_end = rows().await;
    let cpu_before = pg.pid().map(postgres_cpu);
    let deadline = Instant::now() + opts.deadline;
    let mut written = rows_at_end;
    while written < expect {
        if Instant::now() > deadline {
            bail!("the archive holds {written} of {expect} rows at the deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        written = rows().await;
    }
    let done = Instant::now();
    let pg_cpu = match (pg.pid().map(postgres_cpu), cpu_before) {
        (Some(after), Some(_)) => Some(after),
        _ => None,
    };
    let drain_rows = opts.tasks as f64;
    let whole = done.duration_since(began).as_secs_f64();
    let lag = done.duration_since(drained).as_secs_f64();
    let after = expect.saturating_sub(rows_at_end);
    println!(
        "archive: {expect} rows in PostgreSQL (warm-up included); the drain's {drain_rows:.0} \
         written {whole:.2} s after its first enqueue = {:.0} rows/s; {lag:.2} s behind the last \
         done event ({behind_at_end} rows waited in the outbox then, {after} rows written after, \
         at {:.0} rows/s)",
        drain_rows / whole,
        if lag > 0.0 { after as f64 / lag } else { 0.0 },
    );
    if let Some(cpu) = pg_cpu {
        println!(
            "archive: postgresql used {cpu:.2} s of CPU since it started ({:.1} µs per row written)",
            cpu * 1e6 / expect as f64
        );
    }
    Ok(json!({
        "postgres_cpu_s": pg_cpu,
        "rows": expect,
        "rows_per_s": drain_rows / whole,
        "lag_s": lag,
        "outbox_at_end": behind_at_end,
    }))
}

/// Starts `n` nodes on `redis`, each with `concurrency` slots. One node is started as the tests
/// start one and is ready once it holds the ingress subscription. Several are `bench-1` ..
/// `bench-n`, each listening on its own free port and seeded with the others; they are ready
/// once every node reports all the others as peers and one of them holds the ingress
/// subscription.
async fn start_nodes(
    redis: &common::Redis,
    workers: &std::path::Path,
    n: usize,
    concurrency: u32,
    channel: &str,
    archive: Option<&str>,
) -> anyhow::Result<Vec<common::NodeProc>> {
    let concurrency = concurrency.to_string();
    let archive_env = archive.map(|url| ("BGNODE_SAVER__ARCHIVE", url));
    if n == 1 {
        let mut env = vec![("BGNODE_WORKERS__CONCURRENCY", concurrency.as_str())];
        env.extend(archive_env);
        let node = common::NodeProc::start(redis, "bench-1", workers, &env);
        node.ready().await;
        return Ok(vec![node]);
    }
    let ids: Vec<String> = (1..=n).map(|i| format!("bench-{i}")).collect();
    let listen: Vec<String> = ids
        .iter()
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for (i, id) in ids.iter().enumerate() {
        let seeds: Vec<&str> = listen
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, addr)| addr.as_str())
            .collect();
        let seeds = seeds.join(",");
        let mut env = vec![
            ("BGNODE_NODE__LISTEN", listen[i].as_str()),
            ("BGNODE_NODE__SEEDS", seeds.as_str()),
            ("BGNODE_WORKERS__CONCURRENCY", concurrency.as_str()),
        ];
        env.extend(archive_env);
        nodes.push(common::NodeProc::start(redis, id, workers, &env));
    }
    let client = Client::connect(&redis.url)
        .await
        .context("the client cannot connect")?;
    let mut con = redis.con().await;
    let started = Instant::now();
    let deadline = started + MESH_TIMEOUT;
    loop {
        check_alive(&mut nodes)?;
        let members = client.info().await;
        let subscribers: Option<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut con)
            .await
            .ok();
        let ingress = subscribers.is_some_and(|(_, count)| count > 0);
        let seen = match members {
            Ok(members) => {
                let meshed = ids.iter().all(|id| {
                    members.iter().any(|m| {
                        m.id == *id
                            && m.state == "up"
                            && m.workers.contains_key(NOOP)
                            && ids.iter().filter(|o| *o != id).all(|o| m.peers.contains(o))
                    })
                });
                if meshed && ingress {
                    println!(
                        "bench: {n} nodes formed a full mesh in {:.2} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(nodes);
                }
                let mut seen = members
                    .iter()
                    .map(|m| format!("{} {} peers {:?}", m.id, m.state, m.peers))
                    .collect::<Vec<_>>()
                    .join("; ");
                if !ingress {
                    seen.push_str("; nobody subscribed to the task channel yet");
                }
                seen
            }
            Err(e) => format!("info failed: {e}"),
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|node| format!("---- log of node {} ----\n{}", node.id, node.log()))
                .collect();
            bail!(
                "the {n} nodes did not form a full mesh within {MESH_TIMEOUT:?}; last seen: \
                 {seen}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What was measured just before a phase.
struct Before {
    redis_cpu: f64,
    node_cpu: BTreeMap<String, f64>,
}

/// Everything a phase needs from the running system.
struct Rig {
    nodes: Vec<common::NodeProc>,
    clients: Vec<Client>,
    /// One plain connection per enqueuer, for the inbox and publish doors.
    cons: Vec<redis::aio::MultiplexedConnection>,
    /// The task channel (the publish door).
    channel: String,
    events: mpsc::UnboundedReceiver<Finished>,
    admin: redis::aio::MultiplexedConnection,
    /// The key prefix: task records are `{prefix}:task:{id}` (PROTOCOL.md).
    prefix: String,
    redis_stats: bool,
}

impl Rig {
    /// Leaves `n` tasks pending for [`BACKLOG`], enqueued in chunks of 1,000 with
    /// `--in-flight` calls at once; measures Redis's memory before and after.
    async fn backlog(&mut self, n: usize, opts: &Options) -> anyhow::Result<Backlog> {
        let before = redis_memory(&mut self.admin).await?;
        let began = Instant::now();
        let chunks: Vec<usize> = (0..n).step_by(1000).map(|at| (n - at).min(1000)).collect();
        let clients = self.clients.clone();
        let mut calls = futures::stream::iter(chunks.into_iter().enumerate())
            .map(|(i, size)| {
                let client = clients[i % clients.len()].clone();
                async move {
                    let specs = (0..size)
                        .map(|_| TaskSpec::new(BACKLOG, json!(null)))
                        .collect();
                    client.enqueue_all(specs).await
                }
            })
            .buffer_unordered(opts.in_flight);
        while let Some(done) = calls.next().await {
            done.context("enqueueing the backlog failed")?;
        }
        let elapsed = began.elapsed().as_secs_f64();
        let after = redis_memory(&mut self.admin).await?;
        Ok(Backlog {
            elapsed,
            bytes: after - before,
        })
    }

    /// Waits for a phase and explains whatever is missing at the deadline.
    async fn finish(
        &mut self,
        mut phase: Phase,
        mut enqueuers: Enqueuers,
        deadline: tokio::time::Instant,
        before: Before,
    ) -> anyhow::Result<Report> {
        let complete = collect(
            &mut phase,
            &mut enqueuers,
            &mut self.events,
            &mut self.nodes,
            deadline,
        )
        .await?;
        enqueuers.tasks.abort_all();
        let missing = if complete {
            BTreeMap::new()
        } else {
            if phase.enqueued < phase.len() {
                println!(
                    "bench: only {} of {} tasks were enqueued (their enqueue call returned) by \
                     the deadline",
                    phase.enqueued,
                    phase.len()
                );
            }
            diagnose(self, &phase).await?
        };
        let mut report = Report::of(&phase, Ending { complete, missing });
        report.redis_cpu = Some(redis_cpu(&mut self.admin).await? - before.redis_cpu);
        report.node_cpu = node_cpu()
            .into_iter()
            .filter_map(|(id, cpu)| Some((id.clone(), cpu - before.node_cpu.get(&id)?)))
            .collect();
        for node in &self.nodes {
            report.per_node.entry(node.id.clone()).or_insert(0);
        }
        if self.redis_stats {
            report.redis_commands = command_stats(&mut self.admin).await?;
        }
        Ok(report)
    }

    /// Resets the command statistics (with --redis-stats); returns the CPU time redis-server and
    /// the nodes have used so far.
    async fn before_phase(&mut self) -> anyhow::Result<Before> {
        if self.redis_stats {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async::<()>(&mut self.admin)
                .await
                .context("CONFIG RESETSTAT")?;
        }
        Ok(Before {
            redis_cpu: redis_cpu(&mut self.admin).await?,
            node_cpu: node_cpu(),
        })
    }

    async fn drain(&mut self, n: usize, opts: &Options) -> anyhow::Result<Report> {
        let (phase, specs) = Phase::new(n);
        let before = self.before_phase().await?;
        let deadline = tokio::time::Instant::now() + opts.deadline;
        let enqueuers = spawn_drain(
            &self.clients,
            &self.cons,
            &(self.prefix.clone(), self.channel.clone()),
            opts.ingress,
            specs,
            opts.chunk,
        );
        self.finish(phase, enqueuers, deadline, before).await
    }

    async fn paced(&mut self, rate: f64, seconds: f64, opts: &Options) -> anyhow::Result<Report> {
        let n = ((rate * seconds).round() as usize).max(1);
        let (phase, specs) = Phase::new(n);
        let before = self.before_phase().await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs_f64(seconds) + opts.deadline;
        let enqueuers = spawn_paced(&self.clients, specs, rate);
        self.finish(phase, enqueuers, deadline, before).await
    }
}

async fn run(opts: &Options) -> anyhow::Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = Settings::defaults();
    let prefix = settings.redis.prefix.clone();

    let mut redis = common::Redis::start();
    if opts.unix {
        redis.url = redis.socket_url();
        println!(
            "bench: nodes and clients reach redis-server at {}",
            redis.url
        );
    }
    let mut admin = redis.con().await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async::<()>(&mut admin)
        .await
        .context("CONFIG SET appendonly no")?;
    println!(
        "bench: redis-server on port {}: sent CONFIG SET appendonly no (the test helper starts \
         it with appendfsync always; this bench measures the system, not the disk)",
        redis.port
    );

    let postgres = opts.archive.then(common::Postgres::start);
    if let Some(pg) = &postgres {
        println!(
            "bench: archive on: every node writes finished tasks to a private PostgreSQL on port {} (nice {})",
            pg.port, opts.archive_nice
        );
        if opts.archive_nice > 0 {
            // Its backends are forked later and inherit the postmaster's niceness.
            let pid = pg.pid().context("postgres has no pid")?;
            let status = std::process::Command::new("renice")
                .args(["-n", &opts.archive_nice.to_string(), "-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .context("cannot run renice")?;
            anyhow::ensure!(status.success(), "renice of postgres failed: {status}");
        }
    }
    let workers = tempfile::tempdir().context("cannot create the empty workers folder")?;
    let nodes = start_nodes(
        &redis,
        workers.path(),
        opts.nodes,
        opts.concurrency,
        &settings.redis.channel,
        postgres.as_ref().map(|pg| pg.url.as_str()),
    )
    .await?;
    if opts.nodes == 1 {
        println!(
            "bench: machine has {cores} cores; node bench-1 runs {NOOP} with concurrency {}",
            opts.concurrency
        );
    } else {
        println!(
            "bench: machine has {cores} cores; nodes bench-1 .. bench-{} each run {NOOP} with \
             concurrency {}",
            opts.nodes, opts.concurrency
        );
    }

    let (events, listener) = subscribe(&redis.url, &settings.redis.events).await?;
    let mut clients = Vec::with_capacity(opts.in_flight);
    let mut cons = Vec::with_capacity(opts.in_flight);
    for _ in 0..opts.in_flight {
        clients.push(
            Client::connect(&redis.url)
                .await
                .context("the client cannot connect")?,
        );
        cons.push(redis.con().await);
    }
    let mut rig = Rig {
        nodes,
        clients,
        cons,
        channel: settings.redis.channel.clone(),
        events,
        admin,
        prefix,
        redis_stats: opts.redis_stats,
    };

    let mut ok = true;
    if opts.warmup > 0 {
        let warm = rig.drain(opts.warmup, opts).await?;
        warm.print_problems("warm-up");
        ok &= warm.ok;
        println!(
            "warm-up: {} tasks in {:.2} s (not counted)",
            warm.tasks, warm.elapsed
        );
    }

    let mut backlog_json = Value::Null;
    if opts.backlog > 0 {
        let backlog = rig.backlog(opts.backlog, opts).await?;
        backlog_json = json!({
            "tasks": opts.backlog,
            "seconds": backlog.elapsed,
            "bytes_per_task": backlog.bytes as f64 / opts.backlog as f64,
        });
        println!(
            "backlog: {} tasks pending (worker {BACKLOG}, which no node runs), enqueued in {:.1} s \
             = {:.0} tasks/s; redis used_memory +{:.1} MB = {:.0} bytes per pending task",
            opts.backlog,
            backlog.elapsed,
            opts.backlog as f64 / backlog.elapsed,
            backlog.bytes as f64 / 1e6,
            backlog.bytes as f64 / opts.backlog as f64,
        );
    }

    let mut out = json!({
        "cores": cores,
        "nodes": opts.nodes,
        "concurrency": opts.concurrency,
        "worker": NOOP,
        "redis_appendonly": "no",
        "backlog": backlog_json,
    });

    let mut drain_rate = None;
    if matches!(opts.mode, Mode::Drain | Mode::Both) {
        let began = Instant::now();
        let report = rig.drain(opts.tasks, opts).await?;
        let drained = Instant::now();
        let tput = report.throughput();
        println!(
            "drain: {} no-op tasks in {:.2} s = {:.0} tasks/s (enqueue alone {:.0}/s: {} calls \
             of {}, {} in flight); latency enqueue→done {}",
            report.count_text(),
            report.elapsed,
            tput,
            report.enqueue_rate(),
            report.tasks.div_ceil(opts.chunk),
            opts.chunk,
            opts.in_flight,
            report.latency_text(),
        );
        if let Some(call) = &report.enqueue_call {
            println!("drain: enqueue_all call {}", call.text());
        }
        report.print_redis("drain");
        report.print_nodes("drain");
        report.print_problems("drain");
        ok &= report.ok;
        if report.ok && tput > 0.0 {
            drain_rate = Some(tput);
        }
        out["drain"] = report.json();
        out["drain"]["chunk"] = json!(opts.chunk);
        out["drain"]["in_flight"] = json!(opts.in_flight);
        if let Some(pg) = &postgres {
            let expect = (opts.warmup + opts.tasks) as u64;
            let archive = archive_catch_up(pg, &mut rig, expect, began, drained, opts).await?;
            out["drain"]["archive"] = archive;
        }
    }

    if matches!(opts.mode, Mode::Paced | Mode::Both) {
        let (rate, why) = match (opts.rate, drain_rate) {
            (Some(r), _) => (r, "--rate"),
            (None, Some(d)) => ((d / 2.0).round().max(1.0), "half the drain throughput"),
            (None, None) => (5000.0, "default"),
        };
        let report = rig.paced(rate, opts.seconds, opts).await?;
        println!(
            "paced: {rate:.0} tasks/s ({why}) for {} s = {} tasks, one per enqueue call: latency \
             enqueue→done {}",
            opts.seconds,
            report.count_text(),
            report.latency_text(),
        );
        if let (Some(call), Some(lag)) = (&report.enqueue_call, &report.pacer_lag) {
            println!(
                "paced: enqueue call {}; sent behind schedule p99 {:.2} ms max {:.2} ms; \
                 completed at {:.0} tasks/s",
                call.text(),
                lag.p99,
                lag.max,
                report.throughput(),
            );
        }
        report.print_redis("paced");
        report.print_nodes("paced");
        report.print_problems("paced");
        ok &= report.ok;
        out["paced"] = report.json();
        out["paced"]["rate"] = json!(rate);
        out["paced"]["rate_source"] = json!(why);
        out["paced"]["duration_s"] = json!(opts.seconds);
    }

    println!(
        "bench: {cores} cores, {} node(s), concurrency {} each, worker {NOOP}",
        opts.nodes, opts.concurrency
    );
    if opts.json {
        println!("{out}");
    }
    listener.abort();
    Ok(ok)
}
