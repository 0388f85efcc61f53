//! A controller's stream worker: reads blocks on `DataRequest`, sends them on `Sync` and
//! passes both messages on. Runs on the controller thread; its state is thread-local, so no
//! locks are taken per block.
//!
//! Reads are asynchronous: a `DataRequest` submits its block's read and returns, so a
//! read-ahead window of W blocks is W reads at the device, and a slow device never holds up
//! anything else on the thread (NVMe/TCP connections, other sessions). Blocks are read into
//! the worker's own fixed buffer pool (whole device blocks, trimmed to the bytes the
//! session wants) and sent to the client straight from there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::proto::{ATTACH_LEN, Attach, FrameHeader};
use super::{
    DataRequest, Delivery, Event, Failure, NONE, Phase, Shared, StreamMsg, Sync,
    write_frame_within, write_within,
};
use bdev::slots::Slots;
use bdev::span::Span;
use bdev::{BlockIo, BufPool, CompletionQueue, IoBuf, PoolClass, Request, Sink};

use backplane::Volume;

/// A block of a session, at this controller.
enum Block {
    /// Its read is at the device.
    Reading,
    /// Read: the buffer, its window set to the bytes the session sends.
    Ready(IoBuf),
    /// The read failed.
    Failed,
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    vol: Rc<dyn BlockIo>,
    /// The worker's block buffers (a fixed number).
    pool: BufPool,
    /// Buffers read-ahead may not take: they are the batons' (a baton whose block was not
    /// read ahead always finds one once another baton has sent its block).
    reserve: usize,
    /// Blocks read or being read: (session, block).
    ready: HashMap<(u64, u64), Block>,
    /// Reads at the device: tag -> (session, block, what to keep of the read).
    reads: Slots<(u64, u64, Span, usize)>,
    /// Where the device posts read completions.
    sink: Rc<dyn Sink>,
    /// Woken when a read completes or a buffer comes back.
    progress: Rc<tokio::sync::Notify>,
    /// The task taking read completions; it ends with the worker.
    poller: Option<tokio::task::JoinHandle<()>>,
    /// Data channels attached to this controller, by session, with their places under the
    /// data listener's limits.
    channels: HashMap<u64, Rc<Channel>>,
    stopped: bool,
}

type State = Rc<RefCell<Worker>>;

/// One attached data channel.
struct Channel {
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    _slot: listener::Slot,
}

/// Most sessions' batons a controller keeps a buffer ready for (the send budget, at most
/// this): read-ahead for other blocks uses the rest of the pool.
const BATON_BUFFERS: usize = 32;

/// Starts the worker on the calling controller thread.
pub(super) fn start(
    index: usize,
    shared: Arc<Shared>,
    volume: Arc<Volume>,
    rx: mpsc::UnboundedReceiver<StreamMsg>,
    listener: std::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let window = shared.cfg.window as usize;
    let budget = shared.cfg.send_budget as usize;
    let block = usize::try_from(shared.cfg.block_size).unwrap_or(1 << 20);
    // A block read covers whole device blocks: one device block more than the stream block
    // for a session that starts off a block boundary.
    let reserve = budget.clamp(2, BATON_BUFFERS);
    let classes = [PoolClass {
        size: block + 4096,
        count: reserve * (window + 1),
    }];
    let opened = BufPool::new(&classes)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|pool| Ok((volume.open_io(index, &pool)?, pool)));
    let (vol, pool) = match opened {
        Ok(v) => v,
        Err(e) => {
            warn!(controller = index, error = %e, "stream worker cannot open the content volume");
            shared.live[index].store(false, Ordering::Release);
            return;
        }
    };
    let cq = Rc::new(CompletionQueue::default());
    let sink: Rc<dyn Sink> = cq.clone();
    let progress = Rc::new(tokio::sync::Notify::new());
    let state = Rc::new(RefCell::new(Worker {
        index,
        shared,
        vol,
        pool,
        reserve,
        ready: HashMap::new(),
        reads: Slots::with_capacity(reserve * window),
        sink,
        progress,
        channels: HashMap::new(),
        stopped: false,
        poller: None,
    }));
    let poller = tokio::task::spawn_local(completion_loop(Rc::downgrade(&state), cq));
    state.borrow_mut().poller = Some(poller);
    let l = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(controller = index, error = %e, "stream data listener");
            return;
        }
    };
    tokio::task::spawn_local(accept_loop(Rc::clone(&state), l, shutdown.clone()));
    state.borrow().shared.metrics.controllers[index]
        .worker_up
        .store(true, Ordering::Release);
    tokio::task::spawn_local(mailbox_loop(state, rx, shutdown));
}

