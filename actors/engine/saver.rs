//! The saver: the one writer of task state. It batches durable writes, pipelines them to Redis,
//! keeps them through an outage, and answers flush requests at shutdown.
//!
//! Writes arrive as [`WriteOp`]s. A background flusher takes everything queued (up to
//! `[saver] batch`) and sends it as one pipeline, so under load a batch fills while the previous
//! one is in flight, and when idle a write goes out at once. When Redis is unreachable the batch
//! is retried with backoff; nothing is dropped. The buffer is bounded by construction: a node
//! claims no new tasks while Redis is away, so at most the tasks it already held can finish.
//!
//! A start and the finish of the same attempt that meet in one batch are folded into the finish
//! write, which publishes both events: a fast task costs one script call, not two.
//!
//! The flusher is where the node counts how attempts ended (the `bgnode_tasks_*_total`
//! metrics of done, failed, retried, dead, expired and cancelled): every end of an attempt is
//! one finish write, and Redis's answer tells whether it took effect. A write refused by
//! fencing (the task changed owner) counts nothing, and a write answered "already finished"
//! counts, since only this same write can have finished the task under its epoch: an earlier
//! send of the batch that Redis applied but whose answer was lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::decide::backoff::Backoff;
use crate::metrics::Metrics;
use crate::store::{Store, WriteOp, WriteResult};

/// The saver actor: owns the flusher task that drains the write queue.
pub(crate) struct Saver;

/// The write queue. It belongs to the supervisor and outlives saver restarts, so a write handed
/// to it is never lost to a crash of the saver; every actor that writes holds a clone.
#[derive(Clone)]
pub(crate) struct SaverHandle {
    shared: Arc<Shared>,
}

struct Shared {
    batch: Mutex<Batch>,
    wake: Notify,
    pushed: AtomicU64,
    written: watch::Sender<u64>,
}

impl Default for SaverHandle {
    fn default() -> SaverHandle {
        SaverHandle {
            shared: Arc::new(Shared {
                batch: Mutex::new(Batch::default()),
                wake: Notify::new(),
                pushed: AtomicU64::new(0),
                written: watch::channel(0).0,
            }),
        }
    }
}

