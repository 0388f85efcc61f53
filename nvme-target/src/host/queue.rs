//! One host queue (one TCP connection): submission with in-capsule data or R2T-driven
//! H2CData, C2HData reassembly and completions, reading and writing at the same time.

use std::collections::VecDeque;
use std::net::SocketAddr;

use nvme_spec::command::{Cqe, SglDescriptor, Sqe};
use nvme_spec::pdu::{
    self, CapsuleCmd, CapsuleResp, CommonHeader, DataHeader, IcReq, IcResp, R2t, TermReq, dgst,
    flags, pdu_type,
};
use nvme_spec::{FromBytes, FromZeros, IntoBytes, U32};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::HostError;
use crate::buf::{InBuf, OutBuf};
use crate::codec::{self, Digests};

/// A completed command.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// Command ID (the slot; see [`Queue::data`] and [`Queue::release`]).
    pub cid: u16,
    /// The completion entry.
    pub cqe: Cqe,
}

impl Completion {
    /// The status field (0 is success).
    pub fn status(&self) -> u16 {
        self.cqe.status_field()
    }
}

/// A large C2HData payload being read from the socket straight into its command's buffer,
/// as the Linux host reads into the request's pages.
#[derive(Debug)]
struct Direct {
    cid: u16,
    start: usize,
    pos: usize,
    end: usize,
    digest: bool,
    success: bool,
}

/// C2HData payloads at least this large bypass the input buffer.
const DIRECT_MIN: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    write: Vec<u8>,
    write_len: usize,
    read: Vec<u8>,
    read_len: usize,
    received: usize,
}

/// One NVMe/TCP queue of a host.
#[derive(Debug)]
pub struct Queue {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    dg: Digests,
    maxh2c: usize,
    in_capsule: usize,
    inb: InBuf,
    out: OutBuf,
    slots: Vec<Slot>,
    free: Vec<u16>,
    done: VecDeque<Completion>,
    max_plen: usize,
    direct: Option<Direct>,
    pending_digest: Option<(u16, std::ops::Range<usize>, bool)>,
    /// Outstanding reads large enough to be read directly into their buffers.
    big_reads: usize,
}

/// Socket reads into the input buffer while large reads are outstanding: small, so their
/// payloads mostly bypass the buffer.
const SMALL_READ: usize = 8 * 1024;

