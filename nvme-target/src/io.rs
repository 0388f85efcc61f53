//! NVM I/O commands: Read, Write, Compare, Verify, Flush, Write Zeroes and Dataset
//! Management.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nvme_spec::cmds::{IoCmd, LbaRange};
use nvme_spec::command::{DsmRange, Sqe};
use nvme_spec::{FromBytes, IntoBytes, status};
use tracing::warn;

use crate::codec;
use crate::completion::{Completion, Error};
use crate::conn::{Conn, Data};

/// Reads at least this large go out with `sendfile` when the device allows it (and data
/// digests are off: the digest needs the bytes in user space).
const ZERO_COPY_MIN: usize = 16 * 1024;
/// Dataset Management data: 256 ranges of 16 bytes at most.
const DSM_MAX_LEN: usize = 256 * 16;
/// Verify reads its blocks in pieces this large.
const VERIFY_CHUNK: usize = 128 * 1024;
use crate::metrics::CommandKind;

impl Conn {
    /// Checks a command's namespace, LBA range and transfer length before any data moves.
    pub(crate) fn check_io(&self, sqe: &Sqe, cmd: &IoCmd) -> Result<(), Error> {
        let Some(q) = &self.q else {
            return Err(Error::Sequence);
        };
        let Some(ns) = self.port.namespace(q.ctrl.subsys, sqe.nsid.get()) else {
            return Err(Error::InvalidNamespace);
        };
        if let Some(r) = cmd.range() {
            let (slba, nlb) = (r.slba, u64::from(r.nlb));
            if slba
                .checked_add(nlb)
                .is_none_or(|end| end > ns.cfg.num_blocks)
            {
                return Err(Error::LbaOutOfRange);
            }
            if !matches!(cmd, IoCmd::WriteZeroes(_)) {
                // Verify moves no data but reads it all: the same bound keeps it short.
                let len = nlb * u64::from(ns.cfg.block_size);
                if len > u64::from(self.port.target.config().max_transfer) {
                    return Err(Error::TooLarge);
                }
                let sgl = if matches!(cmd, IoCmd::Verify(_)) {
                    0
                } else {
                    len
                };
                if u64::from(sqe.dptr.length.get()) != sgl {
                    return Err(Error::SglLength);
                }
            }
        }
        if let IoCmd::Dsm(d) = cmd {
            // NR + 1 ranges of 16 bytes: at most 4 KiB, never what the host claims.
            let len = sqe.dptr.length.get() as usize;
            if len < d.ranges * 16 || len > DSM_MAX_LEN {
                return Err(Error::SglLength);
            }
        }
        Ok(())
    }

