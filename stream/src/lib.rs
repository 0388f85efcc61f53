//! The stream service: the method of US 7,299,290 claim 1.
//!
//! A coordinator (its own thread) accepts OPEN requests, admits them against each
//! controller's send budget, plans the content's blocks over the controllers and sends the
//! first [`DataRequest`]s and the first [`Sync`]. Each controller (a Baton controller thread)
//! reads the blocks it is asked for from the shared backplane into pooled buffers and passes
//! the `DataRequest` for the next block on to that block's controller, staying at most the
//! read-ahead window ahead of the baton; when the `Sync` (the baton) reaches it, it sends its
//! block straight to the client (a framed block on its own data channel, or the bytes on the
//! client's HTTP socket, which travels with the baton), then passes the `Sync` on. Blocks
//! therefore reach the client in order while every controller reads at its own rate.

pub mod client;
mod coordinator;
mod http;
pub mod http_head;
pub mod proto;
mod settings;
pub mod store;
mod watchdog;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::info;

use backplane::Backplane;
use controller::Controllers;
pub use proto::Plan;
pub use settings::Settings;

/// Why the stream service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A listener or the coordinator thread could not be started.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The configured volume does not exist.
    #[error("volume `{0}` missing")]
    NoVolume(String),
    /// A controller thread could not start its stream worker.
    #[error("controller {0} has stopped")]
    Controller(usize),
    /// The content store could not be opened.
    #[error("content store: {0}")]
    Store(String),
    /// The coordinator thread ended before it was ready.
    #[error("the coordinator thread died")]
    Coordinator,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StreamError {
    let what = what.into();
    move |source| StreamError::Io { what, source }
}

/// Counters of one controller's stream worker.
#[derive(Debug, Default)]
pub struct ControllerStreamMetrics {
    /// Blocks sent to clients.
    pub blocks_sent: AtomicU64,
    /// Payload bytes sent to clients.
    pub bytes: AtomicU64,
    /// `DataRequest` messages handled.
    pub data_requests: AtomicU64,
    /// `Sync` messages (batons) handled.
    pub syncs: AtomicU64,
    /// The worker is running (set when it starts, cleared when it stops).
    pub worker_up: AtomicBool,
}

/// Why a stream session was refused: the label of `stream_sessions_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Every live controller is at its send budget (or none is live).
    Capacity = 0,
    /// No such content.
    NotFound,
    /// The range lies outside the content.
    BadRange,
    /// A malformed name or request.
    BadRequest,
    /// An internal error (store, randomness).
    Internal,
}

impl RefusalReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 5] = [
        Self::Capacity,
        Self::NotFound,
        Self::BadRange,
        Self::BadRequest,
        Self::Internal,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::NotFound => "not_found",
            Self::BadRange => "bad_range",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }

    /// The reason behind a refusal's HTTP-like code.
    pub fn from_code(code: u16) -> Self {
        match code {
            503 => Self::Capacity,
            404 => Self::NotFound,
            416 => Self::BadRange,
            400..=499 => Self::BadRequest,
            _ => Self::Internal,
        }
    }
}

/// Lock-free counters of the stream service.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Sessions running now.
    pub sessions_active: AtomicI64,
    /// Sessions opened.
    pub sessions_opened: AtomicU64,
    /// Sessions refused, by [`RefusalReason`].
    pub sessions_refused: [AtomicU64; RefusalReason::ALL.len()],
    /// Sessions that ended before delivering everything.
    pub sessions_failed: AtomicU64,
    /// Sessions that delivered everything.
    pub sessions_completed: AtomicU64,
    /// Blocks sent after their pacing deadline plus one block time.
    pub deadline_misses: AtomicU64,
    /// Batons that found their block not read yet (or no pooled buffer free).
    pub send_stalls: AtomicU64,
    /// Re-plans after a controller failed or stalled.
    pub replans: AtomicU64,
    /// Sessions failed by a device read error.
    pub read_errors: AtomicU64,
    /// Sessions whose client took no bytes for the send timeout.
    pub send_timeouts: AtomicU64,
    /// Sessions whose data channels did not attach within the handshake timeout.
    pub attach_timeouts: AtomicU64,
    /// Sessions whose client went away (closed a channel or the control connection).
    pub clients_gone: AtomicU64,
    /// Bytes of content stored.
    pub store_used: AtomicU64,
    /// Capacity of the content store's data area.
    pub store_capacity: AtomicU64,
    /// Per controller.
    pub controllers: Vec<ControllerStreamMetrics>,
}

