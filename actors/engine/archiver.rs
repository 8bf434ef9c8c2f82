//! The archiver: on a node with `[saver] archive`, it moves finished tasks from Redis's outbox
//! into PostgreSQL, and keeps the outbox within its bound.
//!
//! At start it marks the cluster as archiving (`{prefix}:archive`, renewed every minute with a
//! 10-minute expiry), so every script that ends a task also stages its row, in the same step.
//! Then, in a loop: take a batch (`Store::take_archive`: the head of this node's own outbox,
//! where its final writes stage their rows, topped up from the cluster's outbox), write it in
//! one statement (idempotent by id), acknowledge it (`Store::archived`, fenced by the node's
//! incarnation). While PostgreSQL is
//! away or slow the rows wait in Redis and tasks run on; the batch is retried with backoff and
//! the outage is logged once. Beside that loop, never waiting on it, the mark is renewed and
//! every second the outbox's length is read for the metrics and judged by `decide::outbox`: a
//! warning from 80% of the bound, and at the bound every node's claims are held until the
//! archive catches up, even while a call to PostgreSQL hangs.
//!
//! A row PostgreSQL refuses for its data (class 22 or 23) is found by writing the batch row by
//! row, logged with its id and left out, so one bad row never stalls the archive. Any other
//! refusal (a dropped table, a revoked grant) is retried like an outage: nothing is dropped.
//!
//! The writing runs on a thread of its own, at a lower CPU priority (nice +10 on Linux) with a
//! runtime of its own: archiving is bookkeeping and yields the CPU to the task path, so a busy
//! node runs its tasks first and the archive catches up in what is left. Under a load the
//! machine cannot carry both, the outbox grows until the bound holds the claims and the archive
//! gets the CPU back: the watch, which holds them, stays on the node's runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::archive::rows::{Row, latest_per_id};
use crate::archive::{Archive, ArchiveError};
use crate::config::{Settings, redact_url};
use crate::decide::backoff::Backoff;
use crate::decide::outbox::{Act, Outbox};
use crate::metrics::ArchiveMetrics;
use crate::store::{Incarnation, Store};

/// How long the cluster stays marked as archiving without a renewal.
const MARK: Duration = Duration::from_secs(600);
/// How often the mark is renewed.
const RENEW: Duration = Duration::from_secs(60);
/// How often the outbox's length is read.
const CHECK: Duration = Duration::from_secs(1);
/// The writing thread's nice value (on Linux): a lower CPU priority than the task path's.
const NICE: i32 = 10;
/// How long a hold of the claims lasts unless renewed (every `CHECK`).
const HOLD: Duration = Duration::from_secs(5);
/// The pause when the outbox is empty.
const IDLE: Duration = Duration::from_millis(200);
/// The pause after a batch that was not full: rows gather meanwhile, so under load every
/// statement carries a full batch (PostgreSQL's cost per statement is spread over more rows),
/// and a row waits at most this long more.
const GATHER: Duration = Duration::from_millis(50);

/// The archiver actor: owns the loop.
pub(crate) struct Archiver;

/// What the archiver needs.
pub(crate) struct ArchiverArgs {
    /// The store.
    pub store: Store,
    /// This node's id (its own outbox).
    pub node: String,
    /// This incarnation (acknowledgements are fenced by it).
    pub me: Incarnation,
    /// The settings (`[saver] archive*`, the key prefix).
    pub settings: Settings,
    /// Rows written, failures, the outbox's length.
    pub metrics: ArchiveMetrics,
}

