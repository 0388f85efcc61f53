//! A submission/completion queue pair in DMA memory, with phase tracking.

use std::time::{Duration, Instant};

use ffi::{DmaRegion, Mmio};
use nvme_spec::command::{Cqe, Sqe};
use nvme_spec::{FromBytes, IntoBytes};

use crate::DriverError;

/// One queue pair (admin or I/O).
#[derive(Debug)]
pub(crate) struct QueuePair {
    pub qid: u16,
    pub depth: u16,
    pub sq: DmaRegion,
    pub cq: DmaRegion,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    next_cid: u16,
    broken: bool,
}

impl QueuePair {
    pub fn new(qid: u16, depth: u16, sq: DmaRegion, cq: DmaRegion, dstrd: u8) -> Self {
        let stride = 4usize << dstrd;
        Self {
            qid,
            depth,
            sq,
            cq,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell: 0x1000 + (2 * usize::from(qid)) * stride,
            cq_doorbell: 0x1000 + (2 * usize::from(qid) + 1) * stride,
            next_cid: 0,
            broken: false,
        }
    }

    /// Queues a command (CID assigned here) and rings the doorbell; returns the CID.
    pub fn submit(&mut self, bar: &dyn Mmio, sqe: Sqe) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1) % self.depth.max(1);
        self.submit_cid(bar, sqe, cid);
        cid
    }

    /// Queues a command under a CID the caller manages (one not in flight) and rings the
    /// doorbell.
    pub fn submit_cid(&mut self, bar: &dyn Mmio, mut sqe: Sqe, cid: u16) {
        sqe.cid.set(cid);
        self.sq
            .write(usize::from(self.sq_tail) * 64, sqe.as_bytes());
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        bar.write32(self.sq_doorbell, u32::from(self.sq_tail));
    }

    /// The next completion, if the controller posted one.
    pub fn poll(&mut self, bar: &dyn Mmio) -> Option<Cqe> {
        let at = usize::from(self.cq_head) * 16;
        let dw3 = self.cq.read_u32(at + 12);
        if ((dw3 >> 16) & 1 == 1) != self.phase {
            return None;
        }
        let mut raw = [0u8; 16];
        self.cq.read(at, &mut raw);
        let cqe = Cqe::read_from_bytes(&raw).ok()?;
        self.cq_head += 1;
        if self.cq_head == self.depth {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        bar.write32(self.cq_doorbell, u32::from(self.cq_head));
        Some(cqe)
    }

    /// Submits and polls until that command completes.
    pub fn run(&mut self, bar: &dyn Mmio, sqe: Sqe, timeout: Duration) -> Result<Cqe, DriverError> {
        if self.broken {
            return Err(DriverError::QueueBroken(self.qid));
        }
        let opcode = sqe.opcode;
        let cid = self.submit(bar, sqe);
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            spins = spins.wrapping_add(1);
            // A controller in fatal state never completes anything: notice it early.
            if spins % 4096 == 0
                && nvme_spec::regs::Csts(bar.read32(nvme_spec::regs::offset::CSTS as usize)).cfs()
            {
                return Err(DriverError::Fatal);
            }
            if let Some(c) = self.poll(bar) {
                if c.cid.get() != cid {
                    // One command in flight at a time on this path: anything else is stale.
                    continue;
                }
                return match c.status_field() & 0x7ff {
                    0 => Ok(c),
                    _ => Err(DriverError::status(c.status_field(), opcode)),
                };
            }
            if t.elapsed() > timeout {
                // The command may still complete later, with a CID a new command would reuse.
                self.broken = true;
                let csts = bar.read32(nvme_spec::regs::offset::CSTS as usize);
                if nvme_spec::regs::Csts(csts).cfs() {
                    return Err(DriverError::Fatal);
                }
                return Err(DriverError::Timeout("a command completion"));
            }
            std::hint::spin_loop();
        }
    }
}