/// How a session's blocks reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Framed blocks on one data channel per controller.
    Framed,
    /// Raw bytes on the client's HTTP socket, handed from controller to controller.
    Http,
}

/// Marker for "no parked DataRequest".
const NONE: u64 = u64::MAX;

/// Where a session is in its life; the same steps for every face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Admitted and planned; data channels not attached yet.
    Opened = 0,
    /// Every data channel is attached (HTTP: the head is written).
    Attached = 1,
    /// The baton is moving.
    Streaming = 2,
    /// Every block was delivered.
    Finished = 3,
    /// Ended early (see [`Failure`]).
    Failed = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Opened,
            1 => Self::Attached,
            2 => Self::Streaming,
            3 => Self::Finished,
            _ => Self::Failed,
        }
    }
}

/// Why a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// The client closed a data channel, its socket or the control connection.
    #[error("the client went away")]
    ClientGone,
    /// The client took no bytes of a block for the send timeout.
    #[error("the client stopped reading (send timeout)")]
    SendTimeout,
    /// The data channels did not attach within the handshake timeout.
    #[error("the data channels did not attach in time")]
    AttachTimeout,
    /// A controller could not read a block from the backplane.
    #[error("device read error at block {block}")]
    ReadError {
        /// Session block.
        block: u64,
    },
    /// No live controller is left to re-plan onto.
    #[error("no live controller left")]
    NoController,
    /// The appliance is shutting down.
    #[error("the service is shutting down")]
    Shutdown,
}

impl Failure {
    /// The HTTP-like code the client sees.
    pub fn code(self) -> u16 {
        match self {
            Self::ClientGone => 499,
            Self::SendTimeout | Self::AttachTimeout => 408,
            Self::ReadError { .. } => 500,
            Self::NoController | Self::Shutdown => 503,
        }
    }
}

/// A session, shared by the coordinator and the controllers (read-only but for atomics).
#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub secret: [u8; 16],
    pub delivery: Delivery,
    /// Volume offset of the item's first data block.
    pub base: u64,
    /// First item byte sent.
    pub start: u64,
    /// Bytes sent in all.
    pub length: u64,
    pub block_size: u64,
    /// First item block the session touches.
    pub first_block: u64,
    /// Session blocks.
    pub blocks: u64,
    pub rate: Option<u64>,
    pub window: u64,
    pub created: Instant,
    /// Microseconds from `created` to the last block delivered (0: none yet).
    pub progress_us: AtomicU64,
    /// Pacing origin (set when the first block is sent).
    pub t0: Mutex<Option<Instant>>,
    pub epoch: AtomicU32,
    /// Blocks delivered so far (only ever grows).
    pub sent: AtomicU64,
    /// A DataRequest held back by the window.
    pub parked: AtomicU64,
    pub attached: AtomicUsize,
    /// A [`Phase`].
    pub phase: AtomicU8,
    /// A controller is writing a block to the client now: a stall is the client's (bounded
    /// by the send timeout), not the controller's, so the watchdog does not re-plan.
    pub sending: AtomicBool,
    /// The HTTP client's socket while no baton carries it (a baton dropped on the way hands
    /// it back here, and the watchdog hands it on with the next plan).
    pub home: Mutex<Option<std::net::TcpStream>>,
    /// The coordinator's event channel (a dropped baton reports its socket's return).
    pub events: mpsc::UnboundedSender<Event>,
    /// The HTTP connection's place under the listener's limits, freed with the session.
    pub slot: Mutex<Option<listener::Slot>>,
    pub name: String,
    pub controllers: Mutex<Vec<usize>>,
    /// Keeps the item's blocks allocated until the last reference to the session (a
    /// controller's message, a read in flight) is gone, even if the item is removed or
    /// replaced meanwhile.
    pub _extent: store::Hold,
}

impl Session {
    /// Item bytes of session block `k`: (volume offset, length, offset of the wanted bytes
    /// within the block read).
    pub fn block_range(&self, k: u64) -> (u64, usize, usize) {
        let item_block = self.first_block + k;
        let block_start = item_block * self.block_size;
        let from = self.start.max(block_start);
        let to = (self.start + self.length).min(block_start + self.block_size);
        let read_len = usize::try_from(to - block_start).unwrap_or(0);
        (
            self.base + block_start,
            read_len,
            usize::try_from(from - block_start).unwrap_or(0),
        )
    }

