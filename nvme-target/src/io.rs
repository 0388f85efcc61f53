//! NVM I/O commands (Read, Write, Flush, Write Zeroes, Dataset Management) as requests to
//! the namespace's asynchronous block device.
//!
//! Each command lives in the connection's request table from the moment its data is at hand
//! until its response is queued, in one of a few states (like SPDK's `tcp.c` request
//! states): waiting for a buffer, at the device, flushing (a write with the volatile write
//! cache off), discarding (Dataset Management, one device request per range). The
//! connection keeps reading and answering other commands meanwhile; completions come back
//! through the connection's completion queue in any order and finish their command: a read
//! goes out as a C2HData PDU straight from the buffer the device filled.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bdev::{BlockIo, Completion, IoBuf, IoError, Op, Request};
use nvme_spec::cmds::{IoCmd, ParseError};
use nvme_spec::command::{DSM_ATTR_DEALLOCATE, DsmRange, Sqe, io_opcode};
use nvme_spec::{FromBytes, IntoBytes};
use tracing::warn;

use crate::codec;
use crate::compare::Extra;
use crate::completion::{Completion as Done, Error};
use crate::conn::{Conn, Data, Piece};
use crate::locks::RangeGuard;
use crate::metrics::CommandKind;
use crate::port::PortNamespace;

/// Reads go out without a copy into a device buffer when the device allows it and data
/// digests are off (the digest needs the bytes in a buffer of ours): pieces of its mapped
/// memory at any size (gathered into the socket write like a buffer), pieces of files
/// (`sendfile`, a system call each) only for reads at least this large.
const SENDFILE_MIN: usize = 16 * 1024;
/// Dataset Management data: 256 ranges of 16 bytes at most.
const DSM_MAX_LEN: usize = 256 * 16;

/// What a request in the table is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The command's own operation at the device.
    Device,
    /// The flush after a write (or write zeroes, or deallocate) with the cache off.
    Flush,
    /// Deallocate requests still out, and the first failure.
    Discard { left: u32, failed: Option<Error> },
    /// Flushes of every namespace (see [`Barrier`]) still out.
    Barrier {
        left: u32,
        failed: bool,
        then: Barrier,
    },
    /// A Compare's read (see [`crate::compare`]).
    Compare,
    /// A Verify's read of its next piece.
    Verify,
    /// A fused Compare and Write: the compare's read, under the range lock.
    FusedRead,
    /// The fused operation's write.
    FusedWrite,
    /// The flush after it, with the cache off.
    FusedFlush,
}

/// What to do when every namespace of a controller's subsystem has been flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Barrier {
    /// Answer command `cid` (success, or Internal Error if a flush failed).
    Respond { cid: u16 },
    /// Report the shutdown the host asked for as complete (CSTS.SHST).
    Shutdown,
}

/// A command in the connection's request table.
pub(crate) struct IoReq {
    pub sqe: Sqe,
    pub started: Instant,
    pub step: Step,
    /// The command's namespace (its device on this thread, its shared state), when it has
    /// one.
    pub(crate) ns: Option<Rc<PortNamespace>>,
    pub(crate) write_through: bool,
    /// What the command holds of the namespace's range locks (writes, deallocates, fused
    /// operations).
    pub(crate) guard: Option<RangeGuard>,
    /// State of Compare, Verify and fused commands.
    pub(crate) extra: Option<Box<Extra>>,
}

