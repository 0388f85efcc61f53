//! The coordinator: control connections (open, put, list, remove), admission control,
//! planning, the watchdog that re-plans stalled sessions, and the HTTP face.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::proto::{ItemInfo, LIST_PAGE, MAX_LINE, Plan, Reply, Request, SessionInfo, hex};
use super::store::{ContentStore, StoreError};
use super::watchdog::Face;
use super::{
    DataRequest, Delivery, Event, Failure, NONE, Phase, RefusalReason, Session, Shared, StreamMsg,
    Sync,
};

/// Coordinator state (on its own thread).
pub(super) struct Coord {
    pub shared: Arc<Shared>,
    pub store: RefCell<ContentStore>,
    next_id: std::cell::Cell<u64>,
    /// Sessions waiting for an event, by ID.
    waiters: RefCell<HashMap<u64, mpsc::UnboundedSender<Event>>>,
}

pub(super) type CoordRef = Rc<Coord>;

/// Starts the coordinator thread.
/// Starts the coordinator thread, which opens the content store on `volume` (reported
/// through `ready` before anything is served).
pub(super) fn spawn(
    shared: Arc<Shared>,
    volume: Arc<backplane::Volume>,
    control: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("baton-stream".into())
        .spawn(move || {
            let cfg = &shared.cfg;
            // The store's catalog and ingest I/O is synchronous: it runs on an I/O thread of
            // its own, reaching nvme-pcie members through the last PCIe controller.
            let path = shared.mailboxes.len().saturating_sub(1);
            let store = volume
                .open_blocking("baton-store-io", path)
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    ContentStore::open(h, cfg.block_size, cfg.catalog_entries)
                        .map_err(|e| e.to_string())
                });
            let store = match store {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(shared, store, control, http, events, shutdown));
        })
}

async fn run(
    shared: Arc<Shared>,
    store: ContentStore,
    control: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (used, cap) = store.usage();
    shared.metrics.store_used.store(used, Ordering::Relaxed);
    shared.metrics.store_capacity.store(cap, Ordering::Relaxed);
    let coord = Rc::new(Coord {
        shared,
        store: RefCell::new(store),
        next_id: std::cell::Cell::new(seed()),
        waiters: RefCell::new(HashMap::new()),
    });
    let limits = coord.shared.cfg.limits;
    let budget = coord.shared.budget.clone();
    let Ok(control) = tokio::net::TcpListener::from_std(control) else {
        return;
    };
    let mut control = listener::Listener::new(
        control,
        "stream-control",
        limits.max_connections,
        budget.clone(),
    )
    .with_refusal(CONTROL_REFUSAL);
    if let Some(h) = http.and_then(|h| tokio::net::TcpListener::from_std(h).ok()) {
        let h = listener::Listener::new(h, "stream-http", limits.max_connections, budget)
            .with_refusal(super::http::REFUSAL);
        tokio::task::spawn_local(super::http::serve(Rc::clone(&coord), h, shutdown.clone()));
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(ev) = events.recv() => {
                if let Some(w) = coord.waiters.borrow().get(&ev.session()) {
                    let _ = w.send(ev);
                }
            }
            c = control.accept() => {
                tokio::task::spawn_local(control_conn(Rc::clone(&coord), c.stream, c.slot));
            }
        }
    }
    for tx in &coord.shared.mailboxes {
        let _ = tx.send(StreamMsg::Stop);
    }
}

/// What a refused control connection reads before it is closed.
const CONTROL_REFUSAL: &[u8] =
    b"{\"reply\":\"error\",\"code\":503,\"message\":\"too many control connections\"}\n";

/// A session ID seed that differs between runs, so IDs are not guessable across restarts.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        return 1;
    }
    u64::from_le_bytes(b) >> 1
}

fn secret() -> std::io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Writes one reply line, within `timeout` of the client taking no bytes.
pub(super) async fn send_reply(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    r: &Reply,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut line = serde_json::to_vec(r).map_err(|_| Failure::ClientGone)?;
    line.push(b'\n');
    super::write_within(w, &line, timeout).await
}

