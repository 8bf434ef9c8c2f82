//! `unrunnable.lua` against a real Redis: it applies the rule of `decide::runnable` (the same
//! table as the Rust function, with members, leases and reports in Redis), expires only what
//! waited the limit in a set no live node can serve, and restarts a clock nobody advanced.

use std::time::Duration;

use serde_json::json;

use super::{Redis, settings};
use crate::decide::runnable::{CASES, unrunnable};
use crate::model::task::{Target, TaskSpec, now_ms};
use crate::store::Store;

/// Sets members, leases and reports under `prefix` as `members` says.
async fn cluster(redis: &Redis, prefix: &str, members: &[(&str, bool, Option<&[&str]>)]) {
    let mut con = redis.con().await;
    for (node, alive, workers) in members {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(format!("{prefix}:members")).arg(*node);
        if *alive {
            pipe.cmd("SET")
                .arg(format!("{prefix}:node:{node}:alive"))
                .arg(format!("{node}:1"));
        }
        if let Some(workers) = workers {
            let load: serde_json::Map<String, serde_json::Value> = workers
                .iter()
                .map(|w| {
                    (
                        w.to_string(),
                        json!({"capacity": 8, "running": 0, "queued": 0}),
                    )
                })
                .collect();
            pipe.cmd("SET")
                .arg(format!("{prefix}:node:{node}:info"))
                .arg(json!({ "id": node, "workers": load }).to_string());
        }
        pipe.query_async::<()>(&mut con).await.unwrap();
    }
}

/// Field `name` of the hash at `key`.
async fn field(redis: &Redis, key: &str, name: &str) -> Option<String> {
    let mut con = redis.con().await;
    redis::cmd("HGET")
        .arg(key)
        .arg(name)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Whether the clock of pending set `set` runs.
async fn clock(redis: &Redis, prefix: &str, set: &str) -> Option<String> {
    let mut con = redis.con().await;
    redis::cmd("HGET")
        .arg(format!("{prefix}:unrunnable"))
        .arg(set)
        .query_async(&mut con)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_applies_the_table_and_expires_only_what_no_live_node_can_run() {
    let redis = Redis::start();
    for (i, case) in CASES.iter().enumerate() {
        let prefix = format!("c{i}");
        let mut s = settings(&redis);
        s.redis.prefix = prefix.clone();
        let store = Store::connect(&s).await.unwrap();
        cluster(&redis, &prefix, case.members).await;
        let rust = unrunnable(case.worker, case.pinned, &store.live_nodes().await.unwrap());
        assert_eq!(
            rust.map(|u| u.to_string()).as_deref(),
            case.want,
            "case {i}"
        );

        let id = format!("t{i}");
        let mut spec = TaskSpec::new(case.worker, json!(null)).id(&id);
        if let Some(node) = case.pinned {
            spec = spec.target(Target::Node(node.into()));
        }
        store.enqueue_many(&[spec], false).await.unwrap();
        let set = match case.pinned {
            Some(node) => format!("{prefix}:pending:{}@{node}", case.worker),
            None => format!("{prefix}:pending:{}", case.worker),
        };
        // A limit of 1 ms: the second sweep expires what the first found unrunnable.
        let limit = Duration::from_millis(1);
        let idle = Duration::from_secs(30);
        store.expire_unrunnable(limit, idle, 100).await.unwrap();
        assert_eq!(
            clock(&redis, &prefix, &set).await.is_some(),
            case.want.is_some(),
            "case {i}: the clock runs only for a set no live node can serve"
        );
        let mut expired = 0;
        for _ in 0..50 {
            expired += store
                .expire_unrunnable(limit, idle, 100)
                .await
                .unwrap()
                .len();
            let state = field(&redis, &format!("{prefix}:task:{id}"), "state").await;
            if state.as_deref() != Some("queued") || case.want.is_none() && expired == 0 {
                break;
            }
        }
        let state = field(&redis, &format!("{prefix}:task:{id}"), "state").await;
        match case.want {
            None => {
                assert_eq!(state.as_deref(), Some("queued"), "case {i}");
                assert_eq!(expired, 0, "case {i}");
            }
            Some(reason) => {
                assert_eq!(state.as_deref(), Some("expired"), "case {i}");
                let error = field(&redis, &format!("{prefix}:task:{id}"), "error")
                    .await
                    .unwrap();
                assert_eq!(
                    error,
                    format!(
                        "cannot run: {reason} (waited longer than [tasks] unrunnable_after, 1ms)"
                    ),
                    "case {i}"
                );
                assert_eq!(expired, 1, "case {i}: expired once");
                // The next sweep finds the set empty and drops its clock.
                store.expire_unrunnable(limit, idle, 100).await.unwrap();
                assert_eq!(
                    clock(&redis, &prefix, &set).await,
                    None,
                    "case {i}: empty set"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_restarts_when_nobody_watched_and_stops_when_a_node_can_serve() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    cluster(&redis, "bg", &[("n1", true, Some(&["echo"]))]).await;
    let spec = TaskSpec::new("echo", json!(null))
        .id("for-n2")
        .target(Target::Node("n2".into()));
    store.enqueue_many(&[spec], false).await.unwrap();
    let mut con = redis.con().await;
    // The task has waited a minute; the set's clock says an hour, last advanced 40 s ago.
    let now = now_ms();
    let set = "bg:pending:echo@n2";
    redis::pipe()
        .cmd("HSET")
        .arg("bg:task:for-n2")
        .arg("created")
        .arg(now - 60_000)
        .cmd("HSET")
        .arg("bg:unrunnable")
        .arg(set)
        .arg(format!("{}:{}", now - 3_600_000, now - 40_000))
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let (limit, idle) = (Duration::from_secs(30), Duration::from_secs(30));
    // Nobody advanced it within `idle`: it starts again now, so the task stays.
    assert!(
        store
            .expire_unrunnable(limit, idle, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let since: u64 = clock(&redis, "bg", set)
        .await
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(since + 5_000 > now, "restarted at {since}, now {now}");
    // A clock advanced in time keeps its start: the task waited a minute in it, so it expires.
    redis::cmd("HSET")
        .arg("bg:unrunnable")
        .arg(set)
        .arg(format!("{}:{}", now - 3_600_000, now - 1_000))
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    assert_eq!(
        store.expire_unrunnable(limit, idle, 100).await.unwrap(),
        ["echo"]
    );
    assert_eq!(
        field(&redis, "bg:task:for-n2", "state").await.as_deref(),
        Some("expired")
    );

    // A node that comes back stops the clock.
    let spec = TaskSpec::new("echo", json!(null))
        .id("again")
        .target(Target::Node("n2".into()));
    store.enqueue_many(&[spec], false).await.unwrap();
    store.expire_unrunnable(limit, idle, 100).await.unwrap();
    assert!(clock(&redis, "bg", set).await.is_some());
    cluster(&redis, "bg", &[("n2", true, Some(&["echo"]))]).await;
    store.expire_unrunnable(limit, idle, 100).await.unwrap();
    assert_eq!(clock(&redis, "bg", set).await, None);
    assert_eq!(
        field(&redis, "bg:task:again", "state").await.as_deref(),
        Some("queued")
    );
}
