//! The socket service: BackgroundService's plain-text protocol on `[socket] listen`, TCP and
//! UDP on one port (PROTOCOL.md, "Socket service").
//!
//! - `request.rs` is the protocol without I/O: framing, parsing, the answer lines.
//! - [`Socket`] is the actor that serves it, a child of the node's supervisor like the HTTP
//!   actor: it serves on sockets bound once at start (so a bind error fails the start with a
//!   clear message, and a restart of the actor takes up the same sockets), and fails when one
//!   of its servers ends, so the supervisor restarts it.
//!
//! Every request that stores a task goes through [`Client::store_each`], the one durable
//! enqueue of every door, and `worker:data` and `queue:get` wait with [`Client::wait`], as the
//! HTTP API's `?wait` does. The service adds only its framing, the worker-name cleaning, the
//! check that some live node offers the worker (`404:`), and its limits:
//!
//! - TCP: one request per connection, ended by a newline or the client's half-close, at most
//!   `[limits] message_bytes` (`413:`), complete within `[socket] idle_timeout` (`408:`); at
//!   most `[socket] connections` open (one more is answered `503:`). The answer is written,
//!   then the connection is closed.
//! - UDP: one request per datagram, `worker:data` or `queue:add:worker:data`, stored and never
//!   answered (at most once: a datagram lost on the way, or arriving while Redis is away, is
//!   gone). A refused datagram is logged and announced as a `rejected` event.

mod request;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{Client, ClientError};
use crate::config::Settings;
use crate::decide::runnable::{LiveNodes, unrunnable};
use crate::decide::times::format_duration;
use crate::engine::saver::SaverHandle;
use crate::metrics::Metrics;
use crate::model::envelope::Rejection;
use crate::model::events;
use crate::model::names::shorten;
use crate::model::task::{TaskSpec, TaskState};
use crate::store::{Store, WriteOp};
use crate::wiring::watch_task;
use request::{Framing, Refusal, Request, Status, frame, parse, result_text};

/// How long a list of the workers the live nodes offer is trusted to say that a worker is
/// offered. A worker it does not list is looked up again before `404:` is answered.
const OFFERS_FRESH: Duration = Duration::from_secs(1);
/// After its answer, how long a connection is read (and the bytes dropped) until the client
/// closes, so that unread bytes do not make the close a reset that destroys the answer.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 1 << 20;
/// Connections over `[socket] connections` that are told `503:` at once; beyond these, more
/// are closed without a word.
const REFUSING: usize = 64;
/// Largest UDP datagram read.
const DATAGRAM: usize = 65_536;

/// Binds the service's TCP listener and its UDP socket on the same port (at start, so a taken
/// or forbidden address fails the start). Port 0 takes a free TCP port and the same UDP port.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
    let tcp = std::net::TcpListener::bind(addr)?;
    let udp = std::net::UdpSocket::bind(tcp.local_addr()?)?;
    tcp.set_nonblocking(true)?;
    udp.set_nonblocking(true)?;
    Ok(Sockets { tcp, udp })
}

/// The sockets of the service, bound at start.
pub(crate) struct Sockets {
    /// The TCP listener.
    pub(crate) tcp: std::net::TcpListener,
    /// The UDP socket, on the same port.
    pub(crate) udp: std::net::UdpSocket,
}

/// The socket service actor.
pub(crate) struct Socket;

/// What the socket service needs.
pub(crate) struct SocketArgs {
    /// The sockets bound at start; each incarnation of the actor serves clones of them.
    pub(crate) sockets: Arc<Sockets>,
    /// The store: the durable enqueue (through a client), the live nodes, the clock.
    pub(crate) store: Store,
    /// Where `rejected` events of refused datagrams are written.
    pub(crate) saver: SaverHandle,
    /// `[socket]`, `[limits]` and the names the client uses.
    pub(crate) settings: Settings,
    /// This node's id.
    pub(crate) node: String,
    /// This node's metrics.
    pub(crate) metrics: Metrics,
}

