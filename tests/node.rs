//! One real `bgnode` process against a real `redis-server`: the whole task path, bad input,
//! a Redis outage, and graceful shutdown.

mod common;

use std::time::Duration;

use common::{
    NodeProc, Redis, cli, cli_env, eventually, state_of, test_workers, wait_state, write_script,
};
use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const T: Duration = common::WAIT;

async fn status_json(redis: &Redis, id: &str) -> Value {
    let (code, out, err) = cli(redis, &["status", id, "--json"]).await;
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).expect("status --json prints one JSON object")
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_publish_runs_a_script_worker_and_announces_it() {
    let (redis, _workers, _node) = common::one_node(&[]).await;
    let events = redis.events().await;

    let receivers = redis
        .publish(
            "background",
            r#"{"worker":"echo","id":"raw-1","args":{"x":1}}"#,
        )
        .await;
    assert_eq!(receivers, 1, "exactly one node listens on the task channel");
    wait_state(&redis, "raw-1", "done").await;

    let status = status_json(&redis, "raw-1").await;
    assert_eq!(status["result"], json!({"x": 1}));
    assert_eq!(status["worker"], "echo");
    assert_eq!(status["node"], "n1");
    assert_eq!(status["attempt"], 1);
    assert_eq!(status["error"], Value::Null);
    for kind in ["available", "started", "done"] {
        eventually(T, &format!("a `{kind}` event"), || async {
            events
                .of(kind)
                .iter()
                .any(|e| e["id"] == "raw-1")
                .then_some(())
        })
        .await;
    }
    // The same id published again is not accepted twice.
    redis
        .publish(
            "background",
            r#"{"worker":"echo","id":"raw-1","args":{"x":2}}"#,
        )
        .await;
    let (code, out, _) = cli(&redis, &["do", "echo", "{}", "--wait"]).await;
    assert_eq!((code, out.trim()), (0, "{}"));
    assert_eq!(
        status_json(&redis, "raw-1").await["result"],
        json!({"x": 1})
    );
    assert_eq!(
        events
            .of("started")
            .iter()
            .filter(|e| e["id"] == "raw-1")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_do_wait_status_and_result() {
    let (redis, _workers, _node) = common::one_node(&[]).await;

    let (code, out, err) = cli(&redis, &["do", "echo", r#"{"a":[1,2]}"#, "--wait"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"a": [1, 2]})
    );

    let (code, out, _) = cli(&redis, &["do", "echo", r#"{"b":2}"#, "--id", "job-7"]).await;
    assert_eq!((code, out.trim()), (0, "job-7"), "do prints the task id");
    wait_state(&redis, "job-7", "done").await;
    let (code, out, _) = cli(&redis, &["result", "job-7"]).await;
    assert_eq!((code, out.trim()), (0, r#"{"b":2}"#));
    let (code, out, _) = cli(&redis, &["result", "job-7", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"id": "job-7", "state": "done", "result": {"b": 2}, "error": null})
    );
    let status = status_json(&redis, "job-7").await;
    for key in [
        "id", "worker", "state", "node", "attempt", "result", "error",
    ] {
        assert!(
            status.get(key).is_some(),
            "status --json lacks `{key}`: {status}"
        );
    }
    let (code, out, _) = cli(&redis, &["status", "job-7"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("state:    done (2)"), "{out}");

    let (code, _, err) = cli(&redis, &["status", "no-such-task"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no task no-such-task"), "{err}");

    let (code, out, _) = cli(&redis, &["do", "echo", "{}", "--wait", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["state"].clone(), v["result"].clone()),
        (json!("done"), json!({}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_script_reports_its_stderr() {
    let (redis, _workers, _node) = common::one_node(&[]).await;
    let events = redis.events().await;

    let (code, _, err) = cli(&redis, &["do", "fail", "--wait", "--id", "f1"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("exit code 3: the disk is on fire"), "{err}");
    let status = status_json(&redis, "f1").await;
    assert_eq!(
        status["state"], "dead",
        "one attempt by default, then the dead set"
    );
    assert_eq!(
        status["error"],
        "exit code 3: the disk is on fire (gave up after 1 attempt)"
    );
    let (code, _, err) = cli(&redis, &["result", "f1"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("the disk is on fire"), "{err}");
    eventually(T, "an `error` event", || async {
        events
            .of("error")
            .iter()
            .any(|e| e["id"] == "f1" && e["error"].as_str().unwrap_or("").contains("fire"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_past_its_time_limit_is_killed_with_its_children() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    write_script(
        workers.path(),
        "stuck.sh",
        "#!/bin/sh\nsleep 3600 &\necho $! > \"$BG_DIR/child-$BG_TASK_ID.pid\"\nwait\n",
    );
    let node = NodeProc::start(&redis, "n1", workers.path(), &[]);
    node.ready().await;

    let started = std::time::Instant::now();
    let (code, _, err) = cli(
        &redis,
        &["do", "stuck", "--timeout", "1s", "--wait", "--id", "s1"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("timed out after 1s; process group killed"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid_file = workers.path().join("child-s1.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(T, "the script's child process to be gone", || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    })
    .await;
    assert_eq!(status_json(&redis, "s1").await["state"], "dead");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_is_rejected_and_valid_neighbours_complete() {
    let (redis, _workers, node) = common::one_node(&[]).await;
    let events = redis.events().await;

    let long_name = "a".repeat(10_000);
    let oversized = format!(r#"{{"worker":"echo","args":"{}"}}"#, "x".repeat(2 << 20));
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not valid JSON"),
        (b"[1,2,3]".to_vec(), "must be a JSON object"),
        (
            br#"{"worker":42}"#.to_vec(),
            "field `worker`: expected a string",
        ),
        (
            br#"{"worker":"echo","priority":"urgent"}"#.to_vec(),
            "field `priority`",
        ),
        (br#"{"args":{"a":1}}"#.to_vec(), "missing field `worker`"),
        (
            br#"{"worker":"nobody-has-this"}"#.to_vec(),
            "unknown worker `nobody-has-this`",
        ),
        (oversized.into_bytes(), "over the 1048576-byte limit"),
        (br#"{"worker":"../x"}"#.to_vec(), "contains a dot"),
        (br#"{"worker":"/bin/sh"}"#.to_vec(), "path separator"),
        (br#"{"worker":"ec\u0000ho"}"#.to_vec(), "NUL"),
        (
            format!(r#"{{"worker":"{long_name}"}}"#).into_bytes(),
            "10000 bytes long",
        ),
        (vec![0xff, 0xfe, 0x00, 0x9f], "not valid JSON"),
    ];
    let mut valid = Vec::new();
    for (i, (payload, _)) in bad.iter().enumerate() {
        let id = format!("ok-{i}");
        redis
            .publish(
                "background",
                format!(r#"{{"worker":"echo","id":"{id}","args":{{"i":{i}}}}}"#),
            )
            .await;
        assert_eq!(redis.publish("background", payload.as_slice()).await, 1);
        valid.push(id);
    }
    for id in &valid {
        wait_state(&redis, id, "done").await;
    }
    let rejected = eventually(T, "a rejected event per bad message", || async {
        let r = events.of("rejected");
        (r.len() >= bad.len()).then_some(r)
    })
    .await;
    assert_eq!(rejected.len(), bad.len(), "{rejected:#?}");
    for ((_, reason), event) in bad.iter().zip(&rejected) {
        let got = event["reason"].as_str().unwrap();
        assert!(got.contains(reason), "expected {reason:?} in {got:?}");
        assert!(event["excerpt"].as_str().unwrap().chars().count() <= 121);
    }
    assert!(node.log().contains("rejected a channel message"));
    // Still alive and working.
    let (code, out, _) = cli(&redis, &["do", "echo", r#"{"after":true}"#, "--wait"]).await;
    assert_eq!((code, out.trim()), (0, r#"{"after":true}"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_bad_input_clearly() {
    let redis = Redis::start();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["do", "../x"], 2, "contains a dot"),
        (&["do", "/bin/sh"], 2, "path separator"),
        (
            &["do", "echo", "{not json"],
            2,
            "ARGS_JSON is not valid JSON",
        ),
        (
            &["do", "echo", "{}", "--priority", "1000"],
            2,
            "field `priority`",
        ),
        (&["do", "echo", "{}", "--timeout", "soon"], 2, "--timeout"),
        (&["do", "echo", "{}", "--id", "a b"], 2, "field `id`"),
        (&["eval", "nobody"], 2, "no worker `nobody`"),
    ];
    for (args, want_code, want) in cases {
        let (code, _, err) = cli(&redis, args).await;
        assert_eq!(code, *want_code, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
    }
    let mut con = redis.con().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("bg:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.is_empty(), "nothing was stored: {keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_survive_a_redis_outage() {
    let mut redis = Redis::start();
    let workers = test_workers();
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_WORKERS__CONCURRENCY", "4")],
    );
    node.ready().await;

    let mut ids = Vec::new();
    for i in 0..8 {
        let id = format!("nap-{i}");
        let (code, _, err) = cli(&redis, &["do", "nap", r#"{"s":2}"#, "--id", &id]).await;
        assert_eq!(code, 0, "{err}");
        ids.push(id);
    }
    eventually(T, "four naps running", || async {
        let mut running = 0;
        for id in &ids {
            if state_of(&redis, id).await.as_deref() == Some("running") {
                running += 1;
            }
        }
        (running == 4).then_some(())
    })
    .await;

    redis.kill();
    // The naps finish while Redis is away: their results wait in the saver.
    node.wait_log("saver cannot write to redis", T).await;
    redis.restart();

    for id in &ids {
        wait_state(&redis, id, "done").await;
    }
    let mut con = redis.con().await;
    let stale: Option<i64> = redis::cmd("HGET")
        .arg("bg:stats")
        .arg("stale")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stale, None, "no completion was fenced out");
    for id in &ids {
        assert_eq!(status_json(&redis, id).await["attempt"], 1, "{id} ran once");
    }
    let (code, out, err) = cli(&redis, &["do", "echo", r#"{"after":"outage"}"#, "--wait"]).await;
    assert_eq!((code, out.trim()), (0, r#"{"after":"outage"}"#), "{err}");
    let mut node = node;
    assert!(node.try_exit().is_none(), "the node kept running");
    assert!(node.log().contains("redis is back"), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_running_tasks_and_hands_back_the_queue() {
    let (redis, workers, mut node) =
        common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "2")]).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        let id = format!("t{i}");
        cli(&redis, &["do", "nap", r#"{"s":1}"#, "--id", &id]).await;
        ids.push(id);
    }
    eventually(T, "two tasks running", || async {
        let mut n = 0;
        for id in &ids {
            n += usize::from(state_of(&redis, id).await.as_deref() == Some("running"));
        }
        (n == 2).then_some(())
    })
    .await;
    let mut running = Vec::new();
    for id in &ids {
        if state_of(&redis, id).await.as_deref() == Some("running") {
            running.push(id.clone());
        }
    }
    node.signal(Signal::TERM);
    let status = node.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "clean exit: {status:?}\n{}", node.log());
    for id in &running {
        assert_eq!(
            state_of(&redis, id).await.as_deref(),
            Some("done"),
            "{id} finished before exit"
        );
    }
    let mut waiting = 0;
    for id in &ids {
        if state_of(&redis, id).await.as_deref() == Some("queued") {
            waiting += 1;
            assert_eq!(
                redis.task_field(id, "node").await.as_deref(),
                Some(""),
                "{id} is owned by no one"
            );
        }
    }
    assert_eq!(waiting, 4, "the queued tasks went back to the pending set");
    assert!(node.log().contains("stopping intake"));

    // Another node picks them up.
    let other = NodeProc::start(&redis, "n2", workers.path(), &[]);
    other.ready().await;
    for id in &ids {
        wait_state(&redis, id, "done").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_runs_its_tasks_again_when_it_restarts() {
    let (redis, workers, node) = common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "2")]).await;
    for i in 0..4 {
        cli(
            &redis,
            &["do", "nap", r#"{"s":30}"#, "--id", &format!("k{i}")],
        )
        .await;
    }
    wait_state(&redis, "k0", "running").await;
    node.signal(Signal::KILL);
    drop(node);

    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_WORKERS__CONCURRENCY", "4")],
    );
    node.wait_log("handed back tasks this node owned", T).await;
    let mut con = redis.con().await;
    for i in 0..4 {
        let id = format!("k{i}");
        wait_state(&redis, &id, "running").await;
        let epoch: u64 = redis::cmd("HGET")
            .arg(format!("bg:task:{id}"))
            .arg("epoch")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(epoch >= 2, "{id} changed owner, so its epoch moved on");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_with_the_same_id_refuses_to_start() {
    let redis = Redis::start();
    let workers = test_workers();
    let first = NodeProc::start(&redis, "same", workers.path(), &[]);
    first.ready().await;
    let mut second = NodeProc::start(&redis, "same", workers.path(), &[]);
    let status = second.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success());
    assert!(
        second
            .log()
            .contains("another node with id `same` is running"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_stops_the_node_at_start() {
    let redis = Redis::start();
    let workers = test_workers();
    let cases: &[(&str, &str, &str)] = &[
        (
            "BGNODE_WORKERS__CONCURENCY",
            "3",
            "unknown key `workers.concurency`",
        ),
        ("BGNODE_WORKERS__CONCURRENCY", "zero", "workers.concurrency"),
        (
            "BGNODE_WORKERS__CONCURRENCY",
            "0",
            "environment variable BGNODE_WORKERS__CONCURRENCY",
        ),
        ("BGNODE_REDIS_URL", "redis://x", "BGNODE_<SECTION>__<KEY>"),
        ("BGNODE_SAVER__RESULT_TTL", "forever", "saver.result_ttl"),
    ];
    for (key, value, want) in cases {
        let mut node = NodeProc::start(&redis, "cfg", workers.path(), &[(key, value)]);
        let status = node.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "{key}={value}: {}", node.log());
        assert!(
            node.log().contains(want),
            "{key}={value}: expected {want:?} in {}",
            node.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_runs_a_worker_without_redis() {
    let workers = test_workers();
    let out = tokio::process::Command::new(common::bgnode_bin())
        .args(["eval", "echo", r#"{"local":true}"#])
        .env("BGNODE_REDIS__URL", "redis://127.0.0.1:1")
        .env("BGNODE_WORKERS__DIR", workers.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"local":true}"#
    );
    let out = tokio::process::Command::new(common::bgnode_bin())
        .args(["eval", "fail"])
        .env("BGNODE_WORKERS__DIR", workers.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the disk is on fire"));
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_tasks_expire_after_the_result_ttl() {
    let (redis, _workers, _node) = common::one_node(&[("BGNODE_SAVER__RESULT_TTL", "1s")]).await;
    let (code, _, _) = cli(
        &redis,
        &["do", "echo", "{}", "--wait", "--id", "short-lived"],
    )
    .await;
    assert_eq!(code, 0);
    let mut con = redis.con().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("bg:task:short-lived")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 1000, "finished record has a TTL: {ttl}");
    eventually(T, "the finished record to expire", || async {
        state_of(&redis, "short-lived")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_the_node_cleanly() {
    let (redis, _workers, mut node) = common::one_node(&[]).await;
    node.signal(Signal::INT);
    let status = node.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", node.log());
    assert!(node.log().contains("ctrl-c received"));
    let mut con = redis.con().await;
    let lease: Option<String> = redis::cmd("GET")
        .arg("bg:node:n1:alive")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(lease, None, "the liveness lease is dropped on a clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_in_the_redis_url_never_reaches_a_log_or_an_error() {
    let redis = Redis::start();
    let dead = format!("redis://:s3cret@127.0.0.1:{}", common::free_port());

    let (code, _, err) =
        common::cli_env(&redis, &[("BGNODE_REDIS__URL", &dead)], &["status", "x"]).await;
    assert_ne!(code, 0, "no Redis there: {err}");
    assert!(err.contains("redis://:***@127.0.0.1:"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    let mut node = tokio::process::Command::new(common::bgnode_bin())
        .arg("start")
        .env_remove("BGNODE_CONFIG")
        .env("BGNODE_REDIS__URL", &dead)
        .env("BGNODE_NODE__COOKIE", "test-cookie")
        .env(
            "BGNODE_NODE__LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .current_dir(std::env::temp_dir())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let waiting = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("waiting for redis at");
            seen.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    node.kill().await.unwrap();
    let log = seen.join("\n");
    assert!(
        waiting.is_ok(),
        "the node never said it waits for Redis:\n{log}"
    );
    assert!(log.contains("redis://:***@127.0.0.1:"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_goes_away_stops_the_cli_quietly() {
    let redis = Redis::start();
    let mut bg = tokio::process::Command::new(common::bgnode_bin())
        .arg("bg")
        .env_remove("BGNODE_CONFIG")
        .env("BGNODE_REDIS__URL", &redis.url)
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Like `bgnode bg | head -0`: the reader closes before the first line is written.
    drop(bg.stdout.take());
    let out = tokio::time::timeout(T, bg.wait_with_output())
        .await
        .expect("bg ends")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_belongs_to_one_running_cluster() {
    let (redis, workers, mut first) = common::one_node(&[]).await;
    let other = [
        ("BGNODE_REDIS__PREFIX", "other"),
        ("BGNODE_NODE__COOKIE", "other-cookie"),
    ];
    let mut second = NodeProc::start(&redis, "m1", workers.path(), &other);
    let status = second.wait_exit(T).await;
    assert!(!status.success(), "{}", second.log());
    assert!(
        second
            .log()
            .contains("the task channel `background` on this Redis belongs to another running cluster (redis.prefix `bg`)"),
        "{}",
        second.log()
    );
    assert_eq!(
        redis.publish("background", r#"{"worker":"echo"}"#).await,
        1,
        "only the first cluster listens"
    );

    // Once the first cluster is gone, the channel may change hands.
    first.signal(Signal::TERM);
    assert!(first.wait_exit(T).await.success(), "{}", first.log());
    let third = NodeProc::start(&redis, "m1", workers.path(), &other);
    third.ready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn any_number_of_waiters_get_the_result_of_any_existing_task() {
    let (redis, _workers, _node) = common::one_node(&[]).await;
    // A finished task enqueued without --wait: waiting for it answers at once.
    let (code, _, err) = cli(&redis, &["do", "echo", r#"{"n":1}"#, "--id", "done-1"]).await;
    assert_eq!(code, 0, "{err}");
    wait_state(&redis, "done-1", "done").await;
    let (code, out, err) = cli(
        &redis,
        &[
            "do",
            "echo",
            r#"{"n":1}"#,
            "--id",
            "done-1",
            "--wait",
            "--wait-timeout",
            "20s",
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, r#"{"n":1}"#), "{err}");

    // A running task with three waiters: each gets the result.
    let (code, _, err) = cli(&redis, &["do", "nap", r#"{"s":1}"#, "--id", "slow"]).await;
    assert_eq!(code, 0, "{err}");
    let waiter = || {
        cli(
            &redis,
            &[
                "do",
                "nap",
                r#"{"s":1}"#,
                "--id",
                "slow",
                "--wait",
                "--wait-timeout",
                "20s",
            ],
        )
    };
    let (a, b, c) = tokio::join!(waiter(), waiter(), waiter());
    for (code, out, err) in [a, b, c] {
        assert_eq!((code, out.trim()), (0, r#"{"s":1}"#), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_cookie_is_taken_once_no_node_of_the_old_one_runs() {
    let (redis, workers, mut first) = common::one_node(&[]).await;
    let other = [("BGNODE_NODE__COOKIE", "another-cookie")];
    let mut refused = NodeProc::start(&redis, "n2", workers.path(), &other);
    assert!(!refused.wait_exit(T).await.success());
    assert!(
        refused.log().contains(
            "(node `n1` is alive) has another cookie: give this node the cluster's cookie"
        ),
        "{}",
        refused.log()
    );

    first.signal(Signal::TERM);
    assert!(first.wait_exit(T).await.success(), "{}", first.log());
    let second = NodeProc::start(&redis, "n2", workers.path(), &other);
    second.ready().await;
    assert!(
        second
            .log()
            .contains("this node's cookie is the cluster's now"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_on_eval_stops_the_script_and_what_it_started() {
    let workers = tempfile::tempdir().unwrap();
    let pidfile = workers.path().join("child.pid");
    write_script(
        workers.path(),
        "spawner.sh",
        &format!(
            "#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\n",
            pidfile.display()
        ),
    );
    let eval = tokio::process::Command::new(common::bgnode_bin())
        .args(["eval", "spawner"])
        .env_remove("BGNODE_CONFIG")
        .env("BGNODE_WORKERS__DIR", workers.path())
        .current_dir(workers.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let child: i32 = eventually(T, "the script to start its child", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    let alive = |pid: i32| {
        rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    };
    assert!(alive(child));
    if let Some(pid) = eval
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        rustix::process::kill_process(pid, Signal::INT).unwrap();
    }
    let out = tokio::time::timeout(T, eval.wait_with_output())
        .await
        .expect("eval ends on ctrl-c")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(T, "the script's child to be gone", || async {
        (!alive(child)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_left_holding_stdout_does_not_take_the_result() {
    let workers = tempfile::tempdir().unwrap();
    let pidfile = workers.path().join("daemon.pid");
    // Prints its result, then starts a daemon in a session of its own that keeps stdout open.
    write_script(
        workers.path(),
        "daemonizer.sh",
        &format!(
            "#!/bin/sh\nprintf 'hello'\nsetsid sh -c 'echo $$ > {0}; exec sleep 30' &\n\
             while [ ! -s {0} ]; do sleep 0.05; done\nexit 0\n",
            pidfile.display()
        ),
    );
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new(common::bgnode_bin())
            .args(["eval", "daemonizer"])
            .env_remove("BGNODE_CONFIG")
            .env("BGNODE_WORKERS__DIR", workers.path())
            .current_dir(workers.path())
            .output(),
    )
    .await
    .expect("eval ends while the daemon lives")
    .unwrap();
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"hello\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_a_worker_sees_is_recorded_before_it_starts() {
    // One slot: `a` runs, `b` waits claimed on the node.
    let (redis, workers, mut node) =
        common::one_node(&[("BGNODE_WORKERS__CONCURRENCY", "1")]).await;
    let client = background::Client::connect(&redis.url).await.unwrap();
    client
        .enqueue_all(vec![
            background::TaskSpec::new("record", json!({"s": 0.8})).id("a"),
            background::TaskSpec::new("record", json!({"s": 30})).id("b"),
        ])
        .await
        .unwrap();
    let started = |id: &'static str| {
        let dir = workers.path().to_owned();
        move || {
            let dir = dir.clone();
            async move {
                let runs = common::runs(&dir);
                let attempts: Vec<u32> = runs.iter().filter(|r| r.0 == id).map(|r| r.2).collect();
                (!attempts.is_empty()).then_some(attempts)
            }
        }
    };
    eventually(T, "a to start", started("a")).await;
    // Redis hangs, so the start of `b` cannot be written before `b` starts; the node dies
    // while it runs `b`.
    redis.signal(Signal::STOP);
    eventually(T, "b to start", started("b")).await;
    node.signal(Signal::KILL);
    node.wait_exit(T).await;
    redis.signal(Signal::CONT);

    let again = NodeProc::start(&redis, "n1", workers.path(), &[]);
    again.ready().await;
    let attempts = eventually(T, "b to run again", || async {
        let runs = common::runs(workers.path());
        let b: Vec<u32> = runs.iter().filter(|r| r.0 == "b").map(|r| r.2).collect();
        (b.len() >= 2).then_some(b)
    })
    .await;
    assert_eq!(
        attempts,
        vec![1, 2],
        "a second run of an interrupted attempt is the next attempt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_no_live_node_can_run_is_announced_listed_and_expires() {
    let limit = [("BGNODE_TASKS__UNRUNNABLE_AFTER", "6s")];
    let (redis, workers, _n1) = common::one_node(&limit).await;
    let events = redis.events().await;
    eventually(T, "n1 to report its workers", || async {
        let (_, out, _) = cli(&redis, &["info", "--json"]).await;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["members"][0]["workers"].get("echo").map(|_| ())
    })
    .await;

    // Said at enqueue, on stderr: why, and what becomes of the task (the CLI reads the same
    // configuration as the nodes).
    let (code, _, err) = cli_env(
        &redis,
        &limit,
        &["do", "echo", "--target", "node:n2", "--id", "for-n2"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: node `n2` is not live")
            && err.contains("waits for node `n2` to come back")
            && err.contains("6s ([tasks] unrunnable_after)"),
        "{err}"
    );
    let (code, _, err) = cli_env(
        &redis,
        &limit,
        &["do", "echo", "--target", "node:n9", "--id", "for-n9"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("node `n9` is not live"), "{err}");
    let (code, _, err) = cli_env(&redis, &limit, &["do", "nosuch", "--id", "nobody"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no live node offers worker `nosuch`"), "{err}");
    let (code, _, err) = cli_env(
        &redis,
        &limit,
        &["do", "echo", "--target", "node:n1", "--wait"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("warning"),
        "a runnable task is not warned about: {err}"
    );

    // Listed by `bgnode bg`, marked with the reason.
    let (code, out, err) = cli(&redis, &["bg", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let bg: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(bg["counts"]["unrunnable"], 3, "{bg}");
    let why = |id: &str| {
        bg["pending"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["unrunnable"].clone())
    };
    assert_eq!(why("for-n2"), Some(json!("node `n2` is not live")), "{bg}");
    assert_eq!(why("for-n9"), Some(json!("node `n9` is not live")), "{bg}");
    assert_eq!(
        why("nobody"),
        Some(json!("no live node offers worker `nosuch`"))
    );
    let (_, out, _) = cli(&redis, &["bg"]).await;
    assert!(
        out.contains("pending (3, 3 that no live node can run)")
            && out.contains("only on n9  CANNOT RUN NOW: node `n9` is not live"),
        "{out}"
    );

    // The sweep has started the clock of n2's set; n2 comes back in time and runs its task.
    eventually(T, "the clock of n2's pending set", || async {
        let mut con = redis.con().await;
        let on: bool = redis::cmd("HEXISTS")
            .arg("bg:unrunnable")
            .arg("bg:pending:echo@n2")
            .query_async(&mut con)
            .await
            .unwrap();
        on.then_some(())
    })
    .await;
    let _n2 = NodeProc::start(&redis, "n2", workers.path(), &limit);
    wait_state(&redis, "for-n2", "done").await;

    // The others expire once they have waited the limit, answering a waiter and announcing it.
    let (code, _, err) = cli_env(
        &redis,
        &limit,
        &["do", "nosuch", "--id", "nobody", "--wait"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("task nobody expired: cannot run: no live node offers worker `nosuch`"),
        "{err}"
    );
    wait_state(&redis, "for-n9", "expired").await;
    let status = status_json(&redis, "for-n9").await;
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("node `n9` is not live (waited longer than [tasks] unrunnable_after, 6s)"),
        "{status}"
    );
    let waited = status["finished"].as_u64().unwrap() - status["created"].as_u64().unwrap();
    assert!(
        (6_000..15_000).contains(&waited),
        "expired after {waited} ms"
    );
    eventually(T, "the expired events", || async {
        let ids: Vec<Value> = events
            .of("expired")
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        (ids.contains(&json!("for-n9")) && ids.contains(&json!("nobody"))).then_some(())
    })
    .await;
    assert_eq!(state_of(&redis, "for-n2").await.as_deref(), Some("done"));
}

/// A `NAME.toml` beside a script sets that worker's concurrency, time limit, attempts and
/// backoff, and `bgnode info` shows them; a settings file that cannot be used and a script that
/// lacks its run bit are each named in the start-up log with what to fix.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_settings_file_sets_its_worker_and_info_shows_it() {
    let redis = Redis::start();
    let workers = test_workers();
    let dir = workers.path();
    write_script(dir, "slow.sh", "#!/bin/sh\nsleep 30\n");
    std::fs::write(
        dir.join("slow.toml"),
        "concurrency = 3\ntimeout = \"1s\"\nattempts = 1\nbackoff = \"2s\"\n",
    )
    .unwrap();
    write_script(dir, "broken.sh", "#!/bin/sh\ncat\n");
    std::fs::write(dir.join("broken.toml"), "concurency = 2\n").unwrap();
    std::fs::write(dir.join("lazy.sh"), "#!/bin/sh\ncat\n").unwrap();
    let node = NodeProc::start(&redis, "n1", dir, &[]);
    node.ready().await;

    let log = node.log();
    assert!(
        log.contains("broken.sh skipped: its settings cannot be used")
            && log.contains("broken.toml: unknown field `concurency`"),
        "{log}"
    );
    assert!(
        log.contains("lazy.sh skipped: it is not executable (run `chmod +x"),
        "{log}"
    );

    let info = eventually(T, "info to show the slow worker's settings", || async {
        let (code, out, _) = cli(&redis, &["info"]).await;
        (code == 0 && out.contains("slow: 0/3 running")).then_some(out)
    })
    .await;
    let line = info.lines().find(|l| l.contains("slow:")).unwrap();
    assert!(
        line.contains("timeout 1s, 1 attempt, backoff 2s..") && line.contains("slow.toml"),
        "{line}"
    );
    let echo = info.lines().find(|l| l.contains(" echo:")).unwrap();
    assert!(!echo.contains(".toml"), "{echo}");
    let (_, json_out, _) = cli(&redis, &["info", "--json"]).await;
    let v: Value = serde_json::from_str(&json_out).unwrap();
    let settings = &v["members"][0]["settings"]["slow"];
    assert_eq!(settings["concurrency"], 3, "{v}");
    assert_eq!(settings["timeout_ms"], 1000, "{v}");
    assert!(v["members"][0]["settings"].get("broken").is_none(), "{v}");

    // The file's time limit and single attempt apply: dead after about a second.
    let started = std::time::Instant::now();
    let (code, _, err) = cli(&redis, &["do", "slow", "--wait", "--id", "s1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_state(&redis, "s1", "dead").await;
}

/// Writes a script next to where it goes and renames it into place, as a deploy should (writing
/// in place an executable that is running fails with "text file busy").
fn replace_script(dir: &std::path::Path, name: &str, body: &str) {
    let staged = write_script(dir, &format!(".{name}.new"), body);
    std::fs::rename(staged, dir.join(name)).unwrap();
}

/// With `[workers] watch` (the default), a script added, changed or removed is picked up within
/// about a second under a steady load, without `bgnode reload`: a new worker runs, a changed one
/// runs its new version for the tasks that start after the change while a running attempt
/// finishes on the old one, a removed one stops being offered while its running attempt
/// finishes; and no task fails for any of it.
#[tokio::test(flavor = "multi_thread")]
async fn the_workers_folder_is_watched_and_changes_apply_under_load() {
    let redis = Redis::start();
    let workers = tempfile::tempdir().unwrap();
    let dir = workers.path();
    write_script(
        dir,
        "keep.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 0.05\necho '\"v1\"'\n",
    );
    write_script(
        dir,
        "gone.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 2\necho '\"bye\"'\n",
    );
    let node = NodeProc::start(&redis, "n1", dir, &[]);
    node.ready().await;
    node.wait_log("watching the workers folder", T).await;
    let client = background::Client::connect(&redis.url).await.unwrap();
    let spec = |worker: &str, id: String| background::TaskSpec::new(worker, json!({})).id(id);

    // A steady load on `keep` for the whole test.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..120 {
                let id = format!("load-{i}");
                client.enqueue(spec("keep", id.clone())).await.unwrap();
                ids.push(id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    // A `gone` attempt running when its script is removed.
    client
        .enqueue(spec("gone", "last-gone".into()))
        .await
        .unwrap();
    wait_state(&redis, "last-gone", "running").await;

    // Added: a new worker runs, without a reload.
    let added = std::time::Instant::now();
    replace_script(
        dir,
        "fresh.sh",
        "#!/bin/sh\ncat >/dev/null\necho '\"new\"'\n",
    );
    client
        .enqueue(spec("fresh", "fresh-1".into()))
        .await
        .unwrap();
    wait_state(&redis, "fresh-1", "done").await;
    let took = added.elapsed();
    println!("an added script ran {took:?} after it appeared");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Changed: the tasks that start afterwards run the new version.
    let changed = std::time::Instant::now();
    replace_script(
        dir,
        "keep.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 0.05\necho '\"v2\"'\n",
    );
    let mut n = 0;
    let took = eventually(T, "a task to run the changed script", || {
        n += 1;
        let (client, id) = (client.clone(), format!("probe-{n}"));
        async move {
            let v = client
                .call(spec("keep", id), Duration::from_secs(10))
                .await
                .ok()?;
            (v == json!("v2")).then(|| changed.elapsed())
        }
    })
    .await;
    println!("a changed script ran its new version {took:?} after the change");

    // Removed: no longer offered, while its running attempt finishes on the old file.
    std::fs::remove_file(dir.join("gone.sh")).unwrap();
    eventually(
        T,
        "the removed worker to leave the node's report",
        || async {
            let (_, out, _) = cli(&redis, &["info", "--json"]).await;
            let v: Value = serde_json::from_str(&out).ok()?;
            let workers = v["members"][0]["workers"].as_object()?;
            (!workers.contains_key("gone") && workers.contains_key("fresh")).then_some(())
        },
    )
    .await;
    wait_state(&redis, "last-gone", "done").await;
    assert_eq!(
        redis.task_field("last-gone", "result").await.as_deref(),
        Some("\"bye\"")
    );

    // No task of the load failed, and both versions ran.
    let ids = load.await.unwrap();
    let mut results = std::collections::BTreeMap::new();
    for id in &ids {
        wait_state(&redis, id, "done").await;
        let r = redis.task_field(id, "result").await.unwrap_or_default();
        *results.entry(r).or_insert(0) += 1;
    }
    println!("results of the load: {results:?}");
    assert_eq!(results.values().sum::<i32>(), 120);
    assert!(
        results.keys().all(|r| r == "\"v1\"" || r == "\"v2\""),
        "{results:?}"
    );
    let log = node.log();
    assert!(log.contains("reloaded workers"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_redis_refuses_the_scripts_stops_at_once_and_says_why() {
    let redis = Redis::start();
    let mut con = redis.con().await;
    let url = redis.url_of_user_without_functions().await;
    let workers = test_workers();
    let log = NodeProc::refused_at_start(&url, "n1", workers.path()).await;
    assert!(
        log.contains("Redis refused the bgnode function library")
            && log.contains("Redis 7.0 or newer"),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "{log}");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:members")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(members.is_empty(), "the node never joined: {members:?}");
}
