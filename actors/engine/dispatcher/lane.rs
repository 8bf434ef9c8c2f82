//! One worker type's tasks on this node, free of I/O: the bounded local priority queue, the
//! tasks running in its pool, and the pacing of claims and steals. This is the one place that
//! knows which tasks of a worker type a node holds; the pool only runs what it is handed.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::decide::backoff::Backoff;
use crate::decide::placement::Load;
use crate::model::task::Task;

/// How often a lane with room looks at its pending set even without a wake.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a lane waits between two requests for a peer's work.
pub(crate) const STEAL_EVERY: Duration = Duration::from_millis(500);
/// First delay before claiming again after a failed claim; it doubles up to [`CLAIM_BACKOFF_CAP`].
const CLAIM_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between failed claims.
const CLAIM_BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Load of one worker type on a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneStats {
    /// Worker name.
    pub worker: String,
    /// Concurrency.
    pub capacity: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks claimed and waiting for a slot.
    pub queued: usize,
}

/// A task waiting in a lane, ordered by priority, then age, then arrival.
#[derive(Debug)]
struct Queued {
    task: Task,
    seq: u64,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.task
            .priority
            .cmp(&other.task.priority)
            .then_with(|| other.task.created.cmp(&self.task.created))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A task handed to the pool.
#[derive(Debug)]
pub(crate) struct Running {
    /// The task.
    pub(crate) task: Task,
    /// When it was handed to the pool (Unix ms).
    pub(crate) started: u64,
    /// Stops the attempt early.
    pub(crate) cancel: CancellationToken,
}

/// The tasks and claim pacing of one worker type.
#[derive(Debug)]
pub(crate) struct Lane {
    queue: BinaryHeap<Queued>,
    running: HashMap<String, Running>,
    capacity: usize,
    queue_cap: usize,
    seq: u64,
    /// Redis may hold more pending tasks of this type.
    more: bool,
    /// A claim is in flight.
    claiming: bool,
    /// A wake arrived while a claim was in flight: the claim's answer may predate that task.
    woken: bool,
    /// Delay before the next claim after a failure.
    backoff: Backoff,
    /// When the pending set was last looked at.
    last_claim: Option<Instant>,
    /// When this lane last asked a peer for work.
    last_steal: Option<Instant>,
    /// The worker type is paused cluster-wide: nothing starts; claims only learn when it
    /// resumes.
    paused: bool,
}

impl Lane {
    /// A lane running `capacity` at once and queueing up to `queue_cap` more.
    pub(crate) fn new(capacity: usize, queue_cap: usize) -> Lane {
        Lane {
            queue: BinaryHeap::new(),
            running: HashMap::new(),
            capacity,
            queue_cap,
            seq: 0,
            more: true,
            claiming: false,
            woken: false,
            backoff: Backoff::new(CLAIM_BACKOFF, CLAIM_BACKOFF_CAP),
            last_claim: None,
            last_steal: None,
            paused: false,
        }
    }

    /// Pauses or resumes the lane; returns whether that changed anything. A paused lane starts
    /// nothing; its claims (on wakes and probes) only tell when the worker resumes.
    pub(crate) fn set_paused(&mut self, paused: bool) -> bool {
        let changed = self.paused != paused;
        self.paused = paused;
        changed
    }

    /// True while the worker type is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Adds tasks to the queue.
    pub(crate) fn push(&mut self, tasks: impl IntoIterator<Item = Task>) {
        for task in tasks {
            self.seq += 1;
            self.queue.push(Queued {
                task,
                seq: self.seq,
            });
        }
    }

    /// Redis may hold new tasks of this type.
    pub(crate) fn wake(&mut self) {
        self.more = true;
        if self.claiming {
            self.woken = true;
        }
    }

    /// Redis may hold more tasks of this type than this node took.
    pub(crate) fn more(&self) -> bool {
        self.more
    }

    /// How many tasks to claim now: none while a claim is in flight, while Redis has nothing,
    /// or while the lane is at least half full; else enough to fill it.
    pub(crate) fn claim_size(&self) -> usize {
        let held = self.queue.len() + self.running.len();
        let full = self.capacity + self.queue_cap;
        if self.claiming || !self.more || held * 2 > full {
            0
        } else {
            full - held
        }
    }

