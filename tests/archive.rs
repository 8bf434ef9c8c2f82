//! The archive of finished tasks in PostgreSQL, against a real server of the tests' own
//! (`common/postgres.rs`) and real nodes: every final state archived once with its fields,
//! PostgreSQL stopped under load, a node killed with rows it had taken, and a full outbox
//! holding every claim until PostgreSQL is back.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use background::{
    CancelResult, Client, Node, Recurrence, Target, TaskContext, TaskError, TaskSpec, Worker,
};
use common::{NodeProc, Postgres, Redis, eventually, test_workers};
use rustix::process::Signal;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn the_test_postgres_starts_stops_and_starts_again() {
    let mut pg = Postgres::start();
    assert_eq!(
        pg.query_async("SELECT 1").await,
        [[Some("1".to_owned())]],
        "the url: {}",
        pg.url
    );
    pg.execute_async("CREATE TABLE kept (id int PRIMARY KEY, note text); INSERT INTO kept VALUES (7, 'seven'), (8, NULL)")
        .await;

    // Stopped: nothing answers on its port.
    pg.stop();
    assert!(
        pg.client().await.is_err(),
        "a connect succeeded while stopped"
    );

    // Started again on the same port with the same data; the blocking calls work too.
    pg.start_again();
    assert_eq!(
        pg.query("SELECT id, note FROM kept ORDER BY id"),
        [
            [Some("7".to_owned()), Some("seven".to_owned())],
            [Some("8".to_owned()), None]
        ]
    );

    // Killed (a crash, its processes lingering a moment): it starts again and recovers.
    pg.kill();
    pg.start_again();
    assert_eq!(
        pg.query("SELECT count(*) FROM kept"),
        [[Some("2".to_owned())]]
    );
}

/// The node scenarios run one at a time: each starts PostgreSQL, Redis and two nodes, and
/// measures progress against deadlines on a small machine.
static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// Rows the archive holds, as text (None for NULL), or None when PostgreSQL did not answer.
async fn select(db: &tokio_postgres::Client, sql: &str) -> Option<Vec<Vec<Option<String>>>> {
    let messages = db.simple_query(sql).await.ok()?;
    Some(
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect(),
    )
}

/// The one number `sql` answers, or None when PostgreSQL did not answer.
async fn number(db: &tokio_postgres::Client, sql: &str) -> Option<i64> {
    let rows = select(db, sql).await?;
    rows.first()?.first()?.as_deref()?.parse().ok()
}

/// Waits until `n` archivers are connected, the schema is at its latest version and they are
/// idle (so the table exists and no migration is under way).
async fn archivers_connected(db: &tokio_postgres::Client, n: i64) {
    eventually(
        Duration::from_secs(30),
        &format!("{n} archivers connected to an up-to-date schema"),
        || async {
            let version = number(db, "SELECT max(version) FROM bgnode_migrations").await?;
            let idle = number(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bgnode' AND state = 'idle'",
            )
            .await?;
            (version == 2 && idle >= n).then_some(())
        },
    )
    .await;
}

/// Waits until the archive holds as many rows as `expected` has ids, then asserts it holds
/// exactly those, each once.
async fn wait_archived(
    db: &tokio_postgres::Client,
    expected: &BTreeSet<String>,
    timeout: Duration,
) {
    let want = expected.len() as i64;
    eventually(timeout, &format!("{want} rows in the archive"), || async {
        let n = number(db, "SELECT count(*) FROM bgnode_tasks").await?;
        assert!(
            n <= want,
            "the archive holds {n} rows, more than the {want} tasks"
        );
        (n == want).then_some(())
    })
    .await;
    let counts = select(
        db,
        "SELECT count(*), count(DISTINCT id), count(DISTINCT cluster) FROM bgnode_tasks",
    )
    .await
    .unwrap();
    assert_eq!(
        counts,
        [[
            Some(want.to_string()),
            Some(want.to_string()),
            Some("1".into())
        ]],
        "one row per task, all of cluster `bg`"
    );
    let ids: BTreeSet<String> = select(db, "SELECT id FROM bgnode_tasks WHERE cluster = 'bg'")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let missing: Vec<&String> = expected.difference(&ids).take(10).collect();
    let extra: Vec<&String> = ids.difference(expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "archived ids differ: missing {missing:?}, unexpected {extra:?}"
    );
}

