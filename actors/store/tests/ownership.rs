//! Who owns a task, against a real Redis: every way a task leaves its owner fences the owner
//! out, a task waits in one place at a time, failover waits for the lease and adoption for the
//! named owner and epoch, a cancellation survives a hand-back, and a lease has one holder.

use std::time::Duration;

use serde_json::json;

use super::{Redis, backdate, epoch_of, finish_op, hget, me, places, settings, start_op};
use crate::config::KeyPolicy;
use crate::model::task::{Target, TaskSpec, TaskState, now_ms};
use crate::store::{CancelResult, Guard, Lease, Store, WriteResult};

#[tokio::test(flavor = "multi_thread")]
async fn every_way_a_task_leaves_its_owner_fences_the_owner_out() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    store.join(&me("n1")).await.unwrap();
    let ways = [
        "hand-back",
        "recovery",
        "failover",
        "adoption",
        "retry",
        "expiry",
        "leave",
    ];
    for (i, way) in ways.iter().enumerate() {
        // One worker per way, so that each claim takes exactly this way's task.
        let worker = format!("w{i}");
        let mut spec = TaskSpec::new(&worker, json!(null)).id(*way);
        if *way == "expiry" {
            spec = spec.deadline(Duration::from_millis(1));
        }
        if *way == "leave" {
            // A broadcast: its occurrence for n1 is what n1 claims.
            spec = spec.target(Target::All);
        }
        store.enqueue_many(&[spec], false).await.unwrap();
        let claimed = store.claim(&worker, &me("n1"), 1).await.unwrap();
        assert_eq!(claimed.len(), 1, "{way}");
        let (id, old) = (claimed[0].id.clone(), claimed[0].epoch);
        match *way {
            "hand-back" => assert_eq!(
                store
                    .release_ids(&me("n1"), &[(id.clone(), None)], false)
                    .await
                    .unwrap(),
                1
            ),
            "recovery" => assert!(store.release_owned(&me("n1")).await.unwrap() >= 1),
            "failover" => assert!(store.failover("n1").await.unwrap().is_some_and(|n| n >= 1)),
            "adoption" => {
                let adopted = store
                    .adopt("n1", &me("n2"), &[(id.clone(), old)])
                    .await
                    .unwrap();
                assert_eq!(adopted.len(), 1);
            }
            "retry" => {
                let op = finish_op(&id, "n1", old, TaskState::Retrying, now_ms() + 60_000);
                assert_eq!(store.write(&[op]).await.unwrap(), [WriteResult::Applied]);
            }
            "expiry" => {
                backdate(&mut con, "bg:deadlines", &id).await;
                assert_eq!(store.expire_due(10).await.unwrap(), [worker.as_str()]);
            }
            "leave" => {
                store.leave("n1", Guard::Survivor).await.unwrap();
            }
            _ => unreachable!(),
        }
        assert!(
            epoch_of(&mut con, &id).await > old,
            "{way}: the epoch moved on"
        );
        let late = [
            start_op(&id, old),
            finish_op(&id, "n1", old, TaskState::Done, 0),
        ];
        assert_eq!(
            store.write(&late).await.unwrap(),
            [WriteResult::Stale, WriteResult::Stale],
            "{way}: the old owner's start and end are refused"
        );
        assert_ne!(
            hget(&mut con, &id, "result").await.as_deref(),
            Some("\"late\""),
            "{way}"
        );
        if *way == "adoption" {
            // The new owner writes under the epoch it adopted the task with.
            let now = epoch_of(&mut con, &id).await;
            assert_eq!(
                store.write(&[start_op(&id, now)]).await.unwrap(),
                [WriteResult::Applied]
            );
            assert_eq!(
                hget(&mut con, &id, "state").await.as_deref(),
                Some("running")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_in_one_place_at_every_step() {
    let redis = Redis::start();
    let mut s = settings(&redis);
    s.keys.policy = KeyPolicy::Defer;
    let store = Store::connect(&s).await.unwrap();
    let mut con = redis.con().await;
    let at = |id| TaskSpec::new("w", json!(null)).id(id).key("k");

    store
        .enqueue_many(&[at("a"), at("b")], false)
        .await
        .unwrap();
    assert_eq!(places(&mut con, "a").await, ["bg:pending:w"]);
    assert_eq!(
        places(&mut con, "b").await,
        ["bg:deferred:k"],
        "a holds the key"
    );

    let a = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(places(&mut con, "a").await, ["bg:node:n1:owned"]);
    let adopted = store
        .adopt("n1", &me("n2"), &[("a".into(), a[0].epoch)])
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(places(&mut con, "a").await, ["bg:node:n2:owned"]);
    store.release_owned(&me("n2")).await.unwrap();
    assert_eq!(places(&mut con, "a").await, ["bg:pending:w"]);

    let a = store.claim("w", &me("n1"), 10).await.unwrap();
    assert!(a[0].epoch > 2);
    let retry = finish_op("a", "n1", a[0].epoch, TaskState::Retrying, now_ms() - 1);
    store.write(&[retry]).await.unwrap();
    assert_eq!(places(&mut con, "a").await, ["bg:scheduled"]);
    assert!(store.fire_due(10).await.unwrap().1.is_empty());
    assert_eq!(places(&mut con, "a").await, ["bg:pending:w"]);

    let a = store.claim("w", &me("n1"), 10).await.unwrap();
    assert_eq!(places(&mut con, "a").await, ["bg:node:n1:owned"]);
    let done = finish_op("a", "n1", a[0].epoch, TaskState::Done, 0);
    store.write(&[done]).await.unwrap();
    assert!(
        places(&mut con, "a").await.is_empty(),
        "a finished task waits nowhere"
    );
    assert_eq!(
        places(&mut con, "b").await,
        ["bg:pending:w"],
        "the freed slot let b in"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_waits_for_the_lease_and_adoption_for_the_named_owner_and_epoch() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    store
        .enqueue_many(&[TaskSpec::new("w", json!(null)).id("f")], false)
        .await
        .unwrap();
    let epoch = store.claim("w", &me("n1"), 1).await.unwrap()[0].epoch;
    let lease = store.keys().alive("n1");
    assert_eq!(
        store
            .lease(&lease, "n1:1", Duration::from_secs(60))
            .await
            .unwrap(),
        Lease::Taken
    );

    // n1 still renews its lease: whatever the gossip says, it is alive and keeps its task.
    assert_eq!(store.failover("n1").await.unwrap(), None);
    assert_eq!(places(&mut con, "f").await, ["bg:node:n1:owned"]);
    assert_eq!(epoch_of(&mut con, "f").await, epoch);

    // Adoption takes a task only from the node that owns it, under the epoch it names.
    assert!(
        store
            .adopt("n1", &me("n2"), &[("f".into(), epoch + 1)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .adopt("n3", &me("n2"), &[("f".into(), epoch)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(places(&mut con, "f").await, ["bg:node:n1:owned"]);

    // Once the lease is gone, any survivor hands the task back to the pending set.
    assert!(store.unlease(&lease, "n1:1").await.unwrap());
    assert_eq!(store.failover("n1").await.unwrap(), Some(1));
    assert_eq!(places(&mut con, "f").await, ["bg:pending:w"]);
    assert_eq!(hget(&mut con, "f", "node").await.as_deref(), Some(""));
    assert_eq!(epoch_of(&mut con, "f").await, epoch + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_survives_a_hand_back_and_the_next_claim_closes_the_task() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let mut con = redis.con().await;
    store
        .enqueue_many(&[TaskSpec::new("w", json!(null)).id("c")], false)
        .await
        .unwrap();
    let epoch = store.claim("w", &me("n1"), 1).await.unwrap()[0].epoch;
    // n1 holds it: the cancellation is a flag and a word to n1, which dies before acting on it.
    assert_eq!(store.cancel("c").await.unwrap(), CancelResult::Requested);
    assert_eq!(store.release_owned(&me("n1")).await.unwrap(), 1);
    assert!(store.claim("w", &me("n2"), 10).await.unwrap().is_empty());
    assert_eq!(
        hget(&mut con, "c", "state").await.as_deref(),
        Some("cancelled")
    );
    assert!(places(&mut con, "c").await.is_empty());
    assert!(epoch_of(&mut con, "c").await > epoch + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_has_one_holder_at_a_time() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let key = store.keys().ingress();
    let long = Duration::from_secs(60);
    assert_eq!(store.lease(&key, "n1:1", long).await.unwrap(), Lease::Taken);
    assert_eq!(
        store.lease(&key, "n2:1", long).await.unwrap(),
        Lease::HeldBy("n1:1".into())
    );
    assert_eq!(
        store.lease(&key, "n1:2", long).await.unwrap(),
        Lease::HeldBy("n1:1".into()),
        "a new incarnation of n1 is another holder"
    );
    assert_eq!(
        store.lease(&key, "n1:1", long).await.unwrap(),
        Lease::Renewed
    );
    assert!(
        !store.unlease(&key, "n2:1").await.unwrap(),
        "only the holder drops it"
    );
    assert!(store.unlease(&key, "n1:1").await.unwrap());
    assert_eq!(
        store
            .lease(&key, "n2:1", Duration::from_millis(50))
            .await
            .unwrap(),
        Lease::Taken
    );

    // Not renewed, it lapses, and the next node takes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match store.lease(&key, "n3:1", long).await.unwrap() {
            Lease::Taken => break,
            Lease::HeldBy(holder) => assert_eq!(holder, "n2:1"),
            Lease::Renewed => panic!("n3 never held it"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_is_neither_claimed_nor_adopted_until_it_resumes() {
    let redis = Redis::start();
    let store = Store::connect(&settings(&redis)).await.unwrap();
    let specs = vec![
        TaskSpec::new("w", json!(1)).id("a"),
        TaskSpec::new("w", json!(2)).id("b"),
        TaskSpec::new("other", json!(3)).id("c"),
    ];
    store.enqueue_many(&specs, false).await.unwrap();
    let held = store.claim("w", &me("n1"), 1).await.unwrap();
    assert_eq!(held.len(), 1);

    assert!(store.set_paused("w", true).await.unwrap());
    assert!(
        !store.set_paused("w", true).await.unwrap(),
        "paused already"
    );
    assert_eq!(store.paused().await.unwrap(), ["w"]);
    let claim = store.claim_batch("w", &me("n2"), 10).await.unwrap();
    assert!(claim.paused && claim.tasks.is_empty(), "{claim:?}");
    let handed = [(held[0].id.clone(), held[0].epoch)];
    assert!(
        store
            .adopt("n1", &me("n2"), &handed)
            .await
            .unwrap()
            .is_empty(),
        "a task of a paused worker is not adopted"
    );
    let other = store.claim_batch("other", &me("n2"), 10).await.unwrap();
    assert!(
        !other.paused && other.tasks.len() == 1,
        "other workers run on"
    );

    assert!(store.set_paused("w", false).await.unwrap());
    assert!(store.paused().await.unwrap().is_empty());
    let claim = store.claim_batch("w", &me("n2"), 10).await.unwrap();
    assert!(!claim.paused);
    assert_eq!(claim.tasks.len(), 1);
    assert_eq!(
        store.adopt("n1", &me("n2"), &handed).await.unwrap().len(),
        1
    );
}