fn error(code: u16, message: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
    }
}

/// Reads one request line: the whole line within `deadline` (so it cannot be dribbled),
/// at most [`MAX_LINE`] bytes. `Ok(None)`: the client closed.
async fn read_request_line(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
    deadline: Duration,
) -> Result<Option<()>, Reply> {
    line.clear();
    let mut limited = (&mut *rd).take(MAX_LINE as u64 + 1);
    match tokio::time::timeout(deadline, limited.read_until(b'\n', line)).await {
        Err(_) => Err(error(408, "request line not received in time")),
        Ok(Ok(0) | Err(_)) => Ok(None),
        Ok(Ok(n)) if n > MAX_LINE || !line.ends_with(b"\n") => Err(error(
            400,
            format!("request line longer than {MAX_LINE} bytes"),
        )),
        Ok(Ok(_)) => Ok(Some(())),
    }
}

async fn control_conn(coord: CoordRef, s: TcpStream, _slot: listener::Slot) {
    let _ = s.set_nodelay(true);
    let limits = coord.shared.cfg.limits;
    let st = limits.send_timeout;
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    // The first request within the handshake timeout, later ones within the idle timeout.
    let mut deadline = limits.handshake_timeout;
    loop {
        match read_request_line(&mut rd, &mut line, deadline).await {
            Ok(Some(())) => {}
            Ok(None) => return,
            Err(reply) => {
                let _ = send_reply(&mut wr, &reply, st).await;
                return;
            }
        }
        deadline = limits.idle_timeout;
        let req: Request = match super::proto::parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                if send_reply(&mut wr, &error(400, format!("bad request: {e}")), st)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        let reply = match req {
            Request::List { after } => {
                let store = coord.store.borrow();
                let mut page = store.list_after(after.as_deref());
                let items: Vec<ItemInfo> = page
                    .by_ref()
                    .take(LIST_PAGE)
                    .map(|i| ItemInfo {
                        name: i.name.clone(),
                        size: i.size,
                        crc32c: i.crc,
                        created: i.created,
                    })
                    .collect();
                let more = page.next().is_some();
                Reply::Items { items, more }
            }
            Request::Remove { name } => {
                let r = coord.store.borrow_mut().remove(&name);
                coord.update_usage();
                match r {
                    Ok(()) => {
                        info!(name, "content removed");
                        Reply::Ok {
                            message: format!("removed {name}"),
                        }
                    }
                    Err(e) => store_error(&e),
                }
            }
            Request::Put {
                name,
                size,
                replace,
            } => match put(&coord, &mut rd, &mut wr, &name, size, replace).await {
                Ok(r) => r,
                Err(PutError::Refused(r)) => r,
                Err(PutError::Broken(r)) => {
                    // The stream is out of step after a failed upload: answer and close.
                    let _ = send_reply(&mut wr, &r, st).await;
                    return;
                }
            },
            Request::Open {
                name,
                offset,
                length,
                rate,
            } => {
                // The session owns the connection until it ends.
                open(&coord, &mut rd, &mut wr, &name, offset, length, rate).await;
                continue;
            }
        };
        if send_reply(&mut wr, &reply, st).await.is_err() {
            return;
        }
    }
}

/// The HTTP-like code and message of a store error.
fn store_code(e: &StoreError) -> (u16, String) {
    let code = match e {
        StoreError::NotFound(_) => 404,
        StoreError::BadName(_) => 400,
        StoreError::Exists(_) => 409,
        StoreError::Full(_) => 507,
        _ => 500,
    };
    (code, e.to_string())
}

fn store_error(e: &StoreError) -> Reply {
    let (code, message) = store_code(e);
    error(code, message)
}

/// How a put failed.
enum PutError {
    /// Before any data was sent: the connection stays in step.
    Refused(Reply),
    /// During the upload: answer, then close.
    Broken(Reply),
}

