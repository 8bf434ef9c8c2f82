//! The guard in front of the cluster port: it bounds what a peer that has not logged in can
//! make this node hold.
//!
//! ractor_cluster reads frames (a big-endian `u64` length, then a protobuf message) of up to
//! [`MAX_FRAME`](crate::cluster::handle::MAX_FRAME) from anyone, before the cookie handshake,
//! and sets no deadline on that handshake: a few dozen idle connections announcing large frames
//! could make a node hold hundreds of MiB. So the membership binds the public cluster port
//! itself and runs [`serve`], and ractor_cluster's node server listens only on an ephemeral
//! loopback port of its own. For each connection the guard:
//!
//! - takes a place among the connections that have not logged in yet ([`Slot`]): at most
//!   [`MAX_PENDING`] in all and [`MAX_PENDING_PER_IP`] from one address; a connection over
//!   either limit is closed at once;
//! - does the TLS handshake, when TLS is configured, within the login deadline;
//! - hands the stream to the node server (`ConnectionOpenedExternal`), labelled with the peer's
//!   socket address, with its read half wrapped in a [`LoginReader`]: until the session has
//!   logged in, it fails the read on a frame over [`MAX_LOGIN_FRAME`], on more than
//!   [`MAX_LOGIN_BYTES`] in all, and once [`LOGIN_DEADLINE`] has passed since the connection
//!   was accepted. An error from the reader ends the ractor_cluster session, which closes the
//!   socket.
//!
//! The node server tells the membership when a session has authenticated (the cookie
//! challenge); the membership calls [`Gate::logged_in`] with the session's peer address, our
//! label, and from then on the reader passes everything through: the session's place is freed
//! and the full frame size applies. A connection that closes frees its place too.
//!
//! What the guard refuses or closes is counted and logged at most once every [`WARN_EVERY`] per
//! kind, with the count, so that a flood of connections does not flood the log.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

/// Most connections that have not logged in yet, from all addresses together.
pub(crate) const MAX_PENDING: usize = 64;
/// Most connections that have not logged in yet from one IP address.
pub(crate) const MAX_PENDING_PER_IP: usize = 16;
/// How long after it was accepted a connection has to log in (TLS handshake included).
pub(crate) const LOGIN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest frame accepted from a peer that has not logged in. The login's own frames (names,
/// challenges, and the first state a peer sends once it has passed the challenge) are a few
/// hundred bytes.
pub(crate) const MAX_LOGIN_FRAME: u64 = 16 << 10;
/// Most bytes read from a peer before it has logged in.
pub(crate) const MAX_LOGIN_BYTES: u64 = 64 << 10;
/// Refusals and closings of one kind are logged at most this often (with their count).
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections on the public cluster port until the task is aborted, and hands each one
/// it admits to `server`; `tls`, when set, is the handshake done first.
pub(crate) async fn serve(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
) {
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => admit(&gate, &server, tls.as_ref(), tcp, peer),
                Err(e) => {
                    // Out of file descriptors, most likely: give the closings time to free some.
                    gate.note(Kind::Accept, None, &e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = flush.tick() => gate.flush(),
        }
    }
}

/// Admits the connection `tcp` from `peer` or closes it; an admitted one is handed over to
/// `server` from a task of its own (after its TLS handshake, if any).
fn admit(
    gate: &Arc<Gate>,
    server: &ActorRef<NodeServerMessage>,
    tls: Option<&TlsAcceptor>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let deadline = Instant::now() + LOGIN_DEADLINE;
    let slot = match gate.admit(peer) {
        Ok(slot) => slot,
        Err(refusal) => {
            gate.note(Kind::Refused, Some(peer), &refusal.to_string());
            return; // dropping `tcp` closes it
        }
    };
    let _ = tcp.set_nodelay(true);
    let server = server.clone();
    let tls = tls.cloned();
    let gate = gate.clone();
    tokio::spawn(async move {
        let io = match tls {
            None => Io::Raw(tcp),
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Io::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    gate.note(Kind::Tls, Some(peer), &e.to_string());
                    return;
                }
                Err(_) => {
                    gate.note(Kind::Deadline, Some(peer), "during the TLS handshake");
                    return;
                }
            },
        };
        let stream = Accepted {
            label: peer.to_string(),
            io,
            slot,
            deadline,
        };
        if server
            .cast(NodeServerMessage::ConnectionOpenedExternal {
                stream: Box::new(stream),
                is_server: true,
            })
            .is_err()
        {
            tracing::debug!(%peer, "the node server is gone; connection closed");
        }
    });
}

