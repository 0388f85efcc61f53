//! A thread's io_uring on a file device. Requests past the ring's depth wait in order; the
//! reactor wakes the handle's poller when the ring's descriptor turns readable.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use ffi::uring::{Ring, RingCmd, RingCompletion, RingOp};
use nix::fcntl::FallocateFlags;

use super::FileDevice;
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
}

/// One thread's io_uring handle.
pub struct UringIo {
    dev: FileDevice,
    state: Rc<RefCell<State>>,
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
        }));
        let poller = {
            let (state, dev) = (Rc::downgrade(&state), dev.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let Ok(mut ready) = fd.readable().await else {
                        return;
                    };
                    ready.clear_ready();
                    let Some(state) = state.upgrade() else { return };
                    reap(&dev, &state);
                }
            })
        };
        Ok(Self {
            dev,
            state,
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
        kick(&self.dev, &self.state);
    }

    pub(super) fn in_flight(&self) -> usize {
        let s = self.state.borrow();
        s.pending.len() + s.waiting.len()
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
    let r = state.borrow_mut().ring.submit();
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
        n if matches!(p.req.op, Op::WriteZeroes | Op::Discard) => {
            // The file system cannot do it in place (tmpfs has no ZERO_RANGE): the blocking
            // fallback punches a hole or writes zeroes, rarely and briefly.
            let _ = n;
            crate::fdops::run(&dev.file, p.req.op, p.req.offset, p.req.len, &mut [])
                .map_err(IoError::Os)
        }
        n => Err(IoError::Os(io::Error::from_raw_os_error(-n))),
    };
    if let (Ok(()), Some(b)) = (&result, p.req.buf.as_mut()) {
        b.set_window(0, usize::try_from(p.req.len).unwrap_or(0));
    }
    finish(p.req, result, &p.sink);
}