    /// Whether a message of `plan` may still act on the session: its plan is the latest
    /// and the session has not ended.
    pub fn is_current(&self, plan: &Plan) -> bool {
        self.epoch.load(Ordering::Acquire) == plan.epoch && self.phase() <= Phase::Streaming
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Records that a block was delivered now.
    pub fn progressed(&self) {
        let us = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.progress_us.fetch_max(us.max(1), Ordering::Relaxed);
    }

    /// Time since the last block was delivered (since creation if none was).
    pub fn idle(&self) -> std::time::Duration {
        let last = std::time::Duration::from_micros(self.progress_us.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }

    /// Moves to `to` unless the session already ended; false if it had.
    pub fn advance(&self, to: Phase) -> bool {
        self.phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p <= Phase::Streaming as u8).then_some(to as u8)
            })
            .is_ok()
    }
}

/// Read block `block` into a pooled buffer and pass the request for the next block on.
#[derive(Debug)]
pub struct DataRequest {
    pub(crate) session: Arc<Session>,
    /// Session block.
    pub block: u64,
    /// The plan it was issued under.
    pub plan: Arc<Plan>,
}

/// The baton: send block `block` to the client, then pass it on.
#[derive(Debug)]
pub struct Sync {
    pub(crate) session: Arc<Session>,
    /// Session block.
    pub block: u64,
    /// The plan it was issued under.
    pub plan: Arc<Plan>,
    /// The client's socket (HTTP delivery), travelling with the baton.
    pub socket: Option<std::net::TcpStream>,
}

impl Drop for Sync {
    /// A baton dropped on the way (a stopped controller's mailbox, a stale plan, a dead
    /// controller's address) gives the client's socket back to the session, so the
    /// watchdog can hand it to the next plan instead of cutting the body off.
    fn drop(&mut self) {
        if let Some(sock) = self.socket.take() {
            *self
                .session
                .home
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sock);
            let _ = self.session.events.send(Event::BatonHome(self.session.id));
        }
    }
}

/// What crosses the channels between the coordinator and the controllers.
#[derive(Debug)]
pub enum StreamMsg {
    /// Read a block.
    DataRequest(DataRequest),
    /// Send a block (the baton).
    Sync(Sync),
    /// A session ended: drop its buffers and data channel.
    End(u64),
    /// Stop this controller's stream worker (failure injection, shutdown).
    Stop,
}

/// Events from the controllers to the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// Every planned data channel of a session is attached.
    Attached(u64),
    /// A session sent its last block.
    Finished(u64),
    /// A session cannot go on.
    Failed(u64, Failure),
    /// An HTTP session's socket is back in its `home` (its baton was dropped).
    BatonHome(u64),
}

impl Event {
    /// The session it concerns.
    pub fn session(&self) -> u64 {
        match self {
            Self::Attached(id) | Self::Finished(id) | Self::Failed(id, _) | Self::BatonHome(id) => {
                *id
            }
        }
    }
}

/// The session table at a glance (see [`StreamService::session_summary`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionSummary {
    /// Admitted, data channels not attached yet.
    pub opened: u64,
    /// Attached, baton not started.
    pub attached: u64,
    /// The baton is moving.
    pub streaming: u64,
    /// Longest time a live session has gone without delivering a block.
    pub max_idle: std::time::Duration,
}

/// State shared by the coordinator and the workers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: Settings,
    pub metrics: Arc<StreamMetrics>,
    pub sessions: Mutex<std::collections::HashMap<u64, Arc<Session>>>,
    pub mailboxes: Vec<mpsc::UnboundedSender<StreamMsg>>,
    pub live: Vec<AtomicBool>,
    pub load: Vec<AtomicU32>,
    pub events: mpsc::UnboundedSender<Event>,
    pub data_ports: Vec<u16>,
    /// The process's descriptor budget, shared by every listener.
    pub budget: listener::Budget,
}

impl Shared {
    pub fn send(&self, controller: usize, msg: StreamMsg) -> bool {
        self.live
            .get(controller)
            .is_some_and(|l| l.load(Ordering::Acquire))
            && self.mailboxes[controller].send(msg).is_ok()
    }