impl Queue {
    /// Opens a TCP connection and exchanges ICReq/ICResp. `entries` bounds the commands
    /// outstanding at once; `in_capsule` is the largest write sent in the capsule.
    pub async fn open(
        addr: SocketAddr,
        dg: Digests,
        entries: u16,
        in_capsule: usize,
    ) -> Result<Self, HostError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let mut req = IcReq::new_zeroed();
        req.ch = CommonHeader::new(pdu_type::IC_REQ, 0, 128, 0, 128);
        req.dgst = (if dg.header { dgst::HDGST_ENABLE } else { 0 })
            | (if dg.data { dgst::DDGST_ENABLE } else { 0 });
        wr.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; pdu::IC_LEN];
        rd.read_exact(&mut buf[..8]).await?;
        if buf[0] == pdu_type::C2H_TERM_REQ {
            return Err(term_req(&buf[..8]));
        }
        rd.read_exact(&mut buf[8..]).await?;
        let (resp, _) = IcResp::read_from_prefix(&buf)
            .map_err(|_| HostError::Protocol("short ICResp".into()))?;
        if resp.ch.pdu_type != pdu_type::IC_RESP || resp.ch.plen.get() != 128 {
            return Err(HostError::Protocol(format!(
                "expected ICResp, got type {:#x}",
                resp.ch.pdu_type
            )));
        }
        if resp.dgst != req.dgst {
            return Err(HostError::Protocol(
                "controller did not echo the digest settings".into(),
            ));
        }
        let maxh2c = resp.maxh2cdata.get() as usize;
        if maxh2c < 4096 || resp.cpda != 0 {
            return Err(HostError::Protocol(format!(
                "unusable ICResp (MAXH2CDATA {maxh2c}, CPDA {})",
                resp.cpda
            )));
        }
        let entries = entries.max(1);
        Ok(Self {
            rd,
            wr,
            dg,
            maxh2c,
            in_capsule,
            inb: InBuf::with_capacity(256 * 1024),
            out: OutBuf::with_capacity(64 * 1024),
            slots: (0..entries).map(|_| Slot::default()).collect(),
            free: (0..entries).rev().collect(),
            done: VecDeque::with_capacity(usize::from(entries)),
            max_plen: 64 << 20,
            direct: None,
            pending_digest: None,
            big_reads: 0,
        })
    }

    /// Sets the in-capsule data limit (learned from Identify Controller's IOCCSZ).
    pub fn set_in_capsule(&mut self, bytes: usize) {
        self.in_capsule = bytes;
    }

    /// Commands that can still be submitted.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Queues a command; `write` is data for the controller, `read_len` the bytes expected
    /// back. Returns its command ID. Nothing is sent until [`Queue::next`] or
    /// [`Queue::flush`] runs.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        write: Option<&[u8]>,
        read_len: usize,
    ) -> Result<u16, HostError> {
        let cid = self.free.pop().ok_or(HostError::QueueFull)?;
        let slot = &mut self.slots[usize::from(cid)];
        slot.busy = true;
        slot.received = 0;
        slot.read_len = read_len;
        if read_len >= DIRECT_MIN {
            self.big_reads += 1;
        }
        slot.write_len = 0;
        if slot.read.len() < read_len {
            slot.read.resize(read_len, 0);
        }
        sqe.cid.set(cid);
        let mut incap: &[u8] = &[];
        match write {
            Some(w) if !w.is_empty() => {
                sqe.dptr.length.set(
                    u32::try_from(w.len())
                        .map_err(|_| HostError::Protocol("write too large".into()))?,
                );
                if w.len() <= self.in_capsule {
                    sqe.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
                    incap = w;
                } else {
                    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
                    if slot.write.len() < w.len() {
                        slot.write.resize(w.len(), 0);
                    }
                    slot.write[..w.len()].copy_from_slice(w);
                    slot.write_len = w.len();
                }
            }
            _ => {
                sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
                sqe.dptr.length.set(
                    u32::try_from(read_len)
                        .map_err(|_| HostError::Protocol("read too large".into()))?,
                );
            }
        }
        sqe.dptr.addr.set(0);
        let mut cmd = CapsuleCmd::default();
        let (pdo, plen) = codec::data_pdu_lengths(72, incap.len(), self.dg);
        cmd.ch = CommonHeader::new(
            pdu_type::CAPSULE_CMD,
            self.dg.flags(!incap.is_empty()),
            72,
            pdo,
            plen,
        );
        cmd.sqe = sqe;
        if incap.is_empty() {
            codec::put_header(&mut self.out, cmd.as_bytes(), self.dg);
        } else {
            codec::put_data_pdu(&mut self.out, cmd.as_bytes(), self.dg, incap.len())
                .copy_from_slice(incap);
            codec::seal_data(&mut self.out, self.dg, incap.len());
        }
        Ok(cid)
    }

    /// Data read by a completed command (valid until it is released).
    pub fn data(&self, cid: u16) -> &[u8] {
        let s = &self.slots[usize::from(cid)];
        &s.read[..s.received.min(s.read_len)]
    }

    /// Frees a completed command's slot.
    pub fn release(&mut self, cid: u16) {
        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
            if s.busy {
                s.busy = false;
                if s.read_len >= DIRECT_MIN {
                    self.big_reads -= 1;
                }
                self.free.push(cid);
            }
        }
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), HostError> {
        while !self.out.is_empty() {
            self.drive().await?;
        }
        Ok(())
    }

    /// Waits for the next completion (sending what is queued meanwhile).
    pub async fn next(&mut self) -> Result<Completion, HostError> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Ok(c);
            }
            self.drive().await?;
        }
    }

    /// Runs one command to completion and returns its completion and data.
    pub async fn execute(
        &mut self,
        sqe: Sqe,
        write: Option<&[u8]>,
        read_len: usize,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let cid = self.submit(sqe, write, read_len)?;
        loop {
            let c = self.next().await?;
            if c.cid == cid {
                let data = self.data(cid).to_vec();
                self.release(cid);
                return Ok((c.cqe, data));
            }
            // A completion of something submitted earlier through the pipelined API.
            self.done.push_back(c);
            if self.done.len() > self.slots.len() {
                return Err(HostError::Protocol("completions without a waiter".into()));
            }
        }
    }

    /// Parses what arrived; otherwise waits for the socket (reading and writing at once).
    async fn drive(&mut self) -> Result<(), HostError> {
        self.process()?;
        if !self.done.is_empty() {
            return Ok(());
        }
        if let Some(d) = self.direct.as_mut() {
            let slot = &mut self.slots[usize::from(d.cid)];
            let mut finished = false;
            tokio::select! {
                r = self.wr.write(self.out.pending()), if !self.out.is_empty() => wrote(&mut self.out, r)?,
                r = self.rd.read(&mut slot.read[d.pos..d.end]) => {
                    let n = r?;
                    if n == 0 {
                        return Err(HostError::Closed);
                    }
                    d.pos += n;
                    finished = d.pos == d.end;
                }
            }
            if finished {
                self.finish_direct();
                self.process()?;
            }
            return Ok(());
        }
        let need = match CommonHeader::read_from_prefix(self.inb.data()) {
            Ok((ch, _)) => (ch.plen.get() as usize).clamp(8, self.max_plen),
            Err(_) => 8,
        }
        .max(64 * 1024);
        tokio::select! {
            r = self.wr.write(self.out.pending()), if !self.out.is_empty() => wrote(&mut self.out, r)?,
            r = self.rd.read(limit(self.inb.spare(need), if self.big_reads > 0 { SMALL_READ } else { usize::MAX })) => {
                let n = r?;
                if n == 0 {
                    return Err(HostError::Closed);
                }
                self.inb.filled(n);
                self.process()?;
            }
        }
        Ok(())
    }

    fn process(&mut self) -> Result<(), HostError> {
        loop {
            if let Some((cid, range, success)) = self.pending_digest.clone() {
                let d = self.inb.data();
                if d.len() < pdu::DIGEST_LEN {
                    return Ok(());
                }
                let want = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                self.inb.consume(pdu::DIGEST_LEN);
                self.pending_digest = None;
                if codec::digest(&self.slots[usize::from(cid)].read[range]) != want {
                    return Err(HostError::Protocol("C2HData data digest mismatch".into()));
                }
                if success {
                    self.complete_by_data(cid);
                }
            }
            if self.direct.is_some() {
                return Ok(());
            }
            let f =
                match codec::next_frame(self.inb.data(), self.dg, self.max_plen, from_controller) {
                    Ok(Some(f)) => f,
                    Ok(None) => return self.try_direct(),
                    Err(e) => {
                        return Err(HostError::Protocol(format!("bad PDU from controller: {e}")));
                    }
                };
            let inb = std::mem::replace(&mut self.inb, InBuf::with_capacity(0));
            let bytes = &inb.data()[..f.plen];
            let r = self.on_pdu(
                f.ch.pdu_type,
                f.ch.flags,
                bytes,
                &bytes[f.data.clone()],
                f.data_digest_error,
            );
            self.inb = inb;
            self.inb.consume(f.plen);
            r?;
        }
    }

    /// Starts reading a large C2HData payload straight into its command's buffer.
    fn try_direct(&mut self) -> Result<(), HostError> {
        let h = match codec::parse_header(self.inb.data(), self.dg, self.max_plen, from_controller)
        {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => return Err(HostError::Protocol(format!("bad PDU from controller: {e}"))),
        };
        let avail = self.inb.data().len();
        if h.ch.pdu_type != pdu_type::C2H_DATA || h.data.len() < DIRECT_MIN || avail < h.data.start
        {
            return Ok(());
        }
        let (dh, _) = DataHeader::read_from_prefix(self.inb.data())
            .map_err(|_| HostError::Protocol("short C2HData".into()))?;
        let cid = dh.cccid.get();
        let len = h.data.len();
        self.slot(cid)?;
        let s = &mut self.slots[usize::from(cid)];
        let off = dh.datao.get() as usize;
        if off != s.received || off + len > s.read_len || dh.datal.get() as usize != len {
            return Err(HostError::Protocol(format!(
                "C2HData out of range (offset {off}, length {len}, expected {})",
                s.read_len
            )));
        }
        let have = (avail - h.data.start).min(len);
        let data = &self.inb.data()[h.data.start..h.data.start + have];
        s.read[off..off + have].copy_from_slice(data);
        self.inb.consume(h.data.start + have);
        self.direct = Some(Direct {
            cid,
            start: off,
            pos: off + have,
            end: off + len,
            digest: h.dd != 0,
            success: h.ch.flags & flags::SUCCESS != 0,
        });
        if have == len {
            self.finish_direct();
        }
        Ok(())
    }

    fn finish_direct(&mut self) {
        let Some(d) = self.direct.take() else { return };
        self.slots[usize::from(d.cid)].received = d.end;
        if d.digest {
            self.pending_digest = Some((d.cid, d.start..d.end, d.success));
        } else if d.success {
            self.complete_by_data(d.cid);
        }
    }

    fn complete_by_data(&mut self, cid: u16) {
        self.done.push_back(Completion {
            cid,
            cqe: Cqe {
                cid: cid.into(),
                ..Cqe::default()
            },
        });
    }

    fn slot(&mut self, cid: u16) -> Result<&mut Slot, HostError> {
        self.slots
            .get_mut(usize::from(cid))
            .filter(|s| s.busy)
            .ok_or_else(|| HostError::Protocol(format!("PDU for unknown command {cid}")))
    }

    fn on_pdu(
        &mut self,
        t: u8,
        fl: u8,
        bytes: &[u8],
        data: &[u8],
        digest_error: bool,
    ) -> Result<(), HostError> {
        match t {
            pdu_type::CAPSULE_RESP => {
                let (r, _) = CapsuleResp::read_from_prefix(bytes)
                    .map_err(|_| HostError::Protocol("short CapsuleResp".into()))?;
                self.slot(r.cqe.cid.get())?;
                self.done.push_back(Completion {
                    cid: r.cqe.cid.get(),
                    cqe: r.cqe,
                });
            }
            pdu_type::C2H_DATA => {
                if digest_error {
                    return Err(HostError::Protocol("C2HData data digest mismatch".into()));
                }
                let (h, _) = DataHeader::read_from_prefix(bytes)
                    .map_err(|_| HostError::Protocol("short C2HData".into()))?;
                let cid = h.cccid.get();
                let s = self.slot(cid)?;
                let off = h.datao.get() as usize;
                if off != s.received
                    || off + data.len() > s.read_len
                    || h.datal.get() as usize != data.len()
                {
                    return Err(HostError::Protocol(format!(
                        "C2HData out of range (offset {off}, length {}, expected {})",
                        data.len(),
                        s.read_len
                    )));
                }
                s.read[off..off + data.len()].copy_from_slice(data);
                s.received += data.len();
                if fl & flags::SUCCESS != 0 {
                    self.done.push_back(Completion {
                        cid,
                        cqe: Cqe {
                            cid: h.cccid,
                            ..Cqe::default()
                        },
                    });
                }
            }
            pdu_type::R2T => {
                let (r, _) = R2t::read_from_prefix(bytes)
                    .map_err(|_| HostError::Protocol("short R2T".into()))?;
                let cid = r.cccid.get();
                let (dg, maxh2c) = (self.dg, self.maxh2c);
                let slot = self.slots.get(usize::from(cid)).filter(|s| s.busy);
                let Some(slot) = slot else {
                    return Err(HostError::Protocol(format!(
                        "R2T for unknown command {cid}"
                    )));
                };
                let (off, len) = (r.r2to.get() as usize, r.r2tl.get() as usize);
                if off + len > slot.write_len || len == 0 {
                    return Err(HostError::Protocol("R2T out of range".into()));
                }
                let mut at = off;
                while at < off + len {
                    let n = (off + len - at).min(maxh2c);
                    let mut h = DataHeader::default();
                    let (pdo, plen) = codec::data_pdu_lengths(24, n, dg);
                    let last = if at + n == off + len {
                        flags::LAST_PDU
                    } else {
                        0
                    };
                    h.ch =
                        CommonHeader::new(pdu_type::H2C_DATA, dg.flags(true) | last, 24, pdo, plen);
                    h.cccid = r.cccid;
                    h.ttag = r.ttag;
                    h.datao = U32::new(u32::try_from(at).unwrap_or(u32::MAX));
                    h.datal = U32::new(u32::try_from(n).unwrap_or(u32::MAX));
                    codec::put_data_pdu(&mut self.out, h.as_bytes(), dg, n)
                        .copy_from_slice(&slot.write[at..at + n]);
                    codec::seal_data(&mut self.out, dg, n);
                    at += n;
                }
            }
            pdu_type::C2H_TERM_REQ => return Err(term_req(bytes)),
            _ => return Err(HostError::Protocol(format!("unexpected PDU type {t:#x}"))),
        }
        Ok(())
    }
}

/// Accounts for a socket write of queued output.
fn wrote(out: &mut OutBuf, r: std::io::Result<usize>) -> Result<(), HostError> {
    match r? {
        0 => Err(HostError::Io(std::io::ErrorKind::WriteZero.into())),
        n => {
            out.consume(n);
            Ok(())
        }
    }
}

fn limit(buf: &mut [u8], max: usize) -> &mut [u8] {
    let n = buf.len().min(max);
    &mut buf[..n]
}

fn from_controller(t: u8) -> bool {
    matches!(
        t,
        pdu_type::CAPSULE_RESP | pdu_type::C2H_DATA | pdu_type::R2T | pdu_type::C2H_TERM_REQ
    )
}

fn term_req(bytes: &[u8]) -> HostError {
    match TermReq::read_from_prefix(bytes) {
        Ok((t, _)) => HostError::Terminated {
            fes: t.fes.get(),
            fei: t.fei.get(),
        },
        Err(_) => HostError::Terminated { fes: 0, fei: 0 },
    }
}