impl Conn {
    /// Checks a command's namespace, LBA range and transfer length before any data moves.
    pub(crate) fn check_io(&self, sqe: &Sqe) -> Result<(), Error> {
        let Some(q) = &self.q else {
            return Err(Error::Sequence);
        };
        let Some(ns) = self.port.namespace(q.ctrl.subsys, sqe.nsid.get()) else {
            return Err(Error::InvalidNamespace);
        };
        // Before any data moves: a path that serves no I/O says so, and the host fails over.
        if let Some(e) = self.port.ana_state(&ns).and_then(Error::for_ana) {
            return Err(e);
        }
        match sqe.opcode {
            io_opcode::READ
            | io_opcode::WRITE
            | io_opcode::WRITE_ZEROES
            | io_opcode::COMPARE
            | io_opcode::VERIFY => {
                let (slba, nlb) = (sqe.slba(), u64::from(sqe.nlb()));
                if slba
                    .checked_add(nlb)
                    .is_none_or(|end| end > ns.cfg.num_blocks)
                {
                    return Err(Error::LbaOutOfRange);
                }
                // Write Zeroes and Verify move no data.
                if !matches!(sqe.opcode, io_opcode::WRITE_ZEROES | io_opcode::VERIFY) {
                    let len = nlb * u64::from(ns.cfg.block_size);
                    if len > u64::from(self.port.target.config().max_transfer) {
                        return Err(Error::TooLarge);
                    }
                    if u64::from(sqe.dptr.length.get()) != len {
                        return Err(Error::SglLength);
                    }
                }
                Ok(())
            }
            io_opcode::DSM => {
                // NR + 1 ranges of 16 bytes: at most 4 KiB, never what the host claims.
                let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
                let len = sqe.dptr.length.get() as usize;
                if len < nr * 16 || len > DSM_MAX_LEN {
                    return Err(Error::SglLength);
                }
                Ok(())
            }
            io_opcode::FLUSH => Ok(()),
            io_opcode::RESV_REGISTER
            | io_opcode::RESV_ACQUIRE
            | io_opcode::RESV_RELEASE
            | io_opcode::RESV_REPORT => crate::resv::check_length(sqe, self.port.target.config()),
            op => Err(Error::Parse(ParseError::Opcode(op))),
        }
    }

    /// Starts an I/O command whose data (if the host sends any) is at hand.
    pub(crate) fn io(&mut self, sqe: &Sqe, cmd: IoCmd, data: Data<'_>, started: Instant) {
        let kind = match sqe.opcode {
            io_opcode::READ => CommandKind::Read,
            io_opcode::WRITE => CommandKind::Write,
            io_opcode::FLUSH => CommandKind::Flush,
            io_opcode::WRITE_ZEROES => CommandKind::WriteZeroes,
            io_opcode::DSM => CommandKind::Dsm,
            io_opcode::COMPARE => CommandKind::Compare,
            io_opcode::VERIFY => CommandKind::Verify,
            io_opcode::RESV_REGISTER
            | io_opcode::RESV_REPORT
            | io_opcode::RESV_ACQUIRE
            | io_opcode::RESV_RELEASE => CommandKind::Reservation,
            _ => CommandKind::Other,
        };
        self.port.metrics().command(kind);
        if let Err(st) = self.check_io(sqe) {
            return self.fail(sqe, st);
        }
        let Some(q) = &self.q else { return };
        // With the volatile write cache disabled (Set Features VWC = 0) every write is
        // durable before its completion.
        let write_through = !q.ctrl.vwc_enabled.get();
        let port = Rc::clone(&self.port);
        let Some(ns) = port.namespace(q.ctrl.subsys, sqe.nsid.get()) else {
            return self.fail(sqe, Error::InvalidNamespace);
        };
        let bs = u64::from(ns.cfg.block_size);
        let offset = sqe.slba() * bs;
        let len = u64::from(sqe.nlb()) * bs;
        let dev = Rc::clone(&ns.dev);
        let state = &ns.state;
        // One atomic load while nobody is registered with the namespace (the host ID is
        // behind a lock: read only when it matters).
        if state.resv.active() && state.resv.check(&q.ctrl.hostid.get(), &cmd).is_err() {
            return self.fail(sqe, Error::ResvConflict);
        }
        let mut req = IoReq {
            sqe: *sqe,
            started,
            step: Step::Device,
            ns: Some(Rc::clone(&ns)),
            write_through,
            guard: None,
            extra: None,
        };
        match cmd {
            IoCmd::Compare(_)
            | IoCmd::FusedCompare(_)
            | IoCmd::FusedWrite(_)
            | IoCmd::Verify(_) => {
                return self.compare_cmd(req, cmd, data, bs);
            }
            IoCmd::ResvRegister(_)
            | IoCmd::ResvAcquire(_)
            | IoCmd::ResvRelease(_)
            | IoCmd::ResvReport(_) => return self.resv_cmd(sqe, cmd, data, &ns),
            _ => {}
        }
        match sqe.opcode {
            io_opcode::READ => {
                let Data::ToHost(n) = data else {
                    return self.fail(sqe, Error::SglType);
                };
                if !self.dg.data {
                    self.extents.clear();
                    if dev.extents(offset, len, n >= SENDFILE_MIN, &mut self.extents) {
                        self.count_read(Some(&ns), len);
                        // Its latency is observed when its last byte is handed to the socket.
                        self.send_extents(sqe.cid.get(), n, started);
                        return;
                    }
                }
                if n > self.port.pool.max_size() {
                    // A configuration error (the pool must hold MDTS): never a wait forever.
                    return self.fail(sqe, Error::Internal("buffer pool smaller than MDTS"));
                }
                let Some(buf) = self.port.pool.get(n) else {
                    return self.wait_for_buffer(*sqe, started);
                };
                let tag = self.reqs.insert(req) as u64;
                dev.submit(Request::read(offset, len, buf, tag), &self.sink);
            }
            io_opcode::WRITE => {
                let buf = match data {
                    Data::Buf(b) => b,
                    Data::Landed(l) => return self.write_landed(req, l),
                    Data::Host(d) => {
                        if let Some(l) = self.land_in_capsule(&mut req, d) {
                            return self.write_landed(req, l);
                        }
                        // In-capsule data: into a device buffer once.
                        let Some(mut b) = self.port.pool.get(d.len()) else {
                            return self.fail(sqe, Error::NoBuffer);
                        };
                        b.as_mut_slice().copy_from_slice(d);
                        b
                    }
                    _ => return self.fail(sqe, Error::SglLength),
                };
                self.submit_write(req, Request::write(offset, len, buf, 0));
            }
            io_opcode::FLUSH => {
                let tag = self.reqs.insert(req) as u64;
                dev.submit(Request::bare(Op::Flush, 0, 0, tag), &self.sink);
            }
            io_opcode::WRITE_ZEROES => {
                self.submit_write(req, Request::bare(Op::WriteZeroes, offset, len, 0));
            }
            io_opcode::DSM => self.dsm(req, data, ns.cfg.num_blocks, bs),
            op => self.fail(sqe, Error::Parse(ParseError::Opcode(op))),
        }
    }

