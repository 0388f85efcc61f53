//! Test support: a thread-local runtime to drive handles, request helpers, and [`Scripted`],
//! a test double that completes another handle's requests late, out of order, or with
//! errors, so the layers above can be tested on the hard cases.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::{BlockIo, BufPool, Completion, CompletionQueue, Geometry, IoError, Op, Request, Sink};

/// Longest a helper waits for one completion.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `f` on a current-thread runtime inside a `LocalSet` (where engines spawn their
/// pollers), as a controller thread would.
pub fn local<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Submits one request and waits for its completion (with a deadline).
pub async fn submit(io: &dyn BlockIo, req: Request) -> Completion {
    let cq = Rc::new(CompletionQueue::default());
    let sink: Rc<dyn Sink> = cq.clone();
    io.submit(req, &sink);
    tokio::time::timeout(DEADLINE, cq.next())
        .await
        .expect("a completion within the deadline")
}

/// Reads `len` bytes at `offset`.
pub async fn read(
    io: &dyn BlockIo,
    pool: &BufPool,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, IoError> {
    let buf = pool.get(len).expect("a free buffer");
    let c = submit(io, Request::read(offset, len as u64, buf, 0)).await;
    c.result?;
    let mut b = c.buf.expect("a read gives its buffer back");
    b.set_window(0, len);
    Ok(b.as_slice().to_vec())
}

/// Writes `data` at `offset`.
pub async fn write(
    io: &dyn BlockIo,
    pool: &BufPool,
    offset: u64,
    data: &[u8],
) -> Result<(), IoError> {
    let mut buf = pool.get(data.len()).expect("a free buffer");
    buf.as_mut_slice().copy_from_slice(data);
    submit(io, Request::write(offset, data.len() as u64, buf, 0))
        .await
        .result
}

/// Runs a request without data.
pub async fn run(io: &dyn BlockIo, op: Op, offset: u64, len: u64) -> Result<(), IoError> {
    submit(io, Request::bare(op, offset, len, 0)).await.result
}

/// The order [`Scripted::release`] delivers held completions in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// As the inner handle completed them.
    Fifo,
    /// Newest first.
    Reverse,
}

struct Held {
    sink: Rc<dyn Sink>,
    c: Completion,
}

#[derive(Default)]
struct Script {
    hold: Cell<bool>,
    held: RefCell<Vec<Held>>,
    fail_next: Cell<usize>,
    in_flight: Cell<usize>,
}

/// A handle that passes requests to `inner` and, as scripted, holds their completions until
/// [`Scripted::release`] (late, in any order) or fails them (a device error after the inner
/// handle did the work, as a device that reports an error may have done).
pub struct Scripted<T: BlockIo> {
    inner: T,
    script: Rc<Script>,
}

struct Relay {
    sink: Rc<dyn Sink>,
    script: Rc<Script>,
}

impl Sink for Relay {
    fn complete(&self, mut c: Completion) {
        let s = &self.script;
        if s.fail_next.get() > 0 {
            s.fail_next.set(s.fail_next.get() - 1);
            c.result = Err(IoError::Status {
                status: nvme_spec::status::UNRECOVERED_READ_ERROR,
                sct: nvme_spec::status::sct(nvme_spec::status::UNRECOVERED_READ_ERROR),
                sc: nvme_spec::status::sc(nvme_spec::status::UNRECOVERED_READ_ERROR),
            });
        }
        if s.hold.get() {
            s.held.borrow_mut().push(Held {
                sink: Rc::clone(&self.sink),
                c,
            });
        } else {
            s.in_flight.set(s.in_flight.get() - 1);
            self.sink.complete(c);
        }
    }
}

impl<T: BlockIo> Scripted<T> {
    /// Wraps `inner`; completions pass straight through until scripted otherwise.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            script: Rc::default(),
        }
    }

    /// Holds every completion from now on until [`Scripted::release`].
    pub fn hold(&self) {
        self.script.hold.set(true);
    }

    /// Completions held now.
    pub fn held(&self) -> usize {
        self.script.held.borrow().len()
    }

    /// Delivers the held completions in `order` and stops holding.
    pub fn release(&self, order: Order) {
        self.script.hold.set(false);
        let mut held = std::mem::take(&mut *self.script.held.borrow_mut());
        if order == Order::Reverse {
            held.reverse();
        }
        for h in held {
            self.script.in_flight.set(self.script.in_flight.get() - 1);
            h.sink.complete(h.c);
        }
    }

    /// Fails the next `n` completions with a media error.
    pub fn fail_next(&self, n: usize) {
        self.script.fail_next.set(n);
    }
}

impl<T: BlockIo> BlockIo for Scripted<T> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        self.script.in_flight.set(self.script.in_flight.get() + 1);
        let relay: Rc<dyn Sink> = Rc::new(Relay {
            sink: Rc::clone(sink),
            script: Rc::clone(&self.script),
        });
        self.inner.submit(req, &relay);
    }

    fn in_flight(&self) -> usize {
        self.script.in_flight.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDevice;

    #[test]
    fn held_completions_arrive_late_and_reordered() {
        local(async {
            let io = Scripted::new(RamDevice::new("s", 1 << 20, 512).unwrap().open());
            let pool = BufPool::small(8).unwrap();
            let cq = Rc::new(CompletionQueue::default());
            let sink: Rc<dyn Sink> = cq.clone();
            io.hold();
            for tag in 0..3 {
                let b = pool.get(512).unwrap();
                io.submit(Request::read(tag * 512, 512, b, tag), &sink);
            }
            assert_eq!((cq.len(), io.in_flight(), io.held()), (0, 3, 3));
            io.fail_next(1);
            io.release(Order::Reverse);
            let tags: Vec<u64> = std::iter::from_fn(|| cq.pop()).map(|c| c.tag).collect();
            assert_eq!(tags, vec![2, 1, 0]);
            assert_eq!(io.in_flight(), 0);
            let b = pool.get(512).unwrap();
            io.submit(Request::read(0, 512, b, 7), &sink);
            assert!(cq.pop().unwrap().result.is_err(), "scripted failure");
        });
    }
}