    /// Starts a claim if one is due; returns how many tasks to ask for (0: none).
    pub(crate) fn begin_claim(&mut self, now: Instant) -> usize {
        let n = self.claim_size();
        if n > 0 {
            self.claiming = true;
            self.last_claim = Some(now);
        }
        n
    }

    /// A claim for `asked` tasks returned `tasks`. A short answer means the pending set was
    /// empty at that moment, unless a wake arrived since.
    pub(crate) fn claimed(&mut self, tasks: Vec<Task>, asked: usize) {
        self.claiming = false;
        self.backoff.reset();
        self.more = tasks.len() >= asked || std::mem::take(&mut self.woken);
        self.push(tasks);
    }

    /// A claim failed; returns how long to wait before the next, and whether this is the first
    /// failure of a streak (worth a warning).
    pub(crate) fn claim_failed(&mut self) -> (Duration, bool) {
        let first = self.backoff.failures() == 0;
        (self.backoff.next_delay(), first)
    }

    /// The wait after a failed claim is over: a claim may start again.
    pub(crate) fn claim_retry_due(&mut self) {
        self.claiming = false;
    }

    /// A lane that believes Redis empty looks again now and then, since a wake may have gone to
    /// another node; true when it is time (and the lane now claims as if woken).
    pub(crate) fn probe_due(&mut self, now: Instant) -> bool {
        if !self.more
            && self
                .last_claim
                .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY)
        {
            self.more = true;
            return true;
        }
        false
    }

    /// True when the lane may ask a peer for work now; records the request.
    pub(crate) fn steal_due(&mut self, now: Instant) -> bool {
        if self
            .last_steal
            .is_some_and(|t| now.duration_since(t) < STEAL_EVERY)
        {
            return false;
        }
        self.last_steal = Some(now);
        true
    }

    /// The next task to start, if a slot is free, with its cancellation token; it now counts as
    /// running since `now` (Unix ms).
    pub(crate) fn next_to_start(&mut self, now: u64) -> Option<(Task, CancellationToken)> {
        if self.paused || self.running.len() >= self.capacity {
            return None;
        }
        let task = self.queue.pop()?.task;
        let cancel = CancellationToken::new();
        self.running.insert(
            task.id.clone(),
            Running {
                task: task.clone(),
                started: now,
                cancel: cancel.clone(),
            },
        );
        Some((task, cancel))
    }

    /// A task left its slot; returns what was running.
    pub(crate) fn finished(&mut self, id: &str) -> Option<Running> {
        self.running.remove(id)
    }

    /// A task could not be handed to the pool: it waits again, at the front of its priority.
    pub(crate) fn unstart(&mut self, id: &str) {
        if let Some(run) = self.running.remove(id) {
            self.push([run.task]);
        }
    }

