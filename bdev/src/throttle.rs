//! `read_rate`: a token bucket in front of a handle. Reads that find enough tokens go
//! straight on; the others wait in order for a timer, without holding up anything else on
//! the thread (writes, other devices, the network). Writes are not limited.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::{BlockIo, Extent, Geometry, Op, Request, Sink};

struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens the bucket holds: a tenth of a second of reads.
    burst: f64,
    tokens: Cell<f64>,
    at: Cell<Instant>,
    waiting: RefCell<VecDeque<(Request, Rc<dyn Sink>)>>,
    timer: Cell<bool>,
}

impl Bucket {
    fn refill(&self, now: Instant) {
        let dt = now.saturating_duration_since(self.at.get()).as_secs_f64();
        self.at.set(now);
        self.tokens
            .set((self.tokens.get() + dt * self.rate).min(self.burst));
    }

    /// Takes tokens for a read of `len` if it may go now. A read larger than the burst goes
    /// once the bucket is full, leaving it in debt, so the long-run rate holds.
    fn take(&self, len: u64) -> bool {
        let need = (len as f64).min(self.burst);
        if self.tokens.get() + 1e-6 >= need {
            self.tokens.set(self.tokens.get() - len as f64);
            true
        } else {
            false
        }
    }

    fn wait_for(&self, len: u64) -> Duration {
        let need = (len as f64).min(self.burst) - self.tokens.get();
        Duration::from_secs_f64((need / self.rate).max(0.0))
    }
}

/// A handle whose reads are capped at a rate.
pub struct Throttled<T: BlockIo + 'static> {
    inner: Rc<T>,
    bucket: Rc<Bucket>,
}

impl<T: BlockIo + 'static> Throttled<T> {
    /// Caps `inner`'s reads at `rate` bytes per second (`rate` > 0).
    pub fn new(inner: T, rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(4096.0);
        Self {
            inner: Rc::new(inner),
            bucket: Rc::new(Bucket {
                rate,
                burst,
                tokens: Cell::new(burst),
                at: Cell::new(Instant::now()),
                waiting: RefCell::new(VecDeque::new()),
                timer: Cell::new(false),
            }),
        }
    }

    /// Starts the timer task that lets waiting reads go as tokens come in; it ends when
    /// none waits.
    fn arm(&self) {
        if self.bucket.timer.replace(true) {
            return;
        }
        let (inner, bucket) = (Rc::clone(&self.inner), Rc::clone(&self.bucket));
        tokio::task::spawn_local(async move {
            loop {
                let head = bucket.waiting.borrow().front().map(|(r, _)| r.len);
                let Some(len) = head else { break };
                bucket.refill(Instant::now());
                if bucket.take(len) {
                    let (req, sink) = bucket.waiting.borrow_mut().pop_front().expect("head");
                    inner.submit(req, &sink);
                    continue;
                }
                tokio::time::sleep(bucket.wait_for(len)).await;
            }
            bucket.timer.set(false);
        });
    }
}

impl<T: BlockIo + 'static> BlockIo for Throttled<T> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        if req.op != Op::Read {
            return self.inner.submit(req, sink);
        }
        self.bucket.refill(Instant::now());
        if self.bucket.waiting.borrow().is_empty() && self.bucket.take(req.len) {
            return self.inner.submit(req, sink);
        }
        self.bucket
            .waiting
            .borrow_mut()
            .push_back((req, Rc::clone(sink)));
        self.arm();
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.bucket.waiting.borrow().len()
    }

    /// A capped device is never read behind the bucket's back.
    fn extents(&self, _offset: u64, _len: u64, _files: bool, _out: &mut Vec<Extent>) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDevice;
    use crate::testing::{local, read, write};
    use crate::{BufPool, CompletionQueue};

    #[test]
    fn limited_reads_wait_without_holding_up_writes() {
        local(async {
            // 4 KiB/s with a burst of 4 KiB: the first 4 KiB read goes at once, the next one
            // waits about a second for its tokens.
            let io = Throttled::new(RamDevice::new("t", 1 << 20, 512).unwrap().open(), 4096);
            let pool = BufPool::small(4).unwrap();
            let cq = Rc::new(CompletionQueue::default());
            let sink: Rc<dyn Sink> = cq.clone();
            for tag in 0..2 {
                let b = pool.get(4096).unwrap();
                io.submit(Request::read(0, 4096, b, tag), &sink);
            }
            assert_eq!(cq.len(), 1, "the first read had its tokens");
            assert_eq!(io.in_flight(), 1, "the second waits for the timer");
            // A write is not limited and does not queue behind the waiting read.
            write(&io, &pool, 0, &[1u8; 4096]).await.unwrap();
            assert_eq!(io.in_flight(), 1);
            let (a, b) = (cq.next().await, cq.next().await);
            assert_eq!((a.tag, b.tag), (0, 1));
            assert!(b.result.is_ok());
            assert_eq!(read(&io, &pool, 0, 4096).await.unwrap(), vec![1u8; 4096]);
        });
    }
}
