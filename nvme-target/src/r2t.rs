//! Commands whose data the host sends after an R2T: the slots that collect it, the
//! per-connection R2T memory budget, and H2CData reassembly.
//!
//! The data lands in a device buffer from the controller thread's pool, taken when the R2T
//! goes out, so the write reaches the device from where the host's bytes were put. The bytes
//! of every R2T sent and not yet answered count against
//! [`crate::TargetConfig::r2t_buffer_limit`], and a command waits (without an R2T) while the
//! budget or the pool is exhausted. So a host that asks for many large writes and never sends
//! the data pins at most the budget, until the idle timeout closes it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nvme_spec::command::Sqe;
use nvme_spec::pdu::{self, CommonHeader, DataHeader, R2t, flags, pdu_type};
use nvme_spec::{FromZeros, IntoBytes};

use crate::codec::{self, Fatal};
use crate::completion::{Command, Error};
use crate::conn::{Conn, Data};

/// A command whose data the host sends after an R2T.
pub(crate) struct Slot {
    active: bool,
    sqe: Sqe,
    cmd: Option<Command>,
    /// Bytes the R2T asked for.
    len: usize,
    /// Bytes received so far.
    got: usize,
    /// Where they go.
    buf: Option<bdev::IoBuf>,
    failed: Option<Error>,
    started: Instant,
}

impl Slot {
    /// A free slot holding no memory.
    pub fn new() -> Self {
        Self {
            active: false,
            sqe: Sqe::new_zeroed(),
            cmd: None,
            len: 0,
            got: 0,
            buf: None,
            failed: None,
            started: Instant::now(),
        }
    }

    /// Whether the slot's command is waiting for data.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Conn {
    /// Whether a command is waiting for its data (an R2T sent, or one queued to be sent).
    pub(crate) fn awaiting_host_data(&self) -> bool {
        !self.waiting.is_empty() || self.slots.iter().any(|s| s.active)
    }

