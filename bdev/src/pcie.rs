//! The nvme-pcie engine: a namespace of an NVMe subsystem behind several PCIe controllers,
//! each Baton controller thread reaching it through its own controller's I/O queue pair
//! with the user-space driver. Requests become commands in flight up to the queue's depth
//! (larger ones split at MDTS); the thread's reactor polls the completion queue between its
//! network work while anything is in flight, and sleeps otherwise. Data moves by DMA
//! straight into and out of the caller's pooled buffers: the thread's [`BufPool`] slabs are
//! mapped for the controller when the handle opens.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffi::PciDevice;
use nvme_driver::{Controller, DriverError, IoCommand, IoQueue, NamespaceInfo, SubmitError};

use crate::io::{check, finish};
use crate::slots::Slots;
use crate::{BlockIo, BufPool, Geometry, IoBuf, IoError, Op, Request, Sink};

/// Blocks one Write Zeroes command covers at most.
const ZEROES_MAX: u64 = 65536;
/// Blocks one deallocate range covers at most.
const DEALLOCATE_MAX: u64 = u32::MAX as u64;

struct Path<D: PciDevice> {
    dev: Arc<D>,
    ctrl: Option<Controller<D>>,
}

/// A shared namespace behind several PCIe controllers (paths).
pub struct PcieNamespace<D: PciDevice> {
    nsid: u32,
    depth: u16,
    timeout: Duration,
    paths: Vec<Arc<Mutex<Path<D>>>>,
    geometry: Geometry,
    queue_pairs: Arc<AtomicU64>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let mut paths: Vec<Arc<Mutex<Path<D>>>> = devices
            .into_iter()
            .map(|dev| Arc::new(Mutex::new(Path { dev, ctrl: None })))
            .collect();
        lock(&paths[0]).ctrl = Some(ctrl);
        paths.shrink_to_fit();
        Ok(Self {
            nsid,
            depth,
            timeout,
            paths,
            geometry,
            queue_pairs: Arc::new(AtomicU64::new(0)),
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

    /// I/O queue pairs created so far (including the replacements of broken ones).
    pub fn queue_pairs(&self) -> u64 {
        self.queue_pairs.load(Ordering::Relaxed)
    }

    /// A handle for the calling thread through controller `path % paths()`, with its own
    /// I/O queue pair; `pool`'s slabs are mapped for that controller's DMA, so only buffers
    /// from `pool` carry data.
    pub fn open(&self, path: usize, pool: &BufPool) -> Result<PcieIo<D>, DriverError>
    where
        D: 'static,
    {
        let path = Arc::clone(&self.paths[path % self.paths.len()]);
        let mut p = lock(&path);
        if p.ctrl.is_none() {
            p.ctrl = Some(Controller::new(Arc::clone(&p.dev))?);
        }
        let mut map = Vec::new();
        for slab in pool.slabs() {
            let iova = p.dev.map_slab(&slab)?;
            map.push((slab.vaddr(), slab.len(), iova));
        }
        let ctrl = p.ctrl.as_mut().expect("brought up above");
        let ns = ctrl.namespace(self.nsid)?;
        let q = ctrl.create_io_queue(self.depth, self.timeout)?;
        drop(p);
        self.queue_pairs.fetch_add(1, Ordering::Relaxed);
        let recovery = Recovery {
            path,
            depth: self.depth,
            timeout: self.timeout,
            queue_pairs: Arc::clone(&self.queue_pairs),
            gave_up: std::cell::Cell::new(false),
        };
        Ok(PcieIo::new(q, ns, map, self.geometry, recovery))
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
    /// A command timed out: the device may still write the buffer.
    lost: bool,
}

/// What a handle needs to replace its queue pair once a command on it timed out.
struct Recovery<D: PciDevice> {
    path: Arc<Mutex<Path<D>>>,
    depth: u16,
    timeout: Duration,
    queue_pairs: Arc<AtomicU64>,
    /// The last attempt failed (or the controller is fatal): the handle stays down.
    gave_up: std::cell::Cell<bool>,
}

struct Inner<D: PciDevice> {
    q: RefCell<IoQueue<D>>,
    recovery: Recovery<D>,
    ns: NamespaceInfo,
    /// (slab address, length, device address) of the mapped pool slabs.
    map: Vec<(u64, usize, u64)>,
    geometry: Geometry,
    reqs: RefCell<Slots<Parent>>,
    /// Requests with commands still to issue, oldest first.
    issuing: RefCell<VecDeque<usize>>,
    /// Buffers the device may still write (their commands timed out): never reused.
    quarantine: RefCell<Vec<IoBuf>>,
    wake: tokio::sync::Notify,
}

/// One thread's handle on a [`PcieNamespace`].
pub struct PcieIo<D: PciDevice + 'static> {
    inner: Rc<Inner<D>>,
    poller: tokio::task::JoinHandle<()>,
}

impl<D: PciDevice + 'static> PcieIo<D> {
    fn new(
        q: IoQueue<D>,
        ns: NamespaceInfo,
        map: Vec<(u64, usize, u64)>,
        geometry: Geometry,
        recovery: Recovery<D>,
    ) -> Self {
        let cap = q.capacity();
        let inner = Rc::new(Inner {
            q: RefCell::new(q),
            recovery,
            ns,
            map,
            geometry,
            reqs: RefCell::new(Slots::with_capacity(cap)),
            issuing: RefCell::new(VecDeque::with_capacity(cap)),
            quarantine: RefCell::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let poller = tokio::task::spawn_local(poll_loop(Rc::downgrade(&inner)));
        Self { inner, poller }
    }

    /// The queue pair's depth (most commands in flight).
    pub fn depth(&self) -> usize {
        self.inner.q.borrow().capacity()
    }
}

impl<D: PciDevice + 'static> Drop for PcieIo<D> {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Polls the completion queue while commands are in flight, yielding to the thread's other
/// work between polls; waits for a submission otherwise.
async fn poll_loop<D: PciDevice>(inner: Weak<Inner<D>>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        // A broken queue's timed-out commands never complete: with no request left there
        // is nothing to poll for (its replacement, if any, is made in `poll`).
        let busy = {
            let q = i.q.borrow();
            (!q.is_broken() && q.in_flight() > 0)
                || !i.issuing.borrow().is_empty()
                || !i.reqs.borrow().is_empty()
                || (q.is_broken() && !i.recovery.gave_up.get())
        };
        if !busy {
            // Holding the handle's state while asleep is fine: dropping the handle aborts
            // this task.
            i.wake.notified().await;
            continue;
        }
        i.poll();
        drop(i);
        tokio::task::yield_now().await;
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

    fn poll(&self) {
        let mut done = Vec::new();
        self.q.borrow_mut().poll(|tag, r| done.push((tag, r)));
        for (tag, r) in done {
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
        if self.q.borrow().is_broken() && !self.issuing.borrow().is_empty() {
            self.fail_issuing(&DriverError::QueueBroken(self.q.borrow().qid()));
        }
        if self.q.borrow().is_broken() && self.reqs.borrow().is_empty() {
            self.recover();
        }
        self.pump();
    }

    /// A command timed out and the queue is broken; once nothing is left on it, the queue
    /// pair is deleted (which aborts what the device still holds of it) and a new one is
    /// created on the same controller. The buffers kept from the device are free again
    /// then. A fatal controller needs a reset instead: the handle stays down.
    fn recover(&self) {
        let r = &self.recovery;
        if r.gave_up.get() {
            return;
        }
        if self.q.borrow().is_fatal() {
            r.gave_up.set(true);
            return;
        }
        let mut p = lock(&r.path);
        let Some(ctrl) = p.ctrl.as_mut() else {
            r.gave_up.set(true);
            return;
        };
        let old = self.q.borrow().qid();
        if let Err(e) = ctrl.delete_io_queue(&self.q.borrow()) {
            r.gave_up.set(true);
            tracing::error!(qid = old, error = %e, "broken I/O queue could not be deleted: the path stays down");
            return;
        }
        match ctrl.create_io_queue(r.depth, r.timeout) {
            Ok(q) => {
                let qid = q.qid();
                *self.q.borrow_mut() = q;
                self.quarantine.borrow_mut().clear();
                r.queue_pairs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    old,
                    new = qid,
                    "replaced an I/O queue after a command timed out"
                );
            }
            Err(e) => {
                r.gave_up.set(true);
                tracing::error!(qid = old, error = %e, "no new I/O queue: the path stays down");
            }
        }
    }

    fn finish(&self, idx: usize) {
        let Some(mut p) = self.reqs.borrow_mut().remove(idx) else {
            return;
        };
        if p.lost {
            if let Some(b) = p.req.buf.take() {
                self.quarantine.borrow_mut().push(b);
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

impl<D: PciDevice + 'static> BlockIo for PcieIo<D> {
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
mod tests {
    use super::*;
    use crate::testing::{local, read, run, write};
    use crate::{CompletionQueue, PoolClass};
    use nvme_driver::sim::SimNvme;

    fn namespace(paths: usize, timeout: Duration) -> (Vec<Arc<SimNvme>>, PcieNamespace<SimNvme>) {
        let sim = SimNvme::new(1, 16384, 5);
        // Controllers of one subsystem share its namespaces.
        let devs: Vec<Arc<SimNvme>> = (0..paths).map(|_| Arc::new(sim.sibling())).collect();
        let ns = PcieNamespace::new(devs.clone(), 1, 8, timeout).unwrap();
        (devs, ns)
    }

    fn pool() -> BufPool {
        BufPool::new(&[
            PoolClass {
                size: 4096,
                count: 16,
            },
            PoolClass {
                size: 1 << 20,
                count: 2,
            },
        ])
        .unwrap()
    }

    #[test]
    fn requests_are_commands_in_flight_completing_in_any_order() {
        let (devs, ns) = namespace(1, Duration::from_secs(10));
        local(async {
            let pool = pool();
            let io = ns.open(0, &pool).unwrap();
            assert_eq!(io.depth(), 7);
            let cq = Rc::new(CompletionQueue::default());
            let sink: Rc<dyn Sink> = cq.clone();
            devs[0].hold_io(true);
            // Ten requests on a queue of seven: three wait in the engine.
            for i in 0..10u64 {
                let mut b = pool.get(4096).unwrap();
                b.as_mut_slice().fill(u8::try_from(i).unwrap() + 1);
                io.submit(Request::write(i * 4096, 4096, b, i), &sink);
            }
            assert_eq!((io.in_flight(), devs[0].held()), (10, 7));
            devs[0].release(true);
            let mut tags = Vec::new();
            while tags.len() < 7 {
                let c = cq.next().await;
                c.result.unwrap();
                tags.push(c.tag);
            }
            assert_eq!(
                tags,
                vec![6, 5, 4, 3, 2, 1, 0],
                "the device's order, not submission's"
            );
            let rest: Vec<u64> = [cq.next().await, cq.next().await, cq.next().await]
                .into_iter()
                .map(|c| c.tag)
                .collect();
            assert_eq!(rest, vec![7, 8, 9]);
            assert_eq!(devs[0].media(1, 9 * 4096, 2), vec![10, 10]);
            assert_eq!(
                read(&io, &pool, 3 * 4096, 4096).await.unwrap(),
                vec![4u8; 4096]
            );
            assert_eq!(pool.free(), 18, "every buffer came back");
        });
    }

    #[test]
    fn large_requests_split_at_mdts_and_data_is_shared_across_paths() {
        let (_devs, ns) = namespace(2, Duration::from_secs(10));
        local(async {
            let (p0, p1) = (pool(), pool());
            let a = ns.open(0, &p0).unwrap();
            let b = ns.open(1, &p1).unwrap();
            assert_eq!(ns.queue_pairs(), 2);
            // 1 MiB with MDTS 128 KiB: eight commands.
            let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 249) as u8).collect();
            write(&a, &p0, 512, &data).await.unwrap();
            assert_eq!(read(&b, &p1, 512, 1 << 20).await.unwrap(), data);
            run(&b, Op::WriteZeroes, 512, 4096).await.unwrap();
            run(&b, Op::Discard, 4608, 4096).await.unwrap();
            run(&a, Op::Flush, 0, 0).await.unwrap();
            let back = read(&a, &p0, 512, 8192).await.unwrap();
            assert!(back.iter().all(|&x| x == 0));
        });
    }

    #[test]
    fn a_timeout_fails_the_request_and_the_queue_is_replaced() {
        let (devs, ns) = namespace(1, Duration::from_millis(50));
        local(async {
            let pool = pool();
            let io = ns.open(0, &pool).unwrap();
            write(&io, &pool, 0, &[0x5a; 4096]).await.unwrap();
            assert_eq!(ns.queue_pairs(), 1);
            devs[0].hold_io(true);
            let before = pool.free();
            assert!(matches!(
                read(&io, &pool, 0, 4096).await,
                Err(IoError::Timeout(_))
            ));
            // The broken queue pair was deleted, which aborted the command the device still
            // held (its buffer is free again), and a new one took its place.
            assert_eq!(ns.queue_pairs(), 2, "a new queue pair");
            assert_eq!(devs[0].held(), 0, "the held command went with its queue");
            assert_eq!(pool.free(), before, "the timed-out buffer is free again");
            devs[0].hold_io(false);
            assert_eq!(read(&io, &pool, 0, 4096).await.unwrap(), vec![0x5a; 4096]);
            // A second timeout on the new queue is recovered the same way.
            devs[0].hold_io(true);
            assert!(read(&io, &pool, 0, 4096).await.is_err());
            devs[0].hold_io(false);
            write(&io, &pool, 4096, &[7; 4096]).await.unwrap();
            assert_eq!(read(&io, &pool, 4096, 4096).await.unwrap(), vec![7; 4096]);
            assert_eq!(ns.queue_pairs(), 3);
        });
    }

    #[test]
    fn a_fatal_controller_keeps_the_handle_down() {
        let (devs, ns) = namespace(1, Duration::from_millis(50));
        local(async {
            let pool = pool();
            let io = ns.open(0, &pool).unwrap();
            devs[0].hold_io(true);
            let before = pool.free();
            let r = read(&io, &pool, 0, 4096);
            devs[0].fail();
            assert!(r.await.is_err());
            assert!(matches!(
                read(&io, &pool, 0, 4096).await,
                Err(IoError::PathDown(_))
            ));
            assert_eq!(ns.queue_pairs(), 1, "no new queue on a fatal controller");
            assert_eq!(
                pool.free(),
                before - 1,
                "the device may still write its buffer"
            );
            devs[0].release(false);
        });
    }

    #[test]
    fn buffers_of_another_pool_are_refused() {
        let (_devs, ns) = namespace(1, Duration::from_secs(10));
        local(async {
            let (mine, other) = (pool(), pool());
            let io = ns.open(0, &mine).unwrap();
            assert!(matches!(
                read(&io, &other, 0, 4096).await,
                Err(IoError::Invalid(_))
            ));
            assert!(read(&io, &mine, 0, 4096).await.is_ok());
        });
    }
}
