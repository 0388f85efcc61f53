//! A thread's io_uring on a file device. Requests past the ring's depth wait in order; the
//! reactor wakes the handle's poller when the ring's descriptor turns readable.
//!
//! Submission is batched per reactor turn, as SPDK submits once per poll: `submit` puts a
//! request on the ring and wakes the poller, which enters the kernel once for everything
//! the thread queued before it yielded (a connection that parsed 32 reads in one go costs
//! one `io_uring_enter`). Write Zeroes and Deallocate that the file system cannot do in
//! place go to the device's blocking-call threads, never onto the controller thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use ffi::uring::{Ring, RingCmd, RingCompletion, RingOp};
use nix::fcntl::FallocateFlags;

use tokio::sync::Notify;

use super::{FileDevice, ThreadIo};
use crate::io::{check, finish};
use crate::slots::Slots;
use crate::{IoBuf, IoError, Op, Request, Sink};

/// A request at the kernel: the request itself (its buffer's memory is at the ring), who
/// gets the completion, and how much of it is done (short transfers continue).
struct Pending {
    req: Request,
    sink: Rc<dyn Sink>,
    done: u64,
}

struct State {
    ring: Ring,
    pending: Slots<Pending>,
    waiting: VecDeque<(Request, Rc<dyn Sink>)>,
    /// A kick (submission to the kernel) is due at the poller's next turn.
    kick_due: bool,
    /// Commands on the ring not yet handed to the kernel.
    queued: u32,
    /// Times the handle entered the kernel to submit.
    enters: u64,
    /// Where requests the ring's operation cannot do go (blocking calls on other threads).
    fallback: Rc<ThreadIo>,
}

/// One thread's io_uring handle.
pub struct UringIo {
    dev: FileDevice,
    state: Rc<RefCell<State>>,
    /// Wakes the poller to submit what was queued.
    wake: Rc<Notify>,
    _poller: tokio::task::JoinHandle<()>,
}

impl UringIo {
    pub(super) fn new(dev: FileDevice, depth: u32) -> io::Result<Self> {
        let ring = Ring::new(depth)?;
        let fd = ring.readiness()?;
        let state = Rc::new(RefCell::new(State {
            ring,
            pending: Slots::with_capacity(depth as usize),
            waiting: VecDeque::new(),
            kick_due: false,
            queued: 0,
            enters: 0,
            fallback: Rc::new(ThreadIo::new(dev.clone())),
        }));
        let wake = Rc::new(Notify::new());
        let poller = {
            let (state, dev, wake) = (Rc::downgrade(&state), dev.clone(), Rc::clone(&wake));
            tokio::task::spawn_local(async move {
                loop {
                    tokio::select! {
                        r = fd.readable() => {
                            let Ok(mut ready) = r else { return };
                            ready.clear_ready();
                            let Some(state) = state.upgrade() else { return };
                            reap(&dev, &state);
                        }
                        () = wake.notified() => {
                            let Some(state) = state.upgrade() else { return };
                            kick(&dev, &state);
                        }
                    }
                }
            })
        };
        Ok(Self {
            dev,
            state,
            wake,
            _poller: poller,
        })
    }

