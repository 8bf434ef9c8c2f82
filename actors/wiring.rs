//! What ties the node's actors together without tying their files together: the live address
//! of an actor that may be restarted ([`Link`]), background tasks bound to an actor
//! ([`watch_task`]), the reasons a node stops on its own ([`StopReason`]), and the freshness of
//! its liveness lease ([`LeaseClock`]).
//!
//! Nothing here knows any actor: each actor receives, in its arguments, the links and handles
//! it uses, so who talks to whom is read from the `Arguments` structs.

use std::panic::AssertUnwindSafe;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{ActorId, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The current address of an actor that its supervisor may restart; readers always get the
/// live one. The supervisor sets it when it spawns the actor and clears it when the actor dies.
pub(crate) struct Link<M: ractor::Message>(RwLock<Option<ActorRef<M>>>);

impl<M: ractor::Message> Default for Link<M> {
    fn default() -> Self {
        Link(RwLock::new(None))
    }
}

impl<M: ractor::Message> Link<M> {
    /// The live actor, if any.
    pub(crate) fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets or clears the live actor.
    pub(crate) fn set(&self, actor: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    /// Sends a message to the live actor; false when there is none or it is gone.
    pub(crate) fn cast(&self, msg: M) -> bool {
        self.get().is_some_and(|a| a.cast(msg).is_ok())
    }
}

/// How a child ended, read from a supervision event: its id, whether it failed (rather than
/// stopped), and why (the failure, or the stop's reason). Other events are not ends.
pub(crate) fn child_end(event: SupervisionEvent) -> Option<(ActorId, bool, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell.get_id(), true, err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => Some((
            cell.get_id(),
            false,
            reason.unwrap_or_else(|| "stopped".into()),
        )),
        _ => None,
    }
}

/// Why a node stops on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Asked to (`bgnode stop`): a graceful shutdown, not an error.
    Requested(String),
    /// The supervisor gave up on a child.
    GaveUp(String),
    /// Another process took this node's id.
    LostIdentity(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Requested(why)
            | StopReason::GaveUp(why)
            | StopReason::LostIdentity(why) => f.write_str(why),
        }
    }
}

/// Tells the node to stop, and why; the node's handle receives it.
pub(crate) type Stopper = mpsc::UnboundedSender<StopReason>;

/// Runs `fut` as a task tied to `actor`: if the future ends or panics, the actor is sent
/// `died(reason)` (and should fail, so its supervisor restarts it). Aborting the returned handle
/// drops the future and sends nothing.
pub(crate) fn watch_task<M, F>(fut: F, actor: ActorRef<M>, died: fn(String) -> M) -> JoinHandle<()>
where
    M: ractor::Message,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let why = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(()) => "ended".to_owned(),
            Err(panic) => panic_text(&*panic),
        };
        let _ = actor.cast(died(why));
    })
}

/// What a caught panic said.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// When this node last renewed its liveness lease. The lease keeper writes it; the dispatcher
/// reads it before starting a task, since a node whose lease lapsed may have been failed over.
///
/// It measures on the monotonic clock, from the moment the renewal was sent (Redis started the
/// lease's time to live after that): a step of the machine's wall clock cannot make a lapsed
/// lease look fresh.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    base: Instant,
    /// µs after `base` at which the latest successful renewal was sent.
    renewed: AtomicU64,
    ttl: Duration,
}

impl LeaseClock {
    /// A clock for a lease of `ttl`, renewed now.
    pub(crate) fn new(ttl: Duration) -> LeaseClock {
        LeaseClock {
            base: Instant::now(),
            renewed: AtomicU64::new(0),
            ttl,
        }
    }

    /// True while the lease is surely held (renewed within its time to live).
    pub(crate) fn fresh(&self) -> bool {
        let now = self.base.elapsed().as_micros() as u64;
        now.saturating_sub(self.renewed.load(Ordering::SeqCst)) < self.ttl.as_micros() as u64
    }

    /// Notes a successful renewal whose request was sent at `sent`.
    pub(crate) fn renewed(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.base).as_micros() as u64;
        self.renewed.fetch_max(at, Ordering::SeqCst);
    }
}