/// The guard's shared state: the connections that have not logged in yet, and the tally of
/// what was refused or closed.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    table: Mutex<Table>,
    tally: Mutex<[Counter; Kind::ALL.len()]>,
}

/// The pending connections, by label (the peer's socket address).
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    by_label: HashMap<String, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    ip: IpAddr,
    login: Arc<Login>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// [`MAX_PENDING`] connections have not logged in yet.
    #[error("{MAX_PENDING} connections have not logged in yet")]
    Full,
    /// [`MAX_PENDING_PER_IP`] connections from this address have not logged in yet.
    #[error("{MAX_PENDING_PER_IP} connections from {0} have not logged in yet")]
    FullFrom(IpAddr),
    /// A connection with this socket address is already waiting (two local addresses).
    #[error("a connection from {0} is already waiting to log in")]
    Taken(String),
}

impl Gate {
    /// A new gate, shared by the accept loop and the membership's session events.
    pub(crate) fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection from `peer`, within the limits.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refusal> {
        let ip = peer.ip().to_canonical();
        let label = peer.to_string();
        let mut table = self.table();
        if table.by_label.len() >= MAX_PENDING {
            return Err(Refusal::Full);
        }
        let from_ip = table.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= MAX_PENDING_PER_IP {
            return Err(Refusal::FullFrom(ip));
        }
        if table.by_label.contains_key(&label) {
            return Err(Refusal::Taken(label));
        }
        table.next_id += 1;
        let id = table.next_id;
        let login = Arc::new(Login::default());
        table.by_label.insert(
            label.clone(),
            Entry {
                id,
                ip,
                login: login.clone(),
            },
        );
        table.per_ip.insert(ip, from_ip + 1);
        Ok(Slot {
            gate: self.clone(),
            label,
            id,
            login,
        })
    }

    /// The connection labelled `label` has logged in: its reader passes everything through from
    /// now on, and its place is free. Labels of connections the guard did not admit are ignored.
    pub(crate) fn logged_in(&self, label: &str) {
        let entry = {
            let mut table = self.table();
            let entry = table.by_label.remove(label);
            if let Some(entry) = &entry {
                table.forget(entry.ip);
            }
            entry
        };
        if let Some(entry) = entry {
            entry.login.logged_in.store(true, Ordering::SeqCst);
            entry.login.waker.wake();
        }
    }

    /// Frees the place of connection `id`, if it still holds one.
    fn release(&self, label: &str, id: u64) {
        let mut table = self.table();
        if table.by_label.get(label).is_some_and(|e| e.id == id)
            && let Some(entry) = table.by_label.remove(label)
        {
            table.forget(entry.ip);
        }
    }

    /// How many connections have not logged in yet.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.table().by_label.len()
    }

    /// Counts one event of `kind` (from `peer`, with `detail`), and logs it if no warning of its
    /// kind was logged in the last [`WARN_EVERY`].
    fn note(&self, kind: Kind, peer: Option<SocketAddr>, detail: &str) {
        let last = match peer {
            Some(peer) => format!("the last from {peer}: {detail}"),
            None => format!("the last: {detail}"),
        };
        let due = {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            tally[kind as usize].note(std::time::Instant::now(), last)
        };
        if let Some(report) = due {
            kind.warn(&report);
        }
    }

    /// Logs the counts that are due (the accept loop calls this every second).
    fn flush(&self) {
        let now = std::time::Instant::now();
        let due: Vec<(Kind, Report)> = {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            Kind::ALL
                .iter()
                .filter_map(|kind| tally[*kind as usize].due(now).map(|r| (*kind, r)))
                .collect()
        };
        for (kind, report) in due {
            kind.warn(&report);
        }
    }

    /// How many events of `kind` were counted in all.
    #[cfg(test)]
    fn counted(&self, kind: Kind) -> u64 {
        self.tally.lock().unwrap()[kind as usize].total
    }
}