async fn mailbox_loop(
    state: State,
    mut rx: mpsc::UnboundedReceiver<StreamMsg>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.changed() => None,
        };
        match msg {
            Some(StreamMsg::DataRequest(dr)) => on_data_request(&state, dr),
            Some(StreamMsg::Sync(s)) => {
                tokio::task::spawn_local(on_sync(Rc::clone(&state), s));
            }
            Some(StreamMsg::End(id)) => {
                let mut w = state.borrow_mut();
                w.channels.remove(&id);
                let keys: Vec<_> = w.ready.keys().filter(|(s, _)| *s == id).copied().collect();
                for k in keys {
                    // Read blocks give their buffers back; reads still at the device are
                    // dropped when they complete (the session is gone by then).
                    if !matches!(w.ready.get(&k), Some(Block::Reading)) {
                        w.ready.remove(&k);
                    }
                }
                w.progress.notify_waiters();
            }
            Some(StreamMsg::Stop) | None => {
                let mut w = state.borrow_mut();
                w.stopped = true;
                w.shared.metrics.controllers[w.index]
                    .worker_up
                    .store(false, Ordering::Release);
                w.channels.clear();
                w.ready.clear();
                debug!(controller = w.index, "stream worker stopped");
                return;
            }
        }
    }
}

/// Accepts data channels: each presents a session ID and its secret within the handshake
/// timeout.
async fn accept_loop(
    state: State,
    l: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let (limits, budget) = {
        let w = state.borrow();
        (w.shared.cfg.limits, w.shared.budget.clone())
    };
    let mut l = listener::Listener::new(l, "stream-data", limits.max_connections, budget);
    loop {
        let conn = tokio::select! {
            c = l.accept() => c,
            _ = shutdown.changed() => return,
        };
        if state.borrow().stopped {
            return;
        }
        let state = Rc::clone(&state);
        tokio::task::spawn_local(attach(state, conn.stream, conn.slot, limits));
    }
}

