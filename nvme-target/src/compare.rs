//! Compare, Verify and the fused Compare and Write (NVM Command Set 3.2.1, 3.2.8; Base
//! 3.4.2 fused operations), as request states of the connection's table.
//!
//! * Compare reads the range into a pool buffer and compares it with the host's data:
//!   Compare Failure on a difference.
//! * Verify reads the range piece by piece into one buffer (a piece is at most the largest
//!   pool buffer and MDTS, so any range costs one buffer) and sends nothing to the host.
//! * A fused Compare and Write is two capsules: Compare with FUSE 01b and, as the very next
//!   capsule of the same queue, Write with FUSE 10b over the same range. They pair when the
//!   second arrives; once both have their data (in the capsule or after an R2T, in any
//!   order), the operation takes the namespace's range lock ([`crate::locks`]), reads,
//!   compares, and writes only if the data matched; the write of a failed compare completes
//!   with "Command Aborted due to Failed Fused Command". A first command not followed by its
//!   second, or a second without a first, completes with "Missing Fused Command"; when one
//!   of a pair fails on its own, the other is aborted as failed.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bdev::{Completion, IoBuf, Op, Request};
use nvme_spec::cmds::IoCmd;
use nvme_spec::command::Sqe;

use crate::completion::{Completion as Done, Error};
use crate::conn::{Conn, Data};
use crate::io::{IoReq, Step, device_status};
use crate::locks::{RangeGuard, RangeLocks};

/// Fused pairs a connection keeps at once (each is two commands of its queue).
const MAX_PAIRS: usize = 64;

/// What a Compare, Verify or fused operation keeps in its request.
pub(crate) enum Extra {
    /// A Compare: the host's data.
    Compare { host: IoBuf },
    /// Verify: the next byte to read, the end, and the piece size.
    Verify { next: u64, end: u64, piece: u64 },
    /// A fused Compare and Write.
    Fused(Fused),
}

/// A fused operation whose two commands have their data.
pub(crate) struct Fused {
    /// The compare's data.
    host: IoBuf,
    /// The write command.
    write: Sqe,
    /// Its data, until it goes to the device.
    write_buf: Option<IoBuf>,
}

/// A fused pair being assembled.
struct Pair {
    first: Sqe,
    second: Option<Sqe>,
    /// The first's fate when its partner did not come (it completes when its data has).
    broken: Option<Error>,
    first_data: Option<(IoBuf, Instant)>,
    second_data: Option<IoBuf>,
}

/// Something waiting for its namespace's range lock.
enum LockWait {
    /// A write (or write zeroes) overlapping a fused operation's range.
    Write {
        req: IoReq,
        request: Request,
        locks: Arc<RangeLocks>,
    },
    /// A Dataset Management deallocate: its block ranges, and the block size.
    Discard {
        req: IoReq,
        ranges: Vec<(u64, u64)>,
        bs: u64,
        locks: Arc<RangeLocks>,
    },
    /// A fused operation, announced, waiting for its range.
    Fused {
        req: IoReq,
        ticket: RangeGuard,
        locks: Arc<RangeLocks>,
    },
}

/// A connection's fused pairs and lock waits.
#[derive(Default)]
pub(crate) struct FusedState {
    /// The first command of a pair whose second has not arrived yet.
    expect_second: Option<u16>,
    pairs: Vec<Pair>,
    lock_wait: VecDeque<LockWait>,
}

impl FusedState {
    /// Whether anything waits for a range lock.
    pub fn has_waiters(&self) -> bool {
        !self.lock_wait.is_empty()
    }

    /// Whether a fused pair is being assembled.
    pub fn has_pairs(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// Whether nothing fused is pending (the connection may move to another thread).
    pub fn is_idle(&self) -> bool {
        self.pairs.is_empty() && self.lock_wait.is_empty() && self.expect_second.is_none()
    }

    fn pair_of_first(&self, cid: u16) -> Option<usize> {
        self.pairs.iter().position(|p| p.first.cid.get() == cid)
    }

    fn pair_of_second(&self, cid: u16) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.second.is_some_and(|s| s.cid.get() == cid))
    }
}

/// Blocks `[start, end)` of a command (its range was checked against the namespace).
fn blocks(sqe: &Sqe) -> (u64, u64) {
    let s = sqe.slba();
    (s, s.saturating_add(u64::from(sqe.nlb())))
}

