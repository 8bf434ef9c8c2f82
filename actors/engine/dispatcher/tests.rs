//! The dispatcher against a real Redis, running a Rust worker the test holds open: it claims
//! nothing before the node's owned set is handed back, starts nothing while the liveness lease
//! may have lapsed, and after a lapse drops what a failover took from it; a task adopted during
//! recovery runs once.
//!
//! Recovery waits for the saver to flush; a test holds recovery back by queueing a write before
//! any saver actor runs, and lets it go by starting one.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Dispatcher, DispatcherArgs, DispatcherMsg, LaneStats};
use crate::cluster::handle::ClusterHandle;
use crate::config::Settings;
use crate::engine::saver::{Saver, SaverArgs, SaverHandle, SaverMsg};
use crate::model::task::TaskSpec;
use crate::store::{Incarnation, Store, WriteOp};
use crate::test_redis::Redis;
use crate::wiring::LeaseClock;
use crate::workers::registry::LiveRegistry;
use crate::workers::rust::{TaskContext, TaskError, Worker, WorkerOptions};

/// Incarnation 1 of `node`.
fn me(node: &str) -> Incarnation {
    Incarnation::new(node, 1)
}

/// A lease that stays fresh for the whole test.
const FRESH: Duration = Duration::from_secs(3_600);

/// The worker of these tests, `gate`: records each run, then waits until the gate opens (done)
/// or the run is cancelled.
struct Gate {
    open: watch::Receiver<bool>,
    runs: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Worker for Gate {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        self.runs.lock().unwrap().push(ctx.id.clone());
        let mut open = self.open.clone();
        tokio::select! {
            _ = open.wait_for(|open| *open) => Ok(Value::Null),
            () = ctx.cancelled() => Err(TaskError::fail("cancelled")),
        }
    }
}

/// Node `n1`'s parts for a dispatcher, against a Redis of the test's own.
struct Rig {
    redis: Redis,
    store: Store,
    saver: SaverHandle,
    cluster: Arc<ClusterHandle>,
    workers: Arc<LiveRegistry>,
    open: watch::Sender<bool>,
    runs: Arc<Mutex<Vec<String>>>,
    _scripts: tempfile::TempDir,
}

impl Rig {
    /// A rig whose `gate` worker runs `concurrency` tasks at once.
    async fn new(concurrency: u32) -> Rig {
        let redis = Redis::start();
        let scripts = tempfile::tempdir().unwrap();
        let mut settings = Settings::defaults();
        settings.redis.url = redis.url.clone();
        settings.node.id = "n1".into();
        settings.workers.dir = scripts.path().to_path_buf();
        let store = Store::connect(&settings).await.unwrap();
        let (open, gate) = watch::channel(false);
        let runs = Arc::new(Mutex::new(Vec::new()));
        let worker = Gate {
            open: gate,
            runs: runs.clone(),
        };
        let options = WorkerOptions::default().concurrency(concurrency);
        let workers = Arc::new(LiveRegistry::new(
            vec![("gate".into(), Arc::new(worker), options)],
            &settings,
        ));
        Rig {
            redis,
            store,
            saver: SaverHandle::default(),
            cluster: Arc::new(ClusterHandle::new("n1")),
            workers,
            open,
            runs,
            _scripts: scripts,
        }
    }

    /// Stores tasks of `gate` with these ids, claimed in this order.
    async fn enqueue(&self, ids: &[&str]) {
        let specs: Vec<TaskSpec> = ids
            .iter()
            .map(|id| TaskSpec::new("gate", json!(null)).id(*id))
            .collect();
        self.store.enqueue_many(&specs, false).await.unwrap();
    }

    /// Starts n1's dispatcher with `lease` and room for `queue` tasks beyond its concurrency.
    async fn dispatcher(&self, lease: LeaseClock, queue: usize) -> ActorRef<DispatcherMsg> {
        let args = DispatcherArgs {
            me: me("n1"),
            generation: 1,
            store: self.store.clone(),
            saver: self.saver.clone(),
            workers: self.workers.clone(),
            cluster: self.cluster.clone(),
            lease: Arc::new(lease),
            queue_cap: queue,
            metrics: Default::default(),
        };
        Actor::spawn(None, Dispatcher, args).await.unwrap().0
    }

    /// Starts a saver actor on the rig's write queue.
    async fn start_saver(&self) -> ActorRef<SaverMsg> {
        let args = SaverArgs {
            handle: self.saver.clone(),
            store: self.store.clone(),
            batch: 64,
            metrics: Default::default(),
        };
        Actor::spawn(None, Saver, args).await.unwrap().0
    }

    /// A field of task `id`'s record.
    async fn field(&self, id: &str, name: &str) -> Option<String> {
        self.redis.task_field(id, name).await
    }

    /// The epoch of task `id` (0 while the record has none, as a new one).
    async fn epoch(&self, id: &str) -> u64 {
        self.field(id, "epoch")
            .await
            .map_or(0, |e| e.parse().unwrap())
    }

    /// The ids of the runs so far, in order.
    fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }
}

/// The lane of `gate`, as the dispatcher reports it.
async fn lane(dispatcher: &ActorRef<DispatcherMsg>) -> LaneStats {
    let stats = ractor::call_t!(dispatcher, DispatcherMsg::Stats, 2_000).unwrap();
    stats.into_iter().find(|l| l.worker == "gate").unwrap()
}

