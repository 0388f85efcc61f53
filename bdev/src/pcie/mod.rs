//! The nvme-pcie engine: a namespace of an NVMe subsystem behind several PCIe controllers,
//! each Baton controller thread reaching it through its own controller's I/O queue pair
//! with the user-space driver. Requests become commands in flight up to the queue's depth
//! (larger ones split at MDTS); the thread's reactor polls the completion queue between its
//! network work while anything is in flight, and sleeps otherwise. Data moves by DMA
//! straight into and out of the caller's pooled buffers: the thread's [`BufPool`] slabs are
//! mapped for the controller when the handle opens.
//!
//! Recovery: a queue broken by a timed-out command is deleted and replaced on the same
//! controller by its handle alone; a controller with a fatal status (or one that cannot
//! delete or create a queue pair) is reset for every handle on it (see the `path` module's
//! generations), requests failing at once as "path down" meanwhile, and after
//! [`MAX_RESET_ATTEMPTS`] failed resets in a row the path stays down.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ffi::PciDevice;
use nvme_driver::{Controller, DriverError, IoCommand, IoQueue, NamespaceInfo, SubmitError};
use tokio::sync::{Notify, watch};

use crate::io::{check, finish};
use crate::slots::Slots;
use crate::{BlockIo, BufPool, Geometry, IoBuf, IoError, Op, Request, Sink};

mod path;

pub use path::MAX_RESET_ATTEMPTS;
use path::{Counters, Path, Step};

/// Blocks one Write Zeroes command covers at most.
const ZEROES_MAX: u64 = 65536;
/// Blocks one deallocate range covers at most.
const DEALLOCATE_MAX: u64 = u32::MAX as u64;
/// How long a handle whose broken queue waits for the path's lock (held by another
/// thread's reset or queue replacement) before trying again.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// A shared namespace behind several PCIe controllers (paths).
pub struct PcieNamespace<D: PciDevice> {
    nsid: u32,
    depth: u16,
    timeout: Duration,
    paths: Vec<Arc<Path<D>>>,
    geometry: Geometry,
    counters: Arc<Counters>,
}

impl<D: PciDevice> std::fmt::Debug for PcieNamespace<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcieNamespace")
            .field("nsid", &self.nsid)
            .field("paths", &self.paths.len())
            .field("geometry", &self.geometry)
            .finish()
    }
}

