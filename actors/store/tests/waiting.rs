//! Where tasks wait, against a real Redis: an enqueue stores a task whole before announcing it,
//! a due entry of the scheduled set fires once however many schedulers ask, and the slots of a
//! per-key limit cannot leak.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::{Redis, backdate, finish_op, hget, me, places, settings, slots, subscribed};
use crate::config::KeyPolicy;
use crate::decide::cron::Recurrence;
use crate::model::task::{Target, TaskSpec, TaskState, now_ms};
use crate::store::{Accepted, Store};

#[tokio::test(flavor = "multi_thread")]
async fn an_enqueue_stores_the_whole_task_once_and_announces_it() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    let mut notices = subscribed(&redis, "background").await;

    let stored = store
        .enqueue_many(
            &[
                TaskSpec::new("w", json!(2))
                    .id("later")
                    .delay(Duration::from_secs(3_600)),
                TaskSpec::new("w", json!({"n": 1})).id("now"),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        [
            ("later".to_string(), Accepted::Scheduled),
            ("now".to_string(), Accepted::Queued)
        ]
    );
    // The record and the entry it waits in are both there once the call returns.
    assert_eq!(
        hget(&mut con, "now", "state").await.as_deref(),
        Some("queued")
    );
    assert_eq!(places(&mut con, "now").await, ["bg:pending:w"]);
    assert_eq!(
        hget(&mut con, "later", "state").await.as_deref(),
        Some("scheduled")
    );
    assert_eq!(places(&mut con, "later").await, ["bg:scheduled"]);

    // The same call announced both: a wake for the runnable task, a notice for the scheduler.
    let mut ops = Vec::new();
    while ops.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), notices.next())
            .await
            .unwrap_or_else(|_| panic!("the enqueue announces its tasks; got {ops:?}"))
            .unwrap();
        let notice: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
        ops.push(notice["op"].as_str().unwrap().to_owned());
    }
    ops.sort();
    assert_eq!(ops, ["schedule", "wake"]);

    // An id that exists is the idempotency key: nothing is stored again or changed.
    let again = store
        .enqueue_many(&[TaskSpec::new("w", json!("other")).id("now")], true)
        .await
        .unwrap();
    assert_eq!(again[0].1, Accepted::Exists);
    assert_eq!(
        hget(&mut con, "now", "args").await.as_deref(),
        Some(r#"{"n":1}"#)
    );
    assert_eq!(places(&mut con, "now").await, ["bg:pending:w"]);
    let accepted: Option<u64> = redis::cmd("HGET")
        .arg("bg:stats")
        .arg("accepted")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(accepted, Some(2));
}

/// Enqueues `specs` in one call on a fresh Redis and returns the first `n` notices published on
/// the task channel (failing when fewer come within two seconds each).
#[tokio::test(flavor = "multi_thread")]
async fn a_record_holds_no_field_at_its_default_and_reads_back_whole() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    let mut full = TaskSpec::new("w", json!(2))
        .id("full")
        .priority(3)
        .attempts(4)
        .timeout(Duration::from_secs(5));
    full.reply = true;
    store
        .enqueue_many(
            &[TaskSpec::new("w", json!({"n": 1})).id("plain"), full],
            false,
        )
        .await
        .unwrap();
    let fields = |id: &'static str| {
        let mut con = con.clone();
        async move {
            let mut names: Vec<String> = ::redis::cmd("HKEYS")
                .arg(format!("bg:task:{id}"))
                .query_async(&mut con)
                .await
                .unwrap();
            names.sort();
            names
        }
    };
    assert_eq!(
        fields("plain").await,
        ["args", "created", "node", "state", "worker"]
    );
    assert_eq!(
        fields("full").await,
        [
            "args", "attempts", "created", "node", "priority", "reply", "state", "timeout",
            "worker"
        ]
    );
    let memory: i64 = ::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("bg:task:plain")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(memory < 200, "a plain record takes {memory} bytes");

    // Whatever is left out reads as its default: in the status, and in the claimed task.
    let status = store.status("plain").await.unwrap().unwrap();
    assert_eq!(
        (
            status.id.as_str(),
            status.priority,
            status.attempt,
            status.attempts
        ),
        ("plain", 0, 0, None)
    );
    assert_eq!((status.epoch, status.node), (0, None));
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    let plain = claimed.iter().find(|t| t.id == "plain").unwrap();
    assert_eq!(
        (plain.priority, plain.attempt, plain.attempts, plain.timeout),
        (0, 1, None, None)
    );
    assert_eq!(plain.epoch, 1);
    let full = claimed.iter().find(|t| t.id == "full").unwrap();
    assert_eq!(
        (full.priority, full.attempts, full.timeout),
        (3, Some(4), Some(Duration::from_secs(5)))
    );
    assert_eq!(hget(&mut con, "full", "reply").await.as_deref(), Some("1"));
}

