//! A simulated NVMe controller behind the [`ffi::PciDevice`] interface: registers, queues
//! in (simulated) DMA memory, commands processed when a doorbell is written, completions
//! posted with the phase tag. The driver's unit tests run against it without hardware.
// The simulated media and DMA memory are small in-process buffers: offsets fit in usize.
#![allow(clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ffi::{DmaBacking, DmaRegion, IoSlab, Mmio, PciDevice, VecBacking};
use nvme_spec::command::{Cqe, DsmRange, Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::identify::{IdentifyController, IdentifyNamespace};
use nvme_spec::regs::{Cap, Cc, Csts};
use nvme_spec::status;
use nvme_spec::{FromBytes, FromZeros, IntoBytes};

use crate::PAGE;

/// I/O queue pairs the simulated controller has: creating a queue of a higher ID fails
/// with Invalid Queue Identifier, as on a real controller, so queue IDs leak visibly.
pub const MAX_IO_QUEUES: u16 = 15;

#[derive(Debug, Default)]
struct SimQueue {
    base: u64,
    depth: u16,
    head: u16,
    cq_tail: u16,
    phase: bool,
    cqid: u16,
    is_cq: bool,
}

#[derive(Debug)]
struct State {
    cap: Cap,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    mdts: u8,
    dma: Vec<(u64, Arc<dyn DmaBacking>, usize)>,
    /// I/O commands fetched and not yet completed (while holding).
    held: Vec<(u16, Sqe, u16)>,
    hold: bool,
    next_iova: u64,
    sqs: HashMap<u16, SimQueue>,
    cqs: HashMap<u16, SimQueue>,
    /// The subsystem's media: shared by every controller of it ([`SimNvme::sibling`]).
    namespaces: Arc<Mutex<Vec<Vec<u8>>>>,
    drop_completions: bool,
    fatal: bool,
    /// Enables (CC.EN 0 -> 1) still to fail with a fatal status.
    failing_enables: u32,
    /// Delete I/O SQ commands still to fail.
    failing_deletes: u32,
    commands: u64,
}

/// The simulated controller.
#[derive(Debug, Clone)]
pub struct SimNvme {
    state: Arc<Mutex<State>>,
}

impl SimNvme {
    /// A controller with `namespaces` namespaces of `blocks` 512-byte blocks and MDTS 2^mdts
    /// pages.
    pub fn new(namespaces: usize, blocks: usize, mdts: u8) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                cap: Cap::build(1023, true, 2, 0, 1, 0, 0),
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                mdts,
                dma: Vec::new(),
                held: Vec::new(),
                hold: false,
                next_iova: 0x1_0000_0000,
                sqs: HashMap::new(),
                cqs: HashMap::new(),
                namespaces: Arc::new(Mutex::new(
                    (0..namespaces).map(|_| vec![0; blocks * 512]).collect(),
                )),
                drop_completions: false,
                fatal: false,
                failing_enables: 0,
                failing_deletes: 0,
                commands: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Another controller of the same subsystem: its own registers and queues, the same
    /// namespaces (as QEMU's `nvme-subsys` with shared namespaces).
    pub fn sibling(&self) -> Self {
        let s = self.lock();
        let other = Self::new(0, 0, s.mdts);
        other.lock().namespaces = Arc::clone(&s.namespaces);
        other
    }

    /// Stops posting completions (to test timeouts).
    pub fn drop_completions(&self, on: bool) {
        self.lock().drop_completions = on;
    }

    /// Puts the controller in the fatal state (CSTS.CFS): it fetches and completes nothing
    /// more until it is reset (CC.EN cleared, or the function reset), which also drops every
    /// I/O queue and every held command.
    pub fn fail(&self) {
        let mut s = self.lock();
        s.fatal = true;
        s.csts |= 2;
    }

    /// Makes the next `n` enables (CC.EN 0 -> 1, the second half of a controller reset)
    /// fail: the controller reports a fatal status instead of becoming ready.
    pub fn fail_resets(&self, n: u32) {
        self.lock().failing_enables = n;
    }

    /// Makes the next `n` Delete I/O Submission Queue commands fail (with an internal
    /// error status, the queue left in place), as a controller that lost track of a queue.
    pub fn fail_queue_deletes(&self, n: u32) {
        self.lock().failing_deletes = n;
    }

    /// Holds I/O commands after fetching them: nothing on an I/O queue completes (nor
    /// moves its data) until [`SimNvme::release`], as with a slow device.
    pub fn hold_io(&self, on: bool) {
        self.lock().hold = on;
    }

    /// I/O commands fetched and held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Completes the held commands, newest first when `reverse` (out of submission order),
    /// and stops holding.
    pub fn release(&self, reverse: bool) {
        let mut s = self.lock();
        s.hold = false;
        let mut held = std::mem::take(&mut s.held);
        if reverse {
            held.reverse();
        }
        for (qid, sqe, head) in held {
            s.execute(qid, &sqe, head);
        }
    }

    /// Commands processed so far.
    pub fn commands(&self) -> u64 {
        self.lock().commands
    }

    /// Bytes of namespace `nsid` at `offset` (what the "media" holds).
    pub fn media(&self, nsid: u32, offset: usize, len: usize) -> Vec<u8> {
        let media = Arc::clone(&self.lock().namespaces);
        let m = lock_media(&media);
        m[nsid as usize - 1][offset..offset + len].to_vec()
    }
}

fn lock_media(m: &Mutex<Vec<Vec<u8>>>) -> MutexGuard<'_, Vec<Vec<u8>>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// A controller reset: queues, held commands and the fatal status are gone.
    fn disable(&mut self) {
        self.sqs.clear();
        self.cqs.clear();
        self.held.clear();
        self.fatal = false;
        self.csts = 0;
    }

    fn find(&self, iova: u64, len: usize) -> Option<(Arc<dyn DmaBacking>, usize)> {
        self.dma.iter().find_map(|(base, b, l)| {
            (iova >= *base && iova + len as u64 <= base + *l as u64)
                .then(|| (Arc::clone(b), (iova - base) as usize))
        })
    }

    fn read(&self, iova: u64, buf: &mut [u8]) -> bool {
        match self.find(iova, buf.len()) {
            Some((b, off)) => {
                b.read(off, buf);
                true
            }
            None => false,
        }
    }

    fn write(&self, iova: u64, buf: &[u8]) -> bool {
        match self.find(iova, buf.len()) {
            Some((b, off)) => {
                b.write(off, buf);
                true
            }
            None => false,
        }
    }

    /// The (iova, length) pieces a PRP pair describes for `len` bytes.
    fn prp_pieces(&self, prp1: u64, prp2: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let page = PAGE as u64;
        let first = ((page - prp1 % page) as usize).min(len);
        let mut v = vec![(prp1, first)];
        let mut rest = len - first;
        if rest == 0 {
            return Some(v);
        }
        if rest <= PAGE {
            if prp2 % page != 0 {
                return None;
            }
            v.push((prp2, rest));
            return Some(v);
        }
        let mut i = 0;
        while rest > 0 {
            let mut e = [0u8; 8];
            if !self.read(prp2 + i * 8, &mut e) {
                return None;
            }
            let addr = u64::from_le_bytes(e);
            if addr % page != 0 {
                return None;
            }
            let n = rest.min(PAGE);
            v.push((addr, n));
            rest -= n;
            i += 1;
        }
        Some(v)
    }

    fn prps(sqe: &Sqe) -> (u64, u64) {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&sqe.dptr.length.get().to_le_bytes());
        b[4..7].copy_from_slice(&sqe.dptr.rsvd);
        b[7] = sqe.dptr.kind;
        (sqe.dptr.addr.get(), u64::from_le_bytes(b))
    }

    fn to_host(&self, sqe: &Sqe, data: &[u8]) -> u16 {
        let (p1, p2) = Self::prps(sqe);
        let Some(pieces) = self.prp_pieces(p1, p2, data.len()) else {
            return status::DATA_TRANSFER_ERROR;
        };
        let mut at = 0;
        for (iova, n) in pieces {
            if !self.write(iova, &data[at..at + n]) {
                return status::DATA_TRANSFER_ERROR;
            }
            at += n;
        }
        status::SUCCESS
    }

    fn host_data(&self, sqe: &Sqe, len: usize) -> Result<Vec<u8>, u16> {
        let (p1, p2) = Self::prps(sqe);
        let pieces = self
            .prp_pieces(p1, p2, len)
            .ok_or(status::DATA_TRANSFER_ERROR)?;
        let mut out = vec![0u8; len];
        let mut at = 0;
        for (iova, n) in pieces {
            if !self.read(iova, &mut out[at..at + n]) {
                return Err(status::DATA_TRANSFER_ERROR);
            }
            at += n;
        }
        Ok(out)
    }

    fn admin(&mut self, sqe: &Sqe) -> (u16, u32) {
        match sqe.opcode {
            admin_opcode::IDENTIFY => {
                let c = (sqe.cdw10.get() & 0xff) as u8;
                let mut page = [0u8; 4096];
                match c {
                    cns::CONTROLLER => {
                        let mut id = IdentifyController::new_zeroed();
                        id.mdts = self.mdts;
                        let n = lock_media(&self.namespaces).len();
                        id.nn.set(u32::try_from(n).unwrap_or(0));
                        id.cmic = 2;
                        page.copy_from_slice(id.as_bytes());
                    }
                    cns::NAMESPACE => {
                        let nsid = sqe.nsid.get() as usize;
                        let media = lock_media(&self.namespaces);
                        let Some(len) = media.get(nsid.wrapping_sub(1)).map(Vec::len) else {
                            return (status::INVALID_NS | status::DNR, 0);
                        };
                        drop(media);
                        let mut id = IdentifyNamespace::new_zeroed();
                        id.nsze.set((len / 512) as u64);
                        id.ncap.set((len / 512) as u64);
                        id.nmic = 1;
                        id.lbaf[0].lbads = 9;
                        page.copy_from_slice(id.as_bytes());
                    }
                    _ => return (status::INVALID_FIELD | status::DNR, 0),
                }
                (self.to_host(sqe, &page), 0)
            }
            admin_opcode::SET_FEATURES if (sqe.cdw10.get() & 0xff) as u8 == feature::NUM_QUEUES => {
                let n = (sqe.cdw11.get() & 0xffff).min(u32::from(MAX_IO_QUEUES) - 1);
                (status::SUCCESS, n | (n << 16))
            }
            admin_opcode::DELETE_SQ if self.failing_deletes > 0 => {
                self.failing_deletes -= 1;
                (status::INTERNAL_ERROR, 0)
            }
            admin_opcode::DELETE_SQ => {
                let qid = (sqe.cdw10.get() & 0xffff) as u16;
                // Its commands are aborted: held ones never complete nor move data.
                self.held.retain(|&(q, ..)| q != qid);
                match self.sqs.remove(&qid) {
                    Some(_) if qid != 0 => (status::SUCCESS, 0),
                    _ => (status::INVALID_QID | status::DNR, 0),
                }
            }
            admin_opcode::DELETE_CQ => {
                let qid = (sqe.cdw10.get() & 0xffff) as u16;
                if self.sqs.values().any(|q| q.cqid == qid) {
                    return (status::status(1, 0x0c) | status::DNR, 0);
                }
                match self.cqs.remove(&qid) {
                    Some(_) if qid != 0 => (status::SUCCESS, 0),
                    _ => (status::INVALID_QID | status::DNR, 0),
                }
            }
            admin_opcode::CREATE_CQ | admin_opcode::CREATE_SQ => {
                let qid = (sqe.cdw10.get() & 0xffff) as u16;
                let depth = (sqe.cdw10.get() >> 16) as u16 + 1;
                if qid == 0 || qid > MAX_IO_QUEUES || depth < 2 || depth > self.cap.mqes() + 1 {
                    return (status::INVALID_QID | status::DNR, 0);
                }
                let q = SimQueue {
                    base: sqe.dptr.addr.get(),
                    depth,
                    phase: true,
                    cqid: (sqe.cdw11.get() >> 16) as u16,
                    is_cq: sqe.opcode == admin_opcode::CREATE_CQ,
                    ..SimQueue::default()
                };
                if q.is_cq {
                    self.cqs.insert(qid, q);
                } else {
                    if !self.cqs.contains_key(&q.cqid) {
                        return (status::status(1, 0x00) | status::DNR, 0);
                    }
                    self.sqs.insert(qid, q);
                }
                (status::SUCCESS, 0)
            }
            _ => (status::INVALID_OPCODE | status::DNR, 0),
        }
    }

    fn io(&mut self, sqe: &Sqe) -> u16 {
        let media = Arc::clone(&self.namespaces);
        let mut media = lock_media(&media);
        let nsid = sqe.nsid.get() as usize;
        if nsid == 0 || nsid > media.len() {
            return status::INVALID_NS | status::DNR;
        }
        let blocks = (media[nsid - 1].len() / 512) as u64;
        let (slba, nlb) = (sqe.slba(), u64::from(sqe.nlb()));
        let in_range = slba.checked_add(nlb).is_some_and(|e| e <= blocks);
        let range = (slba as usize * 512)..((slba + nlb) as usize * 512);
        let max = PAGE << self.mdts;
        match sqe.opcode {
            io_opcode::READ | io_opcode::WRITE | io_opcode::WRITE_ZEROES if !in_range => {
                status::LBA_OUT_OF_RANGE | status::DNR
            }
            io_opcode::READ | io_opcode::WRITE if range.len() > max => {
                status::INVALID_FIELD | status::DNR
            }
            io_opcode::READ => {
                let data = media[nsid - 1][range].to_vec();
                self.to_host(sqe, &data)
            }
            io_opcode::WRITE => match self.host_data(sqe, range.len()) {
                Ok(d) => {
                    media[nsid - 1][range].copy_from_slice(&d);
                    status::SUCCESS
                }
                Err(st) => st,
            },
            io_opcode::WRITE_ZEROES => {
                media[nsid - 1][range].fill(0);
                status::SUCCESS
            }
            io_opcode::FLUSH => status::SUCCESS,
            io_opcode::DSM => {
                let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
                let Ok(d) = self.host_data(sqe, nr * 16) else {
                    return status::DATA_TRANSFER_ERROR;
                };
                for c in d.chunks_exact(16) {
                    let Ok(r) = DsmRange::read_from_bytes(c) else {
                        continue;
                    };
                    let (s, n) = (r.slba.get(), u64::from(r.nlb.get()));
                    if s.checked_add(n).is_none_or(|e| e > blocks) {
                        return status::LBA_OUT_OF_RANGE | status::DNR;
                    }
                    media[nsid - 1][s as usize * 512..(s + n) as usize * 512].fill(0);
                }
                status::SUCCESS
            }
            _ => status::INVALID_OPCODE | status::DNR,
        }
    }

    /// Processes submissions up to `tail` on SQ `qid`.
    fn ring(&mut self, qid: u16, tail: u16) {
        if self.fatal {
            return;
        }
        loop {
            let Some(sq) = self.sqs.get(&qid) else { return };
            if sq.head == tail % sq.depth.max(1) {
                return;
            }
            let at = sq.base + u64::from(sq.head) * 64;
            let mut raw = [0u8; 64];
            self.read(at, &mut raw);
            let sqe = Sqe::read_from_bytes(&raw).unwrap_or_default();
            let head = {
                let sq = self.sqs.get_mut(&qid).expect("present");
                sq.head = (sq.head + 1) % sq.depth;
                sq.head
            };
            self.commands += 1;
            if qid != 0 && self.hold {
                self.held.push((qid, sqe, head));
                continue;
            }
            self.execute(qid, &sqe, head);
        }
    }

    /// Runs one fetched command and posts its completion.
    fn execute(&mut self, qid: u16, sqe: &Sqe, head: u16) {
        let (st, result) = if qid == 0 {
            self.admin(sqe)
        } else {
            (self.io(sqe), 0)
        };
        if self.drop_completions || self.fatal {
            return;
        }
        let Some(cqid) = self.sqs.get(&qid).map(|q| q.cqid) else {
            return;
        };
        let Some(cq) = self.cqs.get_mut(&cqid) else {
            return;
        };
        let mut cqe = Cqe::default();
        cqe.result.set(result);
        cqe.sqhd.set(head);
        cqe.sqid.set(qid);
        cqe.cid = sqe.cid;
        cqe.status.set((st << 1) | u16::from(cq.phase));
        let at = cq.base + u64::from(cq.cq_tail) * 16;
        cq.cq_tail += 1;
        if cq.cq_tail == cq.depth {
            cq.cq_tail = 0;
            cq.phase = !cq.phase;
        }
        self.write(at, cqe.as_bytes());
    }
}