/// The socket service's state: its two server tasks.
pub(crate) struct SocketState {
    tcp: JoinHandle<()>,
    udp: JoinHandle<()>,
}

/// Messages to the socket service actor.
pub(crate) enum SocketMsg {
    /// A server ended unexpectedly.
    ServerDied(String),
}

impl ractor::Message for SocketMsg {}

impl Actor for Socket {
    type Msg = SocketMsg;
    type State = SocketState;
    type Arguments = SocketArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SocketMsg>,
        args: SocketArgs,
    ) -> Result<SocketState, ActorProcessingErr> {
        let tcp = TcpListener::from_std(args.sockets.tcp.try_clone()?)?;
        let udp = UdpSocket::from_std(args.sockets.udp.try_clone()?)?;
        let addr = tcp.local_addr()?;
        let s = &args.settings;
        let service = Arc::new(Service {
            client: Client::with_store(args.store.clone(), s),
            store: args.store,
            saver: args.saver,
            node: args.node,
            metrics: args.metrics,
            message_bytes: s.limits.message_bytes as usize,
            idle_timeout: s.socket.idle_timeout,
            wait: s.socket.wait,
            connections: s.socket.connections as usize,
            offers: Mutex::new(None),
        });
        let tcp = watch_task(
            serve_tcp(tcp, service.clone()),
            myself.clone(),
            SocketMsg::ServerDied,
        );
        let udp = watch_task(serve_udp(udp, service), myself, SocketMsg::ServerDied);
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the socket service on {addr} has no authentication: anyone who reaches it can run any worker"
            );
        }
        tracing::info!("socket service on {addr} (TCP and UDP)");
        Ok(SocketState { tcp, udp })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SocketMsg>,
        state: &mut SocketState,
    ) -> Result<(), ActorProcessingErr> {
        // Aborting a server drops its connections' tasks with it.
        state.tcp.abort();
        state.udp.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SocketMsg>,
        msg: SocketMsg,
        _state: &mut SocketState,
    ) -> Result<(), ActorProcessingErr> {
        let SocketMsg::ServerDied(why) = msg;
        Err(format!("socket service ended: {why}").into())
    }
}

/// What every connection and datagram shares.
struct Service {
    /// The durable enqueue and the waits.
    client: Client,
    /// The live nodes and the clock.
    store: Store,
    /// Where `rejected` events go.
    saver: SaverHandle,
    /// This node's id, in events.
    node: String,
    /// Counts stored tasks.
    metrics: Metrics,
    /// `[limits] message_bytes`: the longest request.
    message_bytes: usize,
    /// `[socket] idle_timeout`.
    idle_timeout: Duration,
    /// `[socket] wait`.
    wait: Duration,
    /// `[socket] connections`.
    connections: usize,
    /// The live nodes as last read, and when.
    offers: Mutex<Option<(Instant, LiveNodes)>>,
}

impl Service {
    /// The answer to a TCP request: a result, `id:<id>`, a progress digit, or a refusal line.
    async fn answer(&self, request: Request) -> String {
        let answered = match request {
            Request::Call { worker, data } => match self.store_task(worker, data).await {
                Ok(id) => self.outcome(&id).await,
                Err(refusal) => Err(refusal),
            },
            Request::Add { worker, data } => self
                .store_task(worker, data)
                .await
                .map(|id| format!("id:{id}")),
            Request::Get { id } => match self.client.status(&id).await {
                Ok(Some(_)) => self.outcome(&id).await,
                Ok(None) => Err(no_task(&id)),
                Err(e) => Err(unavailable(&e)),
            },
            Request::Check { id } => match self.client.status(&id).await {
                Ok(Some(status)) => match TaskState::parse(&status.state) {
                    Some(state) => Ok(state.progress().to_string()),
                    None => Err(Refusal::new(
                        Status::Failed,
                        format!("task {id} is in an unknown state"),
                    )),
                },
                Ok(None) => Err(no_task(&id)),
                Err(e) => Err(unavailable(&e)),
            },
        };
        answered.unwrap_or_else(|refusal| refusal.line())
    }