async fn put(
    coord: &CoordRef,
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    name: &str,
    size: u64,
    replace: bool,
) -> Result<Reply, PutError> {
    // The space is reserved here, before a byte is sent: the client learns of a full
    // store (507) or an existing name (409) instead of a broken pipe.
    let mut up = coord
        .store
        .borrow()
        .begin(name, size, replace)
        .map_err(|e| PutError::Refused(store_error(&e)))?;
    coord.update_usage();
    let broken = |r: Reply| PutError::Broken(r);
    send_reply(wr, &Reply::Continue, coord.shared.cfg.limits.send_timeout)
        .await
        .map_err(|e| broken(error(400, format!("upload: {e}"))))?;
    let idle = coord.shared.cfg.limits.idle_timeout;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match tokio::time::timeout(idle, rd.read(&mut buf[..want])).await {
            Err(_) => {
                warn!(name, left, "upload stalled past the idle timeout");
                return Err(broken(error(
                    408,
                    format!("upload stalled with {left} bytes to go"),
                )));
            }
            Ok(Err(e)) => return Err(broken(error(400, format!("upload: {e}")))),
            Ok(Ok(0)) => {
                return Err(broken(error(
                    400,
                    format!("upload ended {left} bytes early"),
                )));
            }
            Ok(Ok(n)) => n,
        };
        coord
            .store
            .borrow()
            .write(&mut up, &buf[..n])
            .map_err(|e| broken(store_error(&e)))?;
        left -= n as u64;
    }
    let item = coord.store.borrow_mut().commit(up);
    coord.update_usage();
    let item = item.map_err(|e| PutError::Refused(store_error(&e)))?;
    info!(name, size, replace, "content stored");
    Ok(Reply::Ok {
        message: format!(
            "stored {} ({} bytes, crc32c {:08x})",
            item.name, item.size, item.crc
        ),
    })
}

impl Coord {
    fn update_usage(&self) {
        let (used, cap) = self.store.borrow().usage();
        self.shared
            .metrics
            .store_used
            .store(used, Ordering::Relaxed);
        self.shared
            .metrics
            .store_capacity
            .store(cap, Ordering::Relaxed);
    }

    /// Admits a session: the live controllers with send budget left, least loaded first.
    fn admit(&self) -> Option<Vec<usize>> {
        let budget = self.shared.cfg.send_budget;
        let mut c: Vec<usize> = (0..self.shared.live.len())
            .filter(|&i| {
                self.shared.live[i].load(Ordering::Acquire)
                    && self.shared.load[i].load(Ordering::Acquire) < budget
            })
            .collect();
        if c.is_empty() {
            return None;
        }
        c.sort_by_key(|&i| self.shared.load[i].load(Ordering::Acquire));
        for &i in &c {
            self.shared.load[i].fetch_add(1, Ordering::AcqRel);
        }
        c.sort_unstable();
        Some(c)
    }