/// Polls `check` until it gives a value or `limit` passes.
async fn poll<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it gives a value; fails the test after 10 s.
async fn until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(Duration::from_secs(10), check)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_claimed_before_the_owned_set_is_handed_back() {
    let rig = Rig::new(2).await;
    rig.enqueue(&["a", "b"]).await;
    // n1 owns `a` from a previous incarnation; `b` waits in the pending set.
    let a = rig.store.claim("gate", &me("n1"), 1).await.unwrap();
    assert_eq!((a[0].id.as_str(), a[0].epoch), ("a", 1));
    rig.saver.write(WriteOp::Event { event: "{}".into() });
    let dispatcher = rig.dispatcher(LeaseClock::new(FRESH), 4).await;

    // However it is woken, it claims nothing while recovery waits.
    dispatcher.cast(DispatcherMsg::Wake("gate".into())).unwrap();
    dispatcher.cast(DispatcherMsg::Sweep).unwrap();
    lane(&dispatcher).await;
    let early = poll(Duration::from_millis(500), || async {
        (rig.field("b", "node").await.as_deref() == Some("n1")).then_some(())
    })
    .await;
    assert_eq!(
        early, None,
        "b was claimed before the owned set was handed back"
    );
    assert_eq!(rig.epoch("b").await, 0);

    // Recovery hands `a` back (epoch 2), then the claims take both.
    let _saver = rig.start_saver().await;
    until("both tasks claimed by n1", || async {
        let a = rig.field("a", "node").await?;
        let b = rig.field("b", "node").await?;
        (a == "n1" && b == "n1").then_some(())
    })
    .await;
    assert_eq!(
        (rig.epoch("a").await, rig.epoch("b").await),
        (3, 1),
        "a was handed back and claimed again; b was claimed once"
    );
    rig.open.send(true).unwrap();
    for id in ["a", "b"] {
        until(&format!("{id} done"), || async {
            (rig.field(id, "state").await.as_deref() == Some("done")).then_some(())
        })
        .await;
    }
    assert_eq!(rig.runs().len(), 2, "each ran once");
    dispatcher.stop(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_starts_while_the_lease_may_have_lapsed() {
    let rig = Rig::new(2).await;
    let _saver = rig.start_saver().await;
    rig.enqueue(&["t"]).await;
    // A lease clock that is never fresh: as if renewals had stopped.
    let dispatcher = rig.dispatcher(LeaseClock::new(Duration::ZERO), 4).await;

    // The load is published after each tick's attempt to start what is queued.
    let load = until("the claimed task in the published load", || async {
        let load = rig.cluster.own_load().get("gate").copied()?;
        (load.running + load.queued == 1).then_some(load)
    })
    .await;
    assert_eq!((load.running, load.queued), (0, 1), "claimed, not started");
    assert_eq!(rig.field("t", "node").await.as_deref(), Some("n1"));
    assert_eq!(rig.field("t", "state").await.as_deref(), Some("queued"));
    assert!(rig.runs().is_empty());
    dispatcher.stop(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_lapse_the_tasks_lost_to_a_failover_are_dropped() {
    let rig = Rig::new(1).await;
    let _saver = rig.start_saver().await;
    rig.enqueue(&["t1", "t2"]).await;
    // Room for one running and one queued: the lane holds both and claims no more.
    let dispatcher = rig.dispatcher(LeaseClock::new(FRESH), 1).await;
    until("t1 running and t2 queued", || async {
        let lane = lane(&dispatcher).await;
        let running = rig.field("t1", "state").await.as_deref() == Some("running");
        (running && lane.running == 1 && lane.queued == 1).then_some(())
    })
    .await;
    assert_eq!(rig.runs(), ["t1"]);

    // While n1 could not renew its lease, a survivor failed it over and n2 took its tasks.
    assert_eq!(rig.store.failover("n1").await.unwrap(), Some(2));
    assert_eq!(
        rig.store.claim("gate", &me("n2"), 10).await.unwrap().len(),
        2
    );
    dispatcher.cast(DispatcherMsg::Lapsed).unwrap();
    until("the lost tasks to leave the lane", || async {
        let lane = lane(&dispatcher).await;
        (lane.running + lane.queued == 0).then_some(())
    })
    .await;
    assert!(rig.saver.flush(Duration::from_secs(5)).await);
    assert_eq!(rig.runs(), ["t1"], "t2 never started here");
    assert_eq!(
        rig.field("t1", "stale").await.as_deref(),
        Some("1"),
        "t1 was stopped and its end fenced out"
    );
    assert_eq!(rig.field("t2", "stale").await, None);
    for id in ["t1", "t2"] {
        assert_eq!(rig.field(id, "node").await.as_deref(), Some("n2"), "{id}");
        assert_eq!(
            rig.field(id, "state").await.as_deref(),
            Some("queued"),
            "{id}"
        );
    }
    dispatcher.stop(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_adopted_while_recovering_runs_once() {
    let rig = Rig::new(2).await;
    rig.enqueue(&["x"]).await;
    let x = rig.store.claim("gate", &me("n0"), 1).await.unwrap();
    rig.saver.write(WriteOp::Event { event: "{}".into() });
    let dispatcher = rig.dispatcher(LeaseClock::new(FRESH), 4).await;

    // n0 answers a steal request of n1's previous dispatcher: n1's peer actor adopts the task
    // and hands it to the dispatcher now running, which is still recovering.
    let adopted = rig
        .store
        .adopt("n0", &me("n1"), &[("x".into(), x[0].epoch)])
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    dispatcher.cast(DispatcherMsg::Hold(adopted)).unwrap();
    lane(&dispatcher).await;

    let _saver = rig.start_saver().await;
    until("recovery to hand x back", || async {
        (rig.epoch("x").await >= 3).then_some(())
    })
    .await;
    rig.open.send(true).unwrap();
    until("x done", || async {
        (rig.field("x", "state").await.as_deref() == Some("done")).then_some(())
    })
    .await;
    assert_eq!(rig.runs(), ["x"], "x ran once");
    dispatcher.stop(None);
}
