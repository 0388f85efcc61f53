//! Controller bring-up, admin commands and I/O queue pairs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ffi::{DmaRegion, PciDevice};
use nvme_spec::command::{DsmRange, Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::identify::{IdentifyController, IdentifyNamespace};
use nvme_spec::regs::{Cap, Cc, Csts, offset};
use nvme_spec::{FromBytes, FromZeros, IntoBytes};

use crate::io_queue::IoQueue;
use crate::queue::QueuePair;
use crate::{DriverError, PAGE, prp};

const ADMIN_DEPTH: u16 = 32;
/// Admin and I/O command timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A namespace's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// Size in blocks.
    pub blocks: u64,
}

/// A controller brought up by the driver, with its admin queue.
#[derive(Debug)]
pub struct Controller<D: PciDevice> {
    dev: Arc<D>,
    admin: QueuePair,
    cap: Cap,
    mdts: usize,
    next_qid: u16,
    scratch: DmaRegion,
    identify: IdentifyController,
}

fn wait(
    dev: &dyn ffi::Mmio,
    timeout: Duration,
    what: &'static str,
    done: impl Fn(Csts) -> bool,
) -> Result<(), DriverError> {
    let t = Instant::now();
    loop {
        let csts = Csts(dev.read32(offset::CSTS as usize));
        if done(csts) {
            return Ok(());
        }
        if csts.cfs() && what != "CSTS.RDY = 0" {
            return Err(DriverError::Fatal);
        }
        if t.elapsed() > timeout {
            return Err(DriverError::Timeout(what));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl<D: PciDevice> Controller<D> {
    /// Resets and enables the controller, sets up the admin queue and identifies it.
    pub fn new(dev: Arc<D>) -> Result<Self, DriverError> {
        let bar = dev.bar0();
        let cap = Cap(bar.read64(offset::CAP as usize));
        if cap.css() & 1 == 0 {
            return Err(DriverError::Invalid(
                "controller does not support the NVM command set".into(),
            ));
        }
        if cap.mpsmin() != 0 {
            return Err(DriverError::Invalid(
                "controller does not support 4 KiB pages".into(),
            ));
        }
        let timeout = Duration::from_millis(500 * u64::from(cap.to().max(1)));
        // Disable, then wait for RDY to clear.
        let cc = Cc(bar.read32(offset::CC as usize));
        if cc.en() {
            bar.write32(offset::CC as usize, cc.0 & !1);
        }
        wait(bar, timeout, "CSTS.RDY = 0", |c| !c.rdy())?;
        let depth = ADMIN_DEPTH.min(cap.mqes().saturating_add(1));
        // One allocation (one hugepage) for both admin rings and the scratch pages.
        let (sq_len, cq_len) = ring_lens(depth);
        let mem = dev.alloc_dma(sq_len + cq_len + 2 * PAGE)?;
        let (sq, cq) = (mem.sub(0, sq_len), mem.sub(sq_len, cq_len));
        sq.zero();
        cq.zero();
        let admin = QueuePair::new(0, depth, sq, cq, cap.dstrd());
        let d = u32::from(depth - 1);
        bar.write32(0x24, d | (d << 16)); // AQA
        bar.write64(0x28, admin.sq.iova()); // ASQ
        bar.write64(0x30, admin.cq.iova()); // ACQ
        bar.write32(offset::CC as usize, Cc::build(true, 0, 0, 0, 6, 4).0);
        wait(bar, timeout, "CSTS.RDY = 1", Csts::rdy)?;
        let scratch = mem.sub(sq_len + cq_len, 2 * PAGE);
        let mut c = Self {
            dev,
            admin,
            cap,
            mdts: 0,
            next_qid: 1,
            scratch,
            identify: IdentifyController::new_zeroed(),
        };
        c.identify = c.identify_controller()?;
        c.mdts = match c.identify.mdts {
            0 => 1 << 20,
            m => (PAGE << m).min(2 << 20),
        };
        Ok(c)
    }

    /// Identify Controller data read at bring-up.
    pub fn identity(&self) -> &IdentifyController {
        &self.identify
    }

    /// Capabilities register.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// Largest transfer per command in bytes (MDTS, capped at 2 MiB).
    pub fn max_transfer(&self) -> usize {
        self.mdts
    }

    fn admin(&mut self, sqe: Sqe) -> Result<nvme_spec::command::Cqe, DriverError> {
        let bar = self.dev.bar0();
        self.admin.run(bar, sqe, COMMAND_TIMEOUT)
    }

    fn identify_raw(&mut self, c: u8, nsid: u32) -> Result<[u8; 4096], DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::IDENTIFY;
        sqe.nsid.set(nsid);
        sqe.cdw10.set(u32::from(c));
        sqe.mptr.set(0);
        set_prp(&mut sqe, self.scratch.iova(), 0);
        self.admin(sqe)?;
        let mut out = [0u8; 4096];
        self.scratch.read(0, &mut out);
        Ok(out)
    }

    /// Identify Controller.
    pub fn identify_controller(&mut self) -> Result<IdentifyController, DriverError> {
        let raw = self.identify_raw(cns::CONTROLLER, 0)?;
        IdentifyController::read_from_bytes(&raw)
            .map_err(|_| DriverError::Invalid("identify size".into()))
    }

    /// Identify Namespace, reduced to its geometry.
    pub fn namespace(&mut self, nsid: u32) -> Result<NamespaceInfo, DriverError> {
        let raw = self.identify_raw(cns::NAMESPACE, nsid)?;
        let id = IdentifyNamespace::read_from_bytes(&raw)
            .map_err(|_| DriverError::Invalid("identify size".into()))?;
        if id.nsze.get() == 0 {
            return Err(DriverError::Invalid(format!(
                "namespace {nsid} is not active"
            )));
        }
        let lbaf = id.lbaf[usize::from(id.flbas & 0xf)];
        Ok(NamespaceInfo {
            nsid,
            block_size: 1 << lbaf.lbads.clamp(9, 16),
            blocks: id.nsze.get(),
        })
    }

    /// Set Features Number of Queues; returns the number of I/O queue pairs granted.
    pub fn set_num_queues(&mut self, n: u16) -> Result<u16, DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::SET_FEATURES;
        sqe.cdw10.set(u32::from(feature::NUM_QUEUES));
        let v = u32::from(n.max(1) - 1);
        sqe.cdw11.set(v | (v << 16));
        let c = self.admin(sqe)?;
        let r = c.result.get();
        Ok(u16::try_from((r & 0xffff).min(r >> 16) + 1).unwrap_or(1))
    }

    /// Creates an I/O completion and submission queue pair of `depth` entries, with a bounce
    /// buffer of one maximum transfer, to be owned by one thread.
    pub fn create_io_queue_pair(&mut self, depth: u16) -> Result<IoQueuePair<D>, DriverError> {
        let depth = depth.clamp(2, self.cap.mqes().saturating_add(1));
        // One allocation for the rings, the PRP list page and the bounce buffer: hugepages
        // are 2 MiB, so separate allocations would pin four of them per queue pair.
        let (sq_len, cq_len) = ring_lens(depth);
        let mem = self.dev.alloc_dma(sq_len + cq_len + PAGE + self.mdts)?;
        let (sq, cq) = (mem.sub(0, sq_len), mem.sub(sq_len, cq_len));
        sq.zero();
        cq.zero();
        let qid = self.create_queues(depth, &sq, &cq)?;
        let list = mem.sub(sq_len + cq_len, PAGE);
        let bounce = mem.sub(sq_len + cq_len + PAGE, self.mdts);
        Ok(IoQueuePair {
            dev: Arc::clone(&self.dev),
            qp: QueuePair::new(qid, depth, sq, cq, self.cap.dstrd()),
            bounce,
            list,
            mdts: self.mdts,
        })
    }

    /// Creates an I/O queue pair of `depth` entries for commands to namespace `nsid`, with
    /// many commands in flight (see [`IoQueue`]); each command fails after `timeout`.
    pub fn create_io_queue(
        &mut self,
        nsid: u32,
        depth: u16,
        timeout: Duration,
    ) -> Result<IoQueue<D>, DriverError> {
        let ns = self.namespace(nsid)?;
        let depth = depth.clamp(2, self.cap.mqes().saturating_add(1));
        let (sq_len, cq_len) = ring_lens(depth);
        // Rings and one PRP list page per CID in one allocation.
        let mem = self
            .dev
            .alloc_dma(sq_len + cq_len + usize::from(depth) * PAGE)?;
        let (sq, cq) = (mem.sub(0, sq_len), mem.sub(sq_len, cq_len));
        sq.zero();
        cq.zero();
        let qid = self.create_queues(depth, &sq, &cq)?;
        let lists = mem.sub(sq_len + cq_len, usize::from(depth) * PAGE);
        let qp = QueuePair::new(qid, depth, sq, cq, self.cap.dstrd());
        Ok(IoQueue::new(
            Arc::clone(&self.dev),
            qp,
            ns,
            lists,
            self.mdts,
            timeout,
        ))
    }

    /// Creates the CQ and SQ of the next queue ID on the given rings.
    fn create_queues(
        &mut self,
        depth: u16,
        sq: &DmaRegion,
        cq: &DmaRegion,
    ) -> Result<u16, DriverError> {
        let qid = self.next_qid;
        let mut c = Sqe::new_zeroed();
        c.opcode = admin_opcode::CREATE_CQ;
        set_prp(&mut c, cq.iova(), 0);
        c.cdw10.set(u32::from(qid) | (u32::from(depth - 1) << 16));
        c.cdw11.set(1); // physically contiguous, no interrupts
        self.admin(c)?;
        let mut s = Sqe::new_zeroed();
        s.opcode = admin_opcode::CREATE_SQ;
        set_prp(&mut s, sq.iova(), 0);
        s.cdw10.set(u32::from(qid) | (u32::from(depth - 1) << 16));
        s.cdw11.set(1 | (u32::from(qid) << 16)); // contiguous, completions to CQ qid
        self.admin(s)?;
        self.next_qid += 1;
        Ok(qid)
    }

    /// Deletes an I/O queue pair (SQ first, then its CQ).
    pub fn delete_io_queue_pair(&mut self, qp: IoQueuePair<D>) -> Result<(), DriverError> {
        let qid = u32::from(qp.qp.qid);
        for opcode in [admin_opcode::DELETE_SQ, admin_opcode::DELETE_CQ] {
            let mut sqe = Sqe::new_zeroed();
            sqe.opcode = opcode;
            sqe.cdw10.set(qid);
            self.admin(sqe)?;
        }
        Ok(())
    }

    /// Recovers from a fatal status (CSTS.CFS) or a hung controller: resets the function and
    /// brings the controller up again. Existing I/O queue pairs are gone afterwards and must
    /// be created again.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.dev.reset()?;
        let fresh = Self::new(Arc::clone(&self.dev))?;
        *self = fresh;
        Ok(())
    }

    /// Normal shutdown (CC.SHN = 01b, then wait for CSTS.SHST = complete).
    pub fn shutdown(&mut self) -> Result<(), DriverError> {
        let bar = self.dev.bar0();
        let cc = Cc(bar.read32(offset::CC as usize));
        bar.write32(offset::CC as usize, (cc.0 & !(3 << 14)) | (1 << 14));
        wait(bar, Duration::from_secs(10), "CSTS.SHST = complete", |c| {
            c.shst() == Csts::SHST_COMPLETE
        })
    }
}