impl Table {
    fn forget(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// One connection's place among those that have not logged in; freed when it is dropped (the
/// connection closed) or when the connection logs in.
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    label: String,
    id: u64,
    login: Arc<Login>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(&self.label, self.id);
    }
}

/// What the two halves of one connection and the gate share.
#[derive(Debug, Default)]
struct Login {
    /// The session passed the cookie challenge.
    logged_in: AtomicBool,
    /// The session dropped its write half: it is over.
    closed: AtomicBool,
    /// The reader waiting for either.
    waker: AtomicWaker,
}

/// The kinds of events the guard counts and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A connection over the limits, closed at once.
    Refused,
    /// A connection that did not log in within [`LOGIN_DEADLINE`].
    Deadline,
    /// A connection that sent more than a login before logging in.
    TooMuch,
    /// A failed TLS handshake.
    Tls,
    /// `accept` failed.
    Accept,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Refused,
        Kind::Deadline,
        Kind::TooMuch,
        Kind::Tls,
        Kind::Accept,
    ];

    fn warn(self, report: &Report) {
        let n = report.count;
        let what = match self {
            Kind::Refused => format!(
                "refused {n} connection(s): too many waiting to log in (at most {MAX_PENDING}, {MAX_PENDING_PER_IP} from one address)"
            ),
            Kind::Deadline => format!(
                "closed {n} connection(s) that did not log in within {}s",
                LOGIN_DEADLINE.as_secs()
            ),
            Kind::TooMuch => {
                format!("closed {n} connection(s) that sent more than a login before logging in")
            }
            Kind::Tls => format!("{n} TLS handshake(s) failed"),
            Kind::Accept => format!("cannot accept connections ({n} time(s))"),
        };
        tracing::warn!(
            count = n,
            "cluster port: {what}; {}; this warning comes at most every {}s, with the count",
            report.last,
            WARN_EVERY.as_secs()
        );
    }
}

/// The count of one kind since its last warning.
#[derive(Debug, Default)]
struct Counter {
    unreported: u64,
    last: String,
    warned_at: Option<std::time::Instant>,
    total: u64,
}

/// A warning that is due: how many events since the last one, and the last event.
#[derive(Debug, PartialEq)]
struct Report {
    count: u64,
    last: String,
}

impl Counter {
    /// Counts one event described by `last`; returns the warning to log now, if one is due.
    fn note(&mut self, now: std::time::Instant, last: String) -> Option<Report> {
        self.unreported += 1;
        self.total += 1;
        self.last = last;
        self.due(now)
    }

    /// The warning to log now: events were counted and none was logged in [`WARN_EVERY`].
    fn due(&mut self, now: std::time::Instant) -> Option<Report> {
        if self.unreported == 0
            || self
                .warned_at
                .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(Report {
            count: std::mem::take(&mut self.unreported),
            last: std::mem::take(&mut self.last),
        })
    }
}

/// An admitted connection, as the node server receives it.
struct Accepted {
    label: String,
    io: Io,
    slot: Slot,
    deadline: Instant,
}