impl Conn {
    /// Pairs fused commands as their capsules arrive; an error completes this command now.
    pub(crate) fn fuse_arrival(&mut self, sqe: &Sqe, cmd: &IoCmd) -> Result<(), Error> {
        let pending = self.fused.expect_second.take();
        if let Some(first) = pending {
            let Some(i) = self.fused.pair_of_first(first) else {
                // The first failed on its own before its partner came.
                return match cmd {
                    IoCmd::FusedWrite(_) => Err(Error::FusedFailed),
                    _ => self.fuse_first(sqe, cmd),
                };
            };
            if let IoCmd::FusedWrite(_) = cmd {
                let f = self.fused.pairs[i].first;
                if f.nsid != sqe.nsid || blocks(&f) != blocks(sqe) {
                    // Both must name one range of one namespace.
                    self.break_pair(i, Error::InvalidField);
                    return Err(Error::InvalidField);
                }
                self.fused.pairs[i].second = Some(*sqe);
                return Ok(());
            }
            self.break_pair(i, Error::FusedMissing);
        }
        self.fuse_first(sqe, cmd)
    }

    fn fuse_first(&mut self, sqe: &Sqe, cmd: &IoCmd) -> Result<(), Error> {
        match cmd {
            IoCmd::FusedWrite(_) => Err(Error::FusedMissing),
            IoCmd::FusedCompare(_) => {
                if self.fused.pairs.len() >= MAX_PAIRS {
                    return Err(Error::QueueFull);
                }
                self.fused.pairs.push(Pair {
                    first: *sqe,
                    second: None,
                    broken: None,
                    first_data: None,
                    second_data: None,
                });
                self.fused.expect_second = Some(sqe.cid.get());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The first command of pair `i` lost its partner: it completes with `e` now if its
    /// data is here, else when it arrives.
    fn break_pair(&mut self, i: usize, e: Error) {
        if self.fused.pairs[i].first_data.is_some() {
            let p = self.fused.pairs.swap_remove(i);
            self.fail(&p.first, e);
        } else {
            self.fused.pairs[i].broken = Some(e);
        }
    }

    /// A command failed on its own: if it was half of a fused pair, the other half is
    /// aborted (now if it has its data, else when the data comes and finds no pair).
    pub(crate) fn fused_failed(&mut self, cid: u16) {
        if let Some(i) = self.fused.pair_of_first(cid) {
            let p = self.fused.pairs.swap_remove(i);
            if let (Some(second), Some(_)) = (p.second, p.second_data) {
                self.fail(&second, Error::FusedFailed);
            }
        } else if let Some(i) = self.fused.pair_of_second(cid) {
            let p = self.fused.pairs.swap_remove(i);
            if p.first_data.is_some() {
                self.fail(&p.first, Error::FusedFailed);
            }
        }
    }

    /// Compare, Verify, or half of a fused pair, with its data (if any) at hand.
    pub(crate) fn compare_cmd(&mut self, mut req: IoReq, cmd: IoCmd, data: Data<'_>, bs: u64) {
        let sqe = req.sqe;
        let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) else {
            return self.fail(&sqe, Error::Internal("compare without a device"));
        };
        let offset = sqe.slba() * bs;
        let len = u64::from(sqe.nlb()) * bs;
        if let IoCmd::Verify(_) = cmd {
            let cfg = self.port.target.config();
            let piece = len
                .min(u64::from(cfg.max_transfer))
                .min(self.port.pool.max_size() as u64);
            let Some(buf) = usize::try_from(piece)
                .ok()
                .and_then(|n| self.port.pool.get(n))
            else {
                return self.fail(&sqe, Error::NoBuffer);
            };
            req.step = Step::Verify;
            req.extra = Some(Box::new(Extra::Verify {
                next: offset,
                end: offset + len,
                piece,
            }));
            let tag = self.reqs.insert(req) as u64;
            return dev.submit(Request::read(offset, piece, buf, tag), &self.sink);
        }
        let host = match data {
            Data::Buf(b) => b,
            Data::Host(d) => {
                let Some(mut b) = self.port.pool.get(d.len()) else {
                    return self.fail(&sqe, Error::NoBuffer);
                };
                b.as_mut_slice().copy_from_slice(d);
                b
            }
            _ => return self.fail(&sqe, Error::SglLength),
        };
        match cmd {
            IoCmd::Compare(_) => {
                let Some(buf) = usize::try_from(len)
                    .ok()
                    .and_then(|n| self.port.pool.get(n))
                else {
                    return self.fail(&sqe, Error::NoBuffer);
                };
                req.step = Step::Compare;
                req.extra = Some(Box::new(Extra::Compare { host }));
                let tag = self.reqs.insert(req) as u64;
                dev.submit(Request::read(offset, len, buf, tag), &self.sink);
            }
            IoCmd::FusedCompare(_) => {
                let Some(i) = self.fused.pair_of_first(sqe.cid.get()) else {
                    return self.fail(&sqe, Error::FusedFailed);
                };
                if let Some(e) = self.fused.pairs[i].broken {
                    self.fused.pairs.swap_remove(i);
                    return self.fail(&sqe, e);
                }
                self.fused.pairs[i].first_data = Some((host, req.started));
                self.try_start_pair(i, req);
            }
            IoCmd::FusedWrite(_) => {
                let Some(i) = self.fused.pair_of_second(sqe.cid.get()) else {
                    return self.fail(&sqe, Error::FusedFailed);
                };
                self.fused.pairs[i].second_data = Some(host);
                self.try_start_pair(i, req);
            }
            _ => self.fail(&sqe, Error::Internal("not a compare")),
        }
    }

    /// Starts pair `i` once both halves have their data; `req` is the one that just got it.
    fn try_start_pair(&mut self, i: usize, req: IoReq) {
        let p = &self.fused.pairs[i];
        if p.first_data.is_none() || p.second_data.is_none() {
            return;
        }
        let p = self.fused.pairs.swap_remove(i);
        let (Some((host, started)), Some(write_buf), Some(write)) =
            (p.first_data, p.second_data, p.second)
        else {
            return;
        };
        let Some(locks) = Self::locks_of(&req) else {
            self.fail(&p.first, Error::InvalidNamespace);
            return self.fail(&write, Error::FusedFailed);
        };
        let req = IoReq {
            sqe: p.first,
            started,
            step: Step::FusedRead,
            extra: Some(Box::new(Extra::Fused(Fused {
                host,
                write,
                write_buf: Some(write_buf),
            }))),
            ..req
        };
        let ticket = locks.fused_begin();
        let (s, e) = blocks(&req.sqe);
        match locks.fused_lock(ticket, s, e) {
            Ok(g) => self.fused_read(req, g),
            Err(ticket) => self
                .fused
                .lock_wait
                .push_back(LockWait::Fused { req, ticket, locks }),
        }
    }

    fn locks_of(req: &IoReq) -> Option<Arc<RangeLocks>> {
        Some(Arc::clone(&req.ns.as_ref()?.state.locks))
    }

    /// The fused operation holds its range: read it for the compare.
    fn fused_read(&mut self, mut req: IoReq, guard: RangeGuard) {
        let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) else {
            return;
        };
        let Some(bs) = self.block_size(&req.sqe) else {
            return self.fused_fail(req, Error::InvalidNamespace, Error::FusedFailed);
        };
        let offset = req.sqe.slba() * bs;
        let len = u64::from(req.sqe.nlb()) * bs;
        let Some(buf) = usize::try_from(len)
            .ok()
            .and_then(|n| self.port.pool.get(n))
        else {
            return self.fused_fail(req, Error::NoBuffer, Error::FusedFailed);
        };
        req.guard = Some(guard);
        let tag = self.reqs.insert(req) as u64;
        dev.submit(Request::read(offset, len, buf, tag), &self.sink);
    }

    fn block_size(&self, sqe: &Sqe) -> Option<u64> {
        let q = self.q.as_ref()?;
        let ns = self.port.namespace(q.ctrl.subsys, sqe.nsid.get())?;
        Some(u64::from(ns.cfg.block_size))
    }

    /// Completes both halves of a fused operation with errors (the range lock goes with
    /// the request).
    fn fused_fail(&mut self, req: IoReq, first: Error, second: Error) {
        let write = match req.extra.as_deref() {
            Some(Extra::Fused(f)) => Some(f.write),
            _ => None,
        };
        drop(req.guard);
        self.fail(&req.sqe, first);
        if let Some(w) = write {
            self.fail(&w, second);
        }
    }

    /// Writes (and write zeroes) go to the device at once while no fused operation is active
    /// on their namespace; otherwise they take their range in the lock table, or wait.
    pub(crate) fn submit_write(&mut self, mut req: IoReq, mut request: Request) {
        let Some(ns) = req.ns.clone() else {
            return self.fail(&req.sqe, Error::Internal("write without a namespace"));
        };
        let (dev, state) = (Rc::clone(&ns.dev), &ns.state);
        let (s, e) = blocks(&req.sqe);
        // A write that tried to land in the device may hold its lock already.
        let guard = req.guard.take().or_else(|| state.locks.write_begin(s, e));
        match guard {
            Some(g) => {
                req.guard = Some(g);
                request.tag = self.reqs.insert(req) as u64;
                dev.submit(request, &self.sink);
            }
            None => {
                let locks = Arc::clone(&state.locks);
                self.fused.lock_wait.push_back(LockWait::Write {
                    req,
                    request,
                    locks,
                });
            }
        }
    }

    /// Deallocates go to the device like writes: at once while no fused operation is active
    /// on their namespace; otherwise once every one of their ranges is free.
    pub(crate) fn submit_discards(&mut self, mut req: IoReq, ranges: Vec<(u64, u64)>, bs: u64) {
        let Some(ns) = req.ns.clone() else {
            return self.fail(&req.sqe, Error::Internal("deallocate without a namespace"));
        };
        match ns.state.locks.write_begin_ranges(&ranges) {
            Some(g) => {
                req.guard = Some(g);
                self.discard_ranges(req, &ranges, bs);
            }
            None => {
                let locks = Arc::clone(&ns.state.locks);
                self.fused.lock_wait.push_back(LockWait::Discard {
                    req,
                    ranges,
                    bs,
                    locks,
                });
            }
        }
    }

    /// Starts whatever waited for a range lock and can have it now.
    pub(crate) fn retry_lock_waits(&mut self) {
        for _ in 0..self.fused.lock_wait.len() {
            let Some(w) = self.fused.lock_wait.pop_front() else {
                return;
            };
            match w {
                LockWait::Write {
                    mut req,
                    mut request,
                    locks,
                } => {
                    let (s, e) = blocks(&req.sqe);
                    match locks.write_begin(s, e) {
                        Some(g) => {
                            let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) else {
                                continue;
                            };
                            req.guard = Some(g);
                            request.tag = self.reqs.insert(req) as u64;
                            dev.submit(request, &self.sink);
                        }
                        None => self.fused.lock_wait.push_back(LockWait::Write {
                            req,
                            request,
                            locks,
                        }),
                    }
                }
                LockWait::Discard {
                    mut req,
                    ranges,
                    bs,
                    locks,
                } => match locks.write_begin_ranges(&ranges) {
                    Some(g) => {
                        req.guard = Some(g);
                        self.discard_ranges(req, &ranges, bs);
                    }
                    None => self.fused.lock_wait.push_back(LockWait::Discard {
                        req,
                        ranges,
                        bs,
                        locks,
                    }),
                },
                LockWait::Fused { req, ticket, locks } => {
                    let (s, e) = blocks(&req.sqe);
                    match locks.fused_lock(ticket, s, e) {
                        Ok(g) => self.fused_read(req, g),
                        Err(ticket) => {
                            self.fused
                                .lock_wait
                                .push_back(LockWait::Fused { req, ticket, locks });
                        }
                    }
                }
            }
        }
    }

