//! Commands whose data the host sends after an R2T: the slots that collect it, the
//! per-connection R2T memory budget, and H2CData reassembly.
//!
//! The data lands in a device buffer from the controller thread's pool, taken when the R2T
//! goes out, so the write reaches the device from where the host's bytes were put; or, for
//! a device with mapped memory, in the device itself ([`crate::land`]). The bytes
//! of every R2T sent and not yet answered count against
//! [`crate::TargetConfig::r2t_buffer_limit`], and a command waits (without an R2T) while the
//! budget or the pool is exhausted. So a host that asks for many large writes and never sends
//! the data pins at most the budget, until the idle timeout closes it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nvme_spec::command::Sqe;
use nvme_spec::pdu::{self, CommonHeader, DIGEST_LEN, DataHeader, R2t, flags, pdu_type};
use nvme_spec::{FromBytes, FromZeros, IntoBytes};

use bdev::Extent;

use crate::codec::{self, Fatal, Header};
use crate::completion::{Command, Error};
use crate::conn::{Conn, Data};
use crate::land::Landing;

/// H2CData payloads at least this large are read from the socket straight into their
/// command's buffer, not through the input buffer.
pub(crate) const DIRECT_MIN: usize = 16 * 1024;

/// A large H2CData payload being read straight into its slot's buffer.
#[derive(Debug)]
pub(crate) struct Direct {
    slot: usize,
    /// Where the payload starts in the buffer.
    start: usize,
    /// Bytes up to here have arrived.
    pos: usize,
    end: usize,
    /// A data digest follows the payload.
    digest: bool,
    /// The PDU is the command's last.
    last: bool,
}

/// Where an R2T's data goes.
pub(crate) enum Dest {
    /// A device buffer from the pool; the command runs once the data is in.
    Buf(bdev::IoBuf),
    /// The device's memory ([`Slot::extents`]); the write is done once the data is in.
    Device(Landing),
}