    /// Dataset Management: every range checked first, then one deallocate request each.
    fn dsm(&mut self, mut req: IoReq, data: Data<'_>, blocks: u64, bs: u64) {
        let sqe = req.sqe;
        let bytes: &[u8] = match &data {
            Data::Host(d) => d,
            Data::Buf(b) => b.as_slice(),
            _ => return self.fail(&sqe, Error::SglLength),
        };
        let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
        let ranges = || {
            bytes
                .chunks_exact(16)
                .take(nr)
                .filter_map(|c| DsmRange::read_from_bytes(c).ok())
        };
        if ranges().any(|r| {
            r.slba
                .get()
                .checked_add(u64::from(r.nlb.get()))
                .is_none_or(|e| e > blocks)
        }) {
            return self.fail(&sqe, Error::LbaOutOfRange);
        }
        // Blocks [start, end) of each range (checked against the namespace above).
        let todo: Vec<(u64, u64)> = if sqe.cdw11.get() & DSM_ATTR_DEALLOCATE != 0 {
            ranges()
                .filter(|r| r.nlb.get() != 0)
                .map(|r| (r.slba.get(), r.slba.get() + u64::from(r.nlb.get())))
                .collect()
        } else {
            Vec::new()
        };
        drop(data);
        if todo.is_empty() {
            return self.complete(sqe.cid.get(), Done::success());
        }
        req.step = Step::Discard {
            left: u32::try_from(todo.len()).unwrap_or(u32::MAX),
            failed: None,
        };
        // Like a write: never inside a fused Compare and Write's range.
        self.submit_discards(req, todo, bs);
    }