    /// A Compare's, Verify's or fused operation's device request finished.
    pub(crate) fn compare_done(&mut self, idx: usize, step: Step, c: Completion) {
        match step {
            Step::Compare => {
                let Some(req) = self.reqs.remove(idx) else {
                    return;
                };
                let sqe = req.sqe;
                let r = match (&c.result, c.buf.as_ref(), req.extra.as_deref()) {
                    (Err(e), _, _) => Err(Error::ReadFailed(device_status(e))),
                    (Ok(()), Some(read), Some(Extra::Compare { host })) => {
                        if read.as_slice() == host.as_slice() {
                            Ok(())
                        } else {
                            Err(Error::CompareFailure)
                        }
                    }
                    _ => Err(Error::Internal("compare completed without its buffers")),
                };
                match r {
                    Ok(()) => self.complete(sqe.cid.get(), Done::success()),
                    Err(e) => self.fail(&sqe, e),
                }
            }
            Step::Verify => self.verify_done(idx, c),
            Step::FusedRead => self.fused_compared(idx, c),
            Step::FusedWrite | Step::FusedFlush => self.fused_written(idx, step, c),
            _ => {}
        }
    }

    fn verify_done(&mut self, idx: usize, c: Completion) {
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        let sqe = req.sqe;
        if let Err(e) = &c.result {
            self.reqs.remove(idx);
            return self.fail(&sqe, Error::ReadFailed(device_status(e)));
        }
        let dev = req.ns.as_ref().map(|n| Rc::clone(&n.dev));
        let Some(Extra::Verify { next, end, piece }) = req.extra.as_deref_mut() else {
            return;
        };
        *next += *piece;
        let (at, left) = (*next, end.saturating_sub(*next));
        let n = left.min(*piece);
        match (left, c.buf, dev) {
            (0, _, _) => {
                self.reqs.remove(idx);
                self.complete(sqe.cid.get(), Done::success());
            }
            (_, Some(buf), Some(dev)) => {
                dev.submit(Request::read(at, n, buf, idx as u64), &self.sink);
            }
            _ => {
                self.reqs.remove(idx);
                self.fail(&sqe, Error::Internal("verify lost its buffer"));
            }
        }
    }