/// Page-aligned byte sizes of an SQ (64-byte entries) and a CQ (16-byte entries).
fn ring_lens(depth: u16) -> (usize, usize) {
    let page = |n: usize| n.div_ceil(PAGE) * PAGE;
    (page(usize::from(depth) * 64), page(usize::from(depth) * 16))
}

pub(crate) fn set_prp(sqe: &mut Sqe, prp1: u64, prp2: u64) {
    sqe.dptr.addr.set(prp1);
    let mut b = [0u8; 8];
    b.copy_from_slice(&prp2.to_le_bytes());
    // PRP2 occupies the second 8 bytes of DPTR (length, reserved and type in SGL terms).
    sqe.dptr
        .length
        .set(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    sqe.dptr.rsvd.copy_from_slice(&b[4..7]);
    sqe.dptr.kind = b[7];
}

/// An I/O queue pair owned by one thread: synchronous, polled commands through a bounce
/// buffer.
#[derive(Debug)]
pub struct IoQueuePair<D: PciDevice> {
    dev: Arc<D>,
    qp: QueuePair,
    bounce: DmaRegion,
    list: DmaRegion,
    mdts: usize,
}

impl<D: PciDevice> IoQueuePair<D> {
    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.qp.qid
    }

    fn rw(
        &mut self,
        opcode: u8,
        ns: &NamespaceInfo,
        slba: u64,
        len: usize,
    ) -> Result<(), DriverError> {
        let bs = ns.block_size as usize;
        if len == 0 || len % bs != 0 || len > self.mdts {
            return Err(DriverError::Invalid(format!(
                "{len} bytes is not 1..=MDTS ({}) whole blocks of {bs}",
                self.mdts
            )));
        }
        let nlb =
            u32::try_from(len / bs).map_err(|_| DriverError::Invalid("too many blocks".into()))?;
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = opcode;
        sqe.nsid.set(ns.nsid);
        sqe.set_lba_range(slba, nlb);
        let (p1, p2) = prp::build(&self.bounce, 0, len, &self.list)?;
        set_prp(&mut sqe, p1, p2);
        self.qp
            .run(self.dev.bar0(), sqe, COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Benchmark: 4 KiB random reads over the first `span_blocks` blocks with `qd` commands in
    /// flight for `duration`; returns (commands completed, errors, elapsed). Uses its own
    /// DMA pages, one per command slot, so nothing is copied.
    pub fn randread_4k(
        &mut self,
        ns: &NamespaceInfo,
        qd: u16,
        span_blocks: u64,
        duration: Duration,
    ) -> Result<(u64, u64, Duration), DriverError> {
        let qd = qd.clamp(1, self.qp.depth - 1);
        let bufs = self.dev.alloc_dma(usize::from(qd) * PAGE)?;
        let per = (PAGE / ns.block_size as usize).max(1) as u64;
        let slots = (span_blocks / per).max(1);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut slot_of = vec![0usize; usize::from(self.qp.depth)];
        let bar = self.dev.bar0();
        let submit = |qp: &mut QueuePair, slot_of: &mut Vec<usize>, slot: usize, x: &mut u64| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            let mut sqe = Sqe::new_zeroed();
            sqe.opcode = io_opcode::READ;
            sqe.nsid.set(ns.nsid);
            sqe.set_lba_range((*x % slots) * per, u32::try_from(per).unwrap_or(8));
            set_prp(&mut sqe, bufs.iova() + (slot * PAGE) as u64, 0);
            let cid = qp.submit(bar, sqe);
            slot_of[usize::from(cid)] = slot;
        };
        for slot in 0..usize::from(qd) {
            submit(&mut self.qp, &mut slot_of, slot, &mut x);
        }
        let t = Instant::now();
        let (mut done, mut errors) = (0u64, 0u64);
        let mut last = Instant::now();
        while t.elapsed() < duration {
            match self.qp.poll(bar) {
                Some(c) => {
                    last = Instant::now();
                    done += 1;
                    if c.status_field() & 0x7ff != 0 {
                        errors += 1;
                    }
                    let slot = slot_of[usize::from(c.cid.get()) % slot_of.len()];
                    submit(&mut self.qp, &mut slot_of, slot, &mut x);
                }
                None if last.elapsed() > COMMAND_TIMEOUT => {
                    return Err(DriverError::Timeout("benchmark completions"));
                }
                None => std::hint::spin_loop(),
            }
        }
        let elapsed = t.elapsed();
        // Drain what is in flight.
        let mut left = u64::from(qd);
        let drain = Instant::now();
        while left > 0 && drain.elapsed() < COMMAND_TIMEOUT {
            if self.qp.poll(bar).is_some() {
                left -= 1;
            }
        }
        Ok((done, errors, elapsed))
    }

    /// Reads `buf.len()` bytes at block `slba`.
    pub fn read(
        &mut self,
        ns: &NamespaceInfo,
        slba: u64,
        buf: &mut [u8],
    ) -> Result<(), DriverError> {
        self.rw(io_opcode::READ, ns, slba, buf.len())?;
        self.bounce.read(0, buf);
        Ok(())
    }

    /// Writes `buf` at block `slba`.
    pub fn write(&mut self, ns: &NamespaceInfo, slba: u64, buf: &[u8]) -> Result<(), DriverError> {
        if buf.len() <= self.bounce.len() {
            self.bounce.write(0, buf);
        }
        self.rw(io_opcode::WRITE, ns, slba, buf.len())
    }

    /// Flush.
    pub fn flush(&mut self, ns: &NamespaceInfo) -> Result<(), DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = io_opcode::FLUSH;
        sqe.nsid.set(ns.nsid);
        self.qp
            .run(self.dev.bar0(), sqe, COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Write Zeroes over `nlb` blocks.
    pub fn write_zeroes(
        &mut self,
        ns: &NamespaceInfo,
        slba: u64,
        nlb: u32,
    ) -> Result<(), DriverError> {
        if !(1..=65536).contains(&nlb) {
            return Err(DriverError::Invalid(format!(
                "Write Zeroes of {nlb} blocks: one command covers 1..=65536"
            )));
        }
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = io_opcode::WRITE_ZEROES;
        sqe.nsid.set(ns.nsid);
        sqe.set_lba_range(slba, nlb);
        self.qp
            .run(self.dev.bar0(), sqe, COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Dataset Management (deallocate) of `(slba, nlb)` ranges.
    pub fn deallocate(
        &mut self,
        ns: &NamespaceInfo,
        ranges: &[(u64, u32)],
    ) -> Result<(), DriverError> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(DriverError::Invalid("1..=256 ranges".into()));
        }
        if ranges.iter().any(|&(_, nlb)| nlb == 0) {
            return Err(DriverError::Invalid(
                "a deallocate range of 0 blocks".into(),
            ));
        }
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let mut r = DsmRange::new_zeroed();
            r.slba.set(slba);
            r.nlb.set(nlb);
            self.bounce.write(i * 16, r.as_bytes());
        }
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = io_opcode::DSM;
        sqe.nsid.set(ns.nsid);
        sqe.cdw10.set(u32::try_from(ranges.len() - 1).unwrap_or(0));
        sqe.cdw11.set(nvme_spec::command::DSM_ATTR_DEALLOCATE);
        let (p1, p2) = prp::build(&self.bounce, 0, ranges.len() * 16, &self.list)?;
        set_prp(&mut sqe, p1, p2);
        self.qp
            .run(self.dev.bar0(), sqe, COMMAND_TIMEOUT)
            .map(|_| ())
    }
}