    /// Sends one deallocate request per block range `[start, end)` of a Dataset Management
    /// command that holds its range locks.
    pub(crate) fn discard_ranges(&mut self, req: IoReq, ranges: &[(u64, u64)], bs: u64) {
        let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) else {
            return;
        };
        let tag = self.reqs.insert(req) as u64;
        for &(start, end) in ranges {
            let r = Request::bare(Op::Discard, start * bs, (end - start) * bs, tag);
            dev.submit(r, &self.sink);
        }
    }

    /// A read that found the buffer pool empty waits (in order) for buffers to come back.
    fn wait_for_buffer(&mut self, sqe: Sqe, started: Instant) {
        self.buffer_wait.push_back((sqe, started));
        // Not started yet: an Abort takes it back (see `take_aborts`).
        self.aborts.waiting_for_data(sqe.cid.get(), sqe.nsid.get());
    }

    /// Retries reads that waited for a buffer, oldest first, while buffers are free.
    pub(crate) fn retry_buffer_waits(&mut self) {
        while let Some(&(sqe, started)) = self.buffer_wait.front() {
            let len = sqe.dptr.length.get() as usize;
            if self.port.pool.free() == 0 || len > self.port.pool.max_size() {
                return;
            }
            self.buffer_wait.pop_front();
            if let Some(e) = self.aborts.data_done(sqe.cid.get()) {
                self.complete(sqe.cid.get(), e);
                continue;
            }
            let before = self.buffer_wait.len();
            // Counted once already, when it arrived.
            self.port.metrics().commands[CommandKind::Read as usize]
                .fetch_sub(1, Ordering::Relaxed);
            match IoCmd::try_from(&sqe) {
                Ok(cmd) => self.io(&sqe, cmd, Data::ToHost(len), started),
                Err(e) => self.fail(&sqe, e.into()),
            }
            if self.buffer_wait.len() > before {
                // Still no buffer of its size: it went back to the end; restore the order.
                if let Some(w) = self.buffer_wait.pop_back() {
                    self.buffer_wait.push_front(w);
                }
                return;
            }
        }
    }

    /// Takes every completion the devices posted for this connection.
    pub(crate) fn on_completions(&mut self) {
        while let Some(c) = self.cq.pop() {
            self.on_completion(c);
        }
    }

    fn on_completion(&mut self, c: Completion) {
        let idx = usize::try_from(c.tag).unwrap_or(usize::MAX);
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        let step = req.step;
        let sqe = req.sqe;
        match step {
            Step::Device => self.device_done(idx, c),
            Step::Flush => {
                let Some(req) = self.reqs.remove(idx) else {
                    return;
                };
                match c.result {
                    Ok(()) => self.succeed(&req),
                    Err(e) => {
                        warn!(nsid = sqe.nsid.get(), error = %e, "flush after a write failed");
                        self.fail(&sqe, Error::WriteFailed(None));
                    }
                }
            }
            Step::Discard { left, failed } => {
                let failed = failed.or_else(|| {
                    c.result.as_ref().err().map(|e| {
                        warn!(nsid = sqe.nsid.get(), error = %e, "deallocate failed");
                        Error::Internal("deallocate failed")
                    })
                });
                if left > 1 {
                    if let Some(r) = self.reqs.get_mut(idx) {
                        r.step = Step::Discard {
                            left: left - 1,
                            failed,
                        };
                    }
                    return;
                }
                match failed {
                    Some(st) => {
                        self.reqs.remove(idx);
                        self.fail(&sqe, st);
                    }
                    None => self.after_write(idx),
                }
            }
            Step::Barrier { left, failed, then } => {
                let failed = failed || c.result.is_err();
                if let Err(e) = &c.result {
                    warn!(error = %e, "flush of a namespace failed");
                }
                if left > 1 {
                    if let Some(r) = self.reqs.get_mut(idx) {
                        r.step = Step::Barrier {
                            left: left - 1,
                            failed,
                            then,
                        };
                    }
                    return;
                }
                self.reqs.remove(idx);
                self.barrier_done(then, failed);
            }
            Step::Compare
            | Step::Verify
            | Step::FusedRead
            | Step::FusedWrite
            | Step::FusedFlush => self.compare_done(idx, step, c),
        }
    }

    /// The command's own operation finished at the device.
    fn device_done(&mut self, idx: usize, c: Completion) {
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        let sqe = req.sqe;
        let ns = req.ns.clone();
        let bytes = u64::from(sqe.dptr.length.get());
        match (sqe.opcode, c.result) {
            (io_opcode::READ, Ok(())) => {
                let Some(req) = self.reqs.remove(idx) else {
                    return;
                };
                let Some(buf) = c.buf else {
                    return self.fail(&sqe, Error::Internal("read completed without its buffer"));
                };
                self.count_read(ns.as_deref(), bytes);
                // Its latency is observed when its last byte is handed to the socket.
                self.send_buf(sqe.cid.get(), buf, req.started);
            }
            (io_opcode::READ, Err(e)) => {
                self.reqs.remove(idx);
                warn!(nsid = sqe.nsid.get(), offset = sqe.slba(), error = %e, "read failed");
                self.fail(&sqe, Error::ReadFailed(device_status(&e)));
            }
            (io_opcode::WRITE, Ok(())) => {
                self.count_write(ns.as_deref(), bytes);
                // The buffer goes back to the pool here.
                drop(c.buf);
                self.after_write(idx);
            }
            (io_opcode::WRITE_ZEROES, Ok(())) => self.after_write(idx),
            (io_opcode::FLUSH, Ok(())) => {
                if let Some(req) = self.reqs.remove(idx) {
                    self.succeed(&req);
                }
            }
            (op, Err(e)) => {
                self.reqs.remove(idx);
                warn!(nsid = sqe.nsid.get(), opcode = op, error = %e, "command failed at the device");
                self.fail(&sqe, Error::WriteFailed(device_status(&e)));
            }
            _ => {
                self.reqs.remove(idx);
                self.fail(&sqe, Error::Internal("unexpected completion"));
            }
        }
    }

    /// A write-like command is done at the device: answer, or flush first when the cache
    /// is off.
    pub(crate) fn after_write(&mut self, idx: usize) {
        let Some(req) = self.reqs.get_mut(idx) else {
            return;
        };
        if !req.write_through {
            if let Some(req) = self.reqs.remove(idx) {
                self.succeed(&req);
            }
            return;
        }
        req.step = Step::Flush;
        let Some(dev) = req.ns.as_ref().map(|n| Rc::clone(&n.dev)) else {
            return;
        };
        dev.submit(Request::bare(Op::Flush, 0, 0, idx as u64), &self.sink);
    }

    fn succeed(&mut self, req: &IoReq) {
        if matches!(req.sqe.opcode, io_opcode::WRITE) {
            self.port
                .metrics()
                .write_latency
                .observe(req.started.elapsed());
        }
        self.complete(req.sqe.cid.get(), Done::success());
    }

    /// Flushes every namespace of the connection's subsystem, then does `then`.
    pub(crate) fn flush_all(&mut self, then: Barrier) {
        let Some(q) = &self.q else { return };
        let port = Rc::clone(&self.port);
        let devs: Vec<Rc<dyn BlockIo>> = port
            .namespaces_of(q.ctrl.subsys)
            .iter()
            .map(|ns| Rc::clone(&ns.dev))
            .collect();
        if devs.is_empty() {
            return self.barrier_done(then, false);
        }
        let idx = self.reqs.insert(IoReq {
            sqe: Sqe::default(),
            started: Instant::now(),
            step: Step::Barrier {
                left: u32::try_from(devs.len()).unwrap_or(u32::MAX),
                failed: false,
                then,
            },
            ns: None,
            write_through: false,
            guard: None,
            extra: None,
        });
        for d in devs {
            d.submit(Request::bare(Op::Flush, 0, 0, idx as u64), &self.sink);
        }
    }

    fn barrier_done(&mut self, then: Barrier, failed: bool) {
        match then {
            Barrier::Respond { cid } => {
                if failed {
                    self.complete(cid, Error::Internal("flush of a namespace failed"));
                } else {
                    self.complete(cid, Done::success());
                }
            }
            Barrier::Shutdown => {
                if let Some(q) = &self.q {
                    let csts = nvme_spec::regs::Csts(q.ctrl.csts.get());
                    q.ctrl.csts.set(
                        nvme_spec::regs::Csts::build(
                            csts.rdy(),
                            csts.cfs(),
                            nvme_spec::regs::Csts::SHST_COMPLETE,
                        )
                        .0,
                    );
                }
            }
        }
    }

    /// Counts a completed write of `len` bytes to namespace `ns`.
    pub(crate) fn count_write(&self, ns: Option<&PortNamespace>, len: u64) {
        self.port
            .metrics()
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        if let Some(nsm) = ns.map(|n| &n.state.metrics) {
            nsm.writes.fetch_add(1, Ordering::Relaxed);
            nsm.bytes_written.fetch_add(len, Ordering::Relaxed);
        }
    }

    fn count_read(&self, ns: Option<&PortNamespace>, len: u64) {
        self.port
            .metrics()
            .bytes_read
            .fetch_add(len, Ordering::Relaxed);
        if let Some(nsm) = ns.map(|n| &n.state.metrics) {
            nsm.reads.fetch_add(1, Ordering::Relaxed);
            nsm.bytes_read.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Queues a C2HData PDU whose data goes out straight from `buf`, then the response. The
    /// command stays in flight until [`Conn::reads_sent`] sees the buffer go.
    fn send_buf(&mut self, cid: u16, buf: IoBuf, started: Instant) {
        let n = buf.len();
        let h = self.c2h_header(cid, n);
        codec::put_header(&mut self.out, h.as_bytes(), self.dg);
        let crc = self.dg.data.then(|| codec::digest(buf.as_slice()));
        let at = self.out.position();
        self.pieces.push_back((at, Piece::Buf { buf, sent: 0 }));
        self.read_queued(at, started);
        if let Some(crc) = crc {
            self.out.extend(&crc.to_le_bytes());
        }
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        self.complete(cid, Done::success());
    }

    /// Queues a C2HData PDU whose data the kernel sends from the file pieces in
    /// `self.extents`, then the response. The command stays in flight until
    /// [`Conn::reads_sent`] sees its last piece go.
    fn send_extents(&mut self, cid: u16, n: usize, started: Instant) {
        let h = self.c2h_header(cid, n);
        codec::put_header(&mut self.out, h.as_bytes(), self.dg);
        let at = self.out.position();
        self.pieces
            .extend(self.extents.drain(..).map(|e| (at, Piece::Extent(e))));
        self.read_queued(at, started);
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        self.complete(cid, Done::success());
    }

    /// Keeps a read whose data pieces were just queued at `at` in flight until they are sent.
    fn read_queued(&mut self, at: u64, started: Instant) {
        self.piece_reads.push_back((at, started));
        // Counted once more: its response completes one count, its last byte the other.
        self.started_io();
    }

    /// Completes the reads whose data pieces have all been handed to the socket: their
    /// latency runs from arrival to here.
    pub(crate) fn reads_sent(&mut self) {
        while let Some(&(at, started)) = self.piece_reads.front() {
            // Pieces are queued in stream order; a read's pieces share its position.
            if self.pieces.front().is_some_and(|(p, _)| *p <= at) {
                return;
            }
            self.piece_reads.pop_front();
            self.port.metrics().read_latency.observe(started.elapsed());
            self.completed_io();
        }
    }

    /// Counts an I/O-queue command in flight.
    pub(crate) fn started_io(&mut self) {
        self.io_in_flight += 1;
        self.port
            .metrics()
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Completes one counted command (responses on other queues count nothing).
    pub(crate) fn completed_io(&mut self) {
        if self.io_in_flight > 0 {
            self.io_in_flight -= 1;
            self.port
                .metrics()
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Completes an I/O command with an error, recording namespace and LBA in the error log.
    pub(crate) fn fail(&mut self, sqe: &Sqe, e: Error) {
        self.complete(sqe.cid.get(), e);
        if let Some(q) = &self.q {
            if let Some(e) = crate::cell::lock(&q.ctrl.errors).entries.back_mut() {
                e.nsid.set(sqe.nsid.get());
                e.lba.set(sqe.slba());
            }
        }
    }
}

/// The device's own NVMe status for a failure, when it gave one.
pub(crate) fn device_status(e: &IoError) -> Option<u16> {
    match e {
        IoError::Status { status, .. } => Some(*status & 0x7ff),
        _ => None,
    }
}