    /// The fused operation's read is back: compare, then write or abort.
    fn fused_compared(&mut self, idx: usize, c: Completion) {
        let Some(bs) = self
            .reqs
            .get_mut(idx)
            .map(|r| r.sqe)
            .and_then(|sqe| self.block_size(&sqe))
        else {
            return;
        };
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        let matched = match (&c.result, c.buf.as_ref(), req.extra.as_deref()) {
            (Err(e), _, _) => Err(Error::ReadFailed(device_status(e))),
            (Ok(()), Some(read), Some(Extra::Fused(f))) => {
                if read.as_slice() == f.host.as_slice() {
                    Ok(())
                } else {
                    Err(Error::CompareFailure)
                }
            }
            _ => Err(Error::Internal("fused compare without its buffers")),
        };
        drop(c.buf);
        if let Err(e) = matched {
            if let Some(req) = self.reqs.remove(idx) {
                self.fused_fail(req, e, Error::FusedFailed);
            }
            return;
        }
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        let offset = req.sqe.slba() * bs;
        let len = u64::from(req.sqe.nlb()) * bs;
        let buf = match req.extra.as_deref_mut() {
            Some(Extra::Fused(f)) => f.write_buf.take(),
            _ => None,
        };
        let (Some(buf), Some(dev)) = (buf, req.ns.as_ref().map(|n| Rc::clone(&n.dev))) else {
            if let Some(req) = self.reqs.remove(idx) {
                self.fused_fail(req, Error::FusedFailed, Error::Internal("fused write lost"));
            }
            return;
        };
        req.step = Step::FusedWrite;
        dev.submit(Request::write(offset, len, buf, idx as u64), &self.sink);
    }