impl Mmio for SimNvme {
    fn read32(&self, offset: usize) -> u32 {
        let s = self.lock();
        match offset {
            0x00 => (s.cap.0 & 0xffff_ffff) as u32,
            0x04 => (s.cap.0 >> 32) as u32,
            0x08 => nvme_spec::regs::VERSION_1_3,
            0x14 => s.cc,
            0x1c => s.csts,
            0x24 => s.aqa,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.lock();
        match offset {
            0x14 => {
                let (old, new) = (Cc(s.cc), Cc(value));
                s.cc = value;
                if new.en() && !old.en() && s.failing_enables > 0 {
                    s.failing_enables -= 1;
                    s.fatal = true;
                    s.csts = Csts::build(false, true, 0).0;
                } else if new.en() && !old.en() {
                    let depth = (s.aqa & 0xfff) as u16 + 1;
                    let (asq, acq) = (s.asq, s.acq);
                    s.sqs.insert(
                        0,
                        SimQueue {
                            base: asq,
                            depth,
                            ..SimQueue::default()
                        },
                    );
                    s.cqs.insert(
                        0,
                        SimQueue {
                            base: acq,
                            depth,
                            phase: true,
                            is_cq: true,
                            ..SimQueue::default()
                        },
                    );
                    s.csts = Csts::build(true, false, 0).0;
                } else if !new.en() {
                    s.disable();
                }
                if new.shn() != 0 {
                    s.csts = Csts::build(Csts(s.csts).rdy(), false, Csts::SHST_COMPLETE).0;
                }
            }
            0x24 => s.aqa = value,
            0x28 => s.asq = (s.asq & !0xffff_ffff) | u64::from(value),
            0x2c => s.asq = (s.asq & 0xffff_ffff) | (u64::from(value) << 32),
            0x30 => s.acq = (s.acq & !0xffff_ffff) | u64::from(value),
            0x34 => s.acq = (s.acq & 0xffff_ffff) | (u64::from(value) << 32),
            o if o >= 0x1000 && (o - 0x1000) % 8 == 0 => {
                let qid = u16::try_from((o - 0x1000) / 8).unwrap_or(u16::MAX);
                s.ring(qid, (value & 0xffff) as u16);
            }
            _ => {}
        }
    }
}

impl PciDevice for SimNvme {
    fn bar0(&self) -> &dyn Mmio {
        self
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaRegion, ffi::Error> {
        let mut s = self.lock();
        let size = len.div_ceil(PAGE).max(1) * PAGE;
        let backing: Arc<dyn DmaBacking> = Arc::new(VecBacking::new(size));
        let iova = s.next_iova;
        s.next_iova += size as u64 + PAGE as u64;
        s.dma.push((iova, Arc::clone(&backing), size));
        Ok(DmaRegion::new(backing, 0, len, iova))
    }

    fn map_slab(&self, slab: &IoSlab) -> Result<u64, ffi::Error> {
        let mut s = self.lock();
        let iova = s.next_iova;
        s.next_iova += slab.len() as u64 + PAGE as u64;
        s.dma.push((iova, slab.device_view(), slab.len()));
        Ok(iova)
    }

    fn reset(&self) -> Result<(), ffi::Error> {
        let mut s = self.lock();
        s.cc = 0;
        s.disable();
        Ok(())
    }
}
