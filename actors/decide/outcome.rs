//! How an attempt ends, turned into the one fenced write that records it. Every end of an
//! attempt goes through [`conclude`]: a worker's result or error, a crashed worker, a task
//! cancelled or expired before it started. The saver applies the write; nothing else decides
//! what an attempt's outcome means.

use crate::decide::backoff::jitter;
use crate::decide::policy::{RetryPolicy, Settle, settle};
use crate::model::events;
use crate::model::task::{EXPIRED_ERROR, Outcome, Task};
use crate::store::WriteOp;

/// The write that ends attempt `task.attempt` of `task` on `node` with `outcome`, at `now`
/// (Unix ms). `started` is when the attempt began, or 0 when it never began (cancelled or
/// expired while queued). Retries are delayed by the task's policy with a jitter drawn from the
/// task id and attempt, so every node computes the same delay.
pub(crate) fn conclude(
    task: &Task,
    node: &str,
    outcome: Outcome,
    policy: &RetryPolicy,
    started: u64,
    now: u64,
) -> WriteOp {
    // Only a retry is delayed: the jitter (a hash) is drawn for failures alone.
    let unit = match outcome {
        Outcome::Failed { .. } => jitter(&format!("{}:{}", task.id, task.attempt)),
        _ => 0.0,
    };
    let next = settle(outcome, task.attempt, policy, now, unit);
    finish_op(task, node, &next, started, now)
}

fn finish_op(task: &Task, node: &str, settle: &Settle, started: u64, now: u64) -> WriteOp {
    let (value, retry_at) = match settle {
        Settle::Done(v) => (v.to_string(), 0),
        Settle::Retry { error, at } => (error.clone(), *at),
        Settle::Dead { error } | Settle::Failed { error } => (error.clone(), 0),
        Settle::Cancelled => ("cancelled".to_owned(), 0),
        Settle::Expired => (EXPIRED_ERROR.to_owned(), 0),
    };
    let error_event = match settle {
        Settle::Retry { error, .. } | Settle::Dead { error } => {
            Some(events::error(task, node, error, now))
        }
        _ => None,
    };
    WriteOp::Finish {
        id: task.id.clone(),
        worker: task.worker.clone(),
        node: node.to_owned(),
        epoch: task.epoch,
        attempt: task.attempt,
        started,
        finished: now,
        state: settle.state(),
        value,
        retry_at,
        event: events::transition(task, node, settle, now),
        started_event: None,
        error_event,
        args: task.args.clone(),
        priority: task.priority,
        created: task.created,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::task::TaskState;

    fn task() -> Task {
        Task {
            epoch: 7,
            created: 1,
            ..Task::sample("t1")
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 2,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(10),
    };

    fn parts(op: &WriteOp) -> (TaskState, String, u64, bool, u64) {
        match op {
            WriteOp::Finish {
                state,
                value,
                retry_at,
                error_event,
                epoch,
                ..
            } => (
                *state,
                value.clone(),
                *retry_at,
                error_event.is_some(),
                *epoch,
            ),
            other => panic!("not a finish: {other:?}"),
        }
    }

    #[test]
    fn a_failure_is_retried_within_the_backoff_and_announced() {
        let op = conclude(&task(), "n1", Outcome::failed("boom"), &POLICY, 100, 1_000);
        let (state, value, at, error_event, epoch) = parts(&op);
        assert_eq!(
            (state, value.as_str(), error_event, epoch),
            (TaskState::Retrying, "boom", true, 7)
        );
        assert!((1_500..=2_000).contains(&at), "retry at {at}");
        let again = conclude(&task(), "n2", Outcome::failed("boom"), &POLICY, 100, 1_000);
        assert_eq!(
            parts(&again).2,
            at,
            "every node draws the same jitter for an attempt"
        );
    }

    #[test]
    fn unstarted_ends_carry_their_fixed_messages() {
        let cancelled = conclude(&task(), "n1", Outcome::Cancelled, &POLICY, 0, 5);
        assert_eq!(parts(&cancelled).0, TaskState::Cancelled);
        assert_eq!(parts(&cancelled).1, "cancelled");
        let expired = conclude(&task(), "n1", Outcome::Expired, &POLICY, 0, 5);
        assert_eq!(parts(&expired).0, TaskState::Expired);
        assert_eq!(parts(&expired).1, EXPIRED_ERROR);
        assert!(!parts(&expired).3, "an expiry is not an attempt's error");
    }

    #[test]
    fn a_result_is_stored_as_json() {
        let op = conclude(
            &task(),
            "n1",
            Outcome::Done(serde_json::json!({"a": 1})),
            &POLICY,
            1,
            2,
        );
        assert_eq!(parts(&op).0, TaskState::Done);
        assert_eq!(parts(&op).1, r#"{"a":1}"#);
    }

    #[test]
    fn the_expiry_script_uses_the_same_message() {
        assert!(include_str!("../store/lua/expire.lua").contains(EXPIRED_ERROR));
    }
}
