//! The scheduler: fires delayed, retrying and recurring tasks when they are due, and expires
//! tasks whose deadline passed before they started.
//!
//! Every node runs one; they never fire anything twice because every step is an atomic script:
//! `fire.lua` makes due one-shot tasks runnable (removing them from the scheduled set in the
//! same step), and for each due recurring template the next time is computed here
//! ([`crate::decide::cron::advance`], which coalesces missed occurrences by default) and set by
//! `occur.lua` only if the template is still due at the time this node read (compare-and-set);
//! the occurrence id `template@due` is the same on every node.
//!
//! It sleeps until the earliest due time or deadline, at most [`MAX_SLEEP`], and wakes early
//! when told something was scheduled (`{"op":"schedule"}` on the task channel). It does not
//! poll in a tight loop.
//!
//! Every time it goes by is Redis's: the scripts judge what is due and what expired by `TIME`,
//! `fire.lua` answers the time it judged by (the next occurrences are computed from it), and the
//! sleep is measured from Redis's time read with the next due time. This node's own clock
//! decides nothing, so schedulers on hosts whose clocks disagree fire the same occurrences at
//! the same moments.
//!
//! Every [`TALLY_EVERY`] it asks `tally.lua` for a sample of the cluster's counters (the
//! throughput of `GET /api/v1/overview`).
//!
//! Every [`unrunnable_period`] it also runs `unrunnable.lua`, which expires waiting tasks that
//! no live node has been able to run for `[tasks] unrunnable_after` (see
//! [`crate::decide::runnable`]); that script is atomic too, so every node may run it.
//!
//! The tasks either sweep expires are counted in this node's `bgnode_tasks_expired_total`, by
//! worker type: each is closed by one script call, on one node.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::decide::backoff::Backoff;
use crate::decide::cron::{Cron, Missed, Recurrence, advance, occurrence_id};
use crate::metrics::Metrics;
use crate::model::task::TaskState;
use crate::store::{DueTemplate, Store};
use crate::wiring::watch_task;

/// Longest sleep when nothing is due: a safety net for a wake that was lost.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(5);

/// How often a scheduler asks for a sample of the counters (`tally.lua` keeps at most one per
/// 10 s, whichever node asks), from which the throughput of the last minute and hour is read.
const TALLY_EVERY: Duration = Duration::from_secs(5);

/// Entries handled per script call.
const BATCH: usize = 256;

/// The scheduler actor.
pub(crate) struct Scheduler;

/// What the scheduler needs.
pub(crate) struct SchedulerArgs {
    /// The scheduled set and its scripts.
    pub(crate) store: Store,
    /// Notified when something was scheduled: the loop wakes early.
    pub(crate) wake: Arc<Notify>,
    /// What to do with occurrences missed during an outage.
    pub(crate) missed: Missed,
    /// How long a task may wait with no live node able to run it (zero: for ever).
    pub(crate) unrunnable_after: Duration,
    /// Where the tasks its sweeps expire are counted.
    pub(crate) metrics: Metrics,
}

/// The scheduler's state: its loop.
pub(crate) struct SchedulerState {
    task: JoinHandle<()>,
}

/// Messages to the scheduler.
pub(crate) enum SchedulerMsg {
    /// The loop ended unexpectedly.
    LoopDied(String),
}

impl ractor::Message for SchedulerMsg {}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let task = watch_task(run(args), myself, SchedulerMsg::LoopDied);
        Ok(SchedulerState { task })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        _state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let SchedulerMsg::LoopDied(why) = msg;
        Err(format!("scheduler loop died: {why}").into())
    }
}

async fn run(ctx: SchedulerArgs) {
    let mut backoff = Backoff::default();
    let period = unrunnable_period(ctx.unrunnable_after);
    let mut next_sweep = tokio::time::Instant::now();
    let mut next_tally = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_tally {
            next_tally = tokio::time::Instant::now() + TALLY_EVERY;
            if let Err(e) = ctx.store.tally().await {
                tracing::debug!("cannot sample the counters ({e})");
            }
        }
        let mut result = tick(&ctx).await;
        if let (Ok(wait), Some(period)) = (result.as_ref(), period) {
            let now = tokio::time::Instant::now();
            let wait = *wait;
            result = if now >= next_sweep {
                next_sweep = now + period;
                sweep_unrunnable(&ctx, period)
                    .await
                    .map(|()| wait.min(period))
            } else {
                Ok(wait.min(next_sweep - now))
            };
        }
        match result {
            Ok(wait) => {
                backoff.reset();
                sleep_or_wake(wait, &ctx.wake).await;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("scheduler cannot reach redis ({e}); retrying in {delay:?}");
                sleep_or_wake(delay, &ctx.wake).await;
            }
        }
    }
}