    pub fn session(&self, id: u64) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// The running stream service.
#[derive(Debug)]
pub struct StreamService {
    shared: Arc<Shared>,
    control: SocketAddr,
    http: Option<SocketAddr>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl StreamService {
    /// Opens the content store, binds the ports and starts the coordinator and one worker
    /// per controller. Every listener admits connections under `cfg.limits` and the
    /// process's descriptor `budget`.
    pub fn start(
        cfg: &Settings,
        backplane: &Backplane,
        controllers: &Controllers,
        shutdown: &watch::Sender<bool>,
        budget: &listener::Budget,
    ) -> Result<Self, StreamError> {
        let volume = backplane
            .volume(&cfg.volume)
            .cloned()
            .ok_or_else(|| StreamError::NoVolume(cfg.volume.clone()))?;
        let n = controllers.len();
        let mut listeners = Vec::with_capacity(n);
        for i in 0..n {
            let port = if cfg.data_port_base == 0 {
                0
            } else {
                cfg.data_port_base + u16::try_from(i).unwrap_or(u16::MAX)
            };
            let addr = SocketAddr::new(cfg.address, port);
            listeners.push(bind(addr).map_err(io_err(format!("stream data port {addr}")))?);
        }
        let data_ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err("stream data port"))?;
        let control_addr = SocketAddr::new(cfg.address, cfg.control_port);
        let control =
            bind(control_addr).map_err(io_err(format!("stream control port {control_addr}")))?;
        let http = match cfg.http_port {
            Some(p) => {
                let a = SocketAddr::new(cfg.address, p);
                Some(bind(a).map_err(io_err(format!("stream HTTP port {a}")))?)
            }
            None => None,
        };
        let control_addr = control
            .local_addr()
            .map_err(io_err("stream control port"))?;
        let http_addr = http
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()
            .map_err(io_err("stream HTTP port"))?;
        let metrics = Arc::new(StreamMetrics {
            controllers: (0..n).map(|_| ControllerStreamMetrics::default()).collect(),
            ..StreamMetrics::default()
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut mailboxes = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            mailboxes.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            metrics,
            sessions: Mutex::new(std::collections::HashMap::new()),
            mailboxes,
            live: (0..n).map(|_| AtomicBool::new(true)).collect(),
            load: (0..n).map(|_| AtomicU32::new(0)).collect(),
            events: events_tx,
            data_ports,
            budget: budget.clone(),
        });
        for ((h, rx), listener) in controllers.handles().iter().zip(receivers).zip(listeners) {
            let shared = Arc::clone(&shared);
            let volume = Arc::clone(&volume);
            let index = h.index();
            let shutdown = shutdown.subscribe();
            h.run(move || worker::start(index, shared, volume, rx, listener, shutdown))
                .map_err(|e| StreamError::Controller(e.0))?;
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = coordinator::spawn(
            Arc::clone(&shared),
            Arc::clone(&volume),
            control,
            http,
            events_rx,
            shutdown.subscribe(),
            ready_tx,
        )
        .map_err(io_err("stream coordinator thread"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamError::Store(e)),
            Err(_) => return Err(StreamError::Coordinator),
        }
        info!(control = %control_addr, http = ?http_addr, data_ports = ?shared.data_ports, "stream service");
        Ok(Self {
            shared,
            control: control_addr,
            http: http_addr,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<StreamMetrics> {
        &self.shared.metrics
    }

    /// Control port address.
    pub fn control(&self) -> SocketAddr {
        self.control
    }

    /// HTTP face address.
    pub fn http(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Data port of each controller.
    pub fn data_ports(&self) -> &[u16] {
        &self.shared.data_ports
    }

    /// Active sessions: `(id, content, controllers, sent blocks, blocks, age)`.
    pub fn sessions(&self) -> Vec<(u64, String, Vec<usize>, u64, u64, std::time::Duration)> {
        let s = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<_> = s
            .values()
            .map(|x| {
                let c = x
                    .controllers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                (
                    x.id,
                    x.name.clone(),
                    c,
                    x.sent.load(Ordering::Relaxed),
                    x.blocks,
                    x.created.elapsed(),
                )
            })
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// Whether each controller's stream worker runs and takes new sessions.
    pub fn workers_up(&self) -> Vec<bool> {
        self.shared
            .metrics
            .controllers
            .iter()
            .zip(&self.shared.live)
            .map(|(m, live)| m.worker_up.load(Ordering::Acquire) && live.load(Ordering::Acquire))
            .collect()
    }

    /// Sessions in the session table by phase (opened, attached, streaming) and the longest
    /// time any of them has gone without delivering a block.
    pub fn session_summary(&self) -> SessionSummary {
        let s = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = SessionSummary::default();
        for x in s.values() {
            match x.phase() {
                Phase::Opened => out.opened += 1,
                Phase::Attached => out.attached += 1,
                Phase::Streaming => out.streaming += 1,
                // Ending: on its way out of the table.
                Phase::Finished | Phase::Failed => continue,
            }
            out.max_idle = out.max_idle.max(x.idle());
        }
        out
    }

    /// Stops controller `index`'s stream worker (its sessions are re-planned).
    pub fn stop_controller(&self, index: usize) -> bool {
        let Some(live) = self.shared.live.get(index) else {
            return false;
        };
        live.store(false, Ordering::Release);
        // The worker may already be gone.
        let _ = self.shared.mailboxes[index].send(StreamMsg::Stop);
        true
    }

    /// Waits for the coordinator thread (after the shutdown signal).
    pub fn join(&self) {
        let t = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            // A panicked coordinator has nothing left to clean up.
            let _ = t.join();
        }
    }
}

/// Writes all of `buf`, failing with [`Failure::SendTimeout`] when the peer takes no byte
/// for `timeout` (a slow reader that keeps taking bytes is not dropped) and with
/// [`Failure::ClientGone`] when the connection breaks.
pub(crate) async fn write_within(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut buf: &[u8],
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    while !buf.is_empty() {
        match tokio::time::timeout(timeout, w.write(buf)).await {
            Err(_) => return Err(Failure::SendTimeout),
            Ok(Err(_) | Ok(0)) => return Err(Failure::ClientGone),
            Ok(Ok(n)) => buf = &buf[n..],
        }
    }
    Ok(())
}

/// [`write_within`] for a frame header and its payload, gathered into vectored writes: one
/// system call for both, not a small segment of its own for the header.
pub(crate) async fn write_frame_within(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut head: &[u8],
    mut body: &[u8],
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    while !head.is_empty() {
        let iov = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        match tokio::time::timeout(timeout, w.write_vectored(&iov)).await {
            Err(_) => return Err(Failure::SendTimeout),
            Ok(Err(_) | Ok(0)) => return Err(Failure::ClientGone),
            Ok(Ok(n)) if n < head.len() => head = &head[n..],
            Ok(Ok(n)) => {
                body = &body[(n - head.len()).min(body.len())..];
                head = &[];
            }
        }
    }
    write_within(w, body, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_frame_goes_out_whole_in_vectored_writes() {
        // A socket takes the header and part of the payload in one write; a narrow pipe
        // takes one buffer at a time.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut rx, _) = l.accept().await.unwrap();
        let (mut a, mut b) = tokio::io::duplex(7);
        let body: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        let want = [&b"head:"[..], &body].concat();
        let readers = tokio::spawn(async move {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let (r1, r2) = tokio::join!(rx.read_to_end(&mut x), b.read_to_end(&mut y));
            r1.unwrap();
            r2.unwrap();
            (x, y)
        });
        let t = Duration::from_secs(20);
        write_frame_within(&mut tx, b"head:", &body, t)
            .await
            .unwrap();
        write_frame_within(&mut a, b"head:", &body[..100], t)
            .await
            .unwrap();
        drop((tx, a));
        let (x, y) = readers.await.unwrap();
        assert!(x == want, "through the socket");
        assert!(y == want[..105], "through the pipe");
    }

    #[tokio::test]
    async fn a_peer_that_takes_nothing_times_out() {
        let (mut a, _b) = tokio::io::duplex(4);
        let r = write_frame_within(&mut a, b"header", b"body", Duration::from_millis(50)).await;
        assert!(matches!(r, Err(Failure::SendTimeout)), "{r:?}");
        let (mut a, b) = tokio::io::duplex(4);
        drop(b);
        let r = write_frame_within(&mut a, b"header", b"body", Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Failure::ClientGone)), "{r:?}");
    }
}