    /// Stores a task of `worker` with `data` as its JSON string argument, through the one
    /// durable enqueue; its id.
    async fn store_task(&self, worker: String, data: String) -> Result<String, Refusal> {
        self.offered(&worker).await?;
        let spec = TaskSpec::new(worker, Value::String(data));
        let (specs, stored) = self
            .client
            .store_each(vec![spec])
            .await
            .map_err(|e| unavailable(&e))?;
        self.metrics
            .stored(specs.iter().map(|t| t.worker.as_str()), &stored);
        Ok(stored
            .into_iter()
            .next()
            .map(|(id, _)| id)
            .unwrap_or_default())
    }

    /// `Ok` when some live node offers `worker`; `404:` when none does.
    async fn offered(&self, worker: &str) -> Result<(), Refusal> {
        {
            let cached = self.offers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((read, live)) = cached.as_ref()
                && read.elapsed() < OFFERS_FRESH
                && unrunnable(worker, None, live).is_none()
            {
                return Ok(());
            }
        }
        let live = self
            .store
            .live_nodes()
            .await
            .map_err(|e| unavailable(&ClientError::Store(e)))?;
        let verdict = unrunnable(worker, None, &live);
        *self.offers.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), live));
        match verdict {
            None => Ok(()),
            Some(why) => Err(Refusal::new(
                Status::NotFound,
                format!("unknown worker: {why}"),
            )),
        }
    }

    /// Waits up to `[socket] wait` for task `id`; its result as text, or the refusal.
    async fn outcome(&self, id: &str) -> Result<String, Refusal> {
        match self.client.wait(id, self.wait).await {
            Ok(result) => Ok(result_text(&result)),
            Err(ClientError::Failed { state, error, .. }) => Err(Refusal::new(
                Status::Failed,
                format!("task {id} {state}: {error}"),
            )),
            Err(ClientError::Timeout { .. }) => Err(Refusal::new(
                Status::Timeout,
                format!(
                    "task {id} has not finished within {}; it goes on (ask again with queue:get:id:{id})",
                    format_duration(self.wait)
                ),
            )),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Stores the task of a datagram; a refused one is logged and announced.
    async fn datagram(&self, bytes: &[u8], from: SocketAddr) {
        let stored = match frame(bytes, true, self.message_bytes) {
            Framing::Complete(n) => match parse(&bytes[..n]) {
                Ok(Request::Call { worker, data } | Request::Add { worker, data }) => {
                    self.store_task(worker, data).await.map(|_| ())
                }
                Ok(Request::Get { .. } | Request::Check { .. }) => Err(Refusal::new(
                    Status::BadRequest,
                    "a datagram is never answered: ask queue:get and queue:check over TCP",
                )),
                Err(refusal) => Err(refusal),
            },
            Framing::TooLarge | Framing::More => Err(Refusal::new(
                Status::TooLarge,
                format!("the datagram is over the {}-byte limit", self.message_bytes),
            )),
        };
        if let Err(refusal) = stored {
            let excerpt = shorten(&String::from_utf8_lossy(bytes), 60);
            tracing::warn!(
                %from,
                "rejected a socket datagram: {} (datagram: {excerpt})",
                refusal.line()
            );
            let rejection = Rejection {
                reason: format!("socket datagram from {from}: {}", refusal.line()),
                id: None,
                worker: None,
                excerpt,
            };
            self.saver.write(WriteOp::Event {
                event: events::rejected(&rejection, &self.node, self.store.clock().now_ms()),
            });
        }
    }
}

/// The refusal for an id no task has.
fn no_task(id: &str) -> Refusal {
    Refusal::new(
        Status::NotFound,
        format!("no task {id} (never enqueued, deleted, or expired)"),
    )
}

/// The refusal when the store fails; the details are logged here, once.
fn unavailable(e: &ClientError) -> Refusal {
    if let ClientError::Invalid(spec) = e {
        return Refusal::new(Status::BadRequest, spec.to_string());
    }
    tracing::warn!("socket service: {e}");
    Refusal::new(
        Status::Unavailable,
        "the cluster's store cannot be reached now; try again",
    )
}

/// Accepts connections for ever, each served in its own task (dropped with this future).
async fn serve_tcp(listener: TcpListener, service: Arc<Service>) {
    let slots = Arc::new(Semaphore::new(service.connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // moment rather than spin, and go on.
                tracing::warn!("socket service: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                connections.spawn(connection(stream, service.clone(), slot));
            }
            Err(_) => {
                if let Ok(turn) = refusing.clone().try_acquire_owned() {
                    let line = Refusal::new(
                        Status::Unavailable,
                        format!(
                            "too many connections (socket.connections = {}); try again",
                            service.connections
                        ),
                    )
                    .line();
                    connections.spawn(async move {
                        close(stream, &line, Duration::from_secs(1)).await;
                        drop(turn);
                    });
                }
            }
        }
    }
}

/// Serves one connection: reads its request, answers, closes.
async fn connection(mut stream: TcpStream, service: Arc<Service>, slot: OwnedSemaphorePermit) {
    let answer = match read_request(&mut stream, &service).await {
        Some(Ok(bytes)) => match parse(&bytes) {
            Ok(request) => service.answer(request).await,
            Err(refusal) => refusal.line(),
        },
        Some(Err(refusal)) => refusal.line(),
        None => return,
    };
    close(stream, &answer, service.idle_timeout).await;
    drop(slot);
}

/// Reads one request: its bytes, a refusal (too large, too slow), or `None` when the
/// connection broke.
async fn read_request(
    stream: &mut TcpStream,
    service: &Service,
) -> Option<Result<Vec<u8>, Refusal>> {
    let limit = service.message_bytes;
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            buf.extend_from_slice(&chunk[..n]);
            match frame(&buf, n == 0, limit) {
                Framing::Complete(end) => {
                    buf.truncate(end);
                    return Some(Ok(buf));
                }
                Framing::TooLarge => {
                    return Some(Err(Refusal::new(
                        Status::TooLarge,
                        format!("the request is over the {limit}-byte limit"),
                    )));
                }
                Framing::More => {}
            }
        }
    };
    match tokio::time::timeout(service.idle_timeout, read).await {
        Ok(read) => read,
        Err(_) => Some(Err(Refusal::new(
            Status::Timeout,
            format!(
                "no complete request within {} (end it with a newline, or close the sending side)",
                format_duration(service.idle_timeout)
            ),
        ))),
    }
}

/// Writes `answer` (within `timeout`), closes the sending side, and reads what the client still
/// sends until it closes (at most [`LINGER`]), so that the answer is not lost to a reset.
async fn close(mut stream: TcpStream, answer: &str, timeout: Duration) {
    let written = tokio::time::timeout(timeout, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = vec![0u8; 16 * 1024];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// Receives datagrams for ever; each is stored in its own task, at most `[socket]
/// connections` at once (more are dropped: at most once).
async fn serve_udp(socket: UdpSocket, service: Arc<Service>) {
    let mut buf = vec![0u8; DATAGRAM];
    let mut pending = JoinSet::new();
    loop {
        while pending.try_join_next().is_some() {}
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!("socket service: cannot receive a datagram: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if pending.len() >= service.connections {
            tracing::warn!(%from, "socket service: too many datagrams in flight; one dropped");
            continue;
        }
        let bytes = buf[..n].to_vec();
        let service = service.clone();
        pending.spawn(async move { service.datagram(&bytes, from).await });
    }
}