/// Where the next read of the socket goes.
pub(crate) enum ReadInto<'a> {
    /// Memory of ours (the input buffer, a device buffer).
    Buf(&'a mut [u8]),
    /// Bytes `[from, to)` of a device's mapped pieces, unless the write is fenced off by
    /// the time the bytes are there: then they go to `discard`.
    Device {
        extents: &'a [Extent],
        from: usize,
        to: usize,
        landing: &'a Landing,
        discard: &'a mut [u8],
    },
}

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
    dest: Option<Dest>,
    /// The device's memory for [`Dest::Device`] (kept, empty, between commands).
    extents: Vec<Extent>,
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
            dest: None,
            extents: Vec::new(),
            failed: None,
            started: Instant::now(),
        }
    }

    /// Whether the slot's command is waiting for data.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Puts the next `data.len()` bytes of the command's data where they go (the caller
    /// checked them against the R2T). A copy into the device that fails fails the command.
    fn put(&mut self, data: &[u8]) {
        let at = self.got;
        match self.dest.as_mut() {
            Some(Dest::Buf(b)) => b.as_mut_slice()[at..at + data.len()].copy_from_slice(data),
            // Once failed, the rest of the data goes nowhere.
            Some(Dest::Device(l)) if self.failed.is_none() => {
                if l.fenced() {
                    self.failed = Some(Error::Interrupted);
                } else if Extent::copy_in(&self.extents, at, data).is_err() {
                    self.failed = Some(Error::Internal("write data outside its device memory"));
                }
            }
            Some(Dest::Device(_)) | None => {}
        }
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
        let mut extents = std::mem::take(&mut self.slots[i].extents);
        extents.clear();
        let dest = match self.r2t_landing(sqe, &cmd, &mut extents) {
            Some(l) => Dest::Device(l),
            None => match self.port.pool.get(len) {
                Some(buf) => Dest::Buf(buf),
                None => {
                    self.slots[i].extents = extents;
                    return false;
                }
            },
        };
        self.r2t_reserved += len;
        let slot = &mut self.slots[i];
        slot.active = true;
        slot.sqe = *sqe;
        slot.cmd = Some(cmd);
        slot.len = len;
        slot.got = 0;
        slot.dest = Some(dest);
        slot.extents = extents;
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

    /// Checks an H2CData header against the slot it names and returns the slot.
    fn check_h2c(&self, h: &DataHeader, datal: usize) -> Result<usize, Fatal> {
        let max_h2c = self.port.target.config().max_h2c_data as usize;
        let i = usize::from(h.ttag.get());
        let Some(slot) = self.slots.get(i).filter(|s| s.active) else {
            return Err(Fatal::field(10));
        };
        if slot.sqe.cid != h.cccid {
            return Err(Fatal::field(8));
        }
        let datao = h.datao.get() as usize;
        if h.datal.get() as usize != datal {
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
        Ok(i)
    }

    pub(crate) fn on_h2c_data(
        &mut self,
        h: &DataHeader,
        data: &[u8],
        digest_error: bool,
    ) -> Result<(), Fatal> {
        let i = self.check_h2c(h, data.len())?;
        self.slots[i].put(data);
        let last = h.ch.flags & flags::LAST_PDU != 0;
        self.h2c_landed(i, data.len(), digest_error, last)
    }

    /// Counts `n` bytes of H2CData that reached slot `i`'s buffer, and runs the command
    /// once all its data is there.
    fn h2c_landed(
        &mut self,
        i: usize,
        n: usize,
        digest_error: bool,
        last: bool,
    ) -> Result<(), Fatal> {
        let slot = &mut self.slots[i];
        slot.got += n;
        if digest_error {
            self.port
                .metrics()
                .digest_errors
                .fetch_add(1, Ordering::Relaxed);
            slot.failed = Some(Error::DataDigest);
        }
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

    /// Starts reading the payload of the H2CData PDU at the front of the input straight into
    /// its slot's buffer, when it is large and its header is in. Returns whether it did.
    pub(crate) fn try_direct(&mut self, h: &Header) -> Result<bool, Fatal> {
        let avail = self.inb.data().len();
        if h.ch.pdu_type != pdu_type::H2C_DATA || h.data.len() < DIRECT_MIN || avail < h.data.start
        {
            return Ok(false);
        }
        let (dh, _) = DataHeader::read_from_prefix(self.inb.data()).map_err(|_| Fatal::field(4))?;
        let len = h.data.len();
        let i = self.check_h2c(&dh, len)?;
        let have = (avail - h.data.start).min(len);
        let start = self.slots[i].got;
        self.port.metrics().pdus_rx.fetch_add(1, Ordering::Relaxed);
        self.slots[i].put(&self.inb.data()[h.data.start..h.data.start + have]);
        self.inb.consume(h.data.start + have);
        self.direct = Some(Direct {
            slot: i,
            start,
            pos: start + have,
            end: start + len,
            digest: h.dd != 0,
            last: dh.ch.flags & flags::LAST_PDU != 0,
        });
        if have == len {
            self.direct_done()?;
        }
        Ok(true)
    }

    /// Where the next read of the socket goes while a payload is read directly (empty,
    /// which reads as the end of the stream, if its buffer were gone). Data that must not
    /// land any more is read into `discard` and dropped.
    pub(crate) fn direct_target<'a>(
        direct: &Option<Direct>,
        slots: &'a mut [Slot],
        discard: &'a mut [u8],
    ) -> ReadInto<'a> {
        let Some((d, slot)) = direct
            .as_ref()
            .and_then(|d| Some((d, slots.get_mut(d.slot)?)))
        else {
            return ReadInto::Buf(&mut []);
        };
        match slot.dest.as_mut() {
            Some(Dest::Buf(b)) => {
                ReadInto::Buf(b.as_mut_slice().get_mut(d.pos..d.end).unwrap_or_default())
            }
            Some(Dest::Device(l)) => {
                if slot.failed.is_none() && l.fenced() {
                    slot.failed = Some(Error::Interrupted);
                }
                let n = discard.len().min(d.end - d.pos);
                if slot.failed.is_some() {
                    return ReadInto::Buf(&mut discard[..n]);
                }
                ReadInto::Device {
                    extents: &slot.extents,
                    from: d.pos,
                    to: d.end,
                    landing: l,
                    discard: &mut discard[..n],
                }
            }
            None => ReadInto::Buf(&mut []),
        }
    }

    /// `n` bytes were read straight into the payload's buffer.
    pub(crate) fn direct_filled(&mut self, n: usize) -> Result<(), Fatal> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        d.pos += n;
        // Fenced off while the bytes came: they went to the discard buffer.
        if let Some(slot) = self.slots.get_mut(d.slot) {
            if let (None, Some(Dest::Device(l))) = (&slot.failed, &slot.dest) {
                if l.fenced() {
                    slot.failed = Some(Error::Interrupted);
                }
            }
        }
        if d.pos == d.end {
            self.direct_done()?;
        }
        Ok(())
    }

    /// The payload read directly is complete: it lands now, or after its data digest.
    fn direct_done(&mut self) -> Result<(), Fatal> {
        let Some(d) = self.direct.take() else {
            return Ok(());
        };
        if d.digest {
            self.pending_digest = Some(d);
            return Ok(());
        }
        self.h2c_landed(d.slot, d.end - d.start, false, d.last)
    }

    /// Checks the data digest that follows a payload read directly, once it is in the
    /// input. Returns whether the input may be parsed on.
    pub(crate) fn take_pending_digest(&mut self) -> Result<bool, Fatal> {
        if self.direct.is_some() {
            return Ok(false);
        }
        let Some(d) = self.pending_digest.as_ref() else {
            return Ok(true);
        };
        let inb = self.inb.data();
        if inb.len() < DIGEST_LEN {
            return Ok(false);
        }
        let want = u32::from_le_bytes([inb[0], inb[1], inb[2], inb[3]]);
        // Digests are checked only on device buffers: data that may land in the device
        // goes to a buffer while data digests are on.
        let got = match &self.slots[d.slot].dest {
            Some(Dest::Buf(b)) => codec::digest(&b.as_slice()[d.start..d.end]),
            _ => !want,
        };
        let (slot, n, last) = (d.slot, d.end - d.start, d.last);
        self.pending_digest = None;
        self.inb.consume(DIGEST_LEN);
        self.h2c_landed(slot, n, got != want, last)?;
        Ok(true)
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
        let dest = slot.dest.take();
        slot.extents.clear();
        self.r2t_reserved -= len;
        self.port
            .metrics()
            .awaiting_data
            .fetch_sub(1, Ordering::Relaxed);
        // An abort that came while the data did wins: the command does not run.
        let failed = self.aborts.data_done(sqe.cid.get()).or(failed);
        match (failed, cmd, dest) {
            (Some(e), _, _) => self.complete(sqe.cid.get(), e),
            (None, Some(cmd), Some(Dest::Buf(buf))) => {
                self.execute(&sqe, cmd, Data::Buf(buf), started);
            }
            (None, Some(cmd), Some(Dest::Device(l))) => {
                self.execute(&sqe, cmd, Data::Landed(l), started);
            }
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
        self.direct = None;
        self.pending_digest = None;
        for i in 0..self.slots.len() {
            if self.slots[i].active {
                self.slots[i].active = false;
                self.slots[i].dest = None;
                self.slots[i].extents.clear();
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
