//! Entries that cannot be tasks, against a real Redis: a key that holds something other than a
//! task hash, found in a pending set or the scheduled set, is set aside in `bg:bad` with a `bad`
//! event, and every good task beside it goes on.

use std::time::Duration;

use serde_json::json;

use super::{Redis, backdate, me, settings};
use crate::model::task::TaskSpec;
use crate::store::Store;

/// Turns task `id`'s record into a plain string, as a stray write would.
async fn poison(redis: &Redis, id: &str) {
    let mut con = redis.con().await;
    redis::cmd("SET")
        .arg(format!("bg:task:{id}"))
        .arg("not a task")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
}

async fn bad_ids(redis: &Redis) -> Vec<String> {
    let mut con = redis.con().await;
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg("bg:bad")
        .query_async(&mut con)
        .await
        .unwrap();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_in_a_pending_set_costs_none_of_its_neighbours() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let specs: Vec<TaskSpec> = (0..5)
        .map(|i| TaskSpec::new("w", json!(i)).id(format!("t{i}")))
        .collect();
    store.enqueue_many(&specs, false).await.unwrap();
    poison(&redis, "t2").await;
    let claimed = store
        .claim("w", &me("n1"), 10)
        .await
        .expect("the claim goes on");
    let mut ids: Vec<String> = claimed.into_iter().map(|t| t.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["t0", "t1", "t3", "t4"],
        "the good tasks of the batch are claimed"
    );
    assert_eq!(
        bad_ids(&redis).await,
        ["t2"],
        "the bad one is set aside, not lost silently"
    );
    assert!(store.claim("w", &me("n1"), 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_entry_in_the_scheduled_set_does_not_stall_the_others() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let later = |id: &str| {
        TaskSpec::new("w", json!(null))
            .id(id)
            .delay(Duration::from_millis(1))
    };
    store
        .enqueue_many(&[later("good"), later("stray")], false)
        .await
        .unwrap();
    poison(&redis, "stray").await;
    let mut con = redis.con().await;
    backdate(&mut con, "bg:scheduled", "good").await;
    backdate(&mut con, "bg:scheduled", "stray").await;
    store.fire_due(100).await.expect("firing goes on");
    assert_eq!(bad_ids(&redis).await, ["stray"]);
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(
        claimed.into_iter().map(|t| t.id).collect::<Vec<_>>(),
        ["good"],
        "the good delayed task fired"
    );
    assert_eq!(
        store.next_due().await.unwrap().0,
        None,
        "nothing is left to stall on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_of_another_worker_in_a_pending_set_is_set_aside() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let specs: Vec<TaskSpec> = (0..3)
        .map(|i| TaskSpec::new("w", json!(i)).id(format!("t{i}")))
        .collect();
    store.enqueue_many(&specs, false).await.unwrap();
    let mut con = redis.con().await;
    redis::cmd("HSET")
        .arg("bg:task:t1")
        .arg("worker")
        .arg("other")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let claimed = store.claim("w", &me("n1"), 10).await.unwrap();
    assert!(claimed.iter().all(|t| t.worker == "w"), "{claimed:?}");
    assert_eq!(claimed.len(), 2);
    assert_eq!(bad_ids(&redis).await, ["t1"]);
}
