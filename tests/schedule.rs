//! Task policy with real `bgnode` processes and a real Redis: delayed and recurring tasks (with
//! two nodes for the cluster-wide rules), priorities, retries and the dead set, deadlines,
//! per-key limits, cancellation, idempotent ids and result keys.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use background::{Client, TaskSpec};
use common::{
    NodeProc, Redis, cli, cli_env, eventually, runs, state_of, test_workers, wait_state,
    write_script,
};
use rustix::process::Signal;
use serde_json::{Value, json};

const T: Duration = common::WAIT;

async fn num(redis: &Redis, id: &str, field: &str) -> u64 {
    redis
        .task_field(id, field)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("task {id} has no numeric `{field}`"))
}

async fn ok(redis: &Redis, args: &[&str]) -> String {
    let (code, out, err) = cli(redis, args).await;
    assert_eq!(code, 0, "bgnode {args:?} failed: {err}");
    out.trim().to_owned()
}

fn runs_of(workers: &Path, prefix: &str) -> Vec<(String, String, u32, u64)> {
    runs(workers)
        .into_iter()
        .filter(|r| r.0.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_due_in_two_seconds_runs_between_two_and_three_seconds_later() {
    let (redis, _workers, _node) = common::one_node(&[]).await;

    ok(
        &redis,
        &["do", "record", "{}", "--in", "2s", "--id", "later"],
    )
    .await;
    assert_eq!(
        state_of(&redis, "later").await.as_deref(),
        Some("scheduled")
    );
    wait_state(&redis, "later", "done").await;
    let created = num(&redis, "later", "created").await;
    let started = num(&redis, "later", "started").await;
    let delay = started - created;
    assert!(
        (2_000..3_000).contains(&delay),
        "started {delay} ms after enqueue"
    );

    // `--at` with an offset reads the same way.
    let at = background::time::format_timestamp(background::time::now_ms() + 1_500);
    ok(
        &redis,
        &["do", "record", "{}", "--at", &at, "--id", "at-time"],
    )
    .await;
    wait_state(&redis, "at-time", "done").await;
    let started = num(&redis, "at-time", "started").await;
    let due = background::time::parse_time(&at).unwrap();
    assert!(
        started >= due && started < due + 1_000,
        "ran {} ms after its time",
        started - due
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recurring_task_fires_each_occurrence_once_with_two_nodes() {
    let redis = Redis::start();
    let workers = test_workers();
    let a = NodeProc::start(&redis, "n1", workers.path(), &[]);
    let b = NodeProc::start(&redis, "n2", workers.path(), &[]);
    eventually(T, "one node to hold the ingress lease", || async {
        (a.log().contains("subscribed") || b.log().contains("subscribed")).then_some(())
    })
    .await;
    b.wait_log("node starting", T).await;
    a.wait_log("node starting", T).await;

    ok(
        &redis,
        &[
            "do",
            "record",
            r#"{"tick":1}"#,
            "--every",
            "1s",
            "--id",
            "tick",
        ],
    )
    .await;
    let occurrences = eventually(Duration::from_secs(30), "7 occurrences", || async {
        let r = runs_of(workers.path(), "tick@");
        (r.len() >= 7).then_some(r)
    })
    .await;
    let (code, out, _) = cli(&redis, &["cancel", "tick"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(state_of(&redis, "tick").await.as_deref(), Some("cancelled"));

    let ids: Vec<&str> = occurrences.iter().map(|r| r.0.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an occurrence ran twice: {ids:?}");
    let mut dues: Vec<u64> = unique
        .iter()
        .map(|id| id.rsplit('@').next().unwrap().parse().unwrap())
        .collect();
    dues.sort_unstable();
    for pair in dues.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1_000,
            "occurrences are one interval apart: {dues:?}"
        );
    }
    for run in &occurrences {
        let due: u64 = run.0.rsplit('@').next().unwrap().parse().unwrap();
        assert!(
            run.3 >= due && run.3 < due + 1_000,
            "{} ran {} ms after its due time",
            run.0,
            run.3 - due
        );
    }
    // After the cancel, no new occurrence is created.
    let before = runs_of(workers.path(), "tick@").len();
    let mut con = redis.con().await;
    let scheduled: Option<f64> = redis::cmd("ZSCORE")
        .arg("bg:scheduled")
        .arg("tick")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(scheduled, None, "the template left the scheduled set");
    assert!(runs_of(workers.path(), "tick@").len() <= before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn priorities_order_a_backlog() {
    let (redis, workers, _node) = common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "1")]).await;
    let client = Client::connect(&redis.url).await.unwrap();
    // Occupy the only slot, then build the backlog in one go.
    client
        .enqueue(TaskSpec::new("record", json!({"s": 1})).id("blocker"))
        .await
        .unwrap();
    wait_state(&redis, "blocker", "running").await;
    let plan = [
        ("p-low", -5),
        ("p-mid1", 0),
        ("p-high", 50),
        ("p-mid2", 0),
        ("p-top", 100),
        ("p-mid3", 0),
    ];
    let specs = plan
        .iter()
        .map(|(id, p)| TaskSpec::new("record", json!({})).id(*id).priority(*p))
        .collect();
    client.enqueue_all(specs).await.unwrap();
    eventually(T, "the backlog to drain", || async {
        (runs_of(workers.path(), "p-").len() == plan.len()).then_some(())
    })
    .await;
    let order: Vec<String> = runs_of(workers.path(), "p-")
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        order,
        ["p-top", "p-high", "p-mid1", "p-mid2", "p-mid3", "p-low"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_growing_delays_then_die_and_retry_brings_them_back() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    write_script(
        workers.path(),
        "flaky.sh",
        &format!(
            "{}\n[ -e \"$BG_DIR/fixed\" ] && exit 0\necho \"attempt $BG_ATTEMPT failed\" >&2\nexit 1\n",
            common::RECORD_SH.trim_end()
        ),
    );
    let node = NodeProc::start(&redis, "n1", workers.path(), &[]);
    node.ready().await;
    let events = redis.events().await;

    ok(
        &redis,
        &[
            "do",
            "flaky",
            "{}",
            "--id",
            "f",
            "--attempts",
            "4",
            "--backoff",
            "300ms",
            "--backoff-cap",
            "10s",
        ],
    )
    .await;
    wait_state(&redis, "f", "dead").await;
    let attempts = runs_of(workers.path(), "f");
    assert_eq!(
        attempts.iter().map(|r| r.2).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1].3 - w[0].3).collect();
    // Equal jitter: the n-th retry waits between half and all of 300 ms * 2^(n-1).
    for (n, gap) in gaps.iter().enumerate() {
        let full = 300u64 << n;
        assert!(
            *gap >= full / 2 && *gap < full + 500,
            "retry {} waited {gap} ms",
            n + 1
        );
    }
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    let (_, out, _) = cli(&redis, &["status", "f", "--json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["attempt"], 4);
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("attempt 4 failed (gave up after 4 attempts)")
    );
    assert_eq!(
        events.of("retry").iter().filter(|e| e["id"] == "f").count(),
        3
    );
    assert_eq!(
        events.of("error").iter().filter(|e| e["id"] == "f").count(),
        4
    );
    assert_eq!(
        events.of("dead").iter().filter(|e| e["id"] == "f").count(),
        1
    );

    let (code, out, _) = cli(&redis, &["bg", "--json"]).await;
    assert_eq!(code, 0);
    let overview: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(overview["dead"][0]["id"], "f", "{overview}");
    assert_eq!(overview["counts"]["dead"], 1);
    let human = ok(&redis, &["bg"]).await;
    assert!(
        human.contains("dead (1):") && human.contains("f  flaky  dead"),
        "{human}"
    );

    std::fs::write(workers.path().join("fixed"), "").unwrap();
    assert_eq!(ok(&redis, &["retry", "f"]).await, "queued f again");
    wait_state(&redis, "f", "done").await;
    let (_, out, _) = cli(&redis, &["bg", "--json"]).await;
    let overview: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(overview["counts"]["dead"], 0, "{overview:#}");
    let (code, _, err) = cli(&redis, &["retry", "f"]).await;
    assert_eq!(code, 0, "a done task can be run again: {err}");
    let (code, _, err) = cli(&redis, &["retry", "nope"]).await;
    assert_eq!(code, 3, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_expires_a_task_that_could_not_start_in_time() {
    let (redis, workers, _node) = common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "1")]).await;
    let events = redis.events().await;

    // No node offers this worker: it waits in its pending set until its deadline.
    ok(
        &redis,
        &[
            "do",
            "nobody-runs-this",
            "{}",
            "--deadline",
            "1s",
            "--id",
            "orphan",
        ],
    )
    .await;
    // This one is claimed by the node but stuck behind a long task on the only slot.
    ok(&redis, &["do", "record", r#"{"s":4}"#, "--id", "hog"]).await;
    wait_state(&redis, "hog", "running").await;
    ok(
        &redis,
        &["do", "record", "{}", "--deadline", "1s", "--id", "late"],
    )
    .await;
    ok(
        &redis,
        &["do", "record", "{}", "--deadline", "30s", "--id", "in-time"],
    )
    .await;

    wait_state(&redis, "orphan", "expired").await;
    wait_state(&redis, "late", "expired").await;
    wait_state(&redis, "in-time", "done").await;
    assert!(
        runs_of(workers.path(), "late").is_empty(),
        "an expired task never runs"
    );
    for id in ["orphan", "late"] {
        eventually(T, &format!("an `expired` event for {id}"), || async {
            events
                .of("expired")
                .iter()
                .any(|e| e["id"] == id)
                .then_some(())
        })
        .await;
    }
    let (code, _, err) = cli(&redis, &["result", "late"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("expired: deadline passed before the task started"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_key_limit_rejects_the_excess() {
    let (redis, _workers, _node) = common::one_node(&[("BGNODE_KEYS__LIMIT", "2")]).await;
    let env = [("BGNODE_KEYS__LIMIT", "2")];
    let events = redis.events().await;

    for id in ["k-1", "k-2"] {
        let (code, _, err) = cli_env(
            &redis,
            &env,
            &["do", "nap", r#"{"s":2}"#, "--key", "cust", "--id", id],
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = cli_env(
        &redis,
        &env,
        &["do", "nap", r#"{"s":2}"#, "--key", "cust", "--id", "k-3"],
    )
    .await;
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("key `cust` is at its limit of 2 pending or running tasks"),
        "{err}"
    );
    assert_eq!(
        state_of(&redis, "k-3").await,
        None,
        "a refused task is not stored"
    );
    // The raw path refuses the same way, with a rejected event.
    redis
        .publish(
            "background",
            r#"{"worker":"nap","id":"k-raw","key":"cust","args":{"s":0}}"#,
        )
        .await;
    eventually(T, "a rejected event for the raw task", || async {
        events
            .of("rejected")
            .iter()
            .any(|e| {
                e["id"] == "k-raw" && e["reason"].as_str().unwrap_or("").contains("at its limit")
            })
            .then_some(())
    })
    .await;
    // Another key is not affected; once the first two finish, the key has room again.
    ok(&redis, &["do", "record", "{}", "--key", "other"]).await;
    wait_state(&redis, "k-1", "done").await;
    wait_state(&redis, "k-2", "done").await;
    let (code, _, err) = cli_env(
        &redis,
        &env,
        &["do", "record", "{}", "--key", "cust", "--wait"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_key_limit_defers_and_frees_slots_after_crashes() {
    let redis = Redis::start();
    let workers = test_workers();
    write_script(workers.path(), "crash.sh", "#!/bin/sh\nexit 9\n");
    let env = [("BGNODE_KEYS__POLICY", "defer")];
    let node_env = [
        ("BGNODE_KEYS__POLICY", "defer"),
        ("BGNODE_WORKERS__CONCURRENCY", "4"),
    ];
    let node = NodeProc::start(&redis, "n1", workers.path(), &node_env);
    node.ready().await;

    // One slot (the default limit): a failing task, then three that must run one at a time.
    ok(
        &redis,
        &["do", "crash", "{}", "--key", "acct", "--id", "d-0"],
    )
    .await;
    for i in 1..=3 {
        let (code, _, err) = cli_env(
            &redis,
            &env,
            &[
                "do",
                "record",
                "{}",
                "--key",
                "acct",
                "--id",
                &format!("d-{i}"),
            ],
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    wait_state(&redis, "d-0", "dead").await;
    for i in 1..=3 {
        wait_state(&redis, &format!("d-{i}"), "done").await;
    }
    let mut spans = Vec::new();
    for i in 1..=3 {
        let id = format!("d-{i}");
        spans.push((
            num(&redis, &id, "started").await,
            num(&redis, &id, "finished").await,
        ));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "tasks of one key overlapped: {spans:?}");
    }

    // A node killed while a keyed task runs: the slot stays with the task, which runs again
    // when the node comes back, and is freed when it finishes.
    ok(
        &redis,
        &["do", "nap", r#"{"s":3}"#, "--key", "acct", "--id", "d-kill"],
    )
    .await;
    wait_state(&redis, "d-kill", "running").await;
    let (code, _, _) = cli_env(
        &redis,
        &env,
        &["do", "record", "{}", "--key", "acct", "--id", "d-after"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        state_of(&redis, "d-after").await.as_deref(),
        Some("deferred")
    );
    node.signal(Signal::KILL);
    drop(node);
    let node = NodeProc::start(&redis, "n1", workers.path(), &node_env);
    node.ready().await;
    wait_state(&redis, "d-kill", "done").await;
    wait_state(&redis, "d-after", "done").await;
    let mut con = redis.con().await;
    let held: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:key:acct")
        .query_async(&mut con)
        .await
        .unwrap();
    let deferred: i64 = redis::cmd("LLEN")
        .arg("bg:deferred:acct")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(held.is_empty(), "no slot leaked: {held:?}");
    assert_eq!(deferred, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_works_in_every_state() {
    let (redis, workers, _node) = common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "1")]).await;
    let events = redis.events().await;

    // Scheduled.
    ok(
        &redis,
        &["do", "record", "{}", "--in", "1h", "--id", "c-sched"],
    )
    .await;
    assert_eq!(
        ok(&redis, &["cancel", "c-sched"]).await,
        "cancelled c-sched"
    );
    // Pending, no node for it.
    ok(
        &redis,
        &["do", "nobody-runs-this", "{}", "--id", "c-pending"],
    )
    .await;
    assert_eq!(
        ok(&redis, &["cancel", "c-pending"]).await,
        "cancelled c-pending"
    );
    // Running (a script: its process group is terminated).
    ok(
        &redis,
        &["do", "record", r#"{"s":30}"#, "--id", "c-running"],
    )
    .await;
    wait_state(&redis, "c-running", "running").await;
    // Queued on the node behind it.
    ok(&redis, &["do", "record", "{}", "--id", "c-queued"]).await;
    eventually(T, "c-queued to be claimed", || async {
        redis
            .task_field("c-queued", "node")
            .await
            .filter(|n| n == "n1")
    })
    .await;
    let out = ok(&redis, &["cancel", "c-queued"]).await;
    assert!(out.contains("requested"), "{out}");
    let started = std::time::Instant::now();
    let out = ok(&redis, &["cancel", "c-running"]).await;
    assert!(out.contains("requested"), "{out}");
    for id in ["c-sched", "c-pending", "c-queued", "c-running"] {
        wait_state(&redis, id, "cancelled").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the running script stopped promptly"
    );
    let ran: Vec<String> = runs_of(workers.path(), "c-")
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ran, ["c-running"], "only the running one had started");
    for id in ["c-sched", "c-pending", "c-queued", "c-running"] {
        eventually(T, &format!("a `cancelled` event for {id}"), || async {
            events
                .of("cancelled")
                .iter()
                .any(|e| e["id"] == id)
                .then_some(())
        })
        .await;
    }
    // Finished, and unknown.
    let (code, _, err) = cli(&redis, &["cancel", "c-running"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already finished"), "{err}");
    let (code, _, _) = cli(&redis, &["cancel", "never-was"]).await;
    assert_eq!(code, 3);
    // The node is free again.
    let (code, _, err) = cli(&redis, &["do", "echo", "{}", "--wait"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_id_runs_once_and_result_keys_read_and_reset() {
    let (redis, workers, _node) = common::one_node(&[]).await;

    let first = ok(&redis, &["do", "record", r#"{"n":1}"#, "--id", "same"]).await;
    let (code, second, err) = cli(&redis, &["do", "record", r#"{"n":2}"#, "--id", "same"]).await;
    assert_eq!((code, first.as_str()), (0, "same"));
    assert_eq!(second.trim(), "same");
    assert!(err.contains("exists; nothing was added"), "{err}");
    wait_state(&redis, "same", "done").await;
    let client = Client::connect(&redis.url).await.unwrap();
    let again = client
        .enqueue(TaskSpec::new("record", json!({"n": 3})).id("same"))
        .await
        .unwrap();
    assert_eq!(again, "same");
    assert_eq!(ok(&redis, &["result", "same"]).await, r#"{"n":1}"#);
    assert_eq!(runs_of(workers.path(), "same").len(), 1, "ran once");

    // Result keys.
    let (code, _, _) = cli(
        &redis,
        &[
            "do",
            "echo",
            r#"{"report":42}"#,
            "--result-key",
            "monthly",
            "--wait",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        ok(&redis, &["result", "--key", "monthly"]).await,
        r#"{"report":42}"#
    );
    assert_eq!(
        client.result_by_key("monthly").await.unwrap(),
        Some(json!({"report": 42}))
    );
    let (code, out, _) = cli(&redis, &["result", "--key", "monthly", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"key": "monthly", "result": {"report": 42}})
    );
    // A newer result replaces it.
    cli(
        &redis,
        &[
            "do",
            "echo",
            r#"{"report":43}"#,
            "--result-key",
            "monthly",
            "--wait",
        ],
    )
    .await;
    assert_eq!(
        ok(&redis, &["result", "--key", "monthly"]).await,
        r#"{"report":43}"#
    );
    assert_eq!(
        ok(&redis, &["result", "--key", "monthly", "--reset"]).await,
        "reset monthly"
    );
    let (code, _, err) = cli(&redis, &["result", "--key", "monthly"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(!client.reset_result_key("monthly").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_schedules_and_options_are_refused_clearly() {
    let redis = Redis::start();
    let cases: &[(&[&str], &str)] = &[
        (&["do", "w", "--in", "soon"], "--in"),
        (&["do", "w", "--at", "next tuesday"], "--at"),
        (&["do", "w", "--at", "February 30th 2030"], "does not exist"),
        (&["do", "w", "--cron", "0 3 * *"], "has 4 fields"),
        (&["do", "w", "--cron", "99 * * * *"], "cron minute"),
        (&["do", "w", "--every", "10ms"], "at least"),
        (&["do", "w", "--every", "1h", "--wait"], "no single result"),
        (&["do", "w", "--key", "a/b"], "field `key`"),
        (&["do", "w", "--attempts", "0"], "field `attempts`"),
        (&["do", "w", "--deadline", "0s"], "field `deadline`"),
    ];
    for (args, want) in cases {
        let (code, _, err) = cli(&redis, args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    let (code, _, err) = cli(&redis, &["do", "w", "--every", "1h", "--cron", "@daily"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}
