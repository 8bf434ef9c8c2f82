//! A node embedded in this test process, with Rust workers: a panicking worker fails only its
//! own attempt, its actor is restarted, and every other task keeps flowing; its metrics count
//! exactly what it did.

mod common;

use std::time::Duration;

use background::{Client, Node, Settings, TaskContext, TaskError, TaskSpec, Worker, WorkerOptions};
use common::{Redis, eventually};
use serde_json::{Value, json};

struct Panicky;

#[async_trait::async_trait]
impl Worker for Panicky {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        if ctx.arg::<bool>("panic")? {
            panic!("boom on purpose");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(json!({"n": ctx.arg::<u64>("n")?}))
    }
}

struct Picky;

#[async_trait::async_trait]
impl Worker for Picky {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let n: u64 = ctx.arg("n")?;
        if n % 2 == 1 {
            return Err(TaskError::fail(format!("{n} is odd")));
        }
        Ok(json!(n / 2))
    }
}

fn settings(redis: &Redis, workers: &std::path::Path) -> Settings {
    let mut s = redis.settings();
    s.node.id = "embedded".into();
    s.workers.dir = workers.to_path_buf();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_worker_fails_one_attempt_and_the_rest_keep_flowing() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker_with("panicky", Panicky, WorkerOptions::default().concurrency(2))
        .worker("picky", Picky)
        .start()
        .await
        .expect("node starts");
    let client = Client::connect(&redis.url).await.unwrap();

    let mut specs = Vec::new();
    for n in 0..20u64 {
        let boom = n % 5 == 0;
        specs.push(TaskSpec::new("panicky", json!({"n": n, "panic": boom})).id(format!("p{n}")));
    }
    let ids = client.enqueue_all(specs).await.unwrap();
    assert_eq!(ids.len(), 20);
    for n in 0..20u64 {
        let id = format!("p{n}");
        let status = eventually(
            Duration::from_secs(20),
            &format!("{id} to finish"),
            || async {
                client
                    .status(&id)
                    .await
                    .unwrap()
                    .filter(|s| s.state == "done" || s.state == "dead")
            },
        )
        .await;
        if n % 5 == 0 {
            assert_eq!(status.state, "dead", "one attempt by default");
            let error = status.error.unwrap();
            assert!(error.starts_with("worker crashed:"), "{error}");
            assert!(error.contains("boom on purpose"), "{error}");
        } else {
            assert_eq!(status.state, "done", "{id}: {:?}", status.error);
            assert_eq!(status.result, Some(json!({"n": n})));
        }
    }
    // After the crashes the restarted slots still serve, and `call` waits for results.
    let v = client
        .call(
            TaskSpec::new("panicky", json!({"n": 99, "panic": false})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(v, json!({"n": 99}));
    let err = client
        .call(
            TaskSpec::new("picky", json!({"n": 3})),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("3 is odd"), "{err}");
    assert_eq!(
        client
            .call(
                TaskSpec::new("picky", json!({"n": 8})),
                Duration::from_secs(10)
            )
            .await
            .unwrap(),
        json!(4)
    );
    let report = node.shutdown().await.unwrap();
    assert!(report.drained && report.flushed, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_times_out_without_losing_the_task() {
    let redis = Redis::start();
    let client = Client::connect(&redis.url).await.unwrap();
    // No node runs: the call times out, the task stays queued.
    let err = client
        .call(
            TaskSpec::new("picky", json!({"n": 2})).id("later"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, background::ClientError::Timeout { .. }),
        "{err}"
    );
    assert_eq!(
        client.status("later").await.unwrap().unwrap().state,
        "queued"
    );
    // A node that starts later runs it; the reply is still there for a second wait.
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker("picky", Picky)
        .start()
        .await
        .unwrap();
    assert_eq!(
        client.wait("later", Duration::from_secs(10)).await.unwrap(),
        json!(1)
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_worker_name_is_refused_at_registration() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let err = Node::builder(settings(&redis, workers.path()))
        .worker("../evil", Picky)
        .start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("worker `../evil` cannot be registered"),
        "{err}"
    );
}

struct Patient;

#[async_trait::async_trait]
impl Worker for Patient {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        tokio::select! {
            () = ctx.cancelled() => Err(TaskError::fail("stopped on request")),
            () = tokio::time::sleep(Duration::from_secs(60)) => Ok(json!("slept")),
        }
    }
}

struct Busy;

#[async_trait::async_trait]
impl Worker for Busy {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        if ctx.attempt == 1 {
            return Err(TaskError::RetryAfter {
                after: Duration::from_millis(400),
                message: "rate limited".into(),
            });
        }
        Ok(json!({"attempt": ctx.attempt}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_rust_worker_sees_its_cancellation_token() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker("patient", Patient)
        .start()
        .await
        .unwrap();
    let client = Client::connect(&redis.url).await.unwrap();
    client
        .enqueue(TaskSpec::new("patient", json!({})).id("p1"))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "p1 to run", || async {
        client
            .status("p1")
            .await
            .unwrap()
            .filter(|s| s.state == "running")
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        client.cancel("p1").await.unwrap(),
        background::CancelResult::Requested
    );
    let status = eventually(Duration::from_secs(10), "p1 to be cancelled", || async {
        client
            .status("p1")
            .await
            .unwrap()
            .filter(|s| s.state == "cancelled")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the worker stopped at once, not after the grace"
    );
    assert_eq!(status.error.as_deref(), Some("cancelled"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_waits_the_delay_the_worker_asked_for() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker_with("busy", Busy, WorkerOptions::default().attempts(3))
        .start()
        .await
        .unwrap();
    let client = Client::connect(&redis.url).await.unwrap();
    let v = client
        .call(
            TaskSpec::new("busy", json!({})).id("b1"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"attempt": 2}),
        "the worker's attempts option allowed a retry"
    );
    let status = client.status("b1").await.unwrap().unwrap();
    let retry_at = status.retry_at.unwrap();
    assert!(
        status.started.unwrap() >= retry_at,
        "the second attempt waited for retry_at"
    );
    assert!(retry_at >= status.created.unwrap() + 400);
    node.shutdown().await.unwrap();
}

/// A host actor that starts a node as its linked child and reports the supervision events it
/// receives about that node.
struct Host;

enum HostMsg {
    /// Shut the node down (gracefully) and answer when done.
    ShutDownNode(ractor::RpcReplyPort<bool>),
}

impl ractor::Message for HostMsg {}

struct HostState {
    node: Option<background::NodeHandle>,
    node_cell: ractor::ActorCell,
    events: tokio::sync::mpsc::UnboundedSender<String>,
}

impl ractor::Actor for Host {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = (Settings, tokio::sync::mpsc::UnboundedSender<String>);

    async fn pre_start(
        &self,
        myself: ractor::ActorRef<HostMsg>,
        (settings, events): Self::Arguments,
    ) -> Result<HostState, ractor::ActorProcessingErr> {
        let node = Node::builder(settings)
            .worker("picky", Picky)
            .start_linked(myself.get_cell())
            .await?;
        Ok(HostState {
            node_cell: node.actor(),
            node: Some(node),
            events,
        })
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<HostMsg>,
        msg: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let HostMsg::ShutDownNode(reply) = msg;
        let ok = match state.node.take() {
            Some(node) => node.shutdown().await.is_ok(),
            None => false,
        };
        let _ = reply.send(ok);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ractor::ActorRef<HostMsg>,
        event: ractor::SupervisionEvent,
        state: &mut HostState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        if let ractor::SupervisionEvent::ActorTerminated(cell, ..) = &event
            && cell.get_id() == state.node_cell.get_id()
        {
            let _ = state.events.send("node terminated".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_linked_is_supervised_by_its_host_actor() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (host, host_done) =
        ractor::Actor::spawn(None, Host, (settings(&redis, workers.path()), events_tx))
            .await
            .expect("the host starts the node");
    let children = host.get_children();
    assert_eq!(
        children.len(),
        1,
        "the node's supervisor is the host's one child"
    );

    let client = Client::connect(&redis.url).await.unwrap();
    let half = client
        .call(
            TaskSpec::new("picky", json!({"n": 8})),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(half, json!(4));

    let shut = ractor::call_t!(host, HostMsg::ShutDownNode, 30_000).unwrap();
    assert!(shut, "the node shuts down gracefully under its host");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the host hears of its child's end")
        .unwrap();
    assert_eq!(event, "node terminated");
    assert!(host.get_children().is_empty());
    host.stop(None);
    host_done.await.unwrap();
}

/// Succeeds with its argument `n`.
struct Fine;

#[async_trait::async_trait]
impl Worker for Fine {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!(ctx.arg::<u64>("n")?))
    }
}

/// Fails every attempt: without retry when its argument `fail` is true, else retryably.
struct Broken;

#[async_trait::async_trait]
impl Worker for Broken {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        if ctx.arg::<bool>("fail")? {
            Err(TaskError::fail("broken for good"))
        } else {
            Err(TaskError::retry("broken for now"))
        }
    }
}

/// The metrics text read back, by series as written (`name{worker="a"}`); every sample must
/// belong to a family that has its HELP and TYPE lines.
fn scrape(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no TYPE line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// A series' value, 0 when it is absent (a family shows a label once it was counted).
fn sample(samples: &std::collections::BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_count_exactly_what_the_node_did() {
    const N: u64 = 10; // `fine` tasks, RAW of them published raw on the task channel
    const RAW: u64 = 4;
    const M: u64 = 4; // `broken` tasks: half fail for good, half retry once and die
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker("fine", Fine)
        .worker("broken", Broken)
        .start()
        .await
        .unwrap();
    let client = Client::connect(&redis.url).await.unwrap();

    // Raw publishes: the first is taken once the ingress subscribed; a repeated id is no
    // new task.
    let raw = |n: u64| json!({"worker": "fine", "args": {"n": n}, "id": format!("raw{n}")});
    eventually(
        Duration::from_secs(20),
        "the ingress to subscribe",
        || async { (redis.publish("background", raw(0).to_string()).await == 1).then_some(()) },
    )
    .await;
    for n in 1..RAW {
        assert_eq!(redis.publish("background", raw(n).to_string()).await, 1);
    }
    assert_eq!(redis.publish("background", raw(0).to_string()).await, 1);
    let mut specs: Vec<TaskSpec> = (RAW..N)
        .map(|n| TaskSpec::new("fine", json!({"n": n})).id(format!("fine{n}")))
        .collect();
    for m in 0..M {
        let fail = m % 2 == 0;
        specs.push(
            TaskSpec::new("broken", json!({"fail": fail}))
                .id(format!("broken{m}"))
                .attempts(2)
                .backoff(Duration::from_millis(100), Duration::from_millis(200)),
        );
    }
    // A worker no node offers, with a deadline: the scheduler's deadline sweep expires it.
    specs.push(
        TaskSpec::new("absent", json!(null))
            .id("late")
            .deadline(Duration::from_millis(200)),
    );
    client.enqueue_all(specs).await.unwrap();

    let (failed, dead) = (M / 2, M - M / 2);
    let started = N + failed + 2 * dead;
    let s = eventually(Duration::from_secs(30), "every end counted", || async {
        let s = scrape(&node.metrics_text());
        let ended = sample(&s, "bgnode_tasks_done_total{worker=\"fine\"}") == N as f64
            && sample(&s, "bgnode_tasks_failed_total{worker=\"broken\"}") == failed as f64
            && sample(&s, "bgnode_tasks_dead_total{worker=\"broken\"}") == dead as f64
            && sample(&s, "bgnode_tasks_expired_total{worker=\"absent\"}") == 1.0;
        ended.then_some(s)
    })
    .await;
    let want = [
        ("bgnode_tasks_accepted_total{worker=\"fine\"}", RAW),
        ("bgnode_tasks_accepted_total{worker=\"broken\"}", 0),
        ("bgnode_tasks_started_total{worker=\"fine\"}", N),
        ("bgnode_tasks_started_total{worker=\"broken\"}", started - N),
        ("bgnode_tasks_done_total{worker=\"fine\"}", N),
        ("bgnode_tasks_done_total{worker=\"broken\"}", 0),
        ("bgnode_tasks_failed_total{worker=\"broken\"}", failed),
        ("bgnode_tasks_retried_total{worker=\"broken\"}", dead),
        ("bgnode_tasks_dead_total{worker=\"broken\"}", dead),
        ("bgnode_tasks_dead_total{worker=\"fine\"}", 0),
        ("bgnode_tasks_expired_total{worker=\"absent\"}", 1),
        ("bgnode_tasks_cancelled_total{worker=\"broken\"}", 0),
        ("bgnode_task_wait_seconds_count{worker=\"fine\"}", N),
        (
            "bgnode_task_wait_seconds_count{worker=\"broken\"}",
            started - N,
        ),
        ("bgnode_task_run_seconds_count{worker=\"fine\"}", N),
        (
            "bgnode_task_run_seconds_count{worker=\"broken\"}",
            started - N,
        ),
        (
            "bgnode_task_run_seconds_bucket{worker=\"fine\",le=\"+Inf\"}",
            N,
        ),
        ("bgnode_running_tasks{worker=\"fine\"}", 0),
        ("bgnode_running_tasks{worker=\"broken\"}", 0),
        ("bgnode_cluster_sessions", 0),
        // The scripts are a function library loaded when Redis first answers that it has not
        // got it, which is no error.
        ("bgnode_redis_errors_total", 0),
        ("bgnode_redis_reconnects_total", 0),
    ];
    for (series, n) in want {
        assert_eq!(sample(&s, series), n as f64, "{series}");
    }
    // Buckets accumulate up to the count.
    let buckets: Vec<f64> = s
        .iter()
        .filter(|(k, _)| k.starts_with("bgnode_task_wait_seconds_bucket{worker=\"fine\""))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), 19, "18 bounds and +Inf");
    assert!(buckets.iter().all(|b| *b <= N as f64));

    // The cluster-wide gauges, read every few seconds: the dead set, no task waiting, one
    // member, and the paused set once it exists.
    let mut con = redis.con().await;
    redis::cmd("SADD")
        .arg("bg:paused")
        .arg("fine")
        .arg("broken")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let s = eventually(Duration::from_secs(20), "the gauges to be read", || async {
        let s = scrape(&node.metrics_text());
        (sample(&s, "bgnode_paused_workers") == 2.0
            && sample(&s, "bgnode_pending_tasks{worker=\"absent\"}") == 0.0)
            .then_some(s)
    })
    .await;
    assert_eq!(sample(&s, "bgnode_dead_tasks"), dead as f64);
    assert_eq!(sample(&s, "bgnode_scheduled_tasks"), 0.0);
    assert_eq!(sample(&s, "bgnode_members"), 1.0);
    assert_eq!(s.get("bgnode_pending_tasks{worker=\"fine\"}"), Some(&0.0));
    assert_eq!(s.get("bgnode_pending_tasks{worker=\"broken\"}"), Some(&0.0));
    assert_eq!(
        sample(&s, "bgnode_tasks_done_total{worker=\"fine\"}"),
        N as f64,
        "nothing counted twice meanwhile"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_counted_as_errors_and_a_reconnect() {
    let mut redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let node = Node::builder(settings(&redis, workers.path()))
        .worker("fine", Fine)
        .start()
        .await
        .unwrap();
    let client = Client::connect(&redis.url).await.unwrap();
    let v = client
        .call(
            TaskSpec::new("fine", json!({"n": 1})),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(v, json!(1));
    let before = scrape(&node.metrics_text());
    assert_eq!(sample(&before, "bgnode_redis_errors_total"), 0.0);
    assert_eq!(sample(&before, "bgnode_redis_reconnects_total"), 0.0);

    redis.kill();
    // The lease keeper calls Redis four times per lease period: its calls fail now.
    eventually(
        Duration::from_secs(20),
        "failed calls to be counted",
        || async {
            let s = scrape(&node.metrics_text());
            (sample(&s, "bgnode_redis_errors_total") > 0.0).then_some(())
        },
    )
    .await;
    let down = scrape(&node.metrics_text());
    assert_eq!(
        sample(&down, "bgnode_redis_reconnects_total"),
        0.0,
        "nothing answered yet"
    );
    redis.restart();
    eventually(
        Duration::from_secs(30),
        "the reconnection to be counted",
        || async {
            let s = scrape(&node.metrics_text());
            (sample(&s, "bgnode_redis_reconnects_total") >= 1.0).then_some(())
        },
    )
    .await;
    // The node works on after it.
    let client = Client::connect(&redis.url).await.unwrap();
    let v = client
        .call(
            TaskSpec::new("fine", json!({"n": 2})),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(v, json!(2));
    node.shutdown().await.unwrap();
}