/// The task ids of the staged rows in list `key`.
async fn staged_ids(redis: &Redis, key: &str) -> Vec<String> {
    let mut con = redis.con().await;
    let rows: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Waits until the cluster's outbox and the own outboxes of `nodes` are empty.
async fn outboxes_drained(redis: &Redis, nodes: &[&str]) {
    let mut keys = vec!["bg:archive:outbox".to_owned()];
    keys.extend(nodes.iter().map(|n| format!("bg:archive:outbox:{n}")));
    eventually(
        Duration::from_secs(10),
        "every outbox to be empty",
        || async {
            for key in &keys {
                if redis.llen(key).await > 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// A counter of `bg:stats`.
async fn stat(redis: &Redis, name: &str) -> u64 {
    let mut con = redis.con().await;
    let v: Option<u64> = redis::cmd("HGET")
        .arg("bg:stats")
        .arg(name)
        .query_async(&mut con)
        .await
        .unwrap();
    v.unwrap_or(0)
}

/// The state of each task of `ids` in Redis.
async fn states(redis: &Redis, ids: &[String]) -> Vec<Option<String>> {
    let mut con = redis.con().await;
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGET").arg(format!("bg:task:{id}")).arg("state");
    }
    pipe.query_async(&mut con).await.unwrap()
}

/// How many tasks of `ids` are in state `state`.
async fn count_in(redis: &Redis, ids: &[String], state: &str) -> usize {
    states(redis, ids)
        .await
        .iter()
        .filter(|s| s.as_deref() == Some(state))
        .count()
}

/// Waits until every task of `ids` is done in Redis.
async fn wait_done(redis: &Redis, ids: &[String], timeout: Duration) {
    eventually(
        timeout,
        &format!("{} tasks to be done", ids.len()),
        || async { (count_in(redis, ids, "done").await == ids.len()).then_some(()) },
    )
    .await;
}

/// Polls `check` every 100 ms for `period`; panics naming `what` the first time it fails.
async fn holds_for<F, Fut>(period: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let until = Instant::now() + period;
    while Instant::now() < until {
        if let Err(why) = check().await {
            panic!("{what} stopped holding: {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enqueues `n` `echo` tasks with ids `{prefix}{i}` and their index as argument, 500 at a time.
async fn enqueue_echo(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let specs: Vec<TaskSpec> = (0..n)
        .map(|i| TaskSpec::new("echo", json!({ "i": i })).id(format!("{prefix}{i}")))
        .collect();
    let mut ids = Vec::new();
    for chunk in specs.chunks(500) {
        ids.extend(client.enqueue_all(chunk.to_vec()).await.unwrap());
    }
    ids
}

/// Runs `f` (a blocking call on the test PostgreSQL) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A Rust worker that refuses every task for good (`TaskError::fail`): the only way to the
/// `failed` state, since a script's failure is always retried.
struct Refuse;

#[async_trait::async_trait]
impl Worker for Refuse {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let i: u64 = ctx.arg("i")?;
        Err(TaskError::fail(format!("task {i} is refused")))
    }
}

/// A row of `bgnode_tasks`; times in Unix ms.
#[derive(Debug)]
struct Archived {
    worker: String,
    state: String,
    args: Option<Value>,
    result: Option<Value>,
    error: Option<String>,
    attempts: u32,
    node: Option<String>,
    priority: i32,
    key: Option<String>,
    created: Option<u64>,
    started: Option<u64>,
    finished: u64,
    run_ms: Option<u64>,
    template: Option<String>,
    parent: Option<String>,
}

/// The archived rows of `ids`, by id.
async fn archived(db: &tokio_postgres::Client, ids: &[String]) -> BTreeMap<String, Archived> {
    let list: Vec<String> = ids
        .iter()
        .map(|id| {
            assert!(!id.contains('\''), "{id}");
            format!("'{id}'")
        })
        .collect();
    let sql = format!(
        "SELECT id, worker, state, args::text, result::text, error, attempts, node, priority,
            key, (extract(epoch FROM created_at) * 1000)::int8,
            (extract(epoch FROM started_at) * 1000)::int8,
            (extract(epoch FROM finished_at) * 1000)::int8, run_ms, template, parent
        FROM bgnode_tasks WHERE cluster = 'bg' AND id IN ({})",
        list.join(", ")
    );
    let rows = select(db, &sql).await.expect("query the archive");
    rows.into_iter()
        .map(|r| {
            let json = |i: usize| r[i].as_deref().map(|t| serde_json::from_str(t).unwrap());
            let int = |i: usize| r[i].as_deref().map(|t| t.parse::<u64>().unwrap());
            (
                r[0].clone().unwrap(),
                Archived {
                    worker: r[1].clone().unwrap(),
                    state: r[2].clone().unwrap(),
                    args: json(3),
                    result: json(4),
                    error: r[5].clone(),
                    attempts: int(6).unwrap() as u32,
                    node: r[7].clone(),
                    priority: r[8].as_deref().unwrap().parse().unwrap(),
                    key: r[9].clone(),
                    created: int(10),
                    started: int(11),
                    finished: int(12).unwrap(),
                    run_ms: int(13),
                    template: r[14].clone(),
                    parent: r[15].clone(),
                },
            )
        })
        .collect()
}

/// Task `id`'s record in Redis.
async fn record(redis: &Redis, id: &str) -> HashMap<String, String> {
    let mut con = redis.con().await;
    redis::cmd("HGETALL")
        .arg(format!("bg:task:{id}"))
        .query_async(&mut con)
        .await
        .unwrap()
}

/// What a sample's row must say (beyond agreeing with its record in Redis).
struct Expect {
    worker: &'static str,
    state: &'static str,
    attempts: u32,
    /// The node that ran it: `Some("")` for either node, `None` for a task that never ran.
    node: Option<&'static str>,
    args: Value,
    result: Option<Value>,
    error: Option<String>,
    priority: i32,
    key: Option<String>,
    template: Option<&'static str>,
    parent: Option<&'static str>,
}

/// Checks the archived row of `id` against `want` and against its record in Redis, and its
/// times: created <= started <= finished, run_ms = finished - started, no start for a task that
/// never ran.
async fn check_row(redis: &Redis, rows: &BTreeMap<String, Archived>, id: &str, want: Expect) {
    let row = rows
        .get(id)
        .unwrap_or_else(|| panic!("no archived row for {id}"));
    let ctx = format!("{id}: {row:?}");
    assert_eq!(row.worker, want.worker, "{ctx}");
    assert_eq!(row.state, want.state, "{ctx}");
    assert_eq!(row.attempts, want.attempts, "{ctx}");
    match want.node {
        None => assert_eq!(row.node, None, "{ctx}"),
        Some("") => assert!(matches!(row.node.as_deref(), Some("n1" | "n2")), "{ctx}"),
        Some(node) => assert_eq!(row.node.as_deref(), Some(node), "{ctx}"),
    }
    assert_eq!(row.args.as_ref(), Some(&want.args), "{ctx}");
    assert_eq!(row.result, want.result, "{ctx}");
    assert_eq!(row.error, want.error, "{ctx}");
    assert_eq!(row.priority, want.priority, "{ctx}");
    assert_eq!(row.key, want.key, "{ctx}");
    assert_eq!(row.template.as_deref(), want.template, "{ctx}");
    assert_eq!(row.parent.as_deref(), want.parent, "{ctx}");

    let created = row
        .created
        .unwrap_or_else(|| panic!("no creation time: {ctx}"));
    assert!(created <= row.finished, "{ctx}");
    match (want.node, row.started) {
        (Some(_), Some(started)) => {
            assert!(created <= started && started <= row.finished, "{ctx}");
            assert_eq!(row.run_ms, Some(row.finished - started), "{ctx}");
        }
        (None, None) => assert_eq!(row.run_ms, None, "{ctx}"),
        (ran, started) => panic!("ran on {ran:?} but started at {started:?}: {ctx}"),
    }

    // The row is the record as Redis kept it at the end.
    let rec = record(redis, id).await;
    let text = |k: &str| rec.get(k).filter(|v| !v.is_empty()).cloned();
    let ms = |k: &str| {
        rec.get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|t| *t > 0)
    };
    let json = |k: &str| {
        rec.get(k)
            .map(|v| serde_json::from_str::<Value>(v).unwrap())
    };
    assert_eq!(Some(&row.worker), rec.get("worker"), "{ctx}\n{rec:?}");
    assert_eq!(Some(&row.state), rec.get("state"), "{ctx}\n{rec:?}");
    assert_eq!(
        row.attempts,
        rec.get("attempt").map_or(0, |a| a.parse().unwrap()),
        "{ctx}\n{rec:?}"
    );
    assert_eq!(row.node, text("node"), "{ctx}\n{rec:?}");
    assert_eq!(row.key, text("key"), "{ctx}\n{rec:?}");
    assert_eq!(
        (row.created, row.started, Some(row.finished)),
        (ms("created"), ms("started"), ms("finished")),
        "{ctx}\n{rec:?}"
    );
    assert_eq!(
        (row.args.clone(), row.result.clone()),
        (json("args"), json("result")),
        "{ctx}\n{rec:?}"
    );
    assert_eq!(row.error, text("error"), "{ctx}\n{rec:?}");
}

/// Waits until both nodes are up in the membership.
async fn both_up(client: &Client) {
    eventually(Duration::from_secs(20), "n1 and n2 to be up", || async {
        let info = client.info().await.ok()?;
        let up: BTreeSet<&str> = info
            .iter()
            .filter(|m| m.state == "up")
            .map(|m| m.id.as_str())
            .collect();
        (up.contains("n1") && up.contains("n2")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_final_state_is_archived_once_with_its_fields() {
    let _serial = SERIAL.lock().await;
    let pg = Postgres::start();
    let redis = Redis::start();
    let workers = test_workers();
    // n1 is a `bgnode` process; n2 is embedded here, for the Rust worker that refuses.
    let _n1 = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_SAVER__ARCHIVE", &pg.url)],
    );
    let mut settings = redis.settings();
    settings.node.id = "n2".into();
    settings.workers.dir = workers.path().to_path_buf();
    settings.saver.archive = pg.url.clone();
    let n2 = Node::builder(settings)
        .worker("refuse", Refuse)
        .start()
        .await
        .expect("n2 starts");
    let db = pg.client().await.unwrap();
    archivers_connected(&db, 2).await;
    let client = Client::connect(&redis.url).await.unwrap();
    both_up(&client).await;

    let done_args = |i: usize| json!({"i": i, "who": "Zoë", "tags": ["a", "b"]});
    let priority = |i: usize| (i % 7) as i32 - 3;
    let key = |i: usize| (i % 100 == 0).then(|| format!("acct-{i}"));
    let mut specs = Vec::new();
    for i in 0..1200 {
        let mut spec = TaskSpec::new("echo", done_args(i))
            .id(format!("done-{i}"))
            .priority(priority(i));
        if let Some(k) = key(i) {
            spec = spec.key(k);
        }
        specs.push(spec);
    }
    for i in 0..200 {
        specs.push(TaskSpec::new("refuse", json!({ "i": i })).id(format!("failed-{i}")));
        specs.push(
            TaskSpec::new("fail", json!({ "i": i }))
                .id(format!("dead-{i}"))
                .attempts(2)
                .backoff(Duration::from_millis(50), Duration::from_millis(100)),
        );
        specs.push(
            TaskSpec::new("echo", json!({ "i": i }))
                .id(format!("cancelled-{i}"))
                .delay(Duration::from_secs(3600)),
        );
        // Half wait for a worker no node offers, half for a time past their deadline.
        let late = if i < 100 {
            TaskSpec::new("nobody", json!({ "i": i }))
        } else {
            TaskSpec::new("echo", json!({ "i": i })).delay(Duration::from_secs(30))
        };
        specs.push(
            late.id(format!("expired-{i}"))
                .deadline(Duration::from_secs(1)),
        );
    }
    assert_eq!(specs.len(), 2000);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for chunk in specs.chunks(500) {
        expected.extend(client.enqueue_all(chunk.to_vec()).await.unwrap());
    }
    for i in 0..200 {
        let id = format!("cancelled-{i}");
        assert_eq!(
            client.cancel(&id).await.unwrap(),
            CancelResult::Cancelled,
            "{id}"
        );
    }
    client
        .enqueue(
            TaskSpec::new("record", json!({"tick": true}))
                .id("tick")
                .repeat(Recurrence::Every(Duration::from_secs(1))),
        )
        .await
        .unwrap();
    client
        .enqueue(
            TaskSpec::new("echo", json!({"all": true}))
                .id("everyone")
                .target(Target::All),
        )
        .await
        .unwrap();
    expected.extend(["tick", "everyone", "everyone@n1", "everyone@n2"].map(String::from));

    // Three occurrences of the recurring task, then it is cancelled.
    eventually(
        Duration::from_secs(30),
        "three occurrences of tick",
        || async {
            let ran: BTreeSet<String> = common::runs(workers.path())
                .into_iter()
                .map(|r| r.0)
                .filter(|id| id.starts_with("tick@"))
                .collect();
            (ran.len() >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(
        client.cancel("tick").await.unwrap(),
        CancelResult::Cancelled
    );
    let occurrences: Vec<String> = {
        let mut con = redis.con().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("bg:task:tick@*")
            .query_async(&mut con)
            .await
            .unwrap();
        keys.iter()
            .map(|k| k["bg:task:".len()..].to_owned())
            .collect()
    };
    assert!(occurrences.len() >= 3, "{occurrences:?}");
    wait_done(&redis, &occurrences, Duration::from_secs(20)).await;
    let ran: BTreeSet<String> = common::runs(workers.path())
        .into_iter()
        .map(|r| r.0)
        .filter(|id| id.starts_with("tick@"))
        .collect();
    assert_eq!(
        ran,
        occurrences.iter().cloned().collect::<BTreeSet<_>>(),
        "every occurrence ran"
    );
    expected.extend(occurrences.iter().cloned());

    wait_archived(&db, &expected, Duration::from_secs(120)).await;
    let by_state: BTreeMap<String, String> = select(
        &db,
        "SELECT state, count(*) FROM bgnode_tasks GROUP BY state",
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect();
    let want: BTreeMap<String, String> = [
        ("done", 1200 + occurrences.len() + 3),
        ("failed", 200),
        ("dead", 200),
        ("cancelled", 201),
        ("expired", 200),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n.to_string()))
    .collect();
    assert_eq!(by_state, want);

    // Samples of each kind, field by field.
    let mut samples: Vec<String> = [0, 1, 100, 555, 1199]
        .iter()
        .map(|i| format!("done-{i}"))
        .collect();
    for i in [0, 77, 199] {
        samples.extend(["failed", "dead", "cancelled"].map(|k| format!("{k}-{i}")));
    }
    samples.extend([0, 99, 100, 199].map(|i| format!("expired-{i}")));
    samples.extend(["tick", "everyone", "everyone@n1", "everyone@n2"].map(String::from));
    samples.extend(occurrences.iter().cloned());
    let rows = archived(&db, &samples).await;
    assert_eq!(rows.len(), samples.len());
    let unrun = |worker, state, args, error: &str| Expect {
        worker,
        state,
        attempts: 0,
        node: None,
        args,
        result: None,
        error: Some(error.to_owned()),
        priority: 0,
        key: None,
        template: None,
        parent: None,
    };
    for i in [0, 1, 100, 555, 1199] {
        let want = Expect {
            worker: "echo",
            state: "done",
            attempts: 1,
            node: Some(""),
            args: done_args(i),
            result: Some(done_args(i)),
            error: None,
            priority: priority(i),
            key: key(i),
            template: None,
            parent: None,
        };
        check_row(&redis, &rows, &format!("done-{i}"), want).await;
    }
    for i in [0, 77, 199] {
        let failed = Expect {
            worker: "refuse",
            node: Some("n2"),
            state: "failed",
            attempts: 1,
            error: Some(format!("task {i} is refused")),
            ..unrun("", "", json!({ "i": i }), "")
        };
        check_row(&redis, &rows, &format!("failed-{i}"), failed).await;
        let dead = Expect {
            worker: "fail",
            node: Some(""),
            state: "dead",
            attempts: 2,
            error: Some("exit code 3: the disk is on fire (gave up after 2 attempts)".into()),
            ..unrun("", "", json!({ "i": i }), "")
        };
        check_row(&redis, &rows, &format!("dead-{i}"), dead).await;
        let cancelled = unrun("echo", "cancelled", json!({ "i": i }), "cancelled");
        check_row(&redis, &rows, &format!("cancelled-{i}"), cancelled).await;
    }
    for i in [0, 99, 100, 199] {
        let worker = if i < 100 { "nobody" } else { "echo" };
        let expired = unrun(
            worker,
            "expired",
            json!({ "i": i }),
            "deadline passed before the task started",
        );
        check_row(&redis, &rows, &format!("expired-{i}"), expired).await;
    }
    check_row(
        &redis,
        &rows,
        "tick",
        unrun("record", "cancelled", json!({"tick": true}), "cancelled"),
    )
    .await;
    for id in &occurrences {
        let want = Expect {
            worker: "record",
            state: "done",
            attempts: 1,
            node: Some(""),
            args: json!({"tick": true}),
            result: Some(json!({"tick": true})),
            error: None,
            priority: 0,
            key: None,
            template: Some("tick"),
            parent: None,
        };
        check_row(&redis, &rows, id, want).await;
    }
    for node in ["n1", "n2"] {
        let want = Expect {
            worker: "echo",
            state: "done",
            attempts: 1,
            node: Some(node),
            args: json!({"all": true}),
            result: Some(json!({"all": true})),
            error: None,
            priority: 0,
            key: None,
            template: None,
            parent: Some("everyone"),
        };
        check_row(&redis, &rows, &format!("everyone@{node}"), want).await;
    }
    // The broadcast itself ran nowhere; its result says how each node's occurrence ended.
    let parent = &rows["everyone"];
    assert_eq!(
        (
            parent.worker.as_str(),
            parent.state.as_str(),
            parent.node.as_deref()
        ),
        ("echo", "done", None),
        "{parent:?}"
    );
    let result = parent.result.clone().unwrap_or_default();
    for node in ["n1", "n2"] {
        assert_eq!(result[node]["state"], "done", "{result}");
        assert_eq!(result[node]["result"], json!({"all": true}), "{result}");
    }
    let parent_rec = record(&redis, "everyone").await;
    assert_eq!(
        parent.result,
        parent_rec
            .get("result")
            .map(|r| serde_json::from_str(r).unwrap())
    );
    assert!(parent.created.unwrap() <= parent.finished, "{parent:?}");

    outboxes_drained(&redis, &["n1", "n2"]).await;
    n2.shutdown().await.unwrap();
}

/// Echo tasks enqueued at a steady pace (10 every 50 ms) until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Stream {
    fn start(client: Client) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let specs: Vec<TaskSpec> = (ids.len()..ids.len() + 10)
                    .map(|i| TaskSpec::new("echo", json!({ "i": i })).id(format!("s{i}")))
                    .collect();
                ids.extend(client.enqueue_all(specs).await.unwrap());
            }
            ids
        });
        Stream { stop, task }
    }

    /// Stops the stream; returns the ids it enqueued.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_mid_load_loses_nothing_and_stalls_nothing() {
    let _serial = SERIAL.lock().await;
    let mut pg = Postgres::start();
    let redis = Redis::start();
    let workers = test_workers();
    let env = [("BGNODE_SAVER__ARCHIVE", pg.url.as_str())];
    let n1 = NodeProc::start(&redis, "n1", workers.path(), &env);
    let n2 = NodeProc::start(&redis, "n2", workers.path(), &env);
    {
        let db = pg.client().await.unwrap();
        archivers_connected(&db, 2).await;
    }
    let client = Client::connect(&redis.url).await.unwrap();
    let stream = Stream::start(client.clone());
    {
        let db = pg.client().await.unwrap();
        eventually(Duration::from_secs(20), "100 rows archived", || async {
            let n = number(&db, "SELECT count(*) FROM bgnode_tasks").await?;
            (n >= 100).then_some(())
        })
        .await;
    }

    // Ten seconds without PostgreSQL: tasks finish at the same pace, their rows wait in Redis.
    blocking(|| pg.stop());
    let done_at_stop = stat(&redis, "done").await;
    let mut last = done_at_stop;
    for window in 1..=5 {
        holds_for(Duration::from_secs(2), "no claims held", || async {
            let mut con = redis.con().await;
            let held: bool = redis::cmd("EXISTS")
                .arg("bg:archive:full")
                .query_async(&mut con)
                .await
                .unwrap();
            if held {
                Err("bg:archive:full is set".into())
            } else {
                Ok(())
            }
        })
        .await;
        let done = stat(&redis, "done").await;
        assert!(
            done > last,
            "no task finished in window {window} of 2 s of the outage ({last} done before)"
        );
        last = done;
    }
    let done = stat(&redis, "done").await;
    let rows_waiting = redis.archive_waiting(&["n1", "n2"]).await;
    println!(
        "during the outage: {} tasks done, {rows_waiting} rows waiting in Redis",
        done - done_at_stop
    );
    assert!(
        done >= done_at_stop + 200,
        "only {} tasks finished during the outage",
        done - done_at_stop
    );
    assert!(
        rows_waiting >= done - done_at_stop,
        "{rows_waiting} rows wait in Redis but {} tasks finished during the outage",
        done - done_at_stop
    );

    blocking(|| pg.start_again());
    let db = pg.client().await.unwrap();
    let archived_at_restart = number(&db, "SELECT count(*) FROM bgnode_tasks")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the archive to catch up after the restart",
        || async {
            let n = number(&db, "SELECT count(*) FROM bgnode_tasks").await?;
            (n as u64 > archived_at_restart as u64 + rows_waiting).then_some(())
        },
    )
    .await;
    let ids = stream.stop().await;
    wait_done(&redis, &ids, Duration::from_secs(30)).await;
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    wait_archived(&db, &expected, Duration::from_secs(30)).await;
    outboxes_drained(&redis, &["n1", "n2"]).await;

    // Each node said once that it cannot write (not once per retry), and the archive resumed.
    for node in [&n1, &n2] {
        let log = node.log();
        assert_eq!(
            log.matches("cannot write the archive").count(),
            1,
            "node {}:\n{log}",
            node.id
        );
    }
    assert!(
        n1.log().contains("the archive is written again")
            || n2.log().contains("the archive is written again")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_leaves_its_outbox_to_a_survivor() {
    let _serial = SERIAL.lock().await;
    let mut pg = Postgres::start();
    let redis = Redis::start();
    let workers = test_workers();
    // Small batches: an archiver takes at most 50 rows, so both take some.
    let env = [
        ("BGNODE_SAVER__ARCHIVE", pg.url.as_str()),
        ("BGNODE_SAVER__ARCHIVE_BATCH", "50"),
    ];
    let mut nodes = [
        NodeProc::start(&redis, "n1", workers.path(), &env),
        NodeProc::start(&redis, "n2", workers.path(), &env),
    ];
    let client = Client::connect(&redis.url).await.unwrap();
    both_up(&client).await;
    let locker = pg.client().await.unwrap();
    archivers_connected(&locker, 2).await;

    // An archiver takes rows only once connected, so PostgreSQL stopped beforehand would leave
    // every row in the cluster's outbox. The table is locked instead: each archiver takes a
    // batch into its own outbox and its insert waits; then PostgreSQL stops, the inserts fail,
    // and the batches stay where they are.
    locker
        .batch_execute("BEGIN; LOCK TABLE bgnode_tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let ids = enqueue_echo(&client, "k", 300).await;
    // Each node stages the rows of the tasks it ends on its own outbox; the victim is a node
    // holding some (the load may fall mostly on one of them).
    let victim = eventually(
        Duration::from_secs(20),
        "an archiver to hold rows",
        || async {
            for (i, node) in ["n1", "n2"].into_iter().enumerate() {
                if redis.llen(&format!("bg:archive:outbox:{node}")).await > 0 {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;
    let (name, own) = (
        ["n1", "n2"][victim],
        format!("bg:archive:outbox:{}", ["n1", "n2"][victim]),
    );
    wait_done(&redis, &ids, Duration::from_secs(30)).await;
    blocking(|| pg.stop());
    drop(locker);
    let held = staged_ids(&redis, &own).await;
    assert!(!held.is_empty());
    println!("{name} held {} rows when it was killed", held.len());

    nodes[victim].signal(Signal::KILL);
    nodes[victim].wait_exit(Duration::from_secs(5)).await;
    // A survivor fails the victim over and gives its rows back to the cluster's outbox, where
    // they wait (PostgreSQL is still down).
    eventually(
        Duration::from_secs(30),
        "the killed node's rows to go back to the cluster's outbox",
        || async { (redis.llen(&own).await == 0).then_some(()) },
    )
    .await;
    let back: BTreeSet<String> = staged_ids(&redis, "bg:archive:outbox")
        .await
        .into_iter()
        .collect();
    let lost: Vec<&String> = held.iter().filter(|id| !back.contains(*id)).collect();
    assert!(lost.is_empty(), "rows {name} held are not back: {lost:?}");

    blocking(|| pg.start_again());
    let db = pg.client().await.unwrap();
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    wait_archived(&db, &expected, Duration::from_secs(30)).await;
    outboxes_drained(&redis, &["n1", "n2"]).await;
    assert_eq!(redis.llen(&own).await, 0);
}

/// Slots and node-local queue of the node whose outbox fills.
const CONCURRENCY: u64 = 8;
const QUEUE: u64 = 8;

/// A node archiving to `pg_url` with an outbox bound of 1000 rows, [`CONCURRENCY`] slots and a
/// local queue of [`QUEUE`] per worker type.
async fn small_outbox_node(redis: &Redis, workers: &std::path::Path, pg_url: &str) -> NodeProc {
    let (concurrency, queue) = (CONCURRENCY.to_string(), QUEUE.to_string());
    let node = NodeProc::start(
        redis,
        "n1",
        workers,
        &[
            ("BGNODE_SAVER__ARCHIVE", pg_url),
            ("BGNODE_SAVER__ARCHIVE_OUTBOX", "1000"),
            ("BGNODE_WORKERS__CONCURRENCY", &concurrency),
            ("BGNODE_WORKERS__QUEUE", &queue),
        ],
    );
    node.ready().await;
    node
}

/// Enqueues 1,600 tasks of about 50 ms: the outbox reaches its bound while many still wait.
async fn enqueue_naps(redis: &Redis) -> Vec<String> {
    let client = Client::connect(&redis.url).await.unwrap();
    let specs: Vec<TaskSpec> = (0..1600)
        .map(|i| TaskSpec::new("nap", json!({"s": 0.05, "i": i})).id(format!("f{i}")))
        .collect();
    let mut ids = Vec::new();
    for chunk in specs.chunks(500) {
        ids.extend(client.enqueue_all(chunk.to_vec()).await.unwrap());
    }
    ids
}

/// Asserts that the outbox (the cluster's and the node's own) fills to its bound of 1000 and that the claims are then held: the
/// node logs it, and once what ran has ended nothing more finishes or starts for a while.
async fn claims_held_at_the_bound(redis: &Redis, node: &NodeProc, ids: &[String]) {
    eventually(
        Duration::from_secs(60),
        "1000 rows in the outbox",
        || async { (redis.archive_waiting(&["n1"]).await >= 1000).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(5), "the claims to be held", || async {
        let mut con = redis.con().await;
        let held: bool = redis::cmd("EXISTS")
            .arg("bg:archive:full")
            .query_async(&mut con)
            .await
            .unwrap();
        held.then_some(())
    })
    .await;
    // The archiver reads the outbox once a second, so the hold starts up to a second of work
    // past the bound. From then on what runs finishes and what was claimed but not started
    // goes back (or starts in a slot freed before the node learns of the hold): the outbox
    // grows by at most the slots and the node-local queue, and nothing new starts.
    let at_hold = redis.archive_waiting(&["n1"]).await;
    eventually(
        Duration::from_secs(10),
        "the running tasks to end",
        || async { (count_in(redis, ids, "running").await == 0).then_some(()) },
    )
    .await;
    let plateau = redis.archive_waiting(&["n1"]).await;
    let done = count_in(redis, ids, "done").await;
    println!(
        "outbox: {at_hold} rows when the hold was seen, {plateau} once running tasks ended; {done} of {} tasks done",
        ids.len()
    );
    assert!(
        plateau <= at_hold + CONCURRENCY + QUEUE,
        "the outbox grew from {at_hold} to {plateau} after the hold"
    );
    assert!(done < ids.len(), "every task ran despite the hold");
    holds_for(Duration::from_secs(2), "the hold", || async {
        let now = (
            redis.archive_waiting(&["n1"]).await,
            count_in(redis, ids, "done").await,
            count_in(redis, ids, "running").await,
        );
        if now == (plateau, done, 0) {
            Ok(())
        } else {
            Err(format!(
                "(outbox, done, running) went from {:?} to {now:?}",
                (plateau, done, 0)
            ))
        }
    })
    .await;
    assert!(
        node.log().contains("the archive's outbox is full"),
        "{}",
        node.log()
    );
}

/// Once PostgreSQL answers again: the outbox drains, claims resume, every task runs and is
/// archived once.
async fn claims_resume_and_all_is_archived(
    redis: &Redis,
    node: &NodeProc,
    pg: &Postgres,
    ids: &[String],
) {
    wait_done(redis, ids, Duration::from_secs(90)).await;
    let db = pg.client().await.unwrap();
    let expected: BTreeSet<String> = ids.iter().cloned().collect();
    wait_archived(&db, &expected, Duration::from_secs(30)).await;
    outboxes_drained(redis, &["n1"]).await;
    assert!(node.log().contains("claims resume"), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_outbox_holds_claims_and_drops_nothing() {
    let _serial = SERIAL.lock().await;
    let mut pg = Postgres::start();
    let redis = Redis::start();
    let workers = test_workers();
    let node = small_outbox_node(&redis, workers.path(), &pg.url).await;
    {
        let db = pg.client().await.unwrap();
        archivers_connected(&db, 1).await;
    }
    blocking(|| pg.stop());
    let ids = enqueue_naps(&redis).await;
    claims_held_at_the_bound(&redis, &node, &ids).await;
    blocking(|| pg.start_again());
    claims_resume_and_all_is_archived(&redis, &node, &pg, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_postgres_still_holds_claims_at_the_bound() {
    let _serial = SERIAL.lock().await;
    let pg = Postgres::start();
    // Frozen, PostgreSQL takes connections (the kernel does) and never answers them: the
    // archiver's connect hangs, and the outbox's watch must go on regardless.
    pg.signal(Signal::STOP);
    let redis = Redis::start();
    let workers = test_workers();
    let node = small_outbox_node(&redis, workers.path(), &pg.url).await;
    let ids = enqueue_naps(&redis).await;
    claims_held_at_the_bound(&redis, &node, &ids).await;
    pg.signal(Signal::CONT);
    claims_resume_and_all_is_archived(&redis, &node, &pg, &ids).await;
}
