//! A controller's stream worker: reads blocks on `DataRequest`, sends them on `Sync` and
//! passes both messages on. Runs on the controller thread; its state is thread-local, so no
//! locks are taken per block.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::proto::{ATTACH_LEN, Attach, FrameHeader};
use super::{DataRequest, Delivery, Event, NONE, Shared, StreamMsg, Sync};
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
    /// Data channels attached to this controller, by session.
    channels: HashMap<u64, Rc<tokio::sync::Mutex<OwnedWriteHalf>>>,
    stopped: bool,
}

type State = Rc<RefCell<Worker>>;

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
                w.channels.clear();
                w.ready.clear();
                debug!(controller = w.index, "stream worker stopped");
                return;
            }
        }
    }
}

/// Accepts data channels: each presents a session ID and its secret.
async fn accept_loop(
    state: State,
    l: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = l.accept() => c,
            _ = shutdown.changed() => return,
        };
        if state.borrow().stopped {
            return;
        }
        let Ok((mut s, _)) = conn else { continue };
        let state = Rc::clone(&state);
        tokio::task::spawn_local(async move {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; ATTACH_LEN];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await;
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
                let _ = s.write_all(&[0xff]).await;
                return;
            };
            if s.write_all(&[0]).await.is_err() {
                return;
            }
            let (rd, wr) = s.into_split();
            // The client never sends after attaching; keep the read half for EOF detection.
            drop(rd);
            let mut w = state.borrow_mut();
            if w.stopped {
                return;
            }
            w.channels
                .insert(session.id, Rc::new(tokio::sync::Mutex::new(wr)));
            let planned = session.controllers.lock().map_or(0, |c| c.len());
            if session.attached.fetch_add(1, Ordering::AcqRel) + 1 == planned {
                let _ = w.shared.events.send(Event::Attached(session.id));
            }
        });
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

async fn on_sync(state: State, mut sync: Sync) {
    let (shared, index) = {
        let w = state.borrow();
        (Arc::clone(&w.shared), w.index)
    };
    let m = &shared.metrics;
    m.controllers[index].syncs.fetch_add(1, Ordering::Relaxed);
    let s = Arc::clone(&sync.session);
    if !s.is_current(&sync.plan) || state.borrow().stopped {
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
        } else {
            let block_time = Duration::from_secs_f64(s.block_size as f64 * 8.0 / rate as f64);
            if now > deadline + block_time {
                m.deadline_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(delay) = test_jitter(s.id, k) {
        tokio::time::sleep(delay).await;
    }
    let buf = {
        let mut w = state.borrow_mut();
        match w.ready.remove(&(s.id, k)) {
            Some((buf, _)) => Some(buf),
            None => {
                m.send_stalls.fetch_add(1, Ordering::Relaxed);
                let mut b = w.take_buffer(true);
                if let Some(buf) = b.as_mut() {
                    if let Err(e) = w.vol.read_at(off, &mut buf[..len]) {
                        warn!(session = s.id, block = k, error = %e, "block read failed");
                        let buf = b.take();
                        if let Some(buf) = buf {
                            w.give_back(buf);
                        }
                    }
                }
                b
            }
        }
    };
    let Some(buf) = buf else {
        fail(&shared, &s);
        return;
    };
    let payload = &buf[skip..len];
    let payload_len = payload.len() as u64;
    let ok = match s.delivery {
        Delivery::Framed => {
            let ch = state.borrow().channels.get(&s.id).cloned();
            match ch {
                Some(ch) => {
                    let h = FrameHeader {
                        kind: super::proto::FrameKind::Block,
                        epoch: sync.plan.epoch,
                        seq: k,
                        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                        crc: crc32c::crc32c(payload),
                    };
                    let mut wr = ch.lock().await;
                    wr.write_all(&h.encode()).await.is_ok() && wr.write_all(payload).await.is_ok()
                }
                None => false,
            }
        }
        Delivery::Http => match sync.socket.take().map(tokio::net::TcpStream::from_std) {
            Some(Ok(mut sock)) => {
                let ok = sock.write_all(payload).await.is_ok();
                sync.socket = sock.into_std().ok();
                ok && sync.socket.is_some()
            }
            _ => false,
        },
    };
    state.borrow_mut().give_back(buf);
    if !ok {
        if s.delivery == Delivery::Http || state.borrow().channels.contains_key(&s.id) {
            // The client went away.
            let _ = shared.events.send(Event::ClientGone(s.id));
        }
        return;
    }
    let cm = &m.controllers[index];
    cm.blocks_sent.fetch_add(1, Ordering::Relaxed);
    cm.bytes.fetch_add(payload_len, Ordering::Relaxed);
    s.sent.store(k + 1, Ordering::Release);
    if k + 1 == s.blocks {
        s.finished.store(true, Ordering::Release);
        if let Some(sock) = sync.socket.take() {
            // Orderly close so the client sees the whole body.
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
        let _ = shared.events.send(Event::Finished(s.id));
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
        request(&shared, &s, p, &sync.plan);
    }
    forward(
        &shared,
        &sync.plan,
        StreamMsg::Sync(Sync {
            session: s,
            block: k + 1,
            plan: Arc::clone(&sync.plan),
            socket: sync.socket.take(),
        }),
    );
}

fn fail(shared: &Shared, s: &super::Session) {
    let _ = shared.events.send(Event::ClientGone(s.id));
}

/// Fault injection for tests: with `BATON_STREAM_TEST_JITTER_MS=N` in the environment, every
/// baton waits a pseudo-random 0..N ms before its block is sent, so controllers finish their
/// blocks out of order and only the baton keeps the stream ordered.
fn test_jitter(session: u64, block: u64) -> Option<Duration> {
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
    let mut x = session ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Some(Duration::from_millis(x % (max + 1)))
}