    pub(crate) fn io(&mut self, sqe: &Sqe, cmd: IoCmd, data: Data<'_>, started: Instant) {
        let cid = sqe.cid.get();
        let kind = match cmd {
            IoCmd::Read(_) => CommandKind::Read,
            IoCmd::Write(_) => CommandKind::Write,
            IoCmd::Flush => CommandKind::Flush,
            IoCmd::WriteZeroes(_) => CommandKind::WriteZeroes,
            IoCmd::Dsm(_) => CommandKind::Dsm,
            IoCmd::Compare(_) | IoCmd::Verify(_) => CommandKind::Other,
        };
        self.port.metrics().command(kind);
        if let Err(e) = self.check_io(sqe, &cmd) {
            return self.fail(sqe, e);
        }
        let Some(q) = &self.q else { return };
        let subsys = q.ctrl.subsys;
        // With the volatile write cache disabled (Set Features VWC = 0) every write is
        // durable before its completion.
        let write_through = !q.ctrl.vwc_enabled.get();
        let port = std::rc::Rc::clone(&self.port);
        let Some(ns) = port.namespace(subsys, sqe.nsid.get()) else {
            return self.fail(sqe, Error::InvalidNamespace);
        };
        let bs = u64::from(ns.cfg.block_size);
        let range = cmd.range().unwrap_or(LbaRange { slba: 0, nlb: 0 });
        let offset = range.slba * bs;
        let len = u64::from(range.nlb) * bs;
        let nsm = &port.target.metrics().subsystems[subsys].namespaces[ns.index];
        let pm = port.metrics();
        match cmd {
            IoCmd::Read(_) => {
                let Data::ToHost(n) = data else {
                    return self.fail(sqe, Error::SglType);
                };
                let dev = &ns.dev;
                if !self.dg.data && n >= ZERO_COPY_MIN {
                    self.extents.clear();
                    if dev.file_extents(offset, len, &mut self.extents) {
                        self.send_extents(cid, n);
                        pm.bytes_read.fetch_add(len, Ordering::Relaxed);
                        nsm.reads.fetch_add(1, Ordering::Relaxed);
                        nsm.bytes_read.fetch_add(len, Ordering::Relaxed);
                        pm.read_latency.observe(started.elapsed());
                        return;
                    }
                }
                let mut failed = false;
                self.reply_data(cid, n, |buf| {
                    dev.read_at(offset, buf).map_err(|e| {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "read failed");
                        failed = true;
                        Error::Read(e)
                    })
                });
                if !failed {
                    pm.bytes_read.fetch_add(len, Ordering::Relaxed);
                    nsm.reads.fetch_add(1, Ordering::Relaxed);
                    nsm.bytes_read.fetch_add(len, Ordering::Relaxed);
                }
                pm.read_latency.observe(started.elapsed());
            }
            IoCmd::Write(_) => {
                let Data::Host(d) = data else {
                    return self.fail(sqe, Error::SglLength);
                };
                let r = match ns
                    .dev
                    .write_at(offset, d)
                    .and_then(|()| durable(write_through, &*ns.dev))
                {
                    Ok(()) => {
                        pm.bytes_written.fetch_add(len, Ordering::Relaxed);
                        nsm.writes.fetch_add(1, Ordering::Relaxed);
                        nsm.bytes_written.fetch_add(len, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "write failed");
                        Err(Error::Write(e))
                    }
                };
                pm.write_latency.observe(started.elapsed());
                self.finish(sqe, r);
            }
            IoCmd::Flush => {
                let r = ns.dev.flush().map_err(|e| {
                    warn!(nsid = ns.cfg.nsid, error = %e, "flush failed");
                    Error::Write(e)
                });
                self.finish(sqe, r);
            }
            IoCmd::WriteZeroes(_) => {
                let r = ns
                    .dev
                    .write_zeroes(offset, len)
                    .and_then(|()| durable(write_through, &*ns.dev))
                    .map_err(|e| {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "write zeroes failed");
                        Error::Write(e)
                    });
                self.finish(sqe, r);
            }
            IoCmd::Compare(_) => {
                let Data::Host(d) = data else {
                    return self.fail(sqe, Error::SglLength);
                };
                // `check_io` bounded the length by MDTS.
                let mut blocks = std::mem::take(&mut self.scratch);
                blocks.clear();
                blocks.resize(d.len(), 0);
                let r = match ns.dev.read_at(offset, &mut blocks) {
                    Ok(()) if blocks == d => Ok(()),
                    Ok(()) => Err(Error::CompareFailure),
                    Err(e) => {
                        warn!(nsid = ns.cfg.nsid, offset, error = %e, "read for compare failed");
                        Err(Error::Read(e))
                    }
                };
                self.scratch = blocks;
                self.finish(sqe, r);
            }
            IoCmd::Verify(_) => {
                let r = self.verify(&*ns.dev, offset, len).map_err(|e| {
                    warn!(nsid = ns.cfg.nsid, offset, error = %e, "verify failed");
                    Error::Read(e)
                });
                self.finish(sqe, r);
            }
            IoCmd::Dsm(dsm) => {
                let Data::Host(d) = data else {
                    return self.fail(sqe, Error::SglLength);
                };
                let ranges = || {
                    d.chunks_exact(16)
                        .take(dsm.ranges)
                        .filter_map(|c| DsmRange::read_from_bytes(c).ok())
                };
                // Validate every range before changing anything.
                let mut r = Ok(());
                for range in ranges() {
                    let end = range.slba.get().checked_add(u64::from(range.nlb.get()));
                    if end.is_none_or(|e| e > ns.cfg.num_blocks) {
                        r = Err(Error::LbaOutOfRange);
                    }
                }
                if r.is_ok() && dsm.deallocate {
                    for range in ranges() {
                        let nlb = u64::from(range.nlb.get());
                        if nlb == 0 {
                            continue;
                        }
                        if let Err(e) = ns.dev.discard(range.slba.get() * bs, nlb * bs) {
                            warn!(nsid = ns.cfg.nsid, error = %e, "deallocate failed");
                            r = Err(Error::Device(e));
                            break;
                        }
                    }
                    if r.is_ok() {
                        if let Err(e) = durable(write_through, &*ns.dev) {
                            warn!(nsid = ns.cfg.nsid, error = %e, "flush after deallocate failed");
                            r = Err(Error::Write(e));
                        }
                    }
                }
                self.finish(sqe, r);
            }
        }
    }

    /// Reads `len` bytes at `offset` in pieces of [`VERIFY_CHUNK`], discarding them: Verify
    /// reports whether the blocks can be read.
    fn verify(
        &mut self,
        dev: &dyn crate::BlockDevice,
        offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let chunk = VERIFY_CHUNK.min(usize::try_from(len).unwrap_or(VERIFY_CHUNK));
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(chunk, 0);
        let mut at = 0u64;
        let r = loop {
            if at >= len {
                break Ok(());
            }
            let n = usize::try_from(len - at).map_or(chunk, |left| left.min(chunk));
            if let Err(e) = dev.read_at(offset + at, &mut buf[..n]) {
                break Err(e);
            }
            at += n as u64;
        };
        self.scratch = buf;
        r
    }

    /// Queues a C2HData PDU whose data the kernel sends from the file pieces in
    /// `self.extents`, then the response.
    fn send_extents(&mut self, cid: u16, n: usize) {
        let h = self.c2h_header(cid, n);
        codec::put_header(&mut self.out, h.as_bytes(), self.dg);
        let at = self.out.position();
        for e in self.extents.drain(..) {
            self.files.push_back((at, e));
        }
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        self.respond(cid, status::SUCCESS, 0);
    }

    fn finish(&mut self, sqe: &Sqe, r: Result<(), Error>) {
        match r {
            Ok(()) => self.complete(sqe.cid.get(), Completion::success()),
            Err(e) => self.fail(sqe, e),
        }
    }

    /// Completes an I/O command with an error, recording namespace and LBA in the error log.
    fn fail(&mut self, sqe: &Sqe, e: Error) {
        self.complete(sqe.cid.get(), e);
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
