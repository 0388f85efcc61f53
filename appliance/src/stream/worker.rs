//! A controller's stream worker: reads blocks on `DataRequest`, sends them on `Sync` and
//! passes both messages on. Runs on the controller thread; its state is thread-local, so no
//! locks are taken per block.

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
    DataRequest, Delivery, Event, Failure, NONE, Phase, Shared, StreamMsg, Sync, write_within,
};
use crate::backplane::{Volume, VolumeHandle};

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    vol: VolumeHandle,
    /// Free block buffers.
    pool: Vec<Vec<u8>>,
    /// Buffers in existence (pooled, read ahead, or being sent).
    buffers: usize,
    /// Read-ahead buffers allowed in existence; batons may exceed it by one buffer each.
    max_buffers: usize,
    /// Blocks read ahead: (session, block) -> (buffer, bytes read).
    ready: HashMap<(u64, u64), (Vec<u8>, usize)>,
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

/// Starts the worker on the calling controller thread.
pub(super) fn start(
    index: usize,
    shared: Arc<Shared>,
    volume: Arc<Volume>,
    rx: mpsc::UnboundedReceiver<StreamMsg>,
    listener: std::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let vol = match volume.open_handle() {
        Ok(v) => v,
        Err(e) => {
            warn!(controller = index, error = %e, "stream worker cannot open the content volume");
            shared.live[index].store(false, Ordering::Release);
            return;
        }
    };
    let window = shared.cfg.window as usize;
    let budget = shared.cfg.send_budget as usize;
    let state = Rc::new(RefCell::new(Worker {
        index,
        max_buffers: (budget * (window + 1)).clamp(8, 4096),
        shared,
        vol,
        pool: Vec::new(),
        buffers: 0,
        ready: HashMap::new(),
        channels: HashMap::new(),
        stopped: false,
    }));
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
                    if let Some((buf, _)) = w.ready.remove(&k) {
                        w.pool.push(buf);
                    }
                }
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
        (w.shared.limits, w.shared.budget.clone())
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

impl Worker {
    fn take_buffer(&mut self, force: bool) -> Option<Vec<u8>> {
        if let Some(b) = self.pool.pop() {
            return Some(b);
        }
        if self.buffers < self.max_buffers || force {
            self.buffers += 1;
            return Some(vec![
                0;
                usize::try_from(self.shared.cfg.block_size.bytes())
                    .unwrap_or(0)
            ]);
        }
        None
    }

    fn give_back(&mut self, buf: Vec<u8>) {
        if self.buffers > self.max_buffers {
            self.buffers -= 1;
        } else {
            self.pool.push(buf);
        }
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
    let mut w = state.borrow_mut();
    if w.ready.contains_key(&(s.id, dr.block)) {
        return;
    }
    if let Some(mut buf) = w.take_buffer(false) {
        let (off, len, _) = s.block_range(dr.block);
        match w.vol.read_at(off, &mut buf[..len]) {
            Ok(()) => {
                w.ready.insert((s.id, dr.block), (buf, len));
            }
            Err(e) => {
                warn!(session = s.id, block = dr.block, error = %e, "read-ahead failed");
                w.give_back(buf);
            }
        }
    }
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
    let (off, len, skip) = s.block_range(k);
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
    let read = {
        let mut w = state.borrow_mut();
        match w.ready.remove(&(s.id, k)) {
            Some((buf, _)) => Ok(buf),
            None => {
                m.send_stalls.fetch_add(1, Ordering::Relaxed);
                // One buffer per baton beyond the pool: a session has one baton, so this is
                // bounded by the sessions the controller serves.
                let mut buf = w.take_buffer(true).unwrap_or_default();
                match w.vol.read_at(off, &mut buf[..len]) {
                    Ok(()) => Ok(buf),
                    Err(e) => {
                        warn!(session = s.id, block = k, controller = index, error = %e, "block read failed");
                        w.give_back(buf);
                        Err(e)
                    }
                }
            }
        }
    };
    let buf = match read {
        Ok(buf) => buf,
        Err(_) => {
            let f = Failure::ReadError { block: k };
            if s.delivery == Delivery::Framed {
                // The client sees the failure on the channel it is reading.
                let ch = state.borrow().channels.get(&s.id).cloned();
                if let Some(ch) = ch {
                    let h = FrameHeader::error(plan.epoch, k, f.code());
                    let mut wr = ch.wr.lock().await;
                    let _ = write_within(&mut *wr, &h.encode(), shared.limits.send_timeout).await;
                }
            }
            // HTTP: the body cannot be completed; closing the socket tells the client.
            drop(sync.socket.take());
            let _ = shared.events.send(Event::Failed(s.id, f));
            return;
        }
    };
    let payload = &buf[skip..len];
    let payload_len = payload.len() as u64;
    let send_timeout = shared.limits.send_timeout;
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
                        let r = match write_within(&mut *wr, &h.encode(), send_timeout).await {
                            Ok(()) => write_within(&mut *wr, payload, send_timeout).await,
                            Err(f) => Err(f),
                        };
                        s.sending.store(false, Ordering::Release);
                        r
                    } else {
                        drop(wr);
                        state.borrow_mut().give_back(buf);
                        return;
                    }
                }
                None => {
                    // This controller lost the channel (stopped and restarted, or never
                    // attached): the watchdog re-plans.
                    state.borrow_mut().give_back(buf);
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
    state.borrow_mut().give_back(buf);
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