    /// Takes a queued (not started) task out of the queue.
    pub(crate) fn remove_queued(&mut self, id: &str) -> Option<Task> {
        let mut found = None;
        self.queue.retain(|q| {
            if found.is_none() && q.task.id == id {
                found = Some(q.task.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Asks a running task to stop; false when it does not run here.
    pub(crate) fn cancel_running(&self, id: &str) -> bool {
        match self.running.get(id) {
            Some(run) => {
                run.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Tasks running now.
    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Takes up to `n` queued tasks that may move to another node (not pinned), most urgent
    /// first.
    pub(crate) fn take_for_peer(&mut self, n: usize) -> Vec<Task> {
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        while taken.len() < n {
            let Some(q) = self.queue.pop() else {
                break;
            };
            if q.task.pinned {
                kept.push(q);
            } else {
                taken.push(q.task);
            }
        }
        self.queue.extend(kept);
        taken
    }

    /// Takes every queued task.
    pub(crate) fn take_queued(&mut self) -> Vec<Task> {
        self.queue.drain().map(|q| q.task).collect()
    }

    /// The ids and epochs of every task held (queued or running).
    pub(crate) fn held(&self) -> Vec<(String, u64)> {
        self.queue
            .iter()
            .map(|q| &q.task)
            .chain(self.running.values().map(|r| &r.task))
            .map(|t| (t.id.clone(), t.epoch))
            .collect()
    }

    /// Load, as placement sees it.
    pub(crate) fn load(&self) -> Load {
        Load {
            capacity: self.capacity as u32,
            running: self.running.len() as u32,
            queued: self.queue.len() as u32,
        }
    }

    /// Takes the running tasks (their pool died); they will be queued again.
    pub(crate) fn take_running(&mut self) -> Vec<Task> {
        self.running.drain().map(|(_, r)| r.task).collect()
    }

    /// Load figures.
    pub(crate) fn stats(&self, worker: &str) -> LaneStats {
        LaneStats {
            worker: worker.to_owned(),
            capacity: self.capacity,
            running: self.running.len(),
            queued: self.queue.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, priority: i32, created: u64) -> Task {
        Task {
            priority,
            created,
            ..Task::sample(id)
        }
    }

    fn drain_order(lane: &mut Lane) -> Vec<String> {
        let mut order = Vec::new();
        while let Some((t, _)) = lane.next_to_start(0) {
            order.push(t.id.clone());
            lane.finished(&t.id);
        }
        order
    }

    #[test]
    fn higher_priority_first_then_oldest() {
        let mut lane = Lane::new(1, 10);
        lane.push([
            task("low", 0, 1),
            task("high", 5, 3),
            task("old-high", 5, 2),
            task("mid", 1, 0),
        ]);
        assert_eq!(drain_order(&mut lane), ["old-high", "high", "mid", "low"]);
    }

    #[test]
    fn equal_priority_and_age_keep_arrival_order() {
        let mut lane = Lane::new(1, 10);
        lane.push([task("a", 0, 5), task("b", 0, 5), task("c", 0, 5)]);
        assert_eq!(drain_order(&mut lane), ["a", "b", "c"]);
    }

    #[test]
    fn capacity_bounds_running() {
        let mut lane = Lane::new(2, 10);
        lane.push((0..5).map(|i| task(&i.to_string(), 0, i)));
        assert!(lane.next_to_start(0).is_some());
        assert!(lane.next_to_start(0).is_some());
        assert!(lane.next_to_start(0).is_none());
        lane.finished("0");
        assert!(lane.next_to_start(0).is_some());
    }

    #[test]
    fn claims_only_with_room_and_hope() {
        let now = Instant::now();
        let mut lane = Lane::new(2, 8);
        assert_eq!(lane.claim_size(), 10);
        assert_eq!(lane.begin_claim(now), 10);
        assert_eq!(lane.claim_size(), 0, "one claim at a time");
        lane.claimed((0..6).map(|i| task(&i.to_string(), 0, i)).collect(), 10);
        assert_eq!(lane.claim_size(), 0, "more than half full");
        lane.next_to_start(0);
        lane.next_to_start(0);
        lane.finished("0");
        lane.finished("1");
        assert_eq!(lane.claim_size(), 0, "a short answer means redis is empty");
        lane.wake();
        assert_eq!(lane.claim_size(), 6);
    }

    #[test]
    fn claims_never_take_a_lane_past_its_bound() {
        // Claims, answers of every size, starts, ends and wakes in a seeded random order.
        let mut rng = fastrand::Rng::with_seed(7);
        for (capacity, queue_cap) in [(1, 0), (1, 1), (2, 8), (8, 3), (5, 20)] {
            let mut lane = Lane::new(capacity, queue_cap);
            let full = capacity + queue_cap;
            let (mut asked, mut running, mut next) = (None, Vec::new(), 0u64);
            for _ in 0..2_000 {
                let held = lane.held().len();
                match rng.u8(..5) {
                    0 => {
                        let n = lane.begin_claim(Instant::now());
                        match asked {
                            Some(_) => assert_eq!(n, 0, "one claim at a time"),
                            None if n > 0 => {
                                assert!(n <= full - held, "asked {n} with {held} of {full}");
                                asked = Some(n);
                            }
                            None => {}
                        }
                    }
                    1 => {
                        if let Some(n) = asked.take() {
                            let tasks = (0..rng.usize(..=n)).map(|_| {
                                next += 1;
                                task(&next.to_string(), 0, next)
                            });
                            lane.claimed(tasks.collect(), n);
                        }
                    }
                    2 => running.extend(lane.next_to_start(0).map(|(t, _)| t.id)),
                    3 if !running.is_empty() => {
                        let id = running.swap_remove(rng.usize(..running.len()));
                        lane.finished(&id);
                    }
                    _ => lane.wake(),
                }
                let held = lane.held().len();
                assert!(held <= full, "{held} held, bound {full}");
                assert!(lane.running_count() <= capacity);
            }
        }
    }

    #[test]
    fn a_wake_during_a_claim_is_not_forgotten() {
        let now = Instant::now();
        let mut lane = Lane::new(2, 8);
        lane.begin_claim(now);
        lane.wake();
        lane.claimed(Vec::new(), 10);
        assert!(
            lane.more(),
            "the task woken for may have arrived after the claim read the set"
        );
        assert_eq!(lane.claim_size(), 10);
        lane.begin_claim(now);
        lane.claimed(Vec::new(), 10);
        assert!(
            !lane.more(),
            "a short answer with no wake since means empty"
        );
    }

    #[test]
    fn failed_claims_back_off_and_a_success_resets() {
        let mut lane = Lane::new(1, 1);
        lane.begin_claim(Instant::now());
        assert_eq!(lane.claim_failed(), (Duration::from_millis(100), true));
        assert_eq!(lane.claim_failed(), (Duration::from_millis(200), false));
        for _ in 0..10 {
            lane.claim_failed();
        }
        assert_eq!(lane.claim_failed().0, CLAIM_BACKOFF_CAP);
        assert_eq!(
            lane.claim_size(),
            0,
            "still in flight until the retry is due"
        );
        lane.claim_retry_due();
        lane.begin_claim(Instant::now());
        lane.claimed(Vec::new(), 2);
        assert_eq!(lane.claim_failed(), (Duration::from_millis(100), true));
    }

    #[test]
    fn an_empty_lane_probes_now_and_then() {
        let t0 = Instant::now();
        let mut lane = Lane::new(1, 1);
        assert!(!lane.probe_due(t0), "a fresh lane already claims");
        lane.begin_claim(t0);
        lane.claimed(Vec::new(), 2);
        assert!(!lane.probe_due(t0 + Duration::from_millis(500)));
        assert!(lane.probe_due(t0 + PROBE_EVERY));
        assert_eq!(lane.claim_size(), 2);
    }

    #[test]
    fn steals_are_spaced() {
        let t0 = Instant::now();
        let mut lane = Lane::new(1, 1);
        assert!(lane.steal_due(t0));
        assert!(!lane.steal_due(t0 + STEAL_EVERY / 2));
        assert!(lane.steal_due(t0 + STEAL_EVERY));
    }

    #[test]
    fn a_queued_task_can_be_taken_out_and_a_running_one_cancelled() {
        let mut lane = Lane::new(1, 8);
        lane.push([task("a", 0, 1), task("b", 0, 2), task("c", 0, 3)]);
        assert_eq!(lane.remove_queued("b").map(|t| t.id), Some("b".into()));
        assert!(lane.remove_queued("b").is_none());
        let (first, token) = lane.next_to_start(0).unwrap();
        assert_eq!(first.id, "a");
        assert_eq!(lane.running_count(), 1);
        assert!(lane.cancel_running("a"));
        assert!(token.is_cancelled());
        assert!(!lane.cancel_running("c"), "c is queued, not running");
        assert_eq!(lane.stats("w").queued, 1);
    }

    #[test]
    fn a_task_the_pool_refused_waits_again() {
        let mut lane = Lane::new(1, 8);
        lane.push([task("a", 0, 1)]);
        lane.next_to_start(0);
        lane.unstart("a");
        assert_eq!((lane.running_count(), lane.stats("w").queued), (0, 1));
    }

    #[test]
    fn pinned_tasks_are_never_given_away() {
        let mut lane = Lane::new(1, 8);
        let mut pinned = task("pinned", 9, 1);
        pinned.pinned = true;
        lane.push([pinned, task("a", 5, 2), task("b", 0, 3)]);
        let given: Vec<String> = lane.take_for_peer(5).into_iter().map(|t| t.id).collect();
        assert_eq!(given, ["a", "b"]);
        assert_eq!(lane.stats("w").queued, 1);
        assert_eq!(lane.held(), vec![("pinned".to_string(), 1)]);
    }

    #[test]
    fn a_dead_pool_gives_back_its_running_tasks() {
        let mut lane = Lane::new(2, 8);
        lane.push([task("a", 0, 1), task("b", 0, 2)]);
        lane.next_to_start(0);
        lane.next_to_start(0);
        let back = lane.take_running();
        assert_eq!(back.len(), 2);
        assert_eq!(lane.stats("w").running, 0);
    }
}