    /// The fused operation's write (or the flush after it) is back.
    fn fused_written(&mut self, idx: usize, step: Step, c: Completion) {
        if let Err(e) = &c.result {
            let st = device_status(e);
            if let Some(req) = self.reqs.remove(idx) {
                self.fused_fail(req, Error::FusedFailed, Error::WriteFailed(st));
            }
            return;
        }
        let Some((sqe, ns)) = self.reqs.get_mut(idx).map(|r| (r.sqe, r.ns.clone())) else {
            return;
        };
        if step == Step::FusedWrite {
            let bytes = u64::from(sqe.nlb()) * self.block_size(&sqe).unwrap_or(0);
            self.count_write(ns.as_deref(), bytes);
            let Some(req) = self.reqs.get_mut(idx) else {
                return;
            };
            if req.write_through {
                req.step = Step::FusedFlush;
                if let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) {
                    dev.submit(Request::bare(Op::Flush, 0, 0, idx as u64), &self.sink);
                }
                return;
            }
        }
        let Some(req) = self.reqs.remove(idx) else {
            return;
        };
        let write = match req.extra.as_deref() {
            Some(Extra::Fused(f)) => Some(f.write),
            _ => None,
        };
        // The range is free before the host hears of it.
        drop(req.guard);
        self.complete(req.sqe.cid.get(), Done::success());
        if let Some(w) = write {
            self.complete(w.cid.get(), Done::success());
        }
    }
}
