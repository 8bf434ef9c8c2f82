//! The inbox (`LPUSH bg:inbox <envelope>`) and replies (`"reply": true`) against real `bgnode`
//! processes and a real `redis-server`: tasks stored once even when the ingress holder is killed
//! between taking messages and storing them, refused envelopes kept with their reason, and the
//! final event on the reply list for the inbox and the raw publish alike.

mod common;

use std::time::{Duration, Instant};

use common::{NodeProc, Redis, eventually, test_workers};
use rustix::process::Signal;
use serde_json::{Value, json};

const T: Duration = common::WAIT;

async fn lpush(redis: &Redis, messages: &[String]) {
    let mut con = redis.con().await;
    for chunk in messages.chunks(1000) {
        let _: i64 = redis::cmd("LPUSH")
            .arg("bg:inbox")
            .arg(chunk)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

async fn llen(redis: &Redis, key: &str) -> i64 {
    let mut con = redis.con().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

async fn blpop(redis: &Redis, key: &str, secs: f64) -> Option<Value> {
    let mut con = redis.con().await;
    let popped: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(key)
        .arg(secs)
        .query_async(&mut con)
        .await
        .unwrap();
    popped.map(|(_, v)| serde_json::from_str(&v).expect("the reply is JSON"))
}

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

/// Every task key in Redis.
async fn task_keys(redis: &Redis) -> Vec<String> {
    let mut con = redis.con().await;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("bg:task:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_and_raw_publish_answer_on_the_reply_list() {
    let (redis, _workers, _node) = common::one_node(&[]).await;

    // The inbox, with an id: the final event is pushed on the reply list.
    lpush(
        &redis,
        &[json!({"worker":"echo","args":{"n":1},"id":"in-1","reply":true}).to_string()],
    )
    .await;
    let done = blpop(&redis, "bg:reply:in-1", 20.0)
        .await
        .expect("a reply for the inbox task");
    assert_eq!(done["event"], "done");
    assert_eq!(done["result"], json!({"n": 1}));

    // The raw publish, with an id and a failing worker: the final event says how it ended.
    let receivers = redis
        .publish(
            "background",
            json!({"worker":"fail","id":"raw-1","attempts":1,"reply":true}).to_string(),
        )
        .await;
    assert_eq!(receivers, 1);
    let failed = blpop(&redis, "bg:reply:raw-1", 20.0)
        .await
        .expect("a reply for the raw task");
    assert_eq!(failed["event"], "dead");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("the disk is on fire")
    );

    // Without `reply` nobody is answered: the task runs, the list stays empty.
    lpush(&redis, &[json!({"worker":"echo","id":"in-2"}).to_string()]).await;
    common::wait_state(&redis, "in-2", "done").await;
    assert_eq!(llen(&redis, "bg:reply:in-2").await, 0);

    // A message without an id is stored under the id the inbox gave it.
    lpush(
        &redis,
        &[json!({"worker":"echo","args":"no id"}).to_string()],
    )
    .await;
    eventually(T, "the id-less message to be stored", || async {
        (stat(&redis, "accepted").await == 4).then_some(())
    })
    .await;
    assert_eq!(llen(&redis, "bg:inbox:processing").await, 0);
    assert_eq!(llen(&redis, "bg:inbox").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_inbox_messages_are_kept_with_their_reason_and_announced() {
    let (redis, _workers, _node) = common::one_node(&[]).await;
    let events = redis.events().await;
    let bad = [
        "not json".to_owned(),
        json!({"worker":"echo","prority":1,"id":"typo"}).to_string(),
        json!({"worker":"nosuch","id":"unknown"}).to_string(),
        json!({"op":"wake","worker":"echo"}).to_string(),
        json!({"worker":"echo","every":60,"reply":true}).to_string(),
    ];
    let mut all = bad.to_vec();
    // Its neighbours' faults do not touch a good message.
    all.insert(2, json!({"worker":"echo","id":"good","args":7}).to_string());
    lpush(&redis, &all).await;
    common::wait_state(&redis, "good", "done").await;
    let kept: Vec<Value> = eventually(T, "five rejections", || async {
        let mut con = redis.con().await;
        let kept: Vec<String> = redis::cmd("LRANGE")
            .arg("bg:rejected")
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap();
        (kept.len() == 5).then(|| {
            kept.iter()
                .map(|k| serde_json::from_str(k).unwrap())
                .collect()
        })
    })
    .await;
    let reasons: Vec<&str> = kept.iter().map(|k| k["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].contains("not valid JSON"), "{reasons:?}");
    assert!(
        reasons[1].contains("unknown field `prority`"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("unknown worker `nosuch`"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("task envelopes only"), "{reasons:?}");
    assert!(
        reasons[4].contains("a recurring task has no single result"),
        "{reasons:?}"
    );
    // Each keeps the message as pushed, so it can be mended and pushed again.
    for (k, message) in kept.iter().zip(&bad) {
        assert_eq!(k["message"], message.as_str());
        assert_eq!(k["truncated"], false);
    }
    assert_eq!(kept[1]["id"], "typo");
    assert_eq!(kept[2]["worker"], "nosuch");
    eventually(T, "five rejected events", || async {
        (events.of("rejected").len() == 5).then_some(())
    })
    .await;
    assert_eq!(llen(&redis, "bg:inbox:processing").await, 0);
    assert!(common::state_of(&redis, "typo").await.is_none());
    assert!(common::state_of(&redis, "unknown").await.is_none());
}

/// True when the processing list holds a message whose task is stored already.
async fn stored_unsettled(redis: &Redis) -> bool {
    let mut con = redis.con().await;
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg("bg:inbox:processing")
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    for entry in entries {
        let message = entry.split_once(' ').map_or("", |(_, m)| m);
        let Ok(v) = serde_json::from_str::<Value>(message) else {
            continue;
        };
        if let Some(id) = v["id"].as_str()
            && redis.task_field(id, "worker").await.is_some()
        {
            return true;
        }
    }
    false
}

/// The ingress holder is frozen while messages it took sit in the processing list, then
/// killed; the node that takes the lease over stores every message exactly once, those
/// without an id included.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_killed_between_taking_and_storing_loses_nothing_and_stores_nothing_twice() {
    let redis = Redis::start();
    let workers = test_workers();
    // Scheduled an hour ahead, so that nothing runs and every stored task stays listed.
    let n = 20_000;
    let messages: Vec<String> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                json!({"worker":"echo","id":format!("t{i}"),"in":"1h"}).to_string()
            } else {
                json!({"worker":"echo","args":i,"in":"1h"}).to_string()
            }
        })
        .collect();
    lpush(&redis, &messages).await;

    // Frozen where it hurts: messages taken, some of them stored, none settled. A successor
    // that gave id-less messages new ids would store those twice.
    let mut caught = false;
    for _ in 0..20 {
        let first = NodeProc::start(&redis, "n1", workers.path(), &[]);
        // Poll hard: the window is one round of the drain.
        let deadline = Instant::now() + T;
        while Instant::now() < deadline && !stored_unsettled(&redis).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first.signal(Signal::STOP);
        let frozen_in_the_window = stored_unsettled(&redis).await;
        first.signal(Signal::KILL);
        drop(first);
        if frozen_in_the_window {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "never froze the holder with messages stored and not settled"
    );
    assert!(
        stat(&redis, "accepted").await < n,
        "the first holder stored everything before it was frozen"
    );

    let second = NodeProc::start(&redis, "n2", workers.path(), &[]);
    second.ready().await;
    eventually(
        Duration::from_secs(60),
        "the inbox to be drained",
        || async {
            (llen(&redis, "bg:inbox").await == 0
                && llen(&redis, "bg:inbox:taking").await == 0
                && llen(&redis, "bg:inbox:processing").await == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(stat(&redis, "accepted").await, n, "stored exactly once");
    assert_eq!(task_keys(&redis).await.len() as u64, n);
    for i in (0..n).step_by(2) {
        assert!(
            redis.task_field(&format!("t{i}"), "worker").await.is_some(),
            "task t{i} lost"
        );
    }
}
