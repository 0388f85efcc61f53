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
pub mod proto;
pub mod store;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::backplane::Backplane;
use crate::config::{Config, StreamConfig};
use crate::controller::Controllers;
use crate::serve::{ServeError, io_err};
pub use proto::Plan;

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
}

/// Lock-free counters of the stream service.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Sessions running now.
    pub sessions_active: AtomicI64,
    /// Sessions opened.
    pub sessions_opened: AtomicU64,
    /// Sessions refused (no capacity, bad request, unknown content).
    pub sessions_refused: AtomicU64,
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
    /// Pacing origin (set when the first block is sent).
    pub t0: Mutex<Option<Instant>>,
    pub epoch: AtomicU32,
    /// Blocks delivered so far.
    pub sent: AtomicU64,
    /// A DataRequest held back by the window.
    pub parked: AtomicU64,
    pub attached: AtomicUsize,
    pub finished: AtomicBool,
    pub failed: AtomicBool,
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

    pub fn is_current(&self, plan: &Plan) -> bool {
        self.epoch.load(Ordering::Acquire) == plan.epoch && !self.failed.load(Ordering::Acquire)
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
    /// A session's client went away.
    ClientGone(u64),
}

/// State shared by the coordinator and the workers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: StreamConfig,
    /// Connection limits and timeouts of the stream listeners.
    pub limits: listener::Limits,
    pub metrics: Arc<StreamMetrics>,
    pub sessions: Mutex<std::collections::HashMap<u64, Arc<Session>>>,
    pub mailboxes: Vec<mpsc::UnboundedSender<StreamMsg>>,
    pub live: Vec<AtomicBool>,
    pub load: Vec<AtomicU32>,
    pub events: mpsc::UnboundedSender<Event>,
    pub data_ports: Vec<u16>,
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
    /// per controller.
    pub fn start(
        config: &Config,
        backplane: &Backplane,
        controllers: &Controllers,
        shutdown: &watch::Sender<bool>,
    ) -> Result<Option<Self>, ServeError> {
        let Some(cfg) = config.stream.clone() else {
            return Ok(None);
        };
        let volume = backplane
            .volume(&cfg.volume)
            .cloned()
            .ok_or_else(|| ServeError::Stream(format!("volume `{}` missing", cfg.volume)))?;
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
            limits: config.limits.stream(),
            metrics,
            sessions: Mutex::new(std::collections::HashMap::new()),
            mailboxes,
            live: (0..n).map(|_| AtomicBool::new(true)).collect(),
            load: (0..n).map(|_| AtomicU32::new(0)).collect(),
            events: events_tx,
            data_ports,
        });
        for ((h, rx), listener) in controllers.handles().iter().zip(receivers).zip(listeners) {
            let shared = Arc::clone(&shared);
            let volume = Arc::clone(&volume);
            let index = h.index();
            let shutdown = shutdown.subscribe();
            h.run(move || worker::start(index, shared, volume, rx, listener, shutdown))
                .map_err(|e| ServeError::Stream(e.to_string()))?;
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
            Ok(Err(e)) => return Err(ServeError::Stream(e)),
            Err(_) => return Err(ServeError::Stream("the coordinator thread died".into())),
        }
        info!(control = %control_addr, http = ?http_addr, data_ports = ?shared.data_ports, "stream service");
        Ok(Some(Self {
            shared,
            control: control_addr,
            http: http_addr,
            thread: Mutex::new(Some(thread)),
        }))
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