    pub(super) fn submit(&self, req: Request, sink: &Rc<dyn Sink>) {
        if let Err(e) = check(&req, &self.dev.geometry) {
            return finish(req, Err(e), sink);
        }
        {
            let mut s = self.state.borrow_mut();
            if !s.waiting.is_empty() || !s.ring.has_room() {
                s.waiting.push_back((req, Rc::clone(sink)));
                return;
            }
        }
        start(&self.dev, &self.state, req, Rc::clone(sink), 0);
        let mut s = self.state.borrow_mut();
        if !s.kick_due {
            s.kick_due = true;
            self.wake.notify_one();
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        let s = self.state.borrow();
        s.pending.len() + s.waiting.len()
    }

    /// Times the handle has entered the kernel to submit so far.
    pub(super) fn enters(&self) -> u64 {
        self.state.borrow().enters
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        self._poller.abort();
    }
}

fn ring_op(op: Op) -> RingOp {
    let keep = FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match op {
        Op::Read => RingOp::Read,
        Op::Write => RingOp::Write,
        Op::Flush => RingOp::Fsync,
        Op::WriteZeroes => RingOp::Fallocate((keep | FallocateFlags::FALLOC_FL_ZERO_RANGE).bits()),
        Op::Discard => RingOp::Fallocate((keep | FallocateFlags::FALLOC_FL_PUNCH_HOLE).bits()),
    }
}

/// Puts a request (or the rest of a short one) on the ring; the caller submits.
fn start(
    dev: &FileDevice,
    state: &Rc<RefCell<State>>,
    mut req: Request,
    sink: Rc<dyn Sink>,
    done: u64,
) {
    let mut s = state.borrow_mut();
    let chunk = req.buf.as_mut().map(IoBuf::take_chunk);
    let slot = s.pending.insert(Pending { req, sink, done });
    let p = s.pending.get_mut(slot).expect("just inserted");
    let (op, offset, left) = (p.req.op, p.req.offset + done, p.req.len - done);
    // One command moves at most 1 GiB; a longer request continues like a short transfer.
    let len = u32::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
    let at = usize::try_from(done).unwrap_or(usize::MAX);
    let cmd = RingCmd {
        op: ring_op(op),
        at,
        len,
        offset,
        tag: slot as u64,
    };
    let pushed = s.ring.push(&dev.file, chunk, cmd);
    if pushed.is_ok() {
        s.queued += 1;
    }
    if let Err(chunk) = pushed {
        let mut p = s.pending.remove(slot).expect("just inserted");
        drop(s);
        if let (Some(b), Some(c)) = (p.req.buf.as_mut(), chunk) {
            b.put_chunk(c);
        }
        finish(
            p.req,
            Err(IoError::Invalid("the ring refused the command".into())),
            &p.sink,
        );
    }
}

/// Moves waiting requests onto the ring and hands everything queued to the kernel.
fn kick(dev: &FileDevice, state: &Rc<RefCell<State>>) {
    loop {
        let next = {
            let mut s = state.borrow_mut();
            if !s.ring.has_room() {
                None
            } else {
                s.waiting.pop_front()
            }
        };
        let Some((req, sink)) = next else { break };
        start(dev, state, req, sink, 0);
    }
    let r = {
        let mut s = state.borrow_mut();
        s.kick_due = false;
        if s.queued == 0 {
            return;
        }
        s.queued = 0;
        s.enters += 1;
        s.ring.submit()
    };
    if let Err(e) = r {
        fail_all(state, &e);
    }
}

/// The kernel refused the ring: everything on it and waiting fails (their memory stays with
/// the ring, which may still hold it).
fn fail_all(state: &Rc<RefCell<State>>, e: &io::Error) {
    tracing::error!(error = %e, "io_uring submit failed");
    let (pending, waiting) = {
        let mut s = state.borrow_mut();
        (s.pending.drain(), std::mem::take(&mut s.waiting))
    };
    for p in pending {
        let mut req = p.req;
        req.buf = None;
        finish(
            req,
            Err(IoError::PathDown(format!("io_uring: {e}"))),
            &p.sink,
        );
    }
    for (req, sink) in waiting {
        finish(req, Err(IoError::PathDown(format!("io_uring: {e}"))), &sink);
    }
}

/// Finishes every request the kernel completed.
fn reap(dev: &FileDevice, state: &Rc<RefCell<State>>) {
    let mut done = Vec::new();
    state.borrow_mut().ring.reap(|c| done.push(c));
    if done.is_empty() {
        return;
    }
    for c in done {
        complete(dev, state, c);
    }
    kick(dev, state);
}

fn complete(dev: &FileDevice, state: &Rc<RefCell<State>>, c: RingCompletion) {
    let Some(mut p) = state
        .borrow_mut()
        .pending
        .remove(usize::try_from(c.tag).unwrap_or(usize::MAX))
    else {
        return;
    };
    if let (Some(b), Some(chunk)) = (p.req.buf.as_mut(), c.chunk) {
        b.put_chunk(chunk);
    }
    let result = match c.result {
        n if n > 0 && matches!(p.req.op, Op::Read | Op::Write) => {
            p.done += u64::try_from(n).unwrap_or(0);
            if p.done < p.req.len {
                // A short transfer: continue where it stopped.
                return start(dev, state, p.req, p.sink, p.done);
            }
            Ok(())
        }
        0 if matches!(p.req.op, Op::Read | Op::Write) => Err(IoError::Os(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "end of file inside the device",
        ))),
        n if n >= 0 => Ok(()),
        _ if matches!(p.req.op, Op::WriteZeroes | Op::Discard) => {
            // The file system cannot do it in place (tmpfs has no ZERO_RANGE): the device's
            // blocking-call threads punch a hole or write zeroes, and complete it.
            let fallback = Rc::clone(&state.borrow().fallback);
            return fallback.submit(p.req, &p.sink);
        }
        n => Err(IoError::Os(io::Error::from_raw_os_error(-n))),
    };
    if let (Ok(()), Some(b)) = (&result, p.req.buf.as_mut()) {
        b.set_window(0, usize::try_from(p.req.len).unwrap_or(0));
    }
    finish(p.req, result, &p.sink);
}
