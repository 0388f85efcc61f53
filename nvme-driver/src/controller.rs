//! Controller bring-up, admin commands and I/O queue pairs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ffi::{DmaRegion, PciDevice};
use nvme_spec::command::{Sqe, admin_opcode, cns, feature};
use nvme_spec::identify::{IdentifyController, IdentifyNamespace};
use nvme_spec::regs::{Cap, Cc, Csts, offset};
use nvme_spec::{FromBytes, FromZeros};

use crate::io_queue::{IoCommand, IoQueue, SubmitError};
use crate::queue::QueuePair;
use crate::{DriverError, PAGE};

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
    /// Queue IDs of deleted queue pairs, used again before new ones.
    free_qids: Vec<u16>,
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
        let depth = ADMIN_DEPTH.min(cap.mqes().saturating_add(1));
        // One allocation (one hugepage) for both admin rings and the scratch pages.
        let (sq_len, cq_len) = ring_lens(depth);
        let mem = dev.alloc_dma(sq_len + cq_len + 2 * PAGE)?;
        let (sq, cq) = (mem.sub(0, sq_len), mem.sub(sq_len, cq_len));
        let admin = QueuePair::new(0, depth, sq, cq, cap.dstrd());
        let scratch = mem.sub(sq_len + cq_len, 2 * PAGE);
        let mut c = Self {
            dev,
            admin,
            cap,
            mdts: 0,
            next_qid: 1,
            free_qids: Vec::new(),
            scratch,
            identify: IdentifyController::new_zeroed(),
        };
        c.disable()?;
        c.enable()?;
        Ok(c)
    }

    /// How long the controller may take to change CSTS.RDY (CAP.TO, in 500 ms units).
    fn ready_timeout(&self) -> Duration {
        Duration::from_millis(500 * u64::from(self.cap.to().max(1)))
    }

    /// Stops the controller: CC.EN = 0, then CSTS.RDY = 0 within CAP.TO (NVMe 2.0 base
    /// specification, 3.5.2, a Controller Reset). A controller that does not stop gets a
    /// function-level reset. Once this returns, the controller fetches no command and moves
    /// no data: every I/O queue and every command in flight is gone, so the memory of its
    /// queues and of its commands' buffers may be reused.
    pub fn disable(&mut self) -> Result<(), DriverError> {
        let timeout = self.ready_timeout();
        let bar = self.dev.bar0();
        let cc = Cc(bar.read32(offset::CC as usize));
        if cc.en() {
            bar.write32(offset::CC as usize, cc.0 & !1);
        }
        if wait(bar, timeout, "CSTS.RDY = 0", |c| !c.rdy()).is_err() {
            self.dev.reset()?;
            wait(self.dev.bar0(), timeout, "CSTS.RDY = 0", |c| !c.rdy())?;
        }
        Ok(())
    }

    /// Brings a disabled controller up on the same admin queue memory (its rings start
    /// empty), identifies it again, and starts I/O queue IDs over at 1. Other DMA mappings
    /// (the I/O memory of [`PciDevice::map_slab`]) live in the IOMMU, not in the
    /// controller, and stay valid.
    pub fn enable(&mut self) -> Result<(), DriverError> {
        let (depth, dstrd) = (self.admin.depth, self.cap.dstrd());
        let (sq, cq) = (self.admin.sq.clone(), self.admin.cq.clone());
        sq.zero();
        cq.zero();
        self.admin = QueuePair::new(0, depth, sq, cq, dstrd);
        self.next_qid = 1;
        self.free_qids.clear();
        let bar = self.dev.bar0();
        let d = u32::from(depth - 1);
        bar.write32(0x24, d | (d << 16)); // AQA
        bar.write64(0x28, self.admin.sq.iova()); // ASQ
        bar.write64(0x30, self.admin.cq.iova()); // ACQ
        bar.write32(offset::CC as usize, Cc::build(true, 0, 0, 0, 6, 4).0);
        wait(bar, self.ready_timeout(), "CSTS.RDY = 1", Csts::rdy)?;
        self.identify = self.identify_controller()?;
        self.mdts = match self.identify.mdts {
            0 => 1 << 20,
            m => (PAGE << m).min(2 << 20),
        };
        Ok(())
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

    /// Creates an I/O queue pair of `depth` entries with many commands in flight (see
    /// [`IoQueue`]); each command fails after `timeout`.
    pub fn create_io_queue(
        &mut self,
        depth: u16,
        timeout: Duration,
    ) -> Result<IoQueue<D>, DriverError> {
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
        let (qid, fresh) = match self.free_qids.last() {
            Some(&q) => (q, false),
            None => (self.next_qid, true),
        };
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
        if fresh {
            self.next_qid += 1;
        } else {
            self.free_qids.pop();
        }
        Ok(qid)
    }

    /// Creates a synchronous I/O queue pair of `depth` entries with a bounce buffer of one
    /// maximum transfer (see [`IoQueuePair`]).
    pub fn create_io_queue_pair(&mut self, depth: u16) -> Result<IoQueuePair<D>, DriverError> {
        let q = self.create_io_queue(depth, COMMAND_TIMEOUT)?;
        let bounce = self.dev.alloc_dma(self.mdts)?;
        Ok(IoQueuePair { q, bounce })
    }

    /// Deletes an I/O queue pair (SQ first, then its CQ).
    pub fn delete_io_queue_pair(&mut self, qp: IoQueuePair<D>) -> Result<(), DriverError> {
        self.delete_io_queue(&qp.q)
    }

    /// Deletes an I/O queue (SQ first, which aborts every command still in it, then its
    /// CQ); its ID is used again by the next queue created. Once this succeeds the
    /// controller touches none of the queue's memory nor any buffer of its commands, so the
    /// queue may be dropped and those buffers reused.
    pub fn delete_io_queue(&mut self, q: &IoQueue<D>) -> Result<(), DriverError> {
        let qid = q.qid();
        for opcode in [admin_opcode::DELETE_SQ, admin_opcode::DELETE_CQ] {
            let mut sqe = Sqe::new_zeroed();
            sqe.opcode = opcode;
            sqe.cdw10.set(u32::from(qid));
            self.admin(sqe)?;
        }
        self.free_qids.push(qid);
        Ok(())
    }

    /// Recovers from a fatal status (CSTS.CFS) or a hung controller: a controller reset
    /// ([`Controller::disable`], then [`Controller::enable`]), as the Linux nvme driver and
    /// SPDK do. Existing I/O queue pairs are gone afterwards and must be created again
    /// (their IDs start over); data buffers stay mapped.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.disable()?;
        self.enable()
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

/// A synchronous client of an [`IoQueue`], for tools and hardware checks: one command at a
/// time through a bounce buffer, each waited for (the appliance's data path uses the queue
/// itself, with many commands in flight and no copies).
#[derive(Debug)]
pub struct IoQueuePair<D: PciDevice> {
    q: IoQueue<D>,
    bounce: DmaRegion,
}

impl<D: PciDevice> IoQueuePair<D> {
    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.q.qid()
    }

    /// Runs one command and waits for it (the queue's deadline bounds the wait).
    fn run(&mut self, ns: &NamespaceInfo, cmd: IoCommand) -> Result<(), DriverError> {
        match self.q.submit(ns, cmd, 0) {
            Ok(()) => {}
            Err(SubmitError::Invalid(e) | SubmitError::Broken(e)) => return Err(e),
            Err(SubmitError::Full) => {
                return Err(DriverError::Invalid("the queue is full".into()));
            }
        }
        loop {
            let mut done = None;
            self.q.poll(|_, r| done = Some(r));
            if let Some(r) = done {
                return r;
            }
            std::hint::spin_loop();
        }
    }

    fn blocks(&self, ns: &NamespaceInfo, len: usize) -> Result<u32, DriverError> {
        let bs = ns.block_size as usize;
        if len == 0 || len % bs != 0 || len > self.bounce.len() {
            return Err(DriverError::Invalid(format!(
                "{len} bytes is not 1..=MDTS ({}) whole blocks of {bs}",
                self.bounce.len()
            )));
        }
        u32::try_from(len / bs).map_err(|_| DriverError::Invalid("too many blocks".into()))
    }

    /// Reads `buf.len()` bytes at block `slba`.
    pub fn read(
        &mut self,
        ns: &NamespaceInfo,
        slba: u64,
        buf: &mut [u8],
    ) -> Result<(), DriverError> {
        let nlb = self.blocks(ns, buf.len())?;
        let iova = self.bounce.iova();
        self.run(ns, IoCommand::Read { slba, nlb, iova })?;
        self.bounce.read(0, buf);
        Ok(())
    }

    /// Writes `buf` at block `slba`.
    pub fn write(&mut self, ns: &NamespaceInfo, slba: u64, buf: &[u8]) -> Result<(), DriverError> {
        let nlb = self.blocks(ns, buf.len())?;
        self.bounce.write(0, buf);
        let iova = self.bounce.iova();
        self.run(ns, IoCommand::Write { slba, nlb, iova })
    }

    /// Flush.
    pub fn flush(&mut self, ns: &NamespaceInfo) -> Result<(), DriverError> {
        self.run(ns, IoCommand::Flush)
    }

    /// Write Zeroes over `nlb` blocks.
    pub fn write_zeroes(
        &mut self,
        ns: &NamespaceInfo,
        slba: u64,
        nlb: u32,
    ) -> Result<(), DriverError> {
        self.run(ns, IoCommand::WriteZeroes { slba, nlb })
    }

    /// Dataset Management (deallocate) of `(slba, nlb)` ranges, one command per range.
    pub fn deallocate(
        &mut self,
        ns: &NamespaceInfo,
        ranges: &[(u64, u32)],
    ) -> Result<(), DriverError> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(DriverError::Invalid("1..=256 ranges".into()));
        }
        for &(slba, nlb) in ranges {
            self.run(ns, IoCommand::Deallocate { slba, nlb })?;
        }
        Ok(())
    }
}
