//! NVM I/O commands: Read, Write, Flush, Write Zeroes and Dataset Management.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nvme_spec::command::{DSM_ATTR_DEALLOCATE, DsmRange, Sqe, io_opcode};
use nvme_spec::{FromBytes, IntoBytes, status};
use tracing::warn;

use crate::codec;
use crate::conn::{Conn, Data};

/// Reads at least this large go out with `sendfile` when the device allows it (and data
/// digests are off: the digest needs the bytes in user space).
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Dataset Management data: 256 ranges of 16 bytes at most.
const DSM_MAX_LEN: usize = 256 * 16;
use crate::metrics::CommandKind;

impl Conn {
    /// Checks a command's namespace, LBA range and transfer length before any data moves.
    pub(crate) fn check_io(&self, sqe: &Sqe) -> Result<(), u16> {
        let Some(q) = &self.q else {
            return Err(status::COMMAND_SEQUENCE_ERROR | status::DNR);
        };
        let Some(ns) = self.port.namespace(q.ctrl.subsys, sqe.nsid.get()) else {
            return Err(status::INVALID_NS | status::DNR);
        };
        match sqe.opcode {
            io_opcode::READ | io_opcode::WRITE | io_opcode::WRITE_ZEROES => {
                let (slba, nlb) = (sqe.slba(), u64::from(sqe.nlb()));
                if slba
                    .checked_add(nlb)
                    .is_none_or(|end| end > ns.cfg.num_blocks)
                {
                    return Err(status::LBA_OUT_OF_RANGE | status::DNR);
                }
                if sqe.opcode != io_opcode::WRITE_ZEROES {
                    let len = nlb * u64::from(ns.cfg.block_size);
                    if len > u64::from(self.port.target.config().max_transfer) {
                        return Err(status::INVALID_FIELD | status::DNR);
                    }
                    if u64::from(sqe.dptr.length.get()) != len {
                        return Err(status::SGL_LENGTH_INVALID | status::DNR);
                    }
                }
                Ok(())
            }
            io_opcode::DSM => {
                // NR + 1 ranges of 16 bytes: at most 4 KiB, never what the host claims.
                let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
                let len = sqe.dptr.length.get() as usize;
                if len < nr * 16 || len > DSM_MAX_LEN {
                    return Err(status::SGL_LENGTH_INVALID | status::DNR);
                }
                Ok(())
            }
            io_opcode::FLUSH => Ok(()),
            _ => Err(status::INVALID_OPCODE | status::DNR),
        }
    }