/// The archiver's state.
pub(crate) struct ArchiverState {
    /// The watch, on the node's runtime.
    task: JoinHandle<()>,
    /// Dropped to stop the writing thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Messages to the archiver.
pub(crate) enum ArchiverMsg {
    /// The loop ended unexpectedly: fail, so the supervisor restarts the archiver.
    Died(String),
}

impl ractor::Message for ArchiverMsg {}

impl Actor for Archiver {
    type Msg = ArchiverMsg;
    type State = ArchiverState;
    type Arguments = ArchiverArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ArchiverMsg>,
        args: ArchiverArgs,
    ) -> Result<ArchiverState, ActorProcessingErr> {
        // Before any task of this node can end: the rows of what ends from now on are staged.
        args.store.archive_on(MARK).await?;
        let args = Arc::new(args);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        spawn_writer(args.clone(), stopped, myself.clone())?;
        let mut watch = Watch {
            outbox: Outbox::new(args.settings.saver.archive_outbox),
            renewed: Instant::now(),
        };
        // The watch runs beside the writing, not between its batches: a PostgreSQL that is slow
        // or does not answer at all (a connect or an insert that hangs) must hold up neither the
        // mark's renewal nor the claims' hold.
        let watching = async move { watch.run(&args).await };
        Ok(ArchiverState {
            task: crate::wiring::watch_task(watching, myself, ArchiverMsg::Died),
            stop: Some(stop),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ArchiverMsg>,
        state: &mut ArchiverState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        state.stop.take();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ArchiverMsg>,
        msg: ArchiverMsg,
        _state: &mut ArchiverState,
    ) -> Result<(), ActorProcessingErr> {
        let ArchiverMsg::Died(why) = msg;
        Err(format!("archiver loop ended: {why}").into())
    }
}

/// The outbox's watch: the mark's renewal and the outbox's length, every `CHECK`.
struct Watch {
    outbox: Outbox,
    renewed: Instant,
}

/// The writing loop's memory between batches.
struct Writer {
    /// The store on a connection of the writer's own (made on its runtime): a batch of 500
    /// rows is a large answer, and on the node's connection the task path's answers would
    /// queue behind it.
    store: Option<Store>,
    archive: Option<Archive>,
    backoff: Backoff,
    /// Since when writing has failed, and why it was logged.
    failing: Option<Instant>,
}

/// Starts the writing loop on a thread of its own at a lower priority; it ends when `stopped`
/// fires (or its sender is dropped), and tells the actor if the loop ends by itself.
fn spawn_writer(
    args: Arc<ArchiverArgs>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    actor: ActorRef<ArchiverMsg>,
) -> Result<(), ActorProcessingErr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("bgnode-archive".into())
        .spawn(move || {
            lower_priority();
            let mut writer = Writer {
                store: None,
                archive: None,
                backoff: fresh_backoff(),
                failing: None,
            };
            let ended = runtime.block_on(async {
                let writing = std::panic::AssertUnwindSafe(writer.run(&args));
                tokio::select! {
                    why = futures::FutureExt::catch_unwind(writing) => Some(match why {
                        Err(panic) => crate::wiring::panic_text(&*panic),
                    }),
                    _ = stopped => None,
                }
            });
            if let Some(why) = ended {
                let _ = actor.cast(ArchiverMsg::Died(why));
            }
        })?;
    Ok(())
}

/// Sets the calling thread's nice value to [`NICE`]: on Linux the nice value belongs to a
/// thread, and `setpriority` on the caller's own "process" sets the calling thread's. A node
/// started at a lower priority than that keeps it (raising one is refused without privilege).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::debug!("the archive's thread keeps its priority: {e}");
    }
}

fn fresh_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

impl Watch {
    async fn run(&mut self, args: &ArchiverArgs) {
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.duties(args).await;
        }
    }

    /// The mark's renewal when due, and the outbox's check.
    async fn duties(&mut self, args: &ArchiverArgs) {
        let store = &args.store;
        if self.renewed.elapsed() >= RENEW && store.archive_on(MARK).await.is_ok() {
            self.renewed = Instant::now();
        }
        let Ok(len) = store.outbox_len().await else {
            return;
        };
        let bound = args.settings.saver.archive_outbox;
        args.metrics.outbox(len, bound);
        match self.outbox.observe(len, Instant::now()) {
            Act::Nothing => {}
            Act::Warn => tracing::warn!(
                waiting = len,
                bound,
                "the archive's outbox is over 80% of saver.archive_outbox; at the bound no node claims new tasks until PostgreSQL catches up"
            ),
            Act::Hold { first } => {
                if first {
                    tracing::error!(
                        waiting = len,
                        bound,
                        "the archive's outbox is full: no node claims new tasks until PostgreSQL catches up (nothing is dropped; enqueues are still accepted)"
                    );
                }
                let _ = store.hold_claims(Some(HOLD)).await;
            }
            Act::Release => {
                tracing::info!(
                    waiting = len,
                    "the archive's outbox has room again: claims resume"
                );
                let _ = store.hold_claims(None).await;
            }
        }
    }
}