enum Io {
    Raw(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClusterBidiStream for Accepted {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let Accepted {
            io, slot, deadline, ..
        } = *self;
        let login = slot.login.clone();
        match io {
            Io::Raw(tcp) => {
                let (read, write) = tcp.into_split();
                (
                    Box::new(LoginReader::new(read, slot, deadline)),
                    Box::new(SessionEnd::new(write, login)),
                )
            }
            Io::Tls(tls) => {
                let (read, write) = tokio::io::split(*tls);
                (
                    Box::new(LoginReader::new(read, slot, deadline)),
                    Box::new(SessionEnd::new(write, login)),
                )
            }
        }
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// Where the reader is in the stream of frames.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Reading a length: the bytes of it seen so far.
    Header { have: usize, bytes: [u8; 8] },
    /// Inside a frame: the bytes of it still to come.
    Body { left: u64 },
}

impl Frame {
    const START: Frame = Frame::Header {
        have: 0,
        bytes: [0; 8],
    };

    /// Follows the frames through `data`; the length of the first one over `cap`, if any.
    fn scan(&mut self, mut data: &[u8], cap: u64) -> Result<(), u64> {
        while !data.is_empty() {
            match self {
                Frame::Header { have, bytes } => {
                    let take = (8 - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == 8 {
                        let len = u64::from_be_bytes(*bytes);
                        if len > cap {
                            return Err(len);
                        }
                        *self = if len == 0 {
                            Frame::START
                        } else {
                            Frame::Body { left: len }
                        };
                    }
                }
                Frame::Body { left } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        *self = Frame::START;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The read half of a guarded connection. Until the session has logged in it follows the frame
/// headers, and fails the read (`InvalidData`) on a frame over [`MAX_LOGIN_FRAME`] or on more
/// than [`MAX_LOGIN_BYTES`] in all, and (`TimedOut`) once the login deadline has passed; it
/// ends (end of file) when the session dropped its write half. Once logged in, it passes
/// everything through. It holds the connection's [`Slot`].
pub(crate) struct LoginReader<R> {
    inner: R,
    slot: Slot,
    deadline: Pin<Box<Sleep>>,
    frame: Frame,
    read: u64,
    open: bool,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R: AsyncRead + Unpin> LoginReader<R> {
    /// Wraps `inner`, the read half of the connection that holds `slot`, which must log in
    /// before `deadline`.
    pub(crate) fn new(inner: R, slot: Slot, deadline: Instant) -> LoginReader<R> {
        LoginReader {
            inner,
            slot,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            frame: Frame::START,
            read: 0,
            open: false,
            failed: None,
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, why: String) -> Poll<io::Result<()>> {
        let event = if kind == io::ErrorKind::TimedOut {
            Kind::Deadline
        } else {
            Kind::TooMuch
        };
        let peer = self.slot.label.parse().ok();
        self.slot.gate.note(event, peer, &why);
        self.failed = Some((kind, why.clone()));
        Poll::Ready(Err(io::Error::new(kind, why)))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LoginReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.open {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if let Some((kind, why)) = &this.failed {
            return Poll::Ready(Err(io::Error::new(*kind, why.clone())));
        }
        let login = this.slot.login.clone();
        login.waker.register(cx.waker());
        if login.logged_in.load(Ordering::SeqCst) {
            this.open = true;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if login.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(())); // the session is over: end of file
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.fail(
                io::ErrorKind::TimedOut,
                format!(
                    "no login within {}s of connecting",
                    LOGIN_DEADLINE.as_secs()
                ),
            );
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let new = &buf.filled()[before..];
        this.read += new.len() as u64;
        if let Err(len) = this.frame.scan(new, MAX_LOGIN_FRAME) {
            return this.fail(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes before login, over the {MAX_LOGIN_FRAME} allowed until then"
                ),
            );
        }
        if this.read > MAX_LOGIN_BYTES {
            return this.fail(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_LOGIN_BYTES} bytes before login"),
            );
        }
        Poll::Ready(Ok(()))
    }
}

/// The write half of a guarded connection: tells the reader when the session drops it, so that
/// a reader still waiting for a login ends with the session.
pub(crate) struct SessionEnd<W> {
    inner: W,
    login: Arc<Login>,
}

impl<W> SessionEnd<W> {
    fn new(inner: W, login: Arc<Login>) -> SessionEnd<W> {
        SessionEnd { inner, login }
    }
}

impl<W> Drop for SessionEnd<W> {
    fn drop(&mut self) {
        self.login.closed.store(true, Ordering::SeqCst);
        self.login.waker.wake();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SessionEnd<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    /// A reader over one end of an in-memory pipe, for a connection from `peer`, and the other
    /// end (the peer's).
    fn guarded(
        gate: &Arc<Gate>,
        peer: SocketAddr,
    ) -> (
        LoginReader<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let slot = gate.admit(peer).unwrap();
        let reader = LoginReader::new(ours, slot, Instant::now() + LOGIN_DEADLINE);
        (reader, theirs)
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f = (len as u64).to_be_bytes().to_vec();
        f.resize(8 + len, 7);
        f
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_before_login_fails_the_read() {
        let gate = Gate::new();
        let (mut reader, mut peer) = guarded(&gate, addr([10, 0, 0, 1], 4000));
        // Small frames pass, split across reads however they come.
        peer.write_all(&frame(100)).await.unwrap();
        peer.write_all(&frame(MAX_LOGIN_FRAME as usize))
            .await
            .unwrap();
        let mut got = vec![0; 8 + 100 + 8 + MAX_LOGIN_FRAME as usize];
        reader.read_exact(&mut got).await.unwrap();
        // The header of an 8 MiB frame fails the read that completes it.
        peer.write_all(&(8u64 << 20).to_be_bytes()).await.unwrap();
        let err = reader.read_u64().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("a frame of 8388608 bytes before login"),
            "{err}"
        );
        assert_eq!(gate.counted(Kind::TooMuch), 1);
        // It stays failed, and its place is freed with it.
        assert!(reader.read_u8().await.is_err());
        assert_eq!(gate.pending(), 1);
        drop(reader);
        assert_eq!(gate.pending(), 0);
    }

    #[tokio::test]
    async fn more_than_the_login_budget_in_small_frames_fails_the_read() {
        let gate = Gate::new();
        let (mut reader, mut peer) = guarded(&gate, addr([10, 0, 0, 1], 4000));
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                if peer.write_all(&frame(10_000)).await.is_err() {
                    break;
                }
            }
            peer
        });
        let mut sink = vec![0; 4096];
        let mut total = 0;
        let err = loop {
            match reader.read(&mut sink).await {
                Ok(0) => panic!("end of file before the budget was spent"),
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("more than 65536 bytes"), "{err}");
        assert!(
            total as u64 <= MAX_LOGIN_BYTES,
            "{total} bytes were let through"
        );
        drop(reader);
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_login_deadline_fails_a_waiting_read() {
        let gate = Gate::new();
        let start = Instant::now();
        let (mut reader, mut peer) = guarded(&gate, addr([10, 0, 0, 1], 4000));
        // A trickle of bytes does not extend the deadline.
        peer.write_all(&500u64.to_be_bytes()).await.unwrap();
        let mut sink = [0u8; 64];
        assert_eq!(reader.read(&mut sink).await.unwrap(), 8);
        let err = loop {
            tokio::select! {
                read = reader.read(&mut sink) => match read {
                    Ok(n) => assert!(n > 0, "end of file instead of a timeout"),
                    Err(e) => break e,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    assert!(start.elapsed() < LOGIN_DEADLINE * 2, "no timeout");
                    peer.write_all(b"x").await.unwrap();
                }
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= LOGIN_DEADLINE && waited < LOGIN_DEADLINE + Duration::from_millis(10),
            "{waited:?}"
        );
        assert_eq!(gate.counted(Kind::Deadline), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_login_everything_passes_through() {
        let gate = Gate::new();
        let peer_addr = addr([10, 0, 0, 1], 4000);
        let (mut reader, mut peer) = guarded(&gate, peer_addr);
        peer.write_all(&frame(200)).await.unwrap();
        let mut got = vec![0; 208];
        reader.read_exact(&mut got).await.unwrap();
        gate.logged_in(&peer_addr.to_string());
        assert_eq!(
            gate.pending(),
            0,
            "a session that logged in frees its place"
        );
        // Past the deadline, frames of 1 MiB, more than the login budget in all.
        tokio::time::sleep(LOGIN_DEADLINE * 2).await;
        let big = frame(1 << 20);
        let writer = tokio::spawn(async move {
            peer.write_all(&big).await.unwrap();
            peer.write_all(&big).await.unwrap();
            peer
        });
        let mut got = vec![0; 2 * (8 + (1 << 20))];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..8], &(1u64 << 20).to_be_bytes());
        let _peer = writer.await.unwrap();
        assert_eq!(
            gate.counted(Kind::TooMuch) + gate.counted(Kind::Deadline),
            0
        );
    }

    #[tokio::test]
    async fn a_reader_waiting_for_a_login_ends_with_its_session() {
        let gate = Gate::new();
        let (ours, _theirs) = tokio::io::duplex(64);
        let slot = gate.admit(addr([10, 0, 0, 1], 4000)).unwrap();
        let login = slot.login.clone();
        let mut reader = LoginReader::new(ours, slot, Instant::now() + LOGIN_DEADLINE);
        let (_, sink) = tokio::io::duplex(64);
        let writer = SessionEnd::new(sink, login);
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            (reader.read(&mut buf).await.unwrap(), reader)
        });
        drop(writer);
        let (n, reader) = read.await.unwrap();
        assert_eq!(n, 0, "end of file once the session dropped its writer");
        drop(reader);
        assert_eq!(gate.pending(), 0);
    }

    #[test]
    fn pending_connections_are_limited_in_all_and_per_address() {
        let gate = Gate::new();
        let mut slots = Vec::new();
        for port in 0..MAX_PENDING_PER_IP as u16 {
            slots.push(gate.admit(addr([10, 0, 0, 1], 1000 + port)).unwrap());
        }
        let over = gate.admit(addr([10, 0, 0, 1], 2000)).unwrap_err();
        assert_eq!(over, Refusal::FullFrom(IpAddr::from([10, 0, 0, 1])));
        // An IPv4 peer seen on an IPv6 socket counts as the same address.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:2001".parse().unwrap();
        assert_eq!(
            gate.admit(mapped).unwrap_err(),
            Refusal::FullFrom(IpAddr::from([10, 0, 0, 1]))
        );
        let mut host = 2;
        while slots.len() < MAX_PENDING {
            slots.push(gate.admit(addr([10, 0, 0, host], 1000)).unwrap());
            host += 1;
        }
        assert_eq!(
            gate.admit(addr([10, 0, 1, 1], 1000)).unwrap_err(),
            Refusal::Full
        );
        // A closed connection frees its place; one that logs in too.
        slots.pop();
        let again = gate.admit(addr([10, 0, 1, 1], 1000)).unwrap();
        gate.logged_in("10.0.0.1:1000");
        assert_eq!(gate.pending(), MAX_PENDING - 1);
        assert!(gate.admit(addr([10, 0, 0, 1], 2000)).is_ok());
        // The same socket address twice (two local addresses) is refused, and the refusal
        // frees nothing.
        assert!(matches!(
            gate.admit(addr([10, 0, 1, 1], 1000)),
            Err(Refusal::Taken(_))
        ));
        drop(again);
        drop(slots);
        assert_eq!(gate.pending(), 0);
        assert!(gate.table().per_ip.is_empty());
    }

    #[test]
    fn warnings_of_a_kind_come_at_most_every_period_with_the_count() {
        let t0 = std::time::Instant::now();
        let mut counter = Counter::default();
        let first = counter.note(t0, "a".into()).unwrap();
        assert_eq!(first.count, 1);
        for i in 1..40 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(counter.note(at, format!("n{i}")), None);
        }
        assert_eq!(
            counter.due(t0 + WARN_EVERY - Duration::from_millis(1)),
            None
        );
        let second = counter.due(t0 + WARN_EVERY).unwrap();
        assert_eq!(
            second,
            Report {
                count: 39,
                last: "n39".into()
            }
        );
        // Nothing counted since: nothing to say, however long it has been.
        assert_eq!(counter.due(t0 + WARN_EVERY * 5), None);
        assert_eq!(counter.total, 40);
    }
}
