//! Lock-free per-device counters, read by the metrics exporter, and the handle wrapper that
//! counts each request when it completes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bdev::slots::Slots;
use bdev::{BlockIo, Completion, Extent, Geometry, Op, Request, Sink};

/// Counters of one backplane device, summed over every controller's handle.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Read operations.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write operations.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flushes: AtomicU64,
    /// Deallocate and write-zeroes operations.
    pub trims: AtomicU64,
    /// Operations that failed.
    pub errors: AtomicU64,
    /// Requests submitted and not yet completed (all threads).
    pub in_flight: AtomicU64,
}

impl DeviceMetrics {
    /// Counts one finished request.
    fn count(&self, op: Op, len: u64, ok: bool) {
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (ops, bytes) = match op {
            Op::Read => (&self.reads, Some(&self.read_bytes)),
            Op::Write => (&self.writes, Some(&self.write_bytes)),
            Op::Flush => (&self.flushes, None),
            Op::WriteZeroes | Op::Discard => (&self.trims, None),
        };
        ops.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = bytes {
            b.fetch_add(len, Ordering::Relaxed);
        }
    }
}

/// What a counted request was, while it is at the device.
struct Out {
    tag: u64,
    sink: Rc<dyn Sink>,
    op: Op,
    len: u64,
}

struct Relay {
    metrics: Arc<DeviceMetrics>,
    out: RefCell<Slots<Out>>,
}

impl Sink for Relay {
    fn complete(&self, mut c: Completion) {
        let Some(o) = self
            .out
            .borrow_mut()
            .remove(usize::try_from(c.tag).unwrap_or(usize::MAX))
        else {
            return;
        };
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.count(o.op, o.len, c.result.is_ok());
        c.tag = o.tag;
        o.sink.complete(c);
    }
}

/// A device handle whose requests are counted in the device's metrics when they complete.
pub(crate) struct Counted {
    inner: Rc<dyn BlockIo>,
    relay: Rc<Relay>,
}

impl Counted {
    pub fn new(inner: Rc<dyn BlockIo>, metrics: Arc<DeviceMetrics>) -> Self {
        Self {
            inner,
            relay: Rc::new(Relay {
                metrics,
                out: RefCell::new(Slots::with_capacity(64)),
            }),
        }
    }
}

impl BlockIo for Counted {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, mut req: Request, sink: &Rc<dyn Sink>) {
        let idx = self.relay.out.borrow_mut().insert(Out {
            tag: req.tag,
            sink: Rc::clone(sink),
            op: req.op,
            len: req.len,
        });
        self.relay.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        req.tag = idx as u64;
        let me: Rc<dyn Sink> = self.relay.clone();
        self.inner.submit(req, &me);
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn extents(&self, offset: u64, len: u64, files: bool, out: &mut Vec<Extent>) -> bool {
        let ok = self.inner.extents(offset, len, files, out);
        if ok {
            // Sent straight from the file or the mapping, never submitted: counted as a read now.
            self.relay.metrics.count(Op::Read, len, true);
        }
        ok
    }

    fn write_extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> bool {
        let ok = self.inner.write_extents(offset, len, out);
        if ok {
            // Copied straight into the mapping, never submitted: counted as a write now.
            self.relay.metrics.count(Op::Write, len, true);
        }
        ok
    }
}