    pub(crate) fn io(&mut self, sqe: &Sqe, data: Data<'_>, started: Instant) {
        let cid = sqe.cid.get();
        let kind = match sqe.opcode {
            io_opcode::READ => CommandKind::Read,
            io_opcode::WRITE => CommandKind::Write,
            io_opcode::FLUSH => CommandKind::Flush,
            io_opcode::WRITE_ZEROES => CommandKind::WriteZeroes,
            io_opcode::DSM => CommandKind::Dsm,
            _ => CommandKind::Other,
        };
        self.port.metrics().command(kind);
        if let Err(st) = self.check_io(sqe) {
            return self.fail(sqe, st);
        }
        let Some(q) = &self.q else { return };
        let subsys = q.ctrl.subsys;
        // With the volatile write cache disabled (Set Features VWC = 0) every write is
        // durable before its completion.
        let write_through = !q.ctrl.vwc_enabled.get();
        let port = std::rc::Rc::clone(&self.port);
        let Some(ns) = port.namespace(subsys, sqe.nsid.get()) else {
            return self.fail(sqe, status::INVALID_NS | status::DNR);
        };
        let bs = u64::from(ns.cfg.block_size);
        let offset = sqe.slba() * bs;
        let len = u64::from(sqe.nlb()) * bs;
        let nsm = &port.target.metrics().subsystems[subsys].namespaces[ns.index];
        let pm = port.metrics();
        match sqe.opcode {
            io_opcode::READ => {
                let Data::ToHost(n) = data else {
                    return self.fail(sqe, status::SGL_TYPE_INVALID | status::DNR);
                };
                let dev = &ns.dev;
                if !self.dg.data && n >= ZERO_COPY_MIN {
                    self.extents.clear();
                    if dev.file_extents(offset, len, &mut self.extents) {
                        // Its latency is observed when the last byte is sent.
                        self.send_extents(cid, n, started);
                        pm.bytes_read.fetch_add(len, Ordering::Relaxed);
                        nsm.reads.fetch_add(1, Ordering::Relaxed);
                        nsm.bytes_read.fetch_add(len, Ordering::Relaxed);
                        return;
                    }
                }
                let mut failed = false;
                self.reply_data(cid, n, |buf| {
                    dev.read_at(offset, buf).map_err(|e| {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "read failed");
                        failed = true;
                        status::UNRECOVERED_READ_ERROR
                    })
                });
                if !failed {
                    pm.bytes_read.fetch_add(len, Ordering::Relaxed);
                    nsm.reads.fetch_add(1, Ordering::Relaxed);
                    nsm.bytes_read.fetch_add(len, Ordering::Relaxed);
                }
                pm.read_latency.observe(started.elapsed());
            }
            io_opcode::WRITE => {
                let Data::Host(d) = data else {
                    return self.fail(sqe, status::SGL_LENGTH_INVALID | status::DNR);
                };
                let st = match ns
                    .dev
                    .write_at(offset, d)
                    .and_then(|()| durable(write_through, &*ns.dev))
                {
                    Ok(()) => {
                        pm.bytes_written.fetch_add(len, Ordering::Relaxed);
                        nsm.writes.fetch_add(1, Ordering::Relaxed);
                        nsm.bytes_written.fetch_add(len, Ordering::Relaxed);
                        status::SUCCESS
                    }
                    Err(e) => {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "write failed");
                        status::WRITE_FAULT
                    }
                };
                pm.write_latency.observe(started.elapsed());
                self.finish(sqe, st);
            }
            io_opcode::FLUSH => {
                let st = match ns.dev.flush() {
                    Ok(()) => status::SUCCESS,
                    Err(e) => {
                        warn!(nsid = ns.cfg.nsid, error = %e, "flush failed");
                        status::WRITE_FAULT
                    }
                };
                self.finish(sqe, st);
            }
            io_opcode::WRITE_ZEROES => {
                let st = match ns
                    .dev
                    .write_zeroes(offset, len)
                    .and_then(|()| durable(write_through, &*ns.dev))
                {
                    Ok(()) => status::SUCCESS,
                    Err(e) => {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "write zeroes failed");
                        status::WRITE_FAULT
                    }
                };
                self.finish(sqe, st);
            }
            io_opcode::DSM => {
                let Data::Host(d) = data else {
                    return self.fail(sqe, status::SGL_LENGTH_INVALID | status::DNR);
                };
                let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
                let dealloc = sqe.cdw11.get() & DSM_ATTR_DEALLOCATE != 0;
                let mut st = status::SUCCESS;
                // Validate every range before changing anything.
                for chunk in d.chunks_exact(16).take(nr) {
                    let Ok(r) = DsmRange::read_from_bytes(chunk) else {
                        continue;
                    };
                    let end = r.slba.get().checked_add(u64::from(r.nlb.get()));
                    if end.is_none_or(|e| e > ns.cfg.num_blocks) {
                        st = status::LBA_OUT_OF_RANGE | status::DNR;
                    }
                }
                if st == status::SUCCESS && dealloc {
                    for chunk in d.chunks_exact(16).take(nr) {
                        let Ok(r) = DsmRange::read_from_bytes(chunk) else {
                            continue;
                        };
                        let nlb = u64::from(r.nlb.get());
                        if nlb == 0 {
                            continue;
                        }
                        if let Err(e) = ns.dev.discard(r.slba.get() * bs, nlb * bs) {
                            warn!(nsid = ns.cfg.nsid, error = %e, "deallocate failed");
                            st = status::INTERNAL_ERROR;
                            break;
                        }
                    }
                    if st == status::SUCCESS {
                        if let Err(e) = durable(write_through, &*ns.dev) {
                            warn!(nsid = ns.cfg.nsid, error = %e, "flush after deallocate failed");
                            st = status::WRITE_FAULT;
                        }
                    }
                }
                self.finish(sqe, st);
            }
            _ => self.fail(sqe, status::INVALID_OPCODE | status::DNR),
        }
    }

    /// Queues a C2HData PDU whose data the kernel sends from the file pieces in
    /// `self.extents`, then the response. The command stays in flight until
    /// [`Conn::file_reads_sent`] sees its last piece go.
    fn send_extents(&mut self, cid: u16, n: usize, started: Instant) {
        let h = self.c2h_header(cid, n);
        codec::put_header(&mut self.out, h.as_bytes(), self.dg);
        let at = self.out.position();
        for e in self.extents.drain(..) {
            self.files.push_back((at, e));
        }
        self.file_reads.push_back((at, started));
        // Counted once more: the response below completes one count, the last byte the other.
        self.started_io();
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        self.respond(cid, status::SUCCESS, 0);
    }

    /// Completes the zero-copy reads whose file pieces have all been handed to the socket.
    pub(crate) fn file_reads_sent(&mut self) {
        while let Some(&(at, started)) = self.file_reads.front() {
            // Pieces are queued in stream order; a read's pieces share its position.
            if self.files.front().is_some_and(|(p, _)| *p <= at) {
                return;
            }
            self.file_reads.pop_front();
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

    fn finish(&mut self, sqe: &Sqe, st: u16) {
        if st == status::SUCCESS {
            self.respond(sqe.cid.get(), st, 0);
        } else {
            self.fail(sqe, st);
        }
    }

    /// Completes an I/O command with an error, recording namespace and LBA in the error log.
    fn fail(&mut self, sqe: &Sqe, st: u16) {
        self.respond(sqe.cid.get(), st, 0);
        if let Some(q) = &self.q {
            if let Some(e) = q.ctrl.errors.borrow_mut().entries.back_mut() {
                e.nsid.set(sqe.nsid.get());
                e.lba.set(sqe.slba());
            }
        }
    }
}

/// Makes a completed write durable when the controller's volatile write cache is disabled.
fn durable(write_through: bool, dev: &dyn crate::BlockDevice) -> std::io::Result<()> {
    if write_through { dev.flush() } else { Ok(()) }
}