    /// Builds a session over `controllers` for `length` bytes of `name` from `offset`.
    /// Refusals (unknown content, bad range, no capacity) are counted here.
    pub(super) fn new_session(
        &self,
        name: &str,
        offset: u64,
        length: Option<u64>,
        rate: Option<u64>,
        delivery: Delivery,
    ) -> Result<(Arc<Session>, Arc<Plan>), (u16, String)> {
        let r = (|| -> Result<(Arc<Session>, Arc<Plan>), (u16, String)> {
            let store = self.store.borrow();
            let item = store.get(name).map_err(|e| store_code(&e))?;
            let size = item.size;
            let length = length.unwrap_or(size.saturating_sub(offset));
            if offset > size || offset.checked_add(length).is_none_or(|e| e > size) {
                return Err((
                    416,
                    format!("range {offset}+{length} is outside {name} ({size} bytes)"),
                ));
            }
            let Some(controllers) = self.admit() else {
                return Err((503, "every controller is at its send budget".into()));
            };
            let bs = store.block_size();
            let first_block = offset / bs;
            let blocks = if length == 0 {
                0
            } else {
                (offset + length - 1) / bs - first_block + 1
            };
            let id = self.next_id.get();
            self.next_id.set(id.wrapping_add(1));
            let secret = secret().map_err(|e| (500, format!("no randomness: {e}")))?;
            let session = Arc::new(Session {
                id,
                secret,
                delivery,
                base: store.block_offset(item.first_block),
                start: offset,
                length,
                block_size: bs,
                first_block,
                blocks,
                rate,
                // A paced stream needs little read-ahead: two blocks keep the baton fed and halve
                // the buffers each of thousands of sessions holds.
                window: if rate.is_some() {
                    u64::from(self.shared.cfg.window).min(2)
                } else {
                    u64::from(self.shared.cfg.window)
                },
                created: Instant::now(),
                progress_us: AtomicU64::new(0),
                t0: std::sync::Mutex::new(None),
                epoch: AtomicU32::new(1),
                sent: AtomicU64::new(0),
                parked: AtomicU64::new(NONE),
                attached: AtomicUsize::new(0),
                phase: std::sync::atomic::AtomicU8::new(Phase::Opened as u8),
                sending: AtomicBool::new(false),
                home: std::sync::Mutex::new(None),
                events: self.shared.events.clone(),
                slot: std::sync::Mutex::new(None),
                name: name.to_owned(),
                controllers: std::sync::Mutex::new(controllers.clone()),
                _extent: store.hold(item),
            });
            let plan = Arc::new(Plan {
                epoch: 1,
                from_block: 0,
                controllers,
            });
            self.shared
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, Arc::clone(&session));
            let m = &self.shared.metrics;
            m.sessions_opened.fetch_add(1, Ordering::Relaxed);
            m.sessions_active.fetch_add(1, Ordering::Relaxed);
            Ok((session, plan))
        })();
        if let Err((code, _)) = &r {
            let reason = RefusalReason::from_code(*code);
            self.shared.metrics.sessions_refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Sends the first DataRequest (the controllers pass it on up to the window) and the
    /// baton.
    pub(super) fn kick(
        &self,
        s: &Arc<Session>,
        plan: &Arc<Plan>,
        socket: Option<std::net::TcpStream>,
    ) {
        let from = plan.from_block;
        if from >= s.blocks {
            return;
        }
        let _ = self.shared.send(
            plan.controller(from),
            StreamMsg::DataRequest(DataRequest {
                session: Arc::clone(s),
                block: from,
                plan: Arc::clone(plan),
            }),
        );
        let _ = self.shared.send(
            plan.controller(from),
            StreamMsg::Sync(Sync {
                session: Arc::clone(s),
                block: from,
                plan: Arc::clone(plan),
                socket,
            }),
        );
    }

    /// Ends a session everywhere: the one exit of every session, whatever its face and
    /// however it ended. Gives back its admission, its data channels, its HTTP socket and
    /// connection slot; the failure reason is logged and counted.
    pub(super) fn end(&self, s: &Arc<Session>, result: Result<(), Failure>) {
        s.advance(if result.is_ok() {
            Phase::Finished
        } else {
            Phase::Failed
        });
        let removed = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&s.id)
            .is_some();
        if !removed {
            return;
        }
        self.waiters.borrow_mut().remove(&s.id);
        drop(
            s.home
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        drop(
            s.slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let controllers = s.controllers.lock().map(|c| c.clone()).unwrap_or_default();
        for &c in &controllers {
            self.shared.load[c].fetch_sub(1, Ordering::AcqRel);
        }
        for tx in &self.shared.mailboxes {
            let _ = tx.send(StreamMsg::End(s.id));
        }
        let m = &self.shared.metrics;
        m.sessions_active.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                m.sessions_completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                m.sessions_failed.fetch_add(1, Ordering::Relaxed);
                let counter = match f {
                    Failure::ReadError { .. } => Some(&m.read_errors),
                    Failure::SendTimeout => Some(&m.send_timeouts),
                    Failure::AttachTimeout => Some(&m.attach_timeouts),
                    Failure::ClientGone => Some(&m.clients_gone),
                    Failure::NoController | Failure::Shutdown => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                let sent = s.sent.load(Ordering::Acquire);
                warn!(session = s.id, content = %s.name, delivery = ?s.delivery, sent, blocks = s.blocks, reason = %f, "stream session failed");
            }
        }
    }

    /// The same plan from the first block not delivered yet: an HTTP session's new plan
    /// starts where the socket's last writer stopped.
    pub(super) fn rebase(&self, s: &Session, plan: &Plan) -> Arc<Plan> {
        Arc::new(Plan {
            epoch: plan.epoch,
            from_block: s.sent.load(Ordering::Acquire),
            controllers: plan.controllers.clone(),
        })
    }

    /// Registers for a session's events.
    pub(super) fn watch(&self, id: u64) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters.borrow_mut().insert(id, tx);
        rx
    }