async fn notices_of(specs: &[TaskSpec], n: usize) -> Vec<Value> {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut stream = subscribed(&redis, "background").await;
    store.enqueue_many(specs, true).await.unwrap();
    let mut notices = Vec::new();
    while notices.len() < n {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await
        else {
            panic!("only {notices:?} were published");
        };
        notices.push(serde_json::from_slice(msg.get_payload_bytes()).unwrap());
    }
    notices
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runnable_task_is_announced_even_when_a_delayed_one_follows_it() {
    let specs = [
        TaskSpec::new("w", json!(1)).id("now"),
        TaskSpec::new("w", json!(2))
            .id("later")
            .delay(Duration::from_secs(3_600)),
    ];
    let mut ops: Vec<String> = notices_of(&specs, 2)
        .await
        .iter()
        .map(|n| n["op"].as_str().unwrap().to_owned())
        .collect();
    ops.sort();
    assert_eq!(ops, ["schedule", "wake"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_task_is_announced_even_when_a_pinned_one_follows_it() {
    let specs = [
        TaskSpec::new("w", json!(1)).id("shared"),
        TaskSpec::new("w", json!(2))
            .id("pinned")
            .target(Target::Node("n2".into())),
    ];
    let notices = notices_of(&specs, 2).await;
    assert!(notices.iter().all(|n| n["op"] == "wake"), "{notices:?}");
    let mut nodes: Vec<&str> = notices
        .iter()
        .map(|n| n["node"].as_str().unwrap_or("any"))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["any", "n2"], "every node hears of the shared task");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_due_entry_fires_once_however_many_schedulers_ask() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    let t0 = now_ms() - 10_000;
    store
        .enqueue_many(
            &[
                TaskSpec::new("w", json!(null))
                    .id("once")
                    .delay(Duration::from_millis(100)),
                TaskSpec::new("w", json!(null))
                    .id("tick")
                    .repeat(Recurrence::Every(Duration::from_secs(1)))
                    .at(t0),
            ],
            false,
        )
        .await
        .unwrap();

    // A one-shot entry leaves the scheduled set in the call that queues it.
    backdate(&mut con, "bg:scheduled", "once").await;
    let (_, due) = store.fire_due(10).await.unwrap();
    assert_eq!(places(&mut con, "once").await, ["bg:pending:w"]);
    assert_eq!(
        hget(&mut con, "once", "state").await.as_deref(),
        Some("queued")
    );
    let (_, again) = store.fire_due(10).await.unwrap();
    assert_eq!(again, due, "a second scheduler sees only the template");
    assert_eq!(places(&mut con, "once").await, ["bg:pending:w"]);

    // A template is returned, not moved; of two schedulers racing for one occurrence, one wins.
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].id.as_str(), due[0].due), ("tick", t0));
    let next = Some(t0 + 1_000);
    let (first, second) =
        tokio::join!(store.occur("tick", t0, next), store.occur("tick", t0, next));
    let mut won = [first.unwrap(), second.unwrap()];
    won.sort();
    assert_eq!(won, [false, true]);
    let occurrence = format!("tick@{t0}");
    assert_eq!(places(&mut con, &occurrence).await, ["bg:pending:w"]);
    let score: f64 = redis::cmd("ZSCORE")
        .arg("bg:scheduled")
        .arg("tick")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(score as u64, t0 + 1_000);

    // A scheduler that read the old due time changes nothing.
    assert!(!store.occur("tick", t0, Some(t0 + 2_000)).await.unwrap());
    let score: f64 = redis::cmd("ZSCORE")
        .arg("bg:scheduled")
        .arg("tick")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(score as u64, t0 + 1_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_slots_are_pruned_and_held_from_queued_to_finished() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.keys.policy = KeyPolicy::Defer;
    let store = Store::connect(&s).await.unwrap();
    let mut con = redis.con().await;
    let keyed = |id| TaskSpec::new("w", json!(null)).id(id).key("k");

    // Slots left by a crash: a task that vanished and one that finished.
    redis::cmd("SADD")
        .arg("bg:key:k")
        .arg("vanished")
        .arg("finished")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg("bg:task:finished")
        .arg("state")
        .arg("done")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let stored = store
        .enqueue_many(
            &[
                keyed("a"),
                keyed("b"),
                keyed("later").delay(Duration::from_secs(3_600)),
            ],
            false,
        )
        .await
        .unwrap();
    let accepted: Vec<Accepted> = stored.into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        accepted,
        [Accepted::Queued, Accepted::Deferred, Accepted::Scheduled]
    );
    assert_eq!(
        slots(&mut con).await,
        ["a"],
        "stale slots were pruned; scheduled and deferred tasks hold none"
    );

    // Retrying, the task keeps its slot, and takes it again when it fires.
    let a = store.claim("w", &me("n1"), 10).await.unwrap();
    let retry = finish_op("a", "n1", a[0].epoch, TaskState::Retrying, now_ms() - 1);
    store.write(&[retry]).await.unwrap();
    assert_eq!(slots(&mut con).await, ["a"]);
    assert_eq!(places(&mut con, "b").await, ["bg:deferred:k"]);
    store.fire_due(10).await.unwrap();
    assert_eq!(slots(&mut con).await, ["a"]);

    // Finished, it frees the slot for the oldest deferred task.
    let a = store.claim("w", &me("n1"), 10).await.unwrap();
    let done = finish_op("a", "n1", a[0].epoch, TaskState::Done, 0);
    store.write(&[done]).await.unwrap();
    assert_eq!(slots(&mut con).await, ["b"]);
    assert_eq!(places(&mut con, "b").await, ["bg:pending:w"]);
}
