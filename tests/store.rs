//! The store's scripts against a real Redis: fencing follows the same table as the Rust rule,
//! claims honour priority and age, and an id is the idempotency key.

mod common;

use background::TaskSpec;
use background::decide::fencing::{CASES, Verdict};
use background::model::task::TaskState;
use background::store::{Accepted, Store, WriteOp, WriteResult};
use common::Redis;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn finish_script_applies_the_fencing_table() {
    let redis = Redis::start();
    let store = Store::connect(&redis.settings()).await.unwrap();
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
async fn claims_take_the_highest_priority_then_the_oldest_and_ids_are_unique() {
    let redis = Redis::start();
    let store = Store::connect(&redis.settings()).await.unwrap();
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
    let claimed = store.claim("w", "n1", 10).await.unwrap();
    let order: Vec<&str> = claimed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["urgent", "high", "mid", "low", "lowest"]);
    assert!(claimed.iter().all(|t| t.epoch == 1 && t.attempt == 1));
    assert_eq!(claimed[3].args, "1", "the first `low` kept its arguments");
    assert!(store.claim("w", "n1", 10).await.unwrap().is_empty());

    // Handing back bumps the epoch and puts them back in the same order.
    assert_eq!(store.release_owned("n1").await.unwrap(), 5);
    let again = store.claim("w", "n2", 10).await.unwrap();
    let order: Vec<&str> = again.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["urgent", "high", "mid", "low", "lowest"]);
    assert!(again.iter().all(|t| t.epoch == 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_are_reloaded_after_redis_forgets_them() {
    let redis = Redis::start();
    let store = Store::connect(&redis.settings()).await.unwrap();
    store
        .enqueue_many(&[TaskSpec::new("w", json!(1))], false)
        .await
        .unwrap();
    let mut con = redis.con().await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let stored = store
        .enqueue_many(&[TaskSpec::new("w", json!(2))], false)
        .await
        .unwrap();
    assert_eq!(stored[0].1, Accepted::Queued);
}