impl SaverHandle {
    /// Queues a durable write.
    pub(crate) fn write(&self, op: WriteOp) {
        lock(&self.shared.batch).push(op);
        self.shared.pushed.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Waits until every write queued before this call is in Redis, at most `timeout`.
    /// Returns false on timeout.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.pushed.load(Ordering::SeqCst);
        let mut written = self.shared.written.subscribe();
        tokio::time::timeout(timeout, written.wait_for(|w| *w >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many writes were ever queued: a mark that [`SaverHandle::written`] reaches once
    /// every write queued so far is in Redis.
    pub(crate) fn queued(&self) -> u64 {
        self.shared.pushed.load(Ordering::SeqCst)
    }

    /// How many writes are in Redis (in the order they were queued).
    pub(crate) fn written(&self) -> u64 {
        *self.shared.written.borrow()
    }

    /// Writes queued and not yet in Redis.
    pub(crate) fn backlog(&self) -> u64 {
        self.shared.pushed.load(Ordering::SeqCst) - *self.shared.written.borrow()
    }
}

/// What the saver needs.
pub(crate) struct SaverArgs {
    /// The queue it drains.
    pub handle: SaverHandle,
    /// The store.
    pub store: Store,
    /// Most writes per pipeline.
    pub batch: usize,
    /// Where the ends of attempts that Redis applied are counted.
    pub metrics: Metrics,
}

/// The saver's state.
pub(crate) struct SaverState {
    flusher: JoinHandle<()>,
}

/// Messages to the saver.
pub(crate) enum SaverMsg {
    /// The flusher task ended unexpectedly: fail, so the supervisor restarts the saver.
    FlusherDied(String),
}

impl ractor::Message for SaverMsg {}

impl Actor for Saver {
    type Msg = SaverMsg;
    type State = SaverState;
    type Arguments = SaverArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SaverMsg>,
        args: SaverArgs,
    ) -> Result<SaverState, ActorProcessingErr> {
        Ok(SaverState {
            flusher: crate::wiring::watch_task(flush_loop(args), myself, SaverMsg::FlusherDied),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SaverMsg>,
        state: &mut SaverState,
    ) -> Result<(), ActorProcessingErr> {
        state.flusher.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SaverMsg>,
        msg: SaverMsg,
        _state: &mut SaverState,
    ) -> Result<(), ActorProcessingErr> {
        let SaverMsg::FlusherDied(why) = msg;
        Err(format!("saver flusher died: {why}").into())
    }
}

fn lock(batch: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    // A panic while holding this lock cannot leave the batch half-edited (push and take are
    // single statements on owned data), so a poisoned lock is still usable.
    batch.lock().unwrap_or_else(|e| e.into_inner())
}

async fn flush_loop(args: SaverArgs) {
    let shared = args.handle.shared.clone();
    let mut outage: Option<std::time::Instant> = None;
    loop {
        let (ops, accounted) = lock(&shared.batch).take(args.batch.max(1));
        if accounted == 0 {
            shared.wake.notified().await;
            continue;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match args.store.write(&ops).await {
                Ok(results) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            "redis is back after {:.1}s; writing the saved backlog",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    report(&ops, &results);
                    count(&ops, &results, &args.metrics);
                    break;
                }
                Err(e) => {
                    if outage.is_none() {
                        tracing::warn!(
                            "saver cannot write to redis ({e}); keeping {} writes and retrying",
                            ops.len()
                        );
                        outage = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        shared.written.send_modify(|w| *w += accounted as u64);
    }
}

fn report(ops: &[WriteOp], results: &[WriteResult]) {
    for (op, result) in ops.iter().zip(results) {
        if *result == WriteResult::Failed {
            tracing::error!(
                ?op,
                "redis refused this write (the script failed on it); it is dropped"
            );
            continue;
        }
        if *result != WriteResult::Stale {
            continue;
        }
        match op {
            WriteOp::Finish { id, epoch, .. } => tracing::warn!(
                task = %id, epoch,
                "completion refused by fencing: the task changed owner; counted as a stale duplicate"
            ),
            WriteOp::Start { id, epoch, .. } => {
                tracing::warn!(task = %id, epoch, "start refused by fencing: the task changed owner");
            }
            WriteOp::Event { .. } => {}
        }
    }
}

/// Counts the ends of attempts that took effect, by worker type and the state they left.
fn count(ops: &[WriteOp], results: &[WriteResult], metrics: &Metrics) {
    for (op, result) in ops.iter().zip(results) {
        if let (
            WriteOp::Finish { worker, state, .. },
            WriteResult::Applied | WriteResult::AlreadyDone,
        ) = (op, result)
        {
            metrics.worker(worker).ended(*state);
        }
    }
}

/// The queue of writes, in order, with starts that a later finish has absorbed left as holes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    ops: VecDeque<Option<WriteOp>>,
    /// Position (counted from the first op ever pushed) of each start not yet taken.
    starts: HashMap<(String, u64), u64>,
    /// How many entries were taken so far.
    base: u64,
}

impl Batch {
    /// Queues a write, folding a finish into its own queued start.
    pub(crate) fn push(&mut self, mut op: WriteOp) {
        match &mut op {
            WriteOp::Start { id, epoch, .. } => {
                let pos = self.base + self.ops.len() as u64;
                self.starts.insert((id.clone(), *epoch), pos);
            }
            WriteOp::Finish {
                id,
                epoch,
                started_event,
                ..
            } => {
                if let Some(pos) = self.starts.remove(&(id.clone(), *epoch)) {
                    let slot = &mut self.ops[(pos - self.base) as usize];
                    if let Some(WriteOp::Start { event, .. }) = slot.take() {
                        *started_event = Some(event);
                    }
                }
            }
            WriteOp::Event { .. } => {}
        }
        self.ops.push_back(Some(op));
    }

    /// Takes up to `max` writes in order. Returns them and how many queue entries they account
    /// for (absorbed starts included), for flush bookkeeping.
    pub(crate) fn take(&mut self, max: usize) -> (Vec<WriteOp>, usize) {
        let mut out = Vec::new();
        let mut taken = 0;
        while out.len() < max {
            let Some(entry) = self.ops.pop_front() else {
                break;
            };
            taken += 1;
            self.base += 1;
            if let Some(op) = entry {
                if let WriteOp::Start { id, epoch, .. } = &op {
                    self.starts.remove(&(id.clone(), *epoch));
                }
                out.push(op);
            }
        }
        (out, taken)
    }

    /// True when nothing is queued.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::TaskState;

    fn start(id: &str, epoch: u64) -> WriteOp {
        WriteOp::Start {
            id: id.into(),
            epoch,
            attempt: 1,
            at: 10,
            event: format!("started {id}"),
        }
    }

    fn finish(id: &str, epoch: u64) -> WriteOp {
        WriteOp::Finish {
            id: id.into(),
            worker: "w".into(),
            node: "n".into(),
            epoch,
            attempt: 1,
            started: 10,
            finished: 20,
            state: TaskState::Done,
            value: "null".into(),
            retry_at: 0,
            event: format!("done {id}"),
            started_event: None,
            error_event: None,
            args: "null".into(),
            priority: 0,
            created: 1,
        }
    }

    #[test]
    fn a_finish_absorbs_its_queued_start() {
        let mut b = Batch::default();
        b.push(start("a", 1));
        b.push(start("b", 1));
        b.push(finish("a", 1));
        let (ops, accounted) = b.take(10);
        assert_eq!(accounted, 3);
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], WriteOp::Start { id, .. } if id == "b"));
        let WriteOp::Finish { started_event, .. } = &ops[1] else {
            panic!()
        };
        assert_eq!(started_event.as_deref(), Some("started a"));
    }

    #[test]
    fn a_start_already_taken_is_not_absorbed() {
        let mut b = Batch::default();
        b.push(start("a", 1));
        let (ops, _) = b.take(10);
        assert_eq!(ops.len(), 1);
        b.push(finish("a", 1));
        let (ops, _) = b.take(10);
        let WriteOp::Finish { started_event, .. } = &ops[0] else {
            panic!()
        };
        assert_eq!(started_event, &None);
    }

    #[test]
    fn epochs_are_not_mixed() {
        let mut b = Batch::default();
        b.push(start("a", 1));
        b.push(finish("a", 2));
        let (ops, _) = b.take(10);
        assert_eq!(
            ops.len(),
            2,
            "a finish under another epoch leaves the start alone"
        );
    }

    #[test]
    fn take_respects_max_and_order_across_calls() {
        let mut b = Batch::default();
        for i in 0..5 {
            b.push(start(&format!("t{i}"), 1));
        }
        let (ops, n) = b.take(2);
        assert_eq!((ops.len(), n), (2, 2));
        b.push(finish("t3", 1));
        let (ops, n) = b.take(10);
        assert_eq!(n, 4, "t2, hole of t3, t4, finish t3");
        assert_eq!(ops.len(), 3);
        assert!(b.is_empty());
    }
}