impl Writer {
    async fn run(&mut self, args: &ArchiverArgs) -> std::convert::Infallible {
        loop {
            let pause = self.step(args).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One batch: connect if need be, take, write, acknowledge. Returns how long to pause.
    async fn step(&mut self, args: &ArchiverArgs) -> Duration {
        if self.archive.as_ref().is_none_or(Archive::is_closed) {
            match open(&args.settings).await {
                Ok(archive) => self.archive = Some(archive),
                Err(e) => return self.failed(args, &e),
            }
        }
        if self.store.is_none() {
            match args.store.on_own_connection().await {
                Ok(store) => self.store = Some(store),
                Err(_) => return self.backoff.next_delay(),
            }
        }
        let (Some(archive), Some(store)) = (&self.archive, &self.store) else {
            return IDLE;
        };
        let taken = match store
            .take_archive(&args.node, args.settings.saver.archive_batch as usize)
            .await
        {
            Ok(taken) => taken,
            // Redis is away: the store's own counters and the saver say so.
            Err(_) => return self.backoff.next_delay(),
        };
        if taken.is_empty() {
            return IDLE;
        }
        match write(archive, &taken).await {
            Ok(n) => {
                // Not acknowledged (Redis away): the same rows come back, and writing them again
                // changes nothing.
                if store.archived(&args.me, taken.len()).await.is_err() {
                    return self.backoff.next_delay();
                }
                args.metrics.wrote(n);
                if let Some(since) = self.failing.take() {
                    tracing::info!(
                        "the archive is written again after {:.1}s",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.backoff = fresh_backoff();
                if taken.len() < args.settings.saver.archive_batch as usize {
                    GATHER
                } else {
                    Duration::ZERO
                }
            }
            Err(e) => {
                if matches!(e, ArchiveError::Db(_)) {
                    self.archive = None;
                }
                self.failed(args, &e)
            }
        }
    }

    /// Logs the first failure of a streak; returns the pause before the next try.
    fn failed(&mut self, args: &ArchiverArgs, e: &ArchiveError) -> Duration {
        args.metrics.failed();
        if self.failing.is_none() {
            self.failing = Some(Instant::now());
            tracing::warn!(
                archive = %redact_url(&args.settings.saver.archive),
                "cannot write the archive ({e}); finished tasks wait in Redis's outbox and tasks keep running; retrying"
            );
        }
        self.backoff.next_delay()
    }
}

/// Connects and brings the schema up to date.
async fn open(settings: &Settings) -> Result<Archive, ArchiveError> {
    let mut archive = Archive::connect(settings).await?;
    let applied = archive.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "the archive's schema was brought up to date");
    }
    Ok(archive)
}

/// Writes the rows of `entries`; returns how many rows were written.
async fn write(archive: &Archive, entries: &[String]) -> Result<usize, ArchiveError> {
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        match Row::read(entry) {
            Some(row) => rows.push(row),
            None => tracing::error!(
                entry = %crate::model::names::shorten(entry, 200),
                "an entry of the archive's outbox is not a finished task; it is left out"
            ),
        }
    }
    let rows = latest_per_id(rows);
    match archive.insert(&rows).await {
        Ok(_) => Ok(rows.len()),
        Err(ArchiveError::RowRefused(_)) => {
            let mut written = 0;
            for row in &rows {
                match archive.insert(std::slice::from_ref(row)).await {
                    Ok(_) => written += 1,
                    Err(ArchiveError::RowRefused(why)) => tracing::error!(
                        task = %row.id,
                        "the archive refused this task's row ({why}); it is left out"
                    ),
                    Err(e) => return Err(e),
                }
            }
            Ok(written)
        }
        Err(e) => Err(e),
    }
}