    /// Asks the host for a command's data, or queues the command until a slot and R2T
    /// budget free up. The caller has checked the length against the command's limit.
    pub(crate) fn start_r2t(&mut self, sqe: &Sqe, cmd: Command, started: Instant) {
        let cfg = self.port.target.config();
        let len = sqe.dptr.length.get() as usize;
        if len > cfg.max_transfer as usize {
            return self.complete(sqe.cid.get(), Error::TooLarge);
        }
        if len > self.port.pool.max_size() {
            // A configuration error (the pool must hold MDTS): never a wait forever.
            return self.complete(
                sqe.cid.get(),
                Error::Internal("buffer pool smaller than MDTS"),
            );
        }
        if let Command::Io(_) = &cmd {
            if let Err(e) = self.check_io(sqe) {
                return self.complete(sqe.cid.get(), e);
            }
        }
        // Preempt and Abort finds a command by its namespace (I/O commands only).
        let nsid = match cmd {
            Command::Io(_) => sqe.nsid.get(),
            _ => 0,
        };
        // Keep the host's order: nothing overtakes a command already waiting.
        let sent = self.waiting.is_empty() && self.try_send_r2t(sqe, cmd, started);
        if !sent {
            let depth = self.q.as_ref().map_or(1, |q| usize::from(q.sqsize) + 1);
            if self.waiting.len() >= depth {
                return self.complete(sqe.cid.get(), Error::QueueFull);
            }
            self.waiting.push_back((*sqe, cmd, started));
        }
        // Abortable (from the admin queue's thread) before it is counted as waiting.
        self.aborts.waiting_for_data(sqe.cid.get(), nsid);
        self.port
            .metrics()
            .awaiting_data
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the R2T for `sqe` if a slot is free and its length fits the budget.
    fn try_send_r2t(&mut self, sqe: &Sqe, cmd: Command, started: Instant) -> bool {
        let len = sqe.dptr.length.get() as usize;
        let limit = self.port.target.config().r2t_buffer_limit();
        if self.r2t_reserved + len > limit {
            return false;
        }
        let Some(i) = self.slots.iter().position(|s| !s.active) else {
            return false;
        };
        let Some(buf) = self.port.pool.get(len) else {
            return false;
        };
        self.r2t_reserved += len;
        let slot = &mut self.slots[i];
        slot.active = true;
        slot.sqe = *sqe;
        slot.cmd = Some(cmd);
        slot.len = len;
        slot.got = 0;
        slot.buf = Some(buf);
        slot.failed = None;
        slot.started = started;
        let mut r = R2t::default();
        let (pdo, plen) = codec::data_pdu_lengths(24, 0, self.dg);
        r.ch = CommonHeader::new(pdu_type::R2T, self.dg.flags(false), 24, pdo, plen);
        r.cccid = sqe.cid;
        r.ttag.set(u16::try_from(i).unwrap_or(u16::MAX));
        r.r2to.set(0);
        r.r2tl.set(u32::try_from(len).unwrap_or(u32::MAX));
        codec::put_header(&mut self.out, r.as_bytes(), self.dg);
        self.port.metrics().pdus_tx.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sends R2Ts for waiting commands while slots and budget allow.
    pub(crate) fn start_waiting(&mut self) {
        while let Some(&(sqe, cmd, started)) = self.waiting.front() {
            if !self.try_send_r2t(&sqe, cmd, started) {
                return;
            }
            self.waiting.pop_front();
        }
    }

    pub(crate) fn on_h2c_data(
        &mut self,
        h: &DataHeader,
        data: &[u8],
        digest_error: bool,
    ) -> Result<(), Fatal> {
        let max_h2c = self.port.target.config().max_h2c_data as usize;
        let i = usize::from(h.ttag.get());
        let Some(slot) = self.slots.get_mut(i).filter(|s| s.active) else {
            return Err(Fatal::field(10));
        };
        if slot.sqe.cid != h.cccid {
            return Err(Fatal::field(8));
        }
        let datao = h.datao.get() as usize;
        let datal = h.datal.get() as usize;
        if datal != data.len() {
            return Err(Fatal::field(16));
        }
        if datal > max_h2c {
            return Err(Fatal {
                fes: pdu::fes::DATA_LIMIT_EXCEEDED,
                fei: 0,
            });
        }
        if datao != slot.got || datal > slot.len - slot.got {
            return Err(Fatal {
                fes: pdu::fes::DATA_OUT_OF_RANGE,
                fei: 12,
            });
        }
        if let Some(b) = slot.buf.as_mut() {
            b.as_mut_slice()[datao..datao + datal].copy_from_slice(data);
        }
        slot.got += datal;
        if digest_error {
            self.port
                .metrics()
                .digest_errors
                .fetch_add(1, Ordering::Relaxed);
            slot.failed = Some(Error::DataDigest);
        }
        let last = h.ch.flags & flags::LAST_PDU != 0;
        if slot.got == slot.len || last {
            if slot.got != slot.len {
                return Err(Fatal {
                    fes: pdu::fes::PDU_SEQUENCE_ERROR,
                    fei: 0,
                });
            }
            self.finish_slot(i);
        }
        Ok(())
    }

    /// Runs a command whose data all arrived, then starts the next waiting ones.
    fn finish_slot(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.active = false;
        let sqe = slot.sqe;
        let cmd = slot.cmd.take();
        let failed = slot.failed.take();
        let started = slot.started;
        let len = slot.len;
        let buf = slot.buf.take();
        self.r2t_reserved -= len;
        self.port
            .metrics()
            .awaiting_data
            .fetch_sub(1, Ordering::Relaxed);
        // An abort that came while the data did wins: the command does not run.
        let failed = self.aborts.data_done(sqe.cid.get()).or(failed);
        match (failed, cmd, buf) {
            (Some(e), _, _) => self.complete(sqe.cid.get(), e),
            (None, Some(cmd), Some(buf)) => self.execute(&sqe, cmd, Data::Buf(buf), started),
            // An active slot always holds its command and buffer.
            _ => self.complete(
                sqe.cid.get(),
                Error::Internal("R2T slot without its command"),
            ),
        }
        self.start_waiting();
    }

    /// Fails commands still waiting for data (shutdown) and frees their buffers.
    pub(crate) fn abort_pending(&mut self) {
        self.aborts.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].active {
                self.slots[i].active = false;
                self.slots[i].buf = None;
                let cid = self.slots[i].sqe.cid.get();
                self.port
                    .metrics()
                    .awaiting_data
                    .fetch_sub(1, Ordering::Relaxed);
                self.complete(cid, Error::SqDeletion);
            }
        }
        self.r2t_reserved = 0;
        while let Some((sqe, _, _)) = self.waiting.pop_front() {
            self.port
                .metrics()
                .awaiting_data
                .fetch_sub(1, Ordering::Relaxed);
            self.complete(sqe.cid.get(), Error::SqDeletion);
        }
    }
}
