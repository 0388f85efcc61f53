//! The coordinator: control connections (open, put, list, remove), admission control,
//! planning, the watchdog that re-plans stalled sessions, and the HTTP face.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::proto::{ItemInfo, LIST_PAGE, MAX_LINE, Plan, Reply, Request, SessionInfo, hex};
use super::store::{ContentStore, StoreError};
use super::{DataRequest, Delivery, Event, NONE, Session, Shared, StreamMsg, Sync};

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
    volume: Arc<crate::backplane::Volume>,
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
            let store = volume
                .open_handle()
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    ContentStore::open(h, cfg.block_size.bytes(), cfg.catalog_entries)
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
    let Ok(control) = tokio::net::TcpListener::from_std(control) else {
        return;
    };
    let http = http.and_then(|h| tokio::net::TcpListener::from_std(h).ok());
    if let Some(h) = http {
        tokio::task::spawn_local(super::http::serve(Rc::clone(&coord), h, shutdown.clone()));
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(ev) = events.recv() => {
                let id = match &ev {
                    Event::Attached(id) | Event::Finished(id) | Event::ClientGone(id) => *id,
                };
                if let Some(w) = coord.waiters.borrow().get(&id) {
                    let _ = w.send(ev);
                }
            }
            c = control.accept() => if let Ok((s, _)) = c {
                tokio::task::spawn_local(control_conn(Rc::clone(&coord), s));
            },
        }
    }
    for tx in &coord.shared.mailboxes {
        let _ = tx.send(StreamMsg::Stop);
    }
}

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

async fn send(w: &mut tokio::net::tcp::OwnedWriteHalf, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn error(code: u16, message: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
    }
}

async fn control_conn(coord: CoordRef, s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_LINE || !line.ends_with(b"\n") {
            let _ = send(
                &mut wr,
                &error(400, format!("request line longer than {MAX_LINE} bytes")),
            )
            .await;
            return;
        }
        let req: Request = match super::proto::parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                if send(&mut wr, &error(400, format!("bad request: {e}")))
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
                    let _ = send(&mut wr, &r).await;
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
        if send(&mut wr, &reply).await.is_err() {
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
    send(wr, &Reply::Continue)
        .await
        .map_err(|e| broken(error(400, format!("upload: {e}"))))?;
    let idle = coord.shared.limits.idle_timeout;
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
                t0: std::sync::Mutex::new(None),
                epoch: AtomicU32::new(1),
                sent: AtomicU64::new(0),
                parked: AtomicU64::new(NONE),
                attached: AtomicUsize::new(0),
                finished: AtomicBool::new(false),
                failed: AtomicBool::new(false),
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
        if r.is_err() {
            self.shared
                .metrics
                .sessions_refused
                .fetch_add(1, Ordering::Relaxed);
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

    /// Ends a session everywhere.
    pub(super) fn end(&self, s: &Arc<Session>, ok: bool) {
        s.failed.store(!ok, Ordering::Release);
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
        let controllers = s.controllers.lock().map(|c| c.clone()).unwrap_or_default();
        for &c in &controllers {
            self.shared.load[c].fetch_sub(1, Ordering::AcqRel);
        }
        for tx in &self.shared.mailboxes {
            let _ = tx.send(StreamMsg::End(s.id));
        }
        let m = &self.shared.metrics;
        m.sessions_active.fetch_sub(1, Ordering::Relaxed);
        if ok {
            m.sessions_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            m.sessions_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers for a session's events.
    pub(super) fn watch(&self, id: u64) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters.borrow_mut().insert(id, tx);
        rx
    }

    /// A new plan over the live controllers of the session, from the next unsent block.
    fn replan(&self, s: &Arc<Session>, old: &Plan) -> Option<Arc<Plan>> {
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
    let (s, mut plan) = match coord.new_session(name, offset, length, rate, Delivery::Framed) {
        Ok(x) => x,
        Err((code, message)) => {
            let _ = send(wr, &error(code, message)).await;
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
    if send(wr, &Reply::Session(info)).await.is_err() {
        coord.end(&s, false);
        return;
    }
    if s.blocks == 0 {
        let _ = send(wr, &Reply::Done).await;
        coord.end(&s, true);
        return;
    }
    // Wait for every planned data channel.
    let attached = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::Attached(_)) {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(attached, Ok(true)) {
        let _ = send(wr, &error(408, "data channels did not attach in time")).await;
        coord.end(&s, false);
        return;
    }
    coord.kick(&s, &plan, None);
    let timeout = Duration::from_millis(coord.shared.cfg.sync_timeout_ms);
    let mut last = (s.sent.load(Ordering::Acquire), Instant::now());
    let mut tick = tokio::time::interval(timeout / 4);
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Finished(_)) => {
                    let _ = send(wr, &Reply::Done).await;
                    coord.end(&s, true);
                    return;
                }
                Some(Event::ClientGone(_)) | None => {
                    coord.end(&s, false);
                    return;
                }
                Some(Event::Attached(_)) => {}
            },
            r = rd.read(&mut probe) => {
                // The client closed (or broke) the control connection: the session ends.
                let _ = r;
                coord.end(&s, false);
                return;
            }
            _ = tick.tick() => {
                let sent = s.sent.load(Ordering::Acquire);
                if sent != last.0 {
                    last = (sent, Instant::now());
                    continue;
                }
                // Pacing waits are not stalls.
                let paced_wait = s.rate.is_some_and(|r| r > 0) && {
                    let t0 = *s.t0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    t0.is_some_and(|t0| {
                        let due = (sent * s.block_size) as f64 * 8.0 / s.rate.unwrap_or(1) as f64;
                        t0 + Duration::from_secs_f64(due) > Instant::now()
                    })
                };
                if paced_wait || last.1.elapsed() < timeout {
                    continue;
                }
                match coord.replan(&s, &plan) {
                    Some(p) => {
                        plan = p;
                        if send(wr, &Reply::Replan((*plan).clone())).await.is_err() {
                            coord.end(&s, false);
                            return;
                        }
                        last = (sent, Instant::now());
                        coord.kick(&s, &plan, None);
                    }
                    None => {
                        let _ = send(wr, &error(503, "no live controller left for the session")).await;
                        coord.end(&s, false);
                        return;
                    }
                }
            }
        }
    }
}
