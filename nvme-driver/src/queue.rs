//! A submission/completion queue pair in DMA memory with phase-tracked, polled completion.
//! Owned by one thread; no locks.

use std::time::{Duration, Instant};

use ffi::{DmaBuffer, RegisterIo};

use crate::cmd::{CQE_SIZE, Cqe, SQE_SIZE, Sqe};
use crate::error::{Error, Result};
use crate::regs::{self, Csts};

/// Rings and cursors of one queue pair. The rings live in a DMA buffer owned elsewhere.
#[derive(Debug)]
pub(crate) struct QueuePair {
    pub(crate) qid: u16,
    pub(crate) depth: u16,
    sq_off: usize,
    cq_off: usize,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    sq_doorbell: usize,
    cq_doorbell: usize,
    next_cid: u16,
    pub(crate) broken: bool,
}

impl QueuePair {
    /// Bytes of ring memory `depth` entries need: SQ then CQ, each page aligned.
    pub(crate) fn ring_bytes(depth: u16) -> (usize, usize) {
        let sq = (usize::from(depth) * SQE_SIZE).next_multiple_of(crate::prp::PAGE_SIZE);
        let cq = (usize::from(depth) * CQE_SIZE).next_multiple_of(crate::prp::PAGE_SIZE);
        (sq, cq)
    }

    /// A fresh (empty) queue pair whose rings are at `sq_off`/`cq_off` of `mem`, which the
    /// caller has zeroed.
    pub(crate) fn new(qid: u16, depth: u16, dstrd: u8, sq_off: usize, cq_off: usize) -> Self {
        QueuePair {
            qid,
            depth,
            sq_off,
            cq_off,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell: regs::sq_tail_doorbell(qid, dstrd),
            cq_doorbell: regs::cq_head_doorbell(qid, dstrd),
            next_cid: 0,
            broken: false,
        }
    }

    /// Whether the SQ has room for one more entry.
    fn full(&self) -> bool {
        (self.sq_tail + 1) % self.depth == self.sq_head
    }

    /// Copies `sqe` into the SQ, rings the tail doorbell and returns its command id.
    pub(crate) fn submit(
        &mut self,
        mem: &DmaBuffer,
        regs: &impl RegisterIo,
        mut sqe: Sqe,
    ) -> Result<u16> {
        if self.full() {
            return Err(Error::InvalidArgument(format!(
                "submission queue {} is full",
                self.qid
            )));
        }
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        let base = self.sq_off + usize::from(self.sq_tail) * SQE_SIZE;
        for (i, dw) in sqe.0.iter().enumerate() {
            mem.write_u32(base + 4 * i, *dw);
        }
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        regs.write32(self.sq_doorbell, u32::from(self.sq_tail));
        Ok(cid)
    }

    /// Takes the next completion if the controller posted one.
    pub(crate) fn poll(&mut self, mem: &DmaBuffer, regs: &impl RegisterIo) -> Option<Cqe> {
        let base = self.cq_off + usize::from(self.cq_head) * CQE_SIZE;
        let dw3 = mem.read_u32(base + 12);
        if (dw3 & (1 << 16) != 0) != self.phase {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let cqe = Cqe([
            mem.read_u32(base),
            mem.read_u32(base + 4),
            mem.read_u32(base + 8),
            dw3,
        ]);
        self.cq_head += 1;
        if self.cq_head == self.depth {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        if cqe.sqhd() < self.depth {
            self.sq_head = cqe.sqhd();
        }
        regs.write32(self.cq_doorbell, u32::from(self.cq_head));
        Some(cqe)
    }

    /// Submits `sqe` and polls until its completion arrives or `timeout` passes. A timeout
    /// marks the pair broken (the command may still complete later).
    pub(crate) fn execute(
        &mut self,
        mem: &DmaBuffer,
        regs: &impl RegisterIo,
        sqe: Sqe,
        timeout: Duration,
    ) -> Result<Cqe> {
        if self.broken {
            return Err(Error::QueueBroken(self.qid));
        }
        let opcode = sqe.opcode();
        let cid = self.submit(mem, regs, sqe)?;
        let start = Instant::now();
        loop {
            if let Some(cqe) = self.poll(mem, regs) {
                if cqe.cid() != cid {
                    // A stale completion (only possible after a protocol violation): skip it.
                    continue;
                }
                let status = cqe.status();
                if status.is_success() {
                    return Ok(cqe);
                }
                return Err(Error::Status {
                    qid: self.qid,
                    opcode,
                    status,
                });
            }
            if start.elapsed() >= timeout {
                self.broken = true;
                if Csts(regs.read32(regs::CSTS)).cfs() {
                    return Err(Error::ControllerFatal);
                }
                return Err(Error::Timeout {
                    what: "command",
                    ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::hint::spin_loop();
        }
    }
}
