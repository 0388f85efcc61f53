//! The fallback where the kernel has no io_uring: a few threads per device do the blocking
//! calls, so the controller thread never waits on the file. A request's memory goes to the
//! worker and comes back with the result; the buffer's shell stays with its thread.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::rc::Rc;
use std::sync::{Arc, Mutex, mpsc};

use ffi::IoChunk;
use tokio::sync::mpsc as tmpsc;

use super::FileDevice;
use crate::io::{check, finish};
use crate::slots::Slots;
use crate::{IoBuf, IoError, Op, Request, Sink};

/// One blocking call for a worker.
struct Job {
    file: Arc<File>,
    op: Op,
    offset: u64,
    len: u64,
    chunk: Option<IoChunk>,
    slot: usize,
    reply: tmpsc::UnboundedSender<Done>,
}

/// A worker's answer.
struct Done {
    slot: usize,
    result: io::Result<()>,
    chunk: Option<IoChunk>,
}

/// The device's workers (started when first used).
#[derive(Debug)]
pub(super) struct Pool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Self {
        Self {
            tx: Mutex::new(None),
            threads,
        }
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        let mut tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tx.is_none() {
            let (t, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = Arc::clone(&rx);
                let spawned = std::thread::Builder::new()
                    .name(format!("baton-fileio-{i}"))
                    .spawn(move || worker(&rx));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a file I/O thread");
                }
            }
            *tx = Some(t);
        }
        match tx.as_ref().map(|t| t.send(job)) {
            Some(Ok(())) => Ok(()),
            Some(Err(mpsc::SendError(job))) => Err(job),
            None => unreachable!("started above"),
        }
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.recv()
        };
        let Ok(mut job) = job else { return };
        let len = usize::try_from(job.len).unwrap_or(usize::MAX);
        let result = match job.chunk.as_mut() {
            Some(c) if c.len() >= len => crate::fdops::run(
                &job.file,
                job.op,
                job.offset,
                job.len,
                &mut c.as_mut_slice()[..len],
            ),
            Some(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "short buffer")),
            None => crate::fdops::run(&job.file, job.op, job.offset, job.len, &mut []),
        };
        // A handle that went away no longer wants the answer (its memory is dropped here).
        let _ = job.reply.send(Done {
            slot: job.slot,
            result,
            chunk: job.chunk,
        });
    }
}

struct Pending {
    req: Request,
    sink: Rc<dyn Sink>,
}

/// One thread's handle on the worker pool.
pub struct ThreadIo {
    dev: FileDevice,
    pending: Rc<RefCell<Slots<Pending>>>,
    reply: tmpsc::UnboundedSender<Done>,
    _poller: tokio::task::JoinHandle<()>,
}

impl ThreadIo {
    pub(super) fn new(dev: FileDevice) -> Self {
        let (reply, mut rx) = tmpsc::unbounded_channel::<Done>();
        let pending: Rc<RefCell<Slots<Pending>>> = Rc::new(RefCell::new(Slots::with_capacity(64)));
        let poller = {
            let pending = Rc::downgrade(&pending);
            tokio::task::spawn_local(async move {
                while let Some(done) = rx.recv().await {
                    let Some(pending) = pending.upgrade() else {
                        return;
                    };
                    let Some(mut p) = pending.borrow_mut().remove(done.slot) else {
                        continue;
                    };
                    if let (Some(b), Some(c)) = (p.req.buf.as_mut(), done.chunk) {
                        b.put_chunk(c);
                    }
                    if let (Ok(()), Some(b)) = (&done.result, p.req.buf.as_mut()) {
                        b.set_window(0, usize::try_from(p.req.len).unwrap_or(0));
                    }
                    finish(p.req, done.result.map_err(IoError::Os), &p.sink);
                }
            })
        };
        Self {
            dev,
            pending,
            reply,
            _poller: poller,
        }
    }

    pub(super) fn submit(&self, mut req: Request, sink: &Rc<dyn Sink>) {
        if let Err(e) = check(&req, &self.dev.geometry) {
            return finish(req, Err(e), sink);
        }
        let chunk = req.buf.as_mut().map(IoBuf::take_chunk);
        let (op, offset, len) = (req.op, req.offset, req.len);
        let slot = self.pending.borrow_mut().insert(Pending {
            req,
            sink: Rc::clone(sink),
        });
        let job = Job {
            file: Arc::clone(&self.dev.file),
            op,
            offset,
            len,
            chunk,
            slot,
            reply: self.reply.clone(),
        };
        if let Err(job) = self.dev.threads.send(job) {
            let p = self.pending.borrow_mut().remove(slot);
            if let Some(mut p) = p {
                if let (Some(b), Some(c)) = (p.req.buf.as_mut(), job.chunk) {
                    b.put_chunk(c);
                }
                finish(
                    p.req,
                    Err(IoError::PathDown("file I/O threads are gone".into())),
                    &p.sink,
                );
            }
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }
}

impl Drop for ThreadIo {
    fn drop(&mut self) {
        self._poller.abort();
    }
}