/// One pass: fire what is due, expire what is late; returns how long to sleep.
async fn tick(ctx: &SchedulerArgs) -> Result<Duration, crate::store::StoreError> {
    let store = &ctx.store;
    loop {
        let (now, templates) = store.fire_due(BATCH).await?;
        for t in &templates {
            occur(ctx, t, now).await?;
        }
        let expired = count_expired(ctx, &store.expire_due(BATCH).await?);
        if expired > 0 {
            tracing::info!(expired, "tasks expired before they could start");
        }
        if templates.len() < BATCH && expired < BATCH {
            break;
        }
    }
    let (next, now) = store.next_due().await?;
    Ok(wait_for(next, now))
}

/// Counts the tasks a sweep expired, given their worker types; returns how many.
fn count_expired(ctx: &SchedulerArgs, workers: &[String]) -> usize {
    for worker in workers {
        ctx.metrics.worker(worker).ended(TaskState::Expired);
    }
    workers.len()
}

/// How often the unrunnable sweep runs for a limit of `after`: a quarter of it, between 250 ms
/// and [`MAX_SLEEP`]; `None` when the limit is off (zero).
pub(crate) fn unrunnable_period(after: Duration) -> Option<Duration> {
    (!after.is_zero()).then(|| (after / 4).clamp(Duration::from_millis(250), MAX_SLEEP))
}

/// Expires tasks that no live node has been able to run for `[tasks] unrunnable_after`. A
/// set whose clock nobody advanced for a while (no node ran) starts its clock again.
async fn sweep_unrunnable(
    ctx: &SchedulerArgs,
    period: Duration,
) -> Result<(), crate::store::StoreError> {
    let idle = (period * 8).max(Duration::from_secs(30));
    let mut expired = 0;
    loop {
        let n = count_expired(
            ctx,
            &ctx.store
                .expire_unrunnable(ctx.unrunnable_after, idle, BATCH)
                .await?,
        );
        expired += n;
        if n < BATCH {
            break;
        }
    }
    if expired > 0 {
        tracing::info!(
            expired,
            "tasks expired: no live node could run them for {}",
            crate::decide::times::format_duration(ctx.unrunnable_after)
        );
    }
    Ok(())
}

async fn occur(
    ctx: &SchedulerArgs,
    t: &DueTemplate,
    now: u64,
) -> Result<(), crate::store::StoreError> {
    let rec = match (&t.every, &t.cron) {
        (Some(ms), _) => Recurrence::Every(Duration::from_millis(*ms)),
        (None, Some(expr)) => match Cron::parse(expr) {
            Ok(c) => Recurrence::Cron(c),
            Err(e) => {
                tracing::error!(template = %t.id, "stored cron expression is invalid ({e}); stopping it");
                ctx.store.occur(&t.id, t.due, None).await?;
                return Ok(());
            }
        },
        (None, None) => return Ok(()),
    };
    let next = advance(&rec, t.due, now, ctx.missed);
    if ctx.store.occur(&t.id, t.due, next).await? {
        tracing::debug!(occurrence = %occurrence_id(&t.id, t.due), ?next, "fired an occurrence");
    }
    Ok(())
}

/// How long to sleep until `next_due` (Unix ms), at most [`MAX_SLEEP`].
pub(crate) fn wait_for(next_due: Option<u64>, now: u64) -> Duration {
    match next_due {
        Some(due) if due <= now => Duration::ZERO,
        Some(due) => Duration::from_millis(due - now).min(MAX_SLEEP),
        None => MAX_SLEEP,
    }
}

/// Sleeps `wait`, or less when `wake` is notified. Returns true when woken early.
pub(crate) async fn sleep_or_wake(wait: Duration, wake: &Notify) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = wake.notified() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unrunnable_sweep_runs_a_quarter_of_the_limit_apart_within_bounds() {
        assert_eq!(unrunnable_period(Duration::ZERO), None);
        assert_eq!(
            unrunnable_period(Duration::from_secs(4)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            unrunnable_period(Duration::from_secs(1)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            unrunnable_period(Duration::from_secs(3_600)),
            Some(MAX_SLEEP)
        );
    }

    #[test]
    fn sleeps_until_the_earliest_due_time_capped() {
        assert_eq!(wait_for(Some(1_500), 1_000), Duration::from_millis(500));
        assert_eq!(wait_for(Some(900), 1_000), Duration::ZERO);
        assert_eq!(wait_for(Some(1_000_000), 1_000), MAX_SLEEP);
        assert_eq!(wait_for(None, 1_000), MAX_SLEEP);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_cuts_the_sleep_short() {
        let wake = Arc::new(Notify::new());
        let start = tokio::time::Instant::now();
        let waker = wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            waker.notify_one();
        });
        assert!(sleep_or_wake(Duration::from_secs(5), &wake).await);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_wake_it_sleeps_exactly_until_due() {
        let wake = Notify::new();
        let start = tokio::time::Instant::now();
        assert!(!sleep_or_wake(wait_for(Some(3_250), 1_000), &wake).await);
        assert_eq!(start.elapsed(), Duration::from_millis(2_250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_sent_before_the_sleep_is_not_lost() {
        let wake = Notify::new();
        wake.notify_one();
        let start = tokio::time::Instant::now();
        assert!(sleep_or_wake(MAX_SLEEP, &wake).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