async fn attach(
    state: State,
    mut s: tokio::net::TcpStream,
    slot: listener::Slot,
    limits: listener::Limits,
) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; ATTACH_LEN];
    let read = tokio::time::timeout(limits.handshake_timeout, s.read_exact(&mut b)).await;
    let Ok(Ok(_)) = read else { return };
    let shared = Arc::clone(&state.borrow().shared);
    let session = Attach::decode(&b).and_then(|a| {
        shared
            .session(a.session)
            // Constant-time comparison is not needed for a 128-bit random secret
            // checked once per connection, but a mismatch reveals nothing else.
            .filter(|s| s.secret == a.secret && s.delivery == Delivery::Framed)
    });
    let Some(session) = session else {
        // Wrong secret or unknown session: refuse with a one-byte answer, then close.
        let _ = write_within(&mut s, &[0xff], limits.send_timeout).await;
        return;
    };
    if write_within(&mut s, &[0], limits.send_timeout)
        .await
        .is_err()
    {
        return;
    }
    let (rd, wr) = s.into_split();
    // The client never sends after attaching.
    drop(rd);
    let mut w = state.borrow_mut();
    if w.stopped || session.phase() > Phase::Streaming {
        return;
    }
    w.channels.insert(
        session.id,
        Rc::new(Channel {
            wr: tokio::sync::Mutex::new(wr),
            _slot: slot,
        }),
    );
    let planned = session.controllers.lock().map_or(0, |c| c.len());
    if session.attached.fetch_add(1, Ordering::AcqRel) + 1 == planned {
        let _ = w.shared.events.send(Event::Attached(session.id));
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

impl Worker {
    /// Starts the read of block `k` of session `s` into a pool buffer, unless it is read or
    /// being read. Read-ahead leaves the batons' reserve alone; a baton may take it. Returns
    /// false if no buffer was free.
    fn start_read(&mut self, s: &super::Session, k: u64, baton: bool) -> bool {
        if self.ready.contains_key(&(s.id, k)) {
            return true;
        }
        if !baton && self.pool.free() <= self.reserve {
            return false;
        }
        let (off, len, skip) = s.block_range(k);
        let bs = self.vol.geometry().block_size;
        let Some(span) = Span::cover(off, len, bs) else {
            return false;
        };
        let Some(buf) = self
            .pool
            .get(usize::try_from(span.len).unwrap_or(usize::MAX))
        else {
            return false;
        };
        let tag = self.reads.insert((s.id, k, span, skip));
        self.ready.insert((s.id, k), Block::Reading);
        self.vol.submit(
            Request::read(span.offset, span.len, buf, tag as u64),
            &self.sink,
        );
        true
    }
}

/// Takes read completions: the block becomes ready (or failed) for its baton, unless its
/// session ended meanwhile.
async fn completion_loop(state: std::rc::Weak<RefCell<Worker>>, cq: Rc<CompletionQueue>) {
    loop {
        cq.ready().await;
        let Some(state) = state.upgrade() else { return };
        let mut w = state.borrow_mut();
        while let Some(c) = cq.pop() {
            let Some((sid, k, span, skip)) =
                w.reads.remove(usize::try_from(c.tag).unwrap_or(usize::MAX))
            else {
                continue;
            };
            let live = w
                .shared
                .session(sid)
                .is_some_and(|s| s.phase() <= Phase::Streaming);
            if !live || w.stopped {
                w.ready.remove(&(sid, k));
                continue;
            }
            let block = match (c.result, c.buf) {
                (Ok(()), Some(mut buf)) => {
                    buf.set_window(span.head + skip, span.want - skip);
                    Block::Ready(buf)
                }
                (r, _) => {
                    if let Err(e) = r {
                        warn!(session = sid, block = k, controller = w.index, error = %e, "block read failed");
                    }
                    // Counted as a read error when its baton fails the session.
                    Block::Failed
                }
            };
            w.ready.insert((sid, k), block);
        }
        w.progress.notify_waiters();
    }
}

/// Waits until block `k` of session `s` is read (starting its read if no read-ahead did)
/// and takes it; `None` if the read failed or the worker stopped.
async fn take_block(state: &State, s: &super::Session, k: u64) -> Option<IoBuf> {
    let mut stalled = false;
    loop {
        let progress = Rc::clone(&state.borrow().progress);
        let notified = progress.notified();
        {
            let mut w = state.borrow_mut();
            if w.stopped {
                return None;
            }
            match w.ready.get(&(s.id, k)) {
                Some(Block::Ready(_)) => {
                    let Some(Block::Ready(buf)) = w.ready.remove(&(s.id, k)) else {
                        unreachable!("just seen")
                    };
                    return Some(buf);
                }
                Some(Block::Failed) => {
                    w.ready.remove(&(s.id, k));
                    return None;
                }
                Some(Block::Reading) => {}
                None => {
                    if !stalled {
                        stalled = true;
                        w.shared.metrics.send_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    // No buffer free: one comes back when another baton has sent.
                    w.start_read(s, k, true);
                }
            }
        }
        notified.await;
    }
}

fn forward(shared: &Shared, plan: &Arc<super::Plan>, msg: StreamMsg) {
    let block = match &msg {
        StreamMsg::DataRequest(d) => d.block,
        StreamMsg::Sync(s) => s.block,
        _ => return,
    };
    // A dead controller loses the message; the coordinator's watchdog re-plans.
    let _ = shared.send(plan.controller(block), msg);
}

/// Sends the `DataRequest` for `block` to its controller.
fn request(shared: &Shared, s: &Arc<super::Session>, block: u64, plan: &Arc<super::Plan>) {
    forward(
        shared,
        plan,
        StreamMsg::DataRequest(DataRequest {
            session: Arc::clone(s),
            block,
            plan: Arc::clone(plan),
        }),
    );
}

fn on_data_request(state: &State, dr: DataRequest) {
    let shared = Arc::clone(&state.borrow().shared);
    let index = state.borrow().index;
    shared.metrics.controllers[index]
        .data_requests
        .fetch_add(1, Ordering::Relaxed);
    let s = &dr.session;
    if !s.is_current(&dr.plan) || state.borrow().stopped {
        return;
    }
    // Pass the request for the next block on first, so the next controller reads its block
    // while this one reads its own; never run past the window ahead of the baton.
    let next = dr.block + 1;
    if next < s.blocks {
        if next < s.sent.load(Ordering::Acquire) + s.window {
            request(&shared, s, next, &dr.plan);
        } else {
            s.parked.store(next, Ordering::Release);
            // The baton may have moved between the check and the store.
            if next < s.sent.load(Ordering::Acquire) + s.window
                && s.parked
                    .compare_exchange(next, NONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                request(&shared, s, next, &dr.plan);
            }
        }
    }
    // Without a free buffer the block is read when its baton comes.
    state.borrow_mut().start_read(s, dr.block, false);
}

/// Whether the baton may still act: its plan is current and this worker runs. Checked
/// after every await, before the baton changes the session's state.
fn live(state: &State, s: &super::Session, plan: &super::Plan) -> bool {
    s.is_current(plan) && !state.borrow().stopped
}

async fn on_sync(state: State, mut sync: Sync) {
    let (shared, index) = {
        let w = state.borrow();
        (Arc::clone(&w.shared), w.index)
    };
    let m = &shared.metrics;
    m.controllers[index].syncs.fetch_add(1, Ordering::Relaxed);
    let s = Arc::clone(&sync.session);
    let plan = Arc::clone(&sync.plan);
    // Every early return drops the baton; an HTTP socket it carries goes back to the
    // session (`Drop for Sync`) for the watchdog to hand on.
    if !live(&state, &s, &plan) {
        return;
    }
    let k = sync.block;
    // Pacing: block k may not leave before t0 + (bytes before it) / rate.
    if let Some(rate) = s.rate.filter(|&r| r > 0) {
        let t0 = *s
            .t0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        let before = (k * s.block_size).saturating_sub(s.start % s.block_size);
        let deadline = t0 + Duration::from_secs_f64(before as f64 * 8.0 / rate as f64);
        let now = Instant::now();
        if now < deadline {
            tokio::time::sleep_until(deadline.into()).await;
            if !live(&state, &s, &plan) {
                return;
            }
        } else {
            let block_time = Duration::from_secs_f64(s.block_size as f64 * 8.0 / rate as f64);
            if now > deadline + block_time {
                m.deadline_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(delay) = test_jitter(s.id, k, plan.epoch) {
        tokio::time::sleep(delay).await;
        if !live(&state, &s, &plan) {
            return;
        }
    }
    let read = take_block(&state, &s, k).await;
    if !live(&state, &s, &plan) {
        return;
    }
    let buf = match read {
        Some(buf) => buf,
        None => {
            let f = Failure::ReadError { block: k };
            if s.delivery == Delivery::Framed {
                // The client sees the failure on the channel it is reading.
                let ch = state.borrow().channels.get(&s.id).cloned();
                if let Some(ch) = ch {
                    let h = FrameHeader::error(plan.epoch, k, f.code());
                    let mut wr = ch.wr.lock().await;
                    let _ =
                        write_within(&mut *wr, &h.encode(), shared.cfg.limits.send_timeout).await;
                }
            }
            // HTTP: the body cannot be completed; closing the socket tells the client.
            drop(sync.socket.take());
            let _ = shared.events.send(Event::Failed(s.id, f));
            return;
        }
    };
    let payload = buf.as_slice();
    let payload_len = payload.len() as u64;
    let send_timeout = shared.cfg.limits.send_timeout;
    let sent: Result<(), Failure> = match s.delivery {
        Delivery::Framed => {
            let ch = state.borrow().channels.get(&s.id).cloned();
            match ch {
                Some(ch) => {
                    let h = FrameHeader {
                        kind: super::proto::FrameKind::Block,
                        epoch: plan.epoch,
                        seq: k,
                        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                        crc: crc32c::crc32c(payload),
                    };
                    let mut wr = ch.wr.lock().await;
                    if live(&state, &s, &plan) {
                        s.sending.store(true, Ordering::Release);
                        let r =
                            write_frame_within(&mut *wr, &h.encode(), payload, send_timeout).await;
                        s.sending.store(false, Ordering::Release);
                        r
                    } else {
                        drop(wr);
                        give_back(&state, buf);
                        return;
                    }
                }
                None => {
                    // This controller lost the channel (stopped and restarted, or never
                    // attached): the watchdog re-plans.
                    give_back(&state, buf);
                    return;
                }
            }
        }
        Delivery::Http => match sync.socket.take().map(tokio::net::TcpStream::from_std) {
            Some(Ok(mut sock)) => {
                s.sending.store(true, Ordering::Release);
                let r = write_within(&mut sock, payload, send_timeout).await;
                s.sending.store(false, Ordering::Release);
                sync.socket = sock.into_std().ok();
                match (r, &sync.socket) {
                    (Ok(()), Some(_)) => Ok(()),
                    (Ok(()), None) => Err(Failure::ClientGone),
                    (Err(f), _) => Err(f),
                }
            }
            _ => Err(Failure::ClientGone),
        },
    };
    give_back(&state, buf);
    if let Err(f) = sent {
        // The client went away or stopped reading: the session ends, its socket with it.
        drop(sync.socket.take());
        let _ = shared.events.send(Event::Failed(s.id, f));
        return;
    }
    let cm = &m.controllers[index];
    cm.blocks_sent.fetch_add(1, Ordering::Relaxed);
    cm.bytes.fetch_add(payload_len, Ordering::Relaxed);
    s.progressed();
    match s.delivery {
        // The socket's writer is the only one (the socket travels with one baton), so the
        // bytes it wrote count even if a re-plan happened meanwhile: the next plan starts
        // after them.
        Delivery::Http => {
            s.sent.fetch_max(k + 1, Ordering::AcqRel);
        }
        // A stale frame is skipped by the client; it must not move the session.
        Delivery::Framed => {
            if !live(&state, &s, &plan) {
                return;
            }
            s.sent.fetch_max(k + 1, Ordering::AcqRel);
        }
    }
    if k + 1 == s.blocks {
        if let Some(sock) = sync.socket.take() {
            // Orderly close so the client sees the whole body.
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
        let _ = shared.events.send(Event::Finished(s.id));
        return;
    }
    if !live(&state, &s, &plan) {
        return;
    }
    // Release a DataRequest the window held back, then pass the baton.
    let p = s.parked.load(Ordering::Acquire);
    if p != NONE
        && p < k + 1 + s.window
        && s.parked
            .compare_exchange(p, NONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        request(&shared, &s, p, &plan);
    }
    forward(
        &shared,
        &plan,
        StreamMsg::Sync(Sync {
            session: s,
            block: k + 1,
            plan: Arc::clone(&plan),
            socket: sync.socket.take(),
        }),
    );
}

/// Returns a sent block's buffer to the pool and wakes batons waiting for one.
fn give_back(state: &State, buf: IoBuf) {
    drop(buf);
    state.borrow().progress.notify_waiters();
}

/// Fault injection for tests: with `BATON_STREAM_TEST_JITTER_MS=N` in the environment, every
/// baton waits a pseudo-random 0..N ms before its block is sent, so controllers finish their
/// blocks out of order and only the baton keeps the stream ordered. The delay differs per
/// plan, so a re-planned baton does not meet the same delay again.
fn test_jitter(session: u64, block: u64, epoch: u32) -> Option<Duration> {
    static JITTER: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let max = *JITTER.get_or_init(|| {
        std::env::var("BATON_STREAM_TEST_JITTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    if max == 0 {
        return None;
    }
    let mut x = session
        ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(epoch).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ 0x2545_f491_4f6c_dd1d;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Some(Duration::from_millis(x % (max + 1)))
}