impl<D: PciDevice> PcieNamespace<D> {
    /// Namespace `nsid` behind `devices` (one per PCIe controller). The first controller is
    /// brought up now to read the geometry; the others when a thread first uses them. Each
    /// queue pair has `depth` entries; a command not completed within `timeout` fails.
    pub fn new(
        devices: Vec<Arc<D>>,
        nsid: u32,
        depth: u16,
        timeout: Duration,
    ) -> Result<Self, DriverError> {
        let Some(first) = devices.first() else {
            return Err(DriverError::Invalid(
                "an nvme-pcie device needs a controller".into(),
            ));
        };
        let mut ctrl = Controller::new(Arc::clone(first))?;
        let ns = ctrl.namespace(nsid)?;
        let geometry = Geometry {
            block_size: ns.block_size,
            size: ns.blocks * u64::from(ns.block_size),
            optimal_boundary: 0,
            volatile_cache: ctrl.identity().vwc & 1 == 1,
        };
        let mut ctrl = Some(ctrl);
        let paths: Vec<Arc<Path<D>>> = devices
            .into_iter()
            .map(|dev| Arc::new(Path::new(dev, ctrl.take())))
            .collect();
        Ok(Self {
            nsid,
            depth,
            timeout,
            paths,
            geometry,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The namespace's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Number of PCIe controllers.
    pub fn paths(&self) -> usize {
        self.paths.len()
    }

    /// I/O queue pairs created so far (including the replacements of broken ones and those
    /// made again after controller resets).
    pub fn queue_pairs(&self) -> u64 {
        self.counters.queue_pairs.load(Ordering::Relaxed)
    }

    /// Controller resets that brought a path back after a fatal status (or after a queue
    /// pair that could not be deleted or created).
    pub fn resets(&self) -> u64 {
        self.counters.resets.load(Ordering::Relaxed)
    }

    /// Whether a path stays down: its controller failed [`MAX_RESET_ATTEMPTS`] resets in a
    /// row, and every request through it fails.
    pub fn is_down(&self) -> bool {
        self.paths.iter().any(|p| p.is_down())
    }

    /// A handle for the calling thread through controller `path % paths()`, with its own
    /// I/O queue pair; `pool`'s slabs are mapped for that controller's DMA, so only buffers
    /// from `pool` carry data.
    pub fn open(&self, path: usize, pool: &BufPool) -> Result<PcieIo<D>, DriverError>
    where
        D: Send + Sync + 'static,
    {
        let path = Arc::clone(&self.paths[path % self.paths.len()]);
        let mut ctl = path.lock();
        if ctl.ctrl.is_none() {
            ctl.ctrl = Some(Controller::new(Arc::clone(&ctl.dev))?);
        }
        let mut map = Vec::new();
        for slab in pool.slabs() {
            let iova = ctl.dev.map_slab(&slab)?;
            map.push((slab.vaddr(), slab.len(), iova));
        }
        let (q, generation) = match path.connect(&mut ctl, self.depth, self.timeout, &self.counters)
        {
            Step::Ready(q, generation) => (*q, generation),
            Step::Wait(after) => {
                return Err(DriverError::Invalid(format!(
                    "the controller is being reset: try again in {after:?}"
                )));
            }
            Step::Down => return Err(DriverError::Fatal),
        };
        let ctrl = ctl.ctrl.as_mut().expect("connected");
        let ns = ctrl.namespace(self.nsid)?;
        drop(ctl);
        let link = Link {
            path,
            depth: self.depth,
            timeout: self.timeout,
            counters: Arc::clone(&self.counters),
        };
        Ok(PcieIo::new(q, generation, ns, map, self.geometry, link))
    }
}

/// A request being carried out as one or more commands.
struct Parent {
    req: Request,
    sink: Rc<dyn Sink>,
    /// Device address of the buffer, for data requests.
    iova: u64,
    /// Bytes already issued as commands.
    issued: u64,
    /// Commands in flight.
    out: u32,
    error: Option<IoError>,
    /// A command timed out or was abandoned: the device may still write the buffer.
    lost: bool,
}

/// A handle's way to its path: what it needs to replace its queue pair.
struct Link<D: PciDevice> {
    path: Arc<Path<D>>,
    depth: u16,
    timeout: Duration,
    counters: Arc<Counters>,
}

struct Inner<D: PciDevice> {
    q: RefCell<IoQueue<D>>,
    /// The path generation `q` belongs to: once the path's has moved on, `q` is stale.
    generation: Cell<u64>,
    link: Link<D>,
    ns: NamespaceInfo,
    /// (slab address, length, device address) of the mapped pool slabs.
    map: Vec<(u64, usize, u64)>,
    geometry: Geometry,
    reqs: RefCell<Slots<Parent>>,
    /// Requests with commands still to issue, oldest first.
    issuing: RefCell<VecDeque<usize>>,
    /// Completions taken from the queue and not yet handed out (kept to reuse its memory).
    done: RefCell<Vec<(u64, Result<(), DriverError>)>>,
    /// Buffers the device may still write (their commands timed out or were abandoned),
    /// with the generation of their queue: never reused until that queue is deleted or the
    /// controller disabled.
    quarantine: RefCell<Vec<(u64, IoBuf)>>,
    /// Stale queue pairs, with their generation: the device may use their rings until it
    /// is disabled.
    retired: RefCell<Vec<(u64, IoQueue<D>)>>,
    wake: Notify,
}

/// One thread's handle on a [`PcieNamespace`].
pub struct PcieIo<D: PciDevice + Send + Sync + 'static> {
    inner: Rc<Inner<D>>,
    poller: tokio::task::JoinHandle<()>,
}

impl<D: PciDevice + Send + Sync + 'static> PcieIo<D> {
    fn new(
        q: IoQueue<D>,
        generation: u64,
        ns: NamespaceInfo,
        map: Vec<(u64, usize, u64)>,
        geometry: Geometry,
        link: Link<D>,
    ) -> Self {
        let cap = q.capacity();
        let changed = link.path.subscribe();
        let inner = Rc::new(Inner {
            q: RefCell::new(q),
            generation: Cell::new(generation),
            link,
            ns,
            map,
            geometry,
            reqs: RefCell::new(Slots::with_capacity(cap)),
            issuing: RefCell::new(VecDeque::with_capacity(cap)),
            done: RefCell::new(Vec::with_capacity(cap)),
            quarantine: RefCell::new(Vec::new()),
            retired: RefCell::new(Vec::new()),
            wake: Notify::new(),
        });
        let poller = tokio::task::spawn_local(poll_loop(Rc::downgrade(&inner), changed));
        Self { inner, poller }
    }

    /// The queue pair's depth (most commands in flight).
    pub fn depth(&self) -> usize {
        self.inner.q.borrow().capacity()
    }
}

impl<D: PciDevice + Send + Sync + 'static> Drop for PcieIo<D> {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Waits for a submission, or for the path's generation to move on.
async fn idle(wake: &Notify, changed: &mut watch::Receiver<u64>) {
    tokio::select! {
        () = wake.notified() => {}
        r = changed.changed() => {
            if r.is_err() {
                // The path is gone (it cannot be while the handle holds it): submissions only.
                wake.notified().await;
            }
        }
    }
}

/// Polls the completion queue while commands are in flight, yielding to the thread's other
/// work between polls; waits for a submission otherwise. Once the path's generation has
/// moved on (its controller needs a reset), fails what the handle has in flight and gets a
/// queue pair of the new generation, off the reactor, backing off while resets fail.
async fn poll_loop<D: PciDevice + Send + Sync + 'static>(
    inner: Weak<Inner<D>>,
    mut changed: watch::Receiver<u64>,
) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.stale() {
            changed.borrow_and_update();
            i.fail_all();
            i.release();
            let (path, counters) = (Arc::clone(&i.link.path), Arc::clone(&i.link.counters));
            let (depth, timeout) = (i.link.depth, i.link.timeout);
            drop(i);
            let step =
                tokio::task::spawn_blocking(move || path.reconnect(depth, timeout, &counters))
                    .await;
            let Some(i) = inner.upgrade() else { return };
            match step {
                Ok(Step::Ready(q, generation)) => i.install(*q, generation),
                Ok(Step::Wait(after)) => {
                    drop(i);
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        _ = changed.changed() => {}
                    }
                }
                Ok(Step::Down) => {
                    i.release();
                    idle(&i.wake, &mut changed).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "NVMe controller reconnect task failed");
                    drop(i);
                    tokio::time::sleep(LOCK_RETRY).await;
                }
            }
            continue;
        }
        // A broken queue is polled until it is replaced (in `poll`), even with nothing on
        // it: its timed-out commands never complete.
        let busy = {
            let q = i.q.borrow();
            q.in_flight() > 0
                || q.is_broken()
                || !i.issuing.borrow().is_empty()
                || !i.reqs.borrow().is_empty()
        };
        if !busy {
            // Holding the handle's state while asleep is fine: dropping the handle aborts
            // this task.
            idle(&i.wake, &mut changed).await;
            continue;
        }
        let retry = i.poll();
        drop(i);
        if retry {
            tokio::time::sleep(LOCK_RETRY).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Closing a handle deletes its queue pair, so its ID is free for the next handle (a
/// namespace removed and added again many times never runs out of queues) and the device
/// holds none of its commands; requests still on it fail. A control-plane step (namespace
/// removal, shutdown): it waits for the path's lock, held at most for one reset's
/// admin-command timeouts. Whatever the device may still write (the queue could not be
/// deleted, or belongs to a generation not yet quiesced) is leaked, never reused.
impl<D: PciDevice> Drop for Inner<D> {
    fn drop(&mut self) {
        let deleted = !self.stale() && {
            let mut ctl = self.link.path.lock();
            match ctl.ctrl.as_mut() {
                Some(ctrl) if !self.stale() => self.delete_queue(ctrl),
                _ => false,
            }
        };
        // Deleted, the queue holds nothing the device could still write.
        self.fail_requests("the device handle was closed", !deleted);
        self.release();
        let bufs = std::mem::take(self.quarantine.get_mut());
        let mut queues = std::mem::take(self.retired.get_mut());
        if !deleted || !bufs.is_empty() || !queues.is_empty() {
            tracing::warn!(
                buffers = bufs.len(),
                queues = queues.len() + usize::from(!deleted),
                "a closed NVMe handle leaves memory the device may still write: leaked"
            );
            std::mem::forget(bufs);
            for (_, q) in queues.drain(..) {
                q.leak();
            }
            if !deleted {
                self.q.get_mut().leak();
            }
        }
    }
}

impl<D: PciDevice> Inner<D> {
    fn iova_of(&self, buf: &IoBuf) -> Option<u64> {
        let (slab, offset) = buf.placement();
        self.map
            .iter()
            .find(|&&(v, len, _)| v == slab && offset < len)
            .map(|&(_, _, iova)| iova + offset as u64)
    }

    /// The next command of a request, and how many bytes it covers.
    fn next_command(&self, p: &Parent) -> (IoCommand, u64) {
        let bs = u64::from(self.geometry.block_size);
        let slba = (p.req.offset + p.issued) / bs;
        let left = p.req.len - p.issued;
        let mdts = self.q.borrow().max_transfer() as u64;
        let nlb = |max_blocks: u64| u32::try_from((left / bs).min(max_blocks)).unwrap_or(u32::MAX);
        match p.req.op {
            Op::Read | Op::Write => {
                let n = nlb(mdts / bs);
                let iova = p.iova + p.issued;
                let cmd = if p.req.op == Op::Read {
                    IoCommand::Read { slba, nlb: n, iova }
                } else {
                    IoCommand::Write { slba, nlb: n, iova }
                };
                (cmd, u64::from(n) * bs)
            }
            Op::Flush => (IoCommand::Flush, 0),
            Op::WriteZeroes => {
                let n = nlb(ZEROES_MAX);
                (IoCommand::WriteZeroes { slba, nlb: n }, u64::from(n) * bs)
            }
            Op::Discard => {
                let n = nlb(DEALLOCATE_MAX);
                (IoCommand::Deallocate { slba, nlb: n }, u64::from(n) * bs)
            }
        }
    }

    /// Issues commands for waiting requests while the queue has room.
    fn pump(&self) {
        loop {
            let Some(&idx) = self.issuing.borrow().front() else {
                return;
            };
            let mut reqs = self.reqs.borrow_mut();
            let p = reqs
                .get_mut(idx)
                .expect("issuing requests are in the table");
            let (cmd, bytes) = self.next_command(p);
            let r = self.q.borrow_mut().submit(&self.ns, cmd, idx as u64);
            match r {
                Ok(()) => {
                    p.out += 1;
                    p.issued += bytes;
                    if p.issued >= p.req.len {
                        self.issuing.borrow_mut().pop_front();
                    }
                }
                Err(SubmitError::Full) => return,
                Err(SubmitError::Invalid(e)) => {
                    p.error.get_or_insert(IoError::Invalid(e.to_string()));
                    self.issuing.borrow_mut().pop_front();
                    let done = p.out == 0;
                    drop(reqs);
                    if done {
                        self.finish(idx);
                    }
                }
                Err(SubmitError::Broken(e)) => {
                    drop(reqs);
                    self.fail_issuing(&e);
                    return;
                }
            }
        }
    }

    /// The queue is unusable: requests with commands left to issue fail (those with
    /// commands in flight finish when those do).
    fn fail_issuing(&self, e: &DriverError) {
        let waiting: Vec<usize> = self.issuing.borrow_mut().drain(..).collect();
        for idx in waiting {
            let done = {
                let mut reqs = self.reqs.borrow_mut();
                let p = reqs
                    .get_mut(idx)
                    .expect("issuing requests are in the table");
                p.error.get_or_insert(IoError::PathDown(e.to_string()));
                p.out == 0
            };
            if done {
                self.finish(idx);
            }
        }
    }

    /// Takes the completions; returns whether the broken queue waits for the path's lock.
    fn poll(&self) -> bool {
        let mut done = self.done.take();
        self.q.borrow_mut().poll(|tag, r| done.push((tag, r)));
        for (tag, r) in done.drain(..) {
            let idx = usize::try_from(tag).unwrap_or(usize::MAX);
            let finished = {
                let mut reqs = self.reqs.borrow_mut();
                let Some(p) = reqs.get_mut(idx) else { continue };
                p.out -= 1;
                if let Err(e) = r {
                    p.lost |= matches!(e, DriverError::Timeout(_) | DriverError::Fatal);
                    p.error.get_or_insert(match e {
                        DriverError::Status {
                            status, sct, sc, ..
                        } => IoError::Status { status, sct, sc },
                        DriverError::Timeout(_) => IoError::Timeout(Duration::ZERO),
                        other => IoError::PathDown(other.to_string()),
                    });
                }
                p.out == 0 && p.issued >= p.req.len && !self.issuing.borrow().contains(&idx)
            };
            if finished {
                self.finish(idx);
            }
        }
        *self.done.borrow_mut() = done;
        if self.q.borrow().is_fatal() {
            // Every handle on the path fails its requests and reconnects (`poll_loop`).
            self.link
                .path
                .fail(self.generation.get(), "controller fatal status");
            return false;
        }
        if self.q.borrow().is_broken() && !self.issuing.borrow().is_empty() {
            self.fail_issuing(&DriverError::QueueBroken(self.q.borrow().qid()));
        }
        if self.q.borrow().is_broken() && self.reqs.borrow().is_empty() {
            return self.recover();
        }
        self.pump();
        false
    }

    /// Whether the path's generation has moved on from this handle's queue pair.
    fn stale(&self) -> bool {
        self.link.path.generation() != self.generation.get()
    }

    /// The queue is stale: every request fails, those with commands on the device keeping
    /// their buffers from the pool until the controller is disabled.
    fn fail_all(&self) {
        let why = if self.link.path.is_down() {
            "the controller stays down after failed resets"
        } else {
            "the controller is being reset"
        };
        self.fail_requests(why, true);
    }

    /// Every request fails as "path down" (`why`); with `device_may_write`, those with
    /// commands on the device keep their buffers from the pool.
    fn fail_requests(&self, why: &str, device_may_write: bool) {
        self.issuing.borrow_mut().clear();
        let reqs = self.reqs.borrow_mut().drain();
        for mut p in reqs {
            p.lost |= p.out > 0 && device_may_write;
            p.error.get_or_insert(IoError::PathDown(why.into()));
            self.complete(p);
        }
    }

    /// Deletes the handle's queue pair (which aborts what the device still holds of it),
    /// freeing the buffers kept from the device for this generation; if the controller
    /// cannot, it needs a reset: the path's generation moves on.
    fn delete_queue(&self, ctrl: &mut Controller<D>) -> bool {
        let generation = self.generation.get();
        let qid = self.q.borrow().qid();
        if let Err(e) = ctrl.delete_io_queue(&self.q.borrow()) {
            tracing::error!(qid, error = %e, "I/O queue could not be deleted");
            self.link
                .path
                .fail(generation, "an I/O queue could not be deleted");
            return false;
        }
        self.quarantine
            .borrow_mut()
            .retain(|(g, _)| *g != generation);
        true
    }

    /// Frees the buffers and queues the device can no longer reach: those of generations
    /// older than the newest the controller was disabled for.
    fn release(&self) {
        let quiesced = self.link.path.quiesced();
        self.quarantine.borrow_mut().retain(|(g, _)| *g >= quiesced);
        self.retired.borrow_mut().retain(|(g, _)| *g >= quiesced);
    }

    /// Takes a new queue pair of `generation` (after a reset).
    fn install(&self, q: IoQueue<D>, generation: u64) {
        let (old, qid) = (self.q.replace(q), self.q.borrow().qid());
        let before = self.generation.replace(generation);
        self.retired.borrow_mut().push((before, old));
        self.release();
        tracing::info!(qid, generation, "new I/O queue after a controller reset");
        self.pump();
    }

    /// A command timed out and the queue is broken; once nothing is left on it, the queue
    /// pair is deleted (which aborts what the device still holds of it) and a new one is
    /// created on the same controller. The buffers kept from the device are free again
    /// then. If the controller cannot do either, it needs a reset: the path's generation
    /// moves on. Returns whether another thread holds the path (try again later).
    fn recover(&self) -> bool {
        let r = &self.link;
        let Some(mut ctl) = r.path.try_lock() else {
            return true;
        };
        if self.stale() {
            return false;
        }
        let generation = self.generation.get();
        let Some(ctrl) = ctl.ctrl.as_mut() else {
            r.path.fail(generation, "no controller");
            return false;
        };
        let old = self.q.borrow().qid();
        if !self.delete_queue(ctrl) {
            return false;
        }
        match ctrl.create_io_queue(r.depth, r.timeout) {
            Ok(q) => {
                let qid = q.qid();
                *self.q.borrow_mut() = q;
                r.counters.queue_pairs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    old,
                    new = qid,
                    "replaced an I/O queue after a command timed out"
                );
            }
            Err(e) => {
                tracing::error!(qid = old, error = %e, "no new I/O queue");
                r.path.fail(generation, "no new I/O queue");
            }
        }
        false
    }

    fn finish(&self, idx: usize) {
        let p = self.reqs.borrow_mut().remove(idx);
        if let Some(p) = p {
            self.complete(p);
        }
    }

    /// Hands a request's result and buffer back (or keeps the buffer from the pool while
    /// the device may still write it).
    fn complete(&self, mut p: Parent) {
        if p.lost {
            if let Some(b) = p.req.buf.take() {
                self.quarantine
                    .borrow_mut()
                    .push((self.generation.get(), b));
            }
        }
        let result = match p.error.take() {
            Some(e) => Err(e),
            None => {
                if let Some(b) = p.req.buf.as_mut() {
                    b.set_window(0, usize::try_from(p.req.len).unwrap_or(0));
                }
                Ok(())
            }
        };
        finish(p.req, result, &p.sink);
    }
}

impl<D: PciDevice + Send + Sync + 'static> BlockIo for PcieIo<D> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        let i = &self.inner;
        if let Err(e) = check(&req, &i.geometry) {
            return finish(req, Err(e), sink);
        }
        let iova = match req.buf.as_ref() {
            Some(b) if matches!(req.op, Op::Read | Op::Write) => match i.iova_of(b) {
                Some(a) => a,
                None => {
                    let e = IoError::Invalid("the buffer is not from this thread's pool".into());
                    return finish(req, Err(e), sink);
                }
            },
            _ => 0,
        };
        // One atomic load: a request never waits for a reset.
        if i.stale() {
            let e = IoError::PathDown(if i.link.path.is_down() {
                "the controller stays down after failed resets".into()
            } else {
                "the controller is being reset".into()
            });
            return finish(req, Err(e), sink);
        }
        if i.q.borrow().is_broken() {
            let e = IoError::PathDown(format!("queue {} is unusable", i.q.borrow().qid()));
            return finish(req, Err(e), sink);
        }
        let idx = i.reqs.borrow_mut().insert(Parent {
            req,
            sink: Rc::clone(sink),
            iova,
            issued: 0,
            out: 0,
            error: None,
            lost: false,
        });
        i.issuing.borrow_mut().push_back(idx);
        i.pump();
        i.wake.notify_one();
    }

    fn in_flight(&self) -> usize {
        self.inner.reqs.borrow().len()
    }
}

#[cfg(test)]
mod tests;
