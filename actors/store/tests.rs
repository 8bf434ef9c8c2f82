//! The store's scripts against a real Redis: fencing follows the same table as the Rust rule,
//! claims honour priority and age, an id is the idempotency key, a claimed task carries every
//! field it was enqueued with, and pinned tasks stay on their node. The rules of ownership are
//! checked in `ownership`, those of waiting tasks (enqueue, the scheduled set, key slots) in
//! `waiting`; the helpers below serve all three. The cluster-wide counts the metrics export are
//! checked here too.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::config::{EventLevel, Settings};
use crate::decide::fencing::{CASES, Verdict};
use crate::model::task::{Target, Task, TaskSpec, TaskState, now_ms};
use crate::store::{Accepted, Incarnation, Store, WriteOp, WriteResult};

mod ownership;
mod poison;
mod unrunnable;
mod waiting;

use crate::test_redis::Redis;

/// Incarnation 1 of `node`.
fn me(node: &str) -> Incarnation {
    Incarnation::new(node, 1)
}

/// The messages of `channel`, on a subscription of its own made before this returns.
async fn subscribed(
    redis: &Redis,
    channel: &str,
) -> impl futures::Stream<Item = redis::Msg> + Unpin + use<> {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();
    pubsub.into_on_message()
}

/// Settings pointing at `redis`.
fn settings(redis: &Redis) -> Settings {
    let mut s = Settings::defaults();
    s.redis.url = redis.url.clone();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn finish_script_applies_the_fencing_table() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    for (i, (epoch, state, carried, verdict)) in CASES.iter().enumerate() {
        let id = format!("fence-{i}");
        if let (Some(epoch), Some(state)) = (epoch, state) {
            redis::cmd("HSET")
                .arg(format!("bg:task:{id}"))
                .arg("epoch")
                .arg(epoch)
                .arg("state")
                .arg(state.as_str())
                .query_async::<()>(&mut con)
                .await
                .unwrap();
        }
        let op = WriteOp::Finish {
            id: id.clone(),
            worker: "w".into(),
            node: "n".into(),
            epoch: *carried,
            attempt: 1,
            started: 1,
            finished: 2,
            state: TaskState::Done,
            value: "42".into(),
            retry_at: 0,
            event: "{}".into(),
            started_event: None,
            error_event: None,
            args: "null".into(),
            priority: 0,
            created: 1,
        };
        let got = store.write(&[op]).await.unwrap()[0];
        let want = match verdict {
            Verdict::Apply => WriteResult::Applied,
            Verdict::Stale => WriteResult::Stale,
            Verdict::AlreadyFinished => WriteResult::AlreadyDone,
            Verdict::Gone => WriteResult::Gone,
        };
        assert_eq!(got, want, "case {i}: {epoch:?} {state:?} carried {carried}");
        let result: Option<String> = redis::cmd("HGET")
            .arg(format!("bg:task:{id}"))
            .arg("result")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            result.is_some(),
            want == WriteResult::Applied,
            "case {i} wrote only when applied"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn at_event_level_final_a_task_publishes_only_its_end() {
    use futures::StreamExt;
    for (level, want) in [
        (EventLevel::All, vec!["available", "started", "done"]),
        (EventLevel::Final, vec!["done"]),
    ] {
        let redis = Redis::start();
        let mut s = settings(&redis);
        s.redis.event_level = level;
        let store = Store::connect(&s).await.unwrap();
        assert_eq!(store.set_event_level(level).await.unwrap(), EventLevel::All);
        assert_eq!(store.set_event_level(level).await.unwrap(), level);
        let mut events = subscribed(&redis, "background:events").await;

        // A client that knows nothing of the level enqueues: the scripts follow the cluster's.
        let plain = Store::connect(&settings(&redis)).await.unwrap();
        plain
            .enqueue_many(&[TaskSpec::new("w", json!(1)).id("t")], false)
            .await
            .unwrap();
        let task = store.claim("w", &me("n1"), 1).await.unwrap().remove(0);
        // As a slot does: at `final` the start carries no event ('').
        assert_eq!(store.tells_starts(), level == EventLevel::All);
        let start = WriteOp::Start {
            id: "t".into(),
            epoch: task.epoch,
            attempt: task.attempt,
            at: now_ms(),
            event: if store.tells_starts() {
                json!({"event": "started", "id": "t"}).to_string()
            } else {
                String::new()
            },
        };
        let mut finish = finish_op("t", "n1", task.epoch, TaskState::Done, 0);
        if let WriteOp::Finish { event, .. } = &mut finish {
            *event = json!({"event": "done", "id": "t"}).to_string();
        }
        let written = store.write(&[start, finish]).await.unwrap();
        assert_eq!(written, [WriteResult::Applied, WriteResult::Applied]);
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("done") {
            let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .unwrap_or_else(|_| panic!("{level:?}: no done event; seen {seen:?}"))
                .unwrap();
            for event in crate::events_in::<Value>(msg.get_payload_bytes()).unwrap() {
                seen.push(event["event"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(seen, want, "{level:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_publishes_its_events_together_in_order() {
    use futures::StreamExt;
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut messages = subscribed(&redis, "background:events").await;
    let mut next = async || -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message on the events channel")
            .unwrap();
        serde_json::from_slice(msg.get_payload_bytes()).unwrap()
    };
    let ids = |message: &Value| -> Vec<(String, String)> {
        message
            .as_array()
            .unwrap_or_else(|| panic!("an array of events: {message}"))
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().into(),
                    e["id"].as_str().unwrap().into(),
                )
            })
            .collect()
    };

    // One task: its event alone, an object as before.
    store
        .enqueue_many(&[TaskSpec::new("w", json!(0)).id("solo")], false)
        .await
        .unwrap();
    let solo = next().await;
    assert_eq!(solo["event"], "available", "{solo}");
    assert_eq!(solo["id"], "solo");

    // Three tasks in one call: one message, in the order they were stored.
    let specs: Vec<TaskSpec> = ["a", "b", "c"]
        .iter()
        .map(|id| TaskSpec::new("w", json!(1)).id(*id))
        .collect();
    store.enqueue_many(&specs, false).await.unwrap();
    let available = |id: &str| ("available".to_string(), id.to_string());
    assert_eq!(
        ids(&next().await),
        [available("a"), available("b"), available("c")]
    );

    // A batch of the saver's writes: each start and end, as the node wrote them, in one message.
    let claimed = store.claim("w", &me("n1"), 2).await.unwrap();
    let mut ops = Vec::new();
    for task in &claimed {
        ops.push(WriteOp::Start {
            id: task.id.clone(),
            epoch: task.epoch,
            attempt: task.attempt,
            at: now_ms(),
            event: json!({"event": "started", "id": task.id}).to_string(),
        });
    }
    for task in &claimed {
        let mut finish = finish_op(&task.id, "n1", task.epoch, TaskState::Done, 0);
        if let WriteOp::Finish { event, .. } = &mut finish {
            *event = json!({"event": "done", "id": task.id}).to_string();
        }
        ops.push(finish);
    }
    assert!(
        store
            .write(&ops)
            .await
            .unwrap()
            .iter()
            .all(|r| *r == WriteResult::Applied)
    );
    let (first, second) = (claimed[0].id.clone(), claimed[1].id.clone());
    assert_eq!(
        ids(&next().await),
        [
            ("started".into(), first.clone()),
            ("started".into(), second.clone()),
            ("done".into(), first),
            ("done".into(), second),
        ]
    );

    // The store sends at most SCRIPT_CHUNK tasks to a call; a call of more events (a sweep)
    // splits them, at most 100 to a message, none lost or reordered.
    let mut call = super::library::Function::new("enqueue").bare();
    call.arg("bg")
        .arg("background")
        .arg("background:events")
        .arg(1)
        .arg("reject");
    for i in 0..250 {
        call.arg(format!("m{i:03}"))
            .arg("w")
            .arg("0")
            .arg(0)
            .arg("")
            .arg("")
            .arg("")
            .arg("")
            .arg(2)
            .arg("worker")
            .arg("w");
    }
    let codes: Vec<i64> = call.query_async(&mut redis.con().await).await.unwrap();
    assert_eq!(codes, [1; 250]);
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    while seen.len() < 250 {
        let message = ids(&next().await);
        sizes.push(message.len());
        seen.extend(message.into_iter().map(|(_, id)| id));
    }
    assert_eq!(sizes, [100, 100, 50]);
    let want: Vec<String> = (0..250).map(|i| format!("m{i:03}")).collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_take_the_highest_priority_then_the_oldest_and_ids_are_unique() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let specs = vec![
        TaskSpec::new("w", json!(1)).id("low"),
        TaskSpec::new("w", json!(2)).id("high").priority(10),
        TaskSpec::new("w", json!(3)).id("mid").priority(5),
        TaskSpec::new("w", json!(4)).id("urgent").priority(100),
        TaskSpec::new("w", json!(5)).id("lowest").priority(-100),
        TaskSpec::new("w", json!(6)).id("low").priority(50),
    ];
    let stored = store.enqueue_many(&specs, false).await.unwrap();
    let fresh: Vec<bool> = stored.iter().map(|(_, a)| *a == Accepted::Queued).collect();
    assert_eq!(
        fresh,
        [true, true, true, true, true, false],
        "the second `low` was not stored"
    );
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    let order: Vec<&str> = claimed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["urgent", "high", "mid", "low", "lowest"]);
    assert!(claimed.iter().all(|t| t.epoch == 1 && t.attempt == 1));
    assert_eq!(claimed[3].args, "1", "the first `low` kept its arguments");
    assert!(store.claim("w", &me("n1"), 10).await.unwrap().is_empty());

    // Handing back bumps the epoch and puts them back in the same order.
    assert_eq!(store.release_owned(&me("n1")).await.unwrap(), 5);
    let again = store.claim("w", &me("n2"), 10).await.unwrap();
    let order: Vec<&str> = again.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["urgent", "high", "mid", "low", "lowest"]);
    assert!(again.iter().all(|t| t.epoch == 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_library_is_loaded_again_after_redis_forgets_it() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    store
        .enqueue_many(&[TaskSpec::new("w", json!(1))], false)
        .await
        .unwrap();
    let mut con = redis.con().await;
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let stored = store
        .enqueue_many(&[TaskSpec::new("w", json!(2))], false)
        .await
        .unwrap();
    assert_eq!(stored[0].1, Accepted::Queued);
    // A single call (not a pipeline) loads it too.
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_refuses_the_library_says_so_and_stores_nothing() {
    let redis = Redis::start();
    let mut con = redis.con().await;
    let mut s = settings(&redis);
    s.redis.url = redis.url_of_user_without_functions().await;
    let store = Store::connect(&s).await.unwrap();
    let error = store
        .enqueue_many(&[TaskSpec::new("w", json!(1)).id("t")], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Redis refused the bgnode function library")
            && error.contains("no permissions to run the 'function|load' command")
            && error.contains("Redis 7.0 or newer, and a Redis user allowed to run FUNCTION LOAD"),
        "{error}"
    );
    let stored: bool = redis::cmd("EXISTS")
        .arg("bg:task:t")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_call_remembers_is_forgotten_before_the_next() {
    // The library keeps per-call values (the workers already listed, the event level) between
    // calls; each call must start from nothing, or a second call would trust the first's.
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    store
        .enqueue_many(&[TaskSpec::new("w", json!(1))], false)
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg("bg:workers")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    store
        .enqueue_many(&[TaskSpec::new("w", json!(2))], false)
        .await
        .unwrap();
    let workers: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:workers")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(workers, ["w"], "the second call listed its worker again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_task_carries_every_field_it_was_enqueued_with() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let full = TaskSpec::new("w", json!({"to": "a@example.com", "n": [1, 2]}))
        .id("full")
        .priority(7)
        .attempts(4)
        .timeout(Duration::from_secs(9))
        .backoff(Duration::from_millis(250), Duration::from_secs(30))
        .deadline(Duration::from_secs(60));
    let bare = TaskSpec::new("w", json!(null)).id("bare");
    let before = now_ms();
    store
        .enqueue_many(&[full.clone(), bare], false)
        .await
        .unwrap();
    let after = now_ms();
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(claimed.len(), 2);

    // Taken apart without `..`: a field added to `Task` does not compile here until it is
    // checked against what was enqueued.
    let Task {
        id,
        worker,
        args,
        priority,
        attempt,
        attempts,
        timeout,
        backoff,
        backoff_cap,
        deadline,
        epoch,
        created,
        pinned,
    } = claimed[0].clone();
    assert_eq!(id, "full");
    assert_eq!(worker, "w");
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), full.args);
    assert_eq!(priority, 7);
    assert_eq!(attempt, 1, "the first run");
    assert_eq!(attempts, Some(4));
    assert_eq!(timeout, Some(Duration::from_secs(9)));
    assert_eq!(backoff, Some(Duration::from_millis(250)));
    assert_eq!(backoff_cap, Some(Duration::from_secs(30)));
    assert!((before..=after).contains(&created), "{created}");
    assert_eq!(deadline, Some(created + 60_000));
    assert_eq!(epoch, 1);
    assert!(!pinned);

    let Task {
        id,
        worker,
        args,
        priority,
        attempt,
        attempts,
        timeout,
        backoff,
        backoff_cap,
        deadline,
        epoch,
        created,
        pinned,
    } = claimed[1].clone();
    assert_eq!(
        (id.as_str(), worker.as_str(), args.as_str()),
        ("bare", "w", "null")
    );
    assert_eq!((priority, attempt, epoch), (0, 1, 1));
    assert_eq!(
        (attempts, timeout, backoff, backoff_cap),
        (None, None, None, None)
    );
    assert_eq!(deadline, None);
    assert!((before..=after).contains(&created), "{created}");
    assert!(!pinned);

    // Adoption returns the same row, under the next epoch.
    let offered: Vec<(String, u64)> = claimed.iter().map(|t| (t.id.clone(), t.epoch)).collect();
    let adopted = store.adopt("n1", &me("n2"), &offered).await.unwrap();
    assert_eq!(adopted.len(), 2);
    for (claimed, adopted) in claimed.iter().zip(adopted) {
        assert_eq!(adopted.epoch, claimed.epoch + 1);
        let same_epoch = Task {
            epoch: claimed.epoch,
            ..adopted
        };
        assert_eq!(format!("{same_epoch:?}"), format!("{claimed:?}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_tasks_are_never_adopted_and_the_claim_says_which_are_pinned() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    store.join(&me("n1")).await.unwrap();
    let specs = [
        TaskSpec::new("w", json!(1)).id("anywhere"),
        TaskSpec::new("w", json!(2)).id("any").target(Target::Any),
        TaskSpec::new("w", json!(3))
            .id("on-n1")
            .target(Target::Node("n1".into())),
        TaskSpec::new("w", json!(4))
            .id("here")
            .target(Target::Local.resolve("n1")),
        // A broadcast: its occurrence `everywhere@n1` is pinned to n1.
        TaskSpec::new("w", json!(5))
            .id("everywhere")
            .target(Target::All),
    ];
    store.enqueue_many(&specs, false).await.unwrap();
    let mut claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let pinned: Vec<(&str, bool)> = claimed.iter().map(|t| (t.id.as_str(), t.pinned)).collect();
    assert_eq!(
        pinned,
        [
            ("any", false),
            ("anywhere", false),
            ("everywhere@n1", true),
            ("here", true),
            ("on-n1", true),
        ]
    );

    // Offered everything, n2 adopts exactly the tasks the claim called not pinned.
    let offered: Vec<(String, u64)> = claimed.iter().map(|t| (t.id.clone(), t.epoch)).collect();
    let mut adopted: Vec<String> = store
        .adopt("n1", &me("n2"), &offered)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    adopted.sort();
    let movable: Vec<String> = claimed
        .iter()
        .filter(|t| !t.pinned)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(adopted, movable);
    let kept: Vec<(String, u64)> = claimed
        .iter()
        .filter(|t| t.pinned)
        .map(|t| (t.id.clone(), t.epoch))
        .collect();
    assert_eq!(
        store.still_owned("n1", &kept).await.unwrap(),
        [true, true, true]
    );

    // Handed back, pinned tasks wait for their own node only.
    store.release_owned(&me("n1")).await.unwrap();
    store.release_owned(&me("n2")).await.unwrap();
    let mut by_n2: Vec<String> = store
        .claim("w", &me("n2"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    by_n2.sort();
    assert_eq!(by_n2, movable);
    let by_n1 = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(by_n1.len(), 3);
    assert!(by_n1.iter().all(|t| t.pinned));
}

/// A field of task `id`'s record.
async fn hget(con: &mut MultiplexedConnection, id: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("bg:task:{id}"))
        .arg(field)
        .query_async(con)
        .await
        .unwrap()
}

/// The epoch of task `id`.
async fn epoch_of(con: &mut MultiplexedConnection, id: &str) -> u64 {
    hget(con, id, "epoch")
        .await
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("{id} has no epoch"))
}

/// The start of an attempt under `epoch`.
fn start_op(id: &str, epoch: u64) -> WriteOp {
    WriteOp::Start {
        id: id.into(),
        epoch,
        attempt: 1,
        at: now_ms(),
        event: "{}".into(),
    }
}

/// The end of an attempt on `node` under `epoch`; `retry_at` matters when `state` is retrying.
fn finish_op(id: &str, node: &str, epoch: u64, state: TaskState, retry_at: u64) -> WriteOp {
    WriteOp::Finish {
        id: id.into(),
        worker: "w".into(),
        node: node.into(),
        epoch,
        attempt: 1,
        started: 1,
        finished: now_ms(),
        state,
        value: "\"late\"".into(),
        retry_at,
        event: "{}".into(),
        started_event: None,
        error_event: None,
        args: "null".into(),
        priority: 0,
        created: 1,
    }
}

/// Every waiting structure and owned set (of worker `w`, key `k`, nodes `n1` and `n2`) that
/// holds `id`.
async fn places(con: &mut MultiplexedConnection, id: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    for set in [
        "bg:pending:w",
        "bg:pending:w@n1",
        "bg:pending:w@n2",
        "bg:scheduled",
    ] {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(set)
            .arg(id)
            .query_async(con)
            .await
            .unwrap();
        if score.is_some() {
            found.push(set);
        }
    }
    for set in ["bg:node:n1:owned", "bg:node:n2:owned"] {
        let member: bool = redis::cmd("SISMEMBER")
            .arg(set)
            .arg(id)
            .query_async(con)
            .await
            .unwrap();
        if member {
            found.push(set);
        }
    }
    let deferred: Vec<String> = redis::cmd("LRANGE")
        .arg("bg:deferred:k")
        .arg(0)
        .arg(-1)
        .query_async(con)
        .await
        .unwrap();
    found.extend(
        deferred
            .iter()
            .filter(|d| *d == id)
            .map(|_| "bg:deferred:k"),
    );
    found
}

/// Moves `id` in the sorted set `set` (`bg:scheduled`, `bg:deadlines`) to long ago, as if its
/// time had passed: the scripts judge by Redis's clock, which a test does not set.
async fn backdate(con: &mut MultiplexedConnection, set: &str, id: &str) {
    let n: i64 = redis::cmd("ZADD")
        .arg(set)
        .arg("XX")
        .arg("CH")
        .arg(1)
        .arg(id)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(n, 1, "{id} waits in {set}");
}

/// The ids holding a slot of key `k`, sorted.
async fn slots(con: &mut MultiplexedConnection) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:key:k")
        .query_async(con)
        .await
        .unwrap();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_counts_add_pinned_sets_to_their_worker_and_read_no_pause_as_zero() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let specs = vec![
        TaskSpec::new("a", json!(null)),
        TaskSpec::new("a", json!(null)).target(Target::Node("n2".into())),
        TaskSpec::new("a", json!(null)).target(Target::Node("n3".into())),
        TaskSpec::new("b", json!(null)),
        TaskSpec::new("c", json!(null)).delay(Duration::from_secs(60)),
    ];
    store.enqueue_many(&specs, false).await.unwrap();
    let counts = store.cluster_counts(10).await.unwrap();
    assert_eq!(
        counts.pending,
        [("a".to_owned(), 3), ("b".to_owned(), 1)].into(),
        "the shared set and both pinned sets of `a`"
    );
    assert_eq!((counts.scheduled, counts.dead, counts.paused), (1, 0, 0));
    let mut con = redis.con().await;
    redis::cmd("SADD")
        .arg("bg:paused")
        .arg("a")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    assert_eq!(store.cluster_counts(10).await.unwrap().paused, 1);
    // At most `max` names of each kind are read: `a` and its first pinned set.
    let capped = store.cluster_counts(1).await.unwrap();
    assert_eq!(capped.pending, [("a".to_owned(), 2)].into());
}
