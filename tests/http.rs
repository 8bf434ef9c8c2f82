//! The HTTP API of real `bgnode` processes against a real `redis-server`, spoken to by the
//! tests' tiny HTTP/1.1 client (`common/http.rs`).

mod common;

use std::time::{Duration, Instant};

use common::http::{Answer, api_up, request};
use common::{
    NodeProc, Postgres, Redis, cli, eventually, free_port, runs, test_workers, wait_state,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = common::WAIT;

async fn get(node: &NodeProc, path: &str) -> Answer {
    request(&node.http, "GET", &format!("/api/v1{path}"), &[], None).await
}

async fn post(node: &NodeProc, path: &str, body: Value) -> Answer {
    let body = body.to_string();
    request(
        &node.http,
        "POST",
        &format!("/api/v1{path}"),
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
}

async fn call(node: &NodeProc, method: &str, path: &str) -> Answer {
    request(&node.http, method, &format!("/api/v1{path}"), &[], None).await
}

async fn one_node(env: &[(&str, &str)]) -> (Redis, tempfile::TempDir, NodeProc) {
    let (redis, workers, node) = common::one_node(env).await;
    api_up(&node).await;
    (redis, workers, node)
}

/// Nodes `n1` and `n2` (seeded with `n1`), with the script workers of `w1` and `w2`, started
/// and answering on their APIs.
async fn two_nodes(
    redis: &Redis,
    w1: &std::path::Path,
    w2: &std::path::Path,
) -> (NodeProc, NodeProc) {
    let l1 = format!("127.0.0.1:{}", free_port());
    let l2 = format!("127.0.0.1:{}", free_port());
    let n1 = NodeProc::start(redis, "n1", w1, &[("BGNODE_NODE__LISTEN", &l1)]);
    let n2 = NodeProc::start(
        redis,
        "n2",
        w2,
        &[("BGNODE_NODE__LISTEN", &l2), ("BGNODE_NODE__SEEDS", &l1)],
    );
    for n in [&n1, &n2] {
        n.wait_log("node starting", T).await;
        api_up(n).await;
    }
    (n1, n2)
}

/// The ids of a listing, in order.
fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {page}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn task_keys(redis: &Redis) -> Vec<String> {
    let mut con = redis.con().await;
    redis::cmd("KEYS")
        .arg("bg:task:*")
        .query_async(&mut con)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_and_wait_through_http_and_read_the_timeline() {
    let (redis, _workers, node) = one_node(&[]).await;

    let a = post(
        &node,
        "/tasks?wait=15s",
        json!({"worker": "echo", "args": {"x": 1}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(
        (v["state"].clone(), v["result"].clone()),
        (json!("done"), json!({"x": 1}))
    );
    for (name, want) in [
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(a.header(name), Some(want));
    }
    assert!(
        a.header("content-security-policy").is_some_and(
            |c| c.contains("default-src 'self'") && c.contains("frame-ancestors 'none'")
        ),
        "{:?}",
        a.headers
    );

    let a = post(
        &node,
        "/tasks",
        json!({"worker": "fail", "id": "f1", "attempts": 2, "backoff": "100ms"}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"id": "f1", "outcome": "queued", "unrunnable": null})
    );
    let again = post(&node, "/tasks", json!({"worker": "fail", "id": "f1"})).await;
    assert_eq!(
        (again.status, again.json()["outcome"].clone()),
        (200, json!("exists"))
    );
    wait_state(&redis, "f1", "dead").await;

    let d = get(&node, "/tasks/f1").await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = d.json();
    assert_eq!(d["state"], "dead");
    assert!(
        d["error"].as_str().unwrap().contains("the disk is on fire"),
        "{d}"
    );
    let outcomes: Vec<&str> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retried", "dead"], "{d}");
    let events: Vec<&str> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["created", "started", "retry", "started", "dead"],
        "{d}"
    );
    let times: Vec<u64> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["at"].as_u64())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    assert_eq!(get(&node, "/tasks/nope").await.status, 404);
    assert_eq!(get(&node, "/tasks/a%20b").await.json()["field"], "id");
    assert_eq!(get(&node, "/nope").await.status, 404);
    // Without `[saver] archive` there is no history, and the answer says what to set.
    for path in ["/history", "/history/f1"] {
        let a = get(&node, path).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.starts_with("no archive") && error.contains("saver.archive"),
            "{path}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_show_every_state_with_filters_and_pages() {
    let (redis, _workers, node) = one_node(&[
        ("BGNODE_WORKERS__CONCURRENCY", "1"),
        ("BGNODE_KEYS__POLICY", "defer"),
    ])
    .await;
    // One nap runs; the next ones are claimed by the node and queued there, not started.
    for i in 0..3 {
        let a = post(
            &node,
            "/tasks",
            json!({"worker": "nap", "id": format!("nap-{i}"), "args": {"s": 30}}),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    wait_state(&redis, "nap-0", "running").await;
    // One key slot: the second task of the key waits for it.
    post(
        &node,
        "/tasks",
        json!({"worker": "nap", "id": "key-1", "key": "k", "args": {"s": 30}}),
    )
    .await;
    post(
        &node,
        "/tasks",
        json!({"worker": "nap", "id": "key-2", "key": "k"}),
    )
    .await;
    // Pinned to a node that is not live, and a worker nobody offers: they wait pending.
    let pinned = post(
        &node,
        "/tasks",
        json!({"worker": "echo", "id": "pinned", "target": "node:ghost"}),
    )
    .await;
    assert_eq!(pinned.json()["unrunnable"], "node `ghost` is not live");
    post(&node, "/tasks", json!({"worker": "nobody", "id": "orphan"})).await;
    post(
        &node,
        "/tasks",
        json!({"worker": "echo", "id": "later", "in": "1h"}),
    )
    .await;
    wait_state(&redis, "key-2", "deferred").await;

    let listed = |state: &'static str| {
        let node = &node;
        async move { ids(&get(node, &format!("/tasks?state={state}")).await.json()) }
    };
    eventually(T, "the claimed naps to be listed", || async {
        let claimed = listed("claimed").await;
        (claimed.len() >= 2).then_some(())
    })
    .await;
    let claimed = listed("claimed").await;
    assert!(
        claimed.contains(&"nap-1".to_owned()) && claimed.contains(&"nap-2".to_owned()),
        "{claimed:?}"
    );
    assert_eq!(listed("running").await, ["nap-0"]);
    assert_eq!(listed("deferred").await, ["key-2"]);
    let pending = listed("pending").await;
    assert!(
        pending.contains(&"pinned".to_owned()) && pending.contains(&"orphan".to_owned()),
        "{pending:?}"
    );
    assert_eq!(listed("scheduled").await, ["later"]);
    let ghost = get(&node, "/tasks?node=ghost").await.json();
    assert_eq!(ids(&ghost), ["pinned"]);
    assert_eq!(ghost["tasks"][0]["target"], "node:ghost");
    let naps = ids(&get(&node, "/tasks?worker=nap").await.json());
    assert!(
        naps.iter()
            .all(|id| id.starts_with("nap-") || id.starts_with("key-")),
        "{naps:?}"
    );
    assert_eq!(naps.len(), 5, "{naps:?}");

    // Pages of one, newest first, cover everything once.
    let all = ids(&get(&node, "/tasks").await.json());
    assert_eq!(all.len(), 8, "{all:?}");
    let mut paged = Vec::new();
    let mut path = "/tasks?limit=1".to_owned();
    loop {
        let page = get(&node, &path).await.json();
        paged.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/tasks?limit=1&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages of one walk the same listing");
    let created: Vec<u64> = get(&node, "/tasks").await.json()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["created"].as_u64().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    for (query, field) in [
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("worker=../x", "worker"),
        ("cursor=zzz", "cursor"),
        ("colour=red", "colour"),
    ] {
        let a = get(&node, &format!("/tasks?{query}")).await;
        assert_eq!(
            (a.status, a.json()["field"].clone()),
            (400, json!(field)),
            "{query}: {}",
            a.body
        );
    }

    // `bgnode bg` lists the same: claimed, deferred and pinned tasks included.
    let (code, out, err) = cli(&redis, &["bg", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let bg: Value = serde_json::from_str(&out).unwrap();
    let group = |name: &str| -> Vec<String> {
        bg[name]
            .as_array()
            .unwrap_or_else(|| panic!("no `{name}` in {bg}"))
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(group("claimed").contains(&"nap-1".to_owned()), "{bg}");
    assert_eq!(group("deferred"), ["key-2"]);
    assert!(group("pending").contains(&"pinned".to_owned()), "{bg}");
    assert_eq!(bg["counts"]["deferred"], 1);
    assert!(bg["counts"]["claimed"].as_u64().unwrap() >= 2, "{bg}");
    let (_, text, _) = cli(&redis, &["bg"]).await;
    assert!(
        text.contains("claimed (") && text.contains("not started"),
        "{text}"
    );
    assert!(
        text.contains("deferred (1)") && text.contains("key k"),
        "{text}"
    );
    assert!(text.contains("only on ghost"), "{text}");

    let o = get(&node, "/overview").await.json();
    assert_eq!(o["states"]["deferred"], 1, "{o}");
    assert_eq!(o["states"]["running"], 1, "{o}");
    assert_eq!(o["members"][0]["id"], "n1");
    // Per worker, the load comes from the nodes' reports, renewed every lease period or so.
    eventually(T, "the overview to show the running nap", || async {
        let o = get(&node, "/overview").await.json();
        (o["workers"]["nap"]["running"] == 1).then_some(())
    })
    .await;
    let n = get(&node, "/nodes").await.json();
    assert_eq!(n["nodes"][0]["id"], "n1");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_the_cluster_names_after_a_parent_are_read_and_retried_by_their_ids() {
    let (_redis, _workers, node) = one_node(&[]).await;
    let a = post(
        &node,
        "/tasks",
        json!({"worker": "echo", "id": "rec", "every": "1h", "args": {"k": 1}}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    // The first occurrence runs at once, as `rec@{due}`, which no client could have chosen.
    let occurrence = eventually(T, "the first occurrence to finish", || async {
        let page = get(&node, "/tasks?state=done&worker=echo").await.json();
        ids(&page).into_iter().find(|id| id.starts_with("rec@"))
    })
    .await;
    let d = get(&node, &format!("/tasks/{occurrence}")).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = d.json();
    assert_eq!(
        (d["template"].clone(), d["result"].clone()),
        (json!("rec"), json!({"k": 1}))
    );
    let r = call(&node, "POST", &format!("/tasks/{occurrence}/retry")).await;
    assert_eq!(
        (r.status, r.json()["outcome"].clone()),
        (200, json!("queued")),
        "{}",
        r.body
    );
    eventually(T, "the occurrence to run again", || async {
        let d = get(&node, &format!("/tasks/{occurrence}")).await.json();
        (d["state"] == "done").then_some(())
    })
    .await;
    let r = call(&node, "DELETE", &format!("/tasks/{occurrence}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&node, &format!("/tasks/{occurrence}")).await.status,
        404
    );
    // A client still cannot choose such an id, and other shapes stay refused.
    let a = post(&node, "/tasks", json!({"worker": "echo", "id": "a@b"})).await;
    assert_eq!((a.status, a.json()["field"].clone()), (400, json!("id")));
    for bad in ["a@b@c", "@1", "rec@"] {
        let a = get(&node, &format!("/tasks/{bad}")).await;
        assert_eq!(
            (a.status, a.json()["field"].clone()),
            (400, json!("id")),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_retry_and_delete_through_http() {
    let (redis, _workers, node) = one_node(&[]).await;
    post(
        &node,
        "/tasks",
        json!({"worker": "echo", "id": "later", "in": "1h", "args": [7]}),
    )
    .await;
    let a = call(&node, "POST", "/tasks/later/cancel").await;
    assert_eq!(
        (a.status, a.json()["outcome"].clone()),
        (200, json!("cancelled")),
        "{}",
        a.body
    );
    assert_eq!(call(&node, "POST", "/tasks/later/cancel").await.status, 409);
    assert_eq!(call(&node, "POST", "/tasks/ghost/cancel").await.status, 404);
    let a = call(&node, "POST", "/tasks/later/retry").await;
    assert_eq!(
        (a.status, a.json()["outcome"].clone()),
        (200, json!("queued")),
        "{}",
        a.body
    );
    wait_state(&redis, "later", "done").await;
    assert_eq!(
        redis.task_field("later", "result").await.as_deref(),
        Some("[7]")
    );

    post(&node, "/tasks", json!({"worker": "forever", "id": "busy"})).await;
    wait_state(&redis, "busy", "running").await;
    let a = call(&node, "DELETE", "/tasks/busy").await;
    assert_eq!(a.status, 409, "a running task is not deleted: {}", a.body);
    assert_eq!(call(&node, "POST", "/tasks/busy/retry").await.status, 409);
    let a = call(&node, "POST", "/tasks/busy/cancel").await;
    assert_eq!(a.json()["outcome"], "requested");
    wait_state(&redis, "busy", "cancelled").await;

    let a = call(&node, "DELETE", "/tasks/later").await;
    assert_eq!(
        (a.status, a.json()["outcome"].clone()),
        (200, json!("deleted"))
    );
    assert_eq!(get(&node, "/tasks/later").await.status, 404);
    assert_eq!(redis.task_field("later", "state").await, None);
    assert!(!ids(&get(&node, "/tasks?state=done").await.json()).contains(&"later".to_owned()));
    assert_eq!(call(&node, "DELETE", "/tasks/later").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_set_bulk_actions_retry_all_and_delete_by_worker() {
    let (redis, workers, node) = one_node(&[]).await;
    common::write_script(workers.path(), "fail2.sh", "#!/bin/sh\nexit 1\n");
    let (code, _, err) = cli(&redis, &["reload", "--all"]).await;
    assert_eq!(code, 0, "{err}");
    for id in ["d1", "d2"] {
        post(&node, "/tasks", json!({"worker": "fail", "id": id})).await;
    }
    post(&node, "/tasks", json!({"worker": "fail2", "id": "d3"})).await;
    for id in ["d1", "d2", "d3"] {
        wait_state(&redis, id, "dead").await;
    }
    assert_eq!(ids(&get(&node, "/tasks?state=dead").await.json()).len(), 3);

    let a = call(&node, "DELETE", "/dead?worker=fail2").await;
    assert_eq!(
        (a.status, a.json()["deleted"].clone()),
        (200, json!(1)),
        "{}",
        a.body
    );
    assert_eq!(redis.task_field("d3", "state").await, None);
    assert_eq!(
        redis.task_field("d1", "state").await.as_deref(),
        Some("dead")
    );

    let events = redis.events().await;
    let a = call(&node, "POST", "/dead/retry").await;
    assert_eq!(
        (a.status, a.json()["retried"].clone()),
        (200, json!(2)),
        "{}",
        a.body
    );
    for id in ["d1", "d2"] {
        eventually(T, &format!("{id} to run again"), || async {
            events
                .of("started")
                .iter()
                .any(|e| e["id"] == id)
                .then_some(())
        })
        .await;
        wait_state(&redis, id, "dead").await;
    }
    let a = call(&node, "DELETE", "/dead").await;
    assert_eq!(a.json()["deleted"], 2);
    assert!(ids(&get(&node, "/tasks?state=dead").await.json()).is_empty());
    assert_eq!(call(&node, "DELETE", "/dead?worker=a/b").await.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_a_worker_on_every_node_until_it_resumes() {
    let redis = Redis::start();
    let workers = test_workers();
    let (n1, n2) = two_nodes(&redis, workers.path(), workers.path()).await;
    eventually(T, "both nodes live", || async {
        let (_, out, _) = cli(&redis, &["info", "--json"]).await;
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["members"]
            .as_array()?
            .iter()
            .filter(|m| m["state"] == "up")
            .count()
            == 2)
            .then_some(())
    })
    .await;

    let (code, out, err) = cli(&redis, &["pause", "record"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused cluster-wide"), "{out}");
    let (_, info, _) = cli(&redis, &["info"]).await;
    assert!(info.contains("paused cluster-wide: record"), "{info}");
    let (_, info, _) = cli(&redis, &["info", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&info).unwrap()["paused"],
        json!(["record"])
    );

    let batch: Vec<Value> = (0..6)
        .map(|i| json!({"worker": "record", "id": format!("r{i}")}))
        .collect();
    let a = post(&n2, "/tasks", Value::Array(batch)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    post(&n1, "/tasks", json!({"worker": "echo", "id": "other"})).await;
    wait_state(&redis, "other", "done").await;
    // Other workers run on; for two seconds and more, no node starts a paused one.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(2) {
        assert!(runs(workers.path()).is_empty(), "a paused worker ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = ids(&get(&n1, "/tasks?state=pending&worker=record").await.json());
    assert_eq!(pending.len(), 6, "{pending:?}");
    let o = get(&n2, "/overview").await.json();
    assert_eq!(o["workers"]["record"]["paused"], true, "{o}");
    let (_, bg, _) = cli(&redis, &["bg"]).await;
    assert!(
        bg.contains("paused cluster-wide: record") && bg.contains("PAUSED"),
        "{bg}"
    );

    let a = call(&n1, "POST", "/workers/record/resume").await;
    assert_eq!(
        (a.status, a.json()["changed"].clone()),
        (200, json!(true)),
        "{}",
        a.body
    );
    for i in 0..6 {
        wait_state(&redis, &format!("r{i}"), "done").await;
    }
    assert_eq!(runs(workers.path()).len(), 6);
    let (code, out, _) = cli(&redis, &["resume", "record"]).await;
    assert_eq!((code, out.trim()), (0, "record was not paused"));
    let a = call(&n2, "POST", "/workers/..%2Fx/pause").await;
    assert_eq!((a.status, a.json()["field"].clone()), (400, json!("name")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_refuses_requests_without_it_and_allows_those_with_it() {
    let (redis, _workers, node) = one_node(&[("BGNODE_HTTP__TOKEN", "s3cret-t0ken")]).await;
    let body = json!({"worker": "echo", "id": "t1"}).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-t0ken"),
        Some("Basic s3cret-t0ken"),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let a = request(
            &node.http,
            "POST",
            "/api/v1/tasks",
            &headers,
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(a.status, 401, "{auth:?}: {}", a.body);
        assert!(a.json()["error"].as_str().unwrap().contains("Bearer"));
        let a = request(&node.http, "GET", "/api/v1/overview", &headers, None).await;
        assert_eq!(a.status, 401, "reads need it too: {auth:?}");
    }
    assert!(
        task_keys(&redis).await.is_empty(),
        "nothing stored without the token"
    );
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer s3cret-t0ken"),
    ];
    let a = request(
        &node.http,
        "POST",
        "/api/v1/tasks",
        &headers,
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    wait_state(&redis, "t1", "done").await;
    let a = request(&node.http, "GET", "/api/v1/tasks/t1", &headers, None).await;
    assert_eq!((a.status, a.json()["state"].clone()), (200, json!("done")));
    // A page elsewhere cannot make a browser change anything, even with the token.
    let mut cross = headers.to_vec();
    cross.push(("Origin", "http://evil.example"));
    let a = request(&node.http, "POST", "/api/v1/tasks/t1/retry", &cross, None).await;
    assert_eq!(a.status, 403, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_listen_without_a_token_or_a_taken_address_stops_the_start() {
    let redis = Redis::start();
    let workers = test_workers();
    let open = format!("0.0.0.0:{}", free_port());
    let mut node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_HTTP__LISTEN", &open)],
    );
    let status = node.wait_exit(T).await;
    assert_eq!(status.code(), Some(2), "{}", node.log());
    let log = node.log();
    assert!(
        log.contains("`http.token`") && log.contains("not a loopback address"),
        "{log}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_HTTP__LISTEN", &addr)],
    );
    let status = node.wait_exit(T).await;
    assert_eq!(status.code(), Some(1), "{}", node.log());
    assert!(
        node.log()
            .contains(&format!("cannot serve the HTTP API on {addr}")),
        "{}",
        node.log()
    );
    let mut con = redis.con().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:members")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        members.is_empty(),
        "a node that could not bind joined nothing: {members:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_json_and_oversized_bodies_are_refused_and_nothing_is_stored() {
    let (redis, _workers, node) = one_node(&[("BGNODE_LIMITS__MESSAGE_BYTES", "2048")]).await;
    let json_body = [("Content-Type", "application/json")];
    let send = |body: Vec<u8>| {
        let addr = node.http.clone();
        async move { request(&addr, "POST", "/api/v1/tasks", &json_body, Some(&body)).await }
    };
    for (body, field) in [
        (r#"{"worker":"echo","#.to_owned(), Value::Null),
        (
            r#"{"worker":"echo","prority":1}"#.to_owned(),
            json!("prority"),
        ),
        (
            r#"{"worker":"echo","priority":500}"#.to_owned(),
            json!("priority"),
        ),
        (r#"{"worker":"../etc"}"#.to_owned(), json!("worker")),
        (
            r#"[{"worker":"echo","id":"ok-1"},{"worker":"echo","in":"soon"}]"#.to_owned(),
            json!("in"),
        ),
        (r#"{"op":"stop","reply":"r"}"#.to_owned(), json!("op")),
        ("[]".to_owned(), Value::Null),
        ("42".to_owned(), Value::Null),
    ] {
        let a = send(body.clone().into_bytes()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.json()["field"], field, "{body}: {}", a.body);
        assert!(!a.json()["error"].as_str().unwrap().is_empty());
    }
    // One envelope over [limits] message_bytes; a body over eight times that.
    let big = json!({"worker": "echo", "args": "x".repeat(3000)}).to_string();
    let a = send(big.into_bytes()).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("2048-byte limit"),
        "{}",
        a.body
    );
    let huge = json!([{"worker": "echo", "args": "x".repeat(20_000)}]).to_string();
    let a = send(huge.into_bytes()).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("16384-byte limit"),
        "{}",
        a.body
    );
    let a = request(
        &node.http,
        "POST",
        "/api/v1/tasks",
        &[("Content-Type", "text/plain")],
        Some(br#"{"worker":"echo"}"#),
    )
    .await;
    assert_eq!(a.status, 415, "{}", a.body);
    let a = post(&node, "/tasks?wait=1h", json!({"worker": "echo"})).await;
    assert_eq!((a.status, a.json()["field"].clone()), (400, json!("wait")));

    assert!(task_keys(&redis).await.is_empty(), "nothing was stored");
    let a = post(&node, "/tasks", json!({"worker": "echo", "id": "fine"})).await;
    assert_eq!(a.status, 201, "and the API still works: {}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_delivers_the_events_of_a_task() {
    let (_redis, _workers, node) = one_node(&[]).await;
    let mut stream = TcpStream::connect(&node.http).await.unwrap();
    let head = format!(
        "GET /api/v1/events?id=sse-1 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        node.http
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The answer's head says it is a stream before any event.
    while !seen.contains("\r\n\r\n") {
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    post(&node, "/tasks", json!({"worker": "echo", "id": "other"})).await;
    post(
        &node,
        "/tasks",
        json!({"worker": "echo", "id": "sse-1", "args": {"k": 1}}),
    )
    .await;
    let deadline = Instant::now() + T;
    while !seen.contains(r#""event":"done""#) {
        assert!(Instant::now() < deadline, "no done event in {seen}");
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let events: Vec<Value> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(
        events.iter().all(|e| e["id"] == "sse-1"),
        "only the task asked for: {events:?}"
    );
    let done = events.iter().find(|e| e["event"] == "done").unwrap();
    assert_eq!(done["result"], json!({"k": 1}));
    assert!(
        events.iter().any(|e| e["event"] == "available"),
        "{events:?}"
    );
}

/// The samples of a Prometheus text page: `name{labels}` → value (comments left out).
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (key.to_owned(), value)
        })
        .collect()
}

/// `/metrics` scraped over HTTP from real nodes: the counters match the tasks each node ran,
/// every family has its HELP and TYPE, and two nodes each count their one cluster session.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_and_count_exactly_the_tasks_run() {
    let redis = Redis::start();
    let workers = test_workers();
    // n2 offers no script worker: every task runs on n1.
    let empty = tempfile::tempdir().unwrap();
    let (n1, n2) = two_nodes(&redis, workers.path(), empty.path()).await;
    // 12 tasks that succeed and 3 that fail for good (one attempt each), through n1's API.
    let mut specs: Vec<Value> = (0..12)
        .map(|i| json!({"worker": "echo", "args": i}))
        .collect();
    specs.extend((0..3).map(|_| json!({"worker": "fail"})));
    let answer = post(&n1, "/tasks?wait=30s", Value::Array(specs)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // A repeated id is not counted again.
    let again = post(
        &n1,
        "/tasks",
        json!({"worker": "echo", "id": "once", "args": 1}),
    )
    .await;
    assert_eq!(again.status, 201, "{}", again.body);
    let twice = post(
        &n1,
        "/tasks",
        json!({"worker": "echo", "id": "once", "args": 1}),
    )
    .await;
    assert_eq!(twice.status, 200, "{}", twice.body);
    wait_state(&redis, "once", "done").await;

    let scraped = eventually(T, "the counters and the sessions to settle", || async {
        let page = request(&n1.http, "GET", "/metrics", &[], None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let s = samples(&page.body);
        let done = s.get("bgnode_tasks_done_total{worker=\"echo\"}").copied();
        let sessions = s.get("bgnode_cluster_sessions").copied();
        (done == Some(13.0) && sessions == Some(1.0)).then_some(page)
    })
    .await;
    assert!(
        scraped
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        scraped.headers
    );
    for family in [
        "bgnode_tasks_accepted_total",
        "bgnode_tasks_done_total",
        "bgnode_task_run_seconds",
        "bgnode_running_tasks",
        "bgnode_cluster_sessions",
    ] {
        let name = family.trim_end_matches("_total");
        assert!(scraped.body.contains(&format!("# HELP {name}")), "{family}");
        assert!(scraped.body.contains(&format!("# TYPE {name}")), "{family}");
    }
    let s = samples(&scraped.body);
    let at = |key: &str| s.get(key).copied().unwrap_or(0.0);
    assert_eq!(at("bgnode_tasks_accepted_total{worker=\"echo\"}"), 13.0);
    assert_eq!(at("bgnode_tasks_accepted_total{worker=\"fail\"}"), 3.0);
    assert_eq!(at("bgnode_tasks_started_total{worker=\"echo\"}"), 13.0);
    assert_eq!(at("bgnode_tasks_started_total{worker=\"fail\"}"), 3.0);
    assert_eq!(at("bgnode_tasks_dead_total{worker=\"fail\"}"), 3.0);
    assert_eq!(at("bgnode_tasks_done_total{worker=\"fail\"}"), 0.0);
    assert_eq!(at("bgnode_task_run_seconds_count{worker=\"echo\"}"), 13.0);
    assert_eq!(at("bgnode_task_wait_seconds_count{worker=\"fail\"}"), 3.0);
    assert_eq!(at("bgnode_running_tasks{worker=\"echo\"}"), 0.0);
    assert!(at("bgnode_cluster_sessions_opened_total") >= 1.0);
    // The cluster-wide gauges, refreshed every 5 s.
    eventually(T, "the cluster gauges", || async {
        let s = samples(&request(&n1.http, "GET", "/metrics", &[], None).await.body);
        (s.get("bgnode_members") == Some(&2.0) && s.get("bgnode_dead_tasks") == Some(&3.0))
            .then_some(())
    })
    .await;
    // n2 ran nothing and says so, and counts its session too.
    let s2 = samples(&request(&n2.http, "GET", "/metrics", &[], None).await.body);
    assert_eq!(s2.get("bgnode_cluster_sessions"), Some(&1.0), "{s2:?}");
    let started: f64 = s2
        .iter()
        .filter(|(k, _)| k.starts_with("bgnode_tasks_started_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(started, 0.0, "n2 started tasks");
}

/// The `id`s of a page of history, in order.
fn history_ids(page: &Value) -> Vec<String> {
    page["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {page}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_answers_history_with_filters_and_pages_and_tasks_that_left_redis() {
    let mut pg = Postgres::start();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (redis, _workers, node) = one_node(&[("BGNODE_SAVER__ARCHIVE", &pg.url)]).await;

    // Two tasks done, one dead, one cancelled while it waited for its time.
    for (id, body) in [
        (
            "h-done-1",
            json!({"worker": "echo", "id": "h-done-1", "args": {"n": 1}}),
        ),
        (
            "h-done-2",
            json!({"worker": "echo", "id": "h-done-2", "args": {"n": 2}}),
        ),
        (
            "h-dead",
            json!({"worker": "fail", "id": "h-dead", "attempts": 1}),
        ),
        (
            "h-later",
            json!({"worker": "echo", "id": "h-later", "in": "1h"}),
        ),
    ] {
        let a = post(&node, "/tasks", body).await;
        assert_eq!(a.status, 201, "{id}: {}", a.body);
    }
    let a = call(&node, "POST", "/tasks/h-later/cancel").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let all = ["h-done-1", "h-done-2", "h-dead", "h-later"];
    let page = eventually(T, "the history to list the four tasks", || async {
        let a = get(&node, "/history").await;
        assert_eq!(a.status, 200, "{}", a.body);
        let page = a.json();
        let mut listed = history_ids(&page);
        listed.sort();
        (listed == ["h-dead", "h-done-1", "h-done-2", "h-later"]).then_some(page)
    })
    .await;
    assert_eq!(page["next"], Value::Null);
    let rows = page["rows"].as_array().unwrap();
    let ends: Vec<i64> = rows
        .iter()
        .map(|r| r["finished"].as_i64().unwrap())
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0] >= w[1]),
        "latest end first: {ends:?}"
    );
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        (
            row("h-done-1")["state"].clone(),
            row("h-done-1")["result"].clone()
        ),
        (json!("done"), json!({"n": 1}))
    );
    assert_eq!(row("h-done-1")["node"], "n1");
    let dead = row("h-dead");
    assert_eq!(
        (dead["state"].clone(), dead["attempts"].clone()),
        (json!("dead"), json!(1))
    );
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("the disk is on fire"),
        "{dead}"
    );
    let later = row("h-later");
    assert_eq!(
        (
            later["state"].clone(),
            later["started"].clone(),
            later["run_ms"].clone()
        ),
        (json!("cancelled"), Value::Null, Value::Null),
        "it never ran: {later}"
    );

    // Filters: by worker, by state, by the time of the end (ms or a time parse_time reads).
    let mut echo = history_ids(&get(&node, "/history?worker=echo").await.json());
    echo.sort();
    assert_eq!(echo, ["h-done-1", "h-done-2", "h-later"]);
    assert_eq!(
        history_ids(&get(&node, "/history?state=dead").await.json()),
        ["h-dead"]
    );
    assert_eq!(
        history_ids(
            &get(&node, "/history?worker=echo&state=cancelled")
                .await
                .json()
        ),
        ["h-later"]
    );
    assert_eq!(
        history_ids(
            &get(&node, &format!("/history?since={started}"))
                .await
                .json()
        )
        .len(),
        4
    );
    let an_hour_on = started + 3_600_000;
    assert!(
        history_ids(
            &get(&node, &format!("/history?since={an_hour_on}"))
                .await
                .json()
        )
        .is_empty()
    );
    assert!(
        history_ids(
            &get(&node, "/history?until=2000-01-01T00:00:00Z")
                .await
                .json()
        )
        .is_empty()
    );
    assert_eq!(
        history_ids(&get(&node, "/history?id=h-dead").await.json()),
        ["h-dead"]
    );

    // Pages of one row, through the cursor, visit every row once, in the order of the whole.
    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/history?limit=1&cursor={c}"),
            None => "/history?limit=1".to_owned(),
        };
        let a = get(&node, &path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let page = a.json();
        let ids = history_ids(&page);
        assert_eq!(ids.len(), 1, "{page}");
        visited.extend(ids);
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.replace('@', "%40")),
            None => break,
        }
    }
    assert_eq!(visited, history_ids(&page), "pages of one");
    assert_eq!(visited.len(), all.len());

    // Bad parameters are refused, naming the one at fault.
    for (path, field) in [
        ("/history?state=running", "state"),
        ("/history?state=nope", "state"),
        ("/history?since=last%20tuesday%3F", "since"),
        ("/history?until=99999999999999999999", "until"),
        ("/history?cursor=not-a-cursor", "cursor"),
        ("/history?limit=0", "limit"),
        ("/history?colour=red", "colour"),
    ] {
        let a = get(&node, path).await;
        assert_eq!(
            (a.status, a.json()["field"].clone()),
            (400, json!(field)),
            "{path}: {}",
            a.body
        );
    }

    // One row by its id; an id the archive does not have is 404.
    let a = get(&node, "/history/h-done-2").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (a.json()["id"].clone(), a.json()["result"].clone()),
        (json!("h-done-2"), json!({"n": 2}))
    );
    assert_eq!(get(&node, "/history/ghost").await.status, 404);

    // Once Redis no longer holds a task, its detail is the archived row.
    let live = get(&node, "/tasks/h-done-1").await.json();
    assert_eq!(live.get("archived"), None, "{live}");
    let mut con = redis.con().await;
    let removed: i64 = redis::cmd("DEL")
        .arg("bg:task:h-done-1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let a = get(&node, "/tasks/h-done-1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = a.json();
    assert_eq!(
        (
            d["archived"].clone(),
            d["state"].clone(),
            d["result"].clone(),
            d["worker"].clone()
        ),
        (json!(true), json!("done"), json!({"n": 1}), json!("echo"))
    );
    assert_eq!(get(&node, "/tasks/ghost").await.status, 404);

    // PostgreSQL away: 503, while the rest of the API answers; back: the history answers again
    // on a new connection.
    pg.stop();
    let a = get(&node, "/history").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(get(&node, "/tasks/h-done-1").await.status, 503);
    assert_eq!(get(&node, "/tasks/h-done-2").await.status, 200);
    assert_eq!(get(&node, "/overview").await.status, 200);
    pg.start_again();
    eventually(T, "the history to answer again", || async {
        let a = get(&node, "/history?state=dead").await;
        (a.status == 200 && history_ids(&a.json()) == ["h-dead"]).then_some(())
    })
    .await;
}