    /// A new plan over the live controllers of the session, from the next unsent block.
    pub(super) fn replan(&self, s: &Arc<Session>, old: &Plan) -> Option<Arc<Plan>> {
        let live: Vec<usize> = old
            .controllers
            .iter()
            .copied()
            .filter(|&c| self.shared.live[c].load(Ordering::Acquire))
            .collect();
        let from = s.sent.load(Ordering::Acquire);
        // A stalled (not dead) controller is skipped this time round.
        let stalled = old.controller(from);
        let mut next: Vec<usize> = live.iter().copied().filter(|&c| c != stalled).collect();
        if next.is_empty() {
            next = live;
        }
        if next.is_empty() {
            return None;
        }
        let plan = Arc::new(Plan {
            epoch: old.epoch + 1,
            from_block: from,
            controllers: next,
        });
        s.parked.store(NONE, Ordering::Release);
        s.epoch.store(plan.epoch, Ordering::Release);
        self.shared.metrics.replans.fetch_add(1, Ordering::Relaxed);
        warn!(session = s.id, from, epoch = plan.epoch, controllers = ?plan.controllers, "re-planned a stalled session");
        Some(plan)
    }
}

async fn open(
    coord: &CoordRef,
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    name: &str,
    offset: u64,
    length: Option<u64>,
    rate: Option<u64>,
) {
    let limits = coord.shared.cfg.limits;
    let st = limits.send_timeout;
    let (s, plan) = match coord.new_session(name, offset, length, rate, Delivery::Framed) {
        Ok(x) => x,
        Err((code, message)) => {
            let _ = send_reply(wr, &error(code, message), st).await;
            return;
        }
    };
    let mut events = coord.watch(s.id);
    let info = SessionInfo {
        session: s.id,
        secret: hex(&s.secret),
        length: s.length,
        size: coord.store.borrow().get(name).map_or(0, |i| i.size),
        blocks: s.blocks,
        block_size: s.block_size,
        data_ports: coord.shared.data_ports.clone(),
        plan: (*plan).clone(),
    };
    if let Err(f) = send_reply(wr, &Reply::Session(info), st).await {
        coord.end(&s, Err(f));
        return;
    }
    if s.blocks == 0 {
        let _ = send_reply(wr, &Reply::Done, st).await;
        coord.end(&s, Ok(()));
        return;
    }
    // Every planned data channel within the handshake timeout, or the session (and its
    // admission) is given back.
    let attached = tokio::time::timeout(limits.handshake_timeout, async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::Attached(_)) {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(attached, Ok(true)) {
        let f = Failure::AttachTimeout;
        let _ = send_reply(wr, &error(f.code(), f.to_string()), st).await;
        coord.end(&s, Err(f));
        return;
    }
    s.advance(Phase::Attached);
    let r = super::watchdog::supervise(coord, &s, plan, events, Face::Framed { rd, wr }).await;
    let reply = match r {
        Ok(()) => Reply::Done,
        Err(f) => error(f.code(), format!("session failed: {f}")),
    };
    let _ = send_reply(wr, &reply, st).await;
    coord.end(&s, r);
}
