//! I/O queue pairs: NVM Read/Write/Flush/Write Zeroes/Dataset Management through a
//! per-queue DMA bounce buffer, polled to completion on the owning thread.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ffi::{DmaBuffer, PciFunction};

use crate::cmd::{Sqe, admin, io};
use crate::controller::{Inner, Namespace};
use crate::error::{Error, Result};
use crate::prp::{self, PAGE_SIZE};
use crate::queue::QueuePair;

/// Most blocks one NVM read/write/write-zeroes command moves (NLB is 16 bits, 0-based).
const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;
/// DSM ranges in one command (one 4 KiB page of 16-byte ranges).
const DSM_RANGES: usize = 256;

/// An I/O submission/completion queue pair with its DMA memory, owned by one thread
/// (`Send`, not `Sync`). Deleted from the controller on drop.
pub struct IoQueuePair<F: PciFunction> {
    ctrl: Arc<Inner<F>>,
    queue: QueuePair,
    mem: DmaBuffer,
    prp_off: usize,
    dsm_off: usize,
    bounce_off: usize,
    max_transfer: usize,
    generation: u64,
    _not_sync: PhantomData<Cell<()>>,
}

impl<F: PciFunction> std::fmt::Debug for IoQueuePair<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQueuePair")
            .field("qid", &self.queue.qid)
            .field("depth", &self.queue.depth)
            .finish()
    }
}

impl<F: PciFunction> IoQueuePair<F> {
    pub(crate) fn create(ctrl: Arc<Inner<F>>, depth: u16) -> Result<Self> {
        let info = ctrl.info();
        if depth < 2 || u32::from(depth) > info.max_queue_entries {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} outside 2..={}",
                info.max_queue_entries
            )));
        }
        let max_transfer = info.max_transfer();
        let (sq_bytes, cq_bytes) = QueuePair::ring_bytes(depth);
        let prp_off = sq_bytes + cq_bytes;
        let dsm_off = prp_off + prp::list_pages_needed(0, max_transfer) * PAGE_SIZE;
        let bounce_off = dsm_off + PAGE_SIZE;
        let mem = ctrl.func.alloc_dma(bounce_off + max_transfer)?;
        mem.zero(0, prp_off)?;
        let qid = {
            let mut qids = ctrl.lock_qids();
            let free = qids
                .iter()
                .skip(1)
                .position(|used| !used)
                .ok_or(Error::NoFreeQueue(info.io_queues))?;
            qids[free + 1] = true;
            u16::try_from(free + 1).map_err(|_| Error::NoFreeQueue(info.io_queues))?
        };
        let generation = ctrl.generation.load(Ordering::SeqCst);
        let size = u32::from(depth - 1) << 16;
        let cq = Sqe::new(admin::CREATE_CQ, 0)
            .with_prps(mem.iova() + sq_bytes as u64, 0)
            .with_cdw(10, size | u32::from(qid))
            .with_cdw(11, 1);
        let sq = Sqe::new(admin::CREATE_SQ, 0)
            .with_prps(mem.iova(), 0)
            .with_cdw(10, size | u32::from(qid))
            .with_cdw(11, (u32::from(qid) << 16) | 1);
        let created = ctrl.admin_command(cq, None).and_then(|_| {
            ctrl.admin_command(sq, None).inspect_err(|_| {
                let delete = Sqe::new(admin::DELETE_CQ, 0).with_cdw(10, u32::from(qid));
                let _ = ctrl.admin_command(delete, None);
            })
        });
        if let Err(e) = created {
            ctrl.lock_qids()[usize::from(qid)] = false;
            return Err(e);
        }
        let queue = QueuePair::new(qid, depth, ctrl.dstrd(), 0, sq_bytes);
        Ok(IoQueuePair {
            ctrl,
            queue,
            mem,
            prp_off,
            dsm_off,
            bounce_off,
            max_transfer,
            generation,
            _not_sync: PhantomData,
        })
    }

    /// Queue identifier.
    pub fn qid(&self) -> u16 {
        self.queue.qid
    }

    /// Largest transfer of one command in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    fn check_usable(&self) -> Result<()> {
        if self.ctrl.generation.load(Ordering::Relaxed) != self.generation {
            return Err(Error::QueueLost(self.queue.qid));
        }
        Ok(())
    }

    fn run(&mut self, sqe: Sqe) -> Result<()> {
        self.check_usable()?;
        self.queue
            .execute(
                &self.mem,
                self.ctrl.func.bar0(),
                sqe,
                self.ctrl.command_timeout,
            )
            .map(drop)
    }

    /// PRPs for `len` bytes of the bounce buffer.
    fn bounce_prps(&self, len: usize) -> (u64, u64) {
        let iova = self.mem.iova() + self.bounce_off as u64;
        let list_iova = self.mem.iova() + self.prp_off as u64;
        let mem = &self.mem;
        let prp_off = self.prp_off;
        prp::build(iova, len, list_iova, |i, v| {
            mem.write_u64(prp_off + 8 * i, v)
        })
    }

    fn blocks_of(ns: &Namespace, len: usize) -> Result<u64> {
        let bs = ns.block_size as usize;
        if len == 0 || len % bs != 0 {
            return Err(Error::InvalidArgument(format!(
                "transfer of {len} bytes is not a non-zero multiple of the {bs}-byte block size"
            )));
        }
        Ok((len / bs) as u64)
    }

    fn chunk_bytes(&self, ns: &Namespace) -> usize {
        let bs = ns.block_size as usize;
        (self.max_transfer / bs * bs).min((1 << 16) * bs)
    }

    fn lba_end(lba: u64, blocks: u64) -> Result<()> {
        lba.checked_add(blocks)
            .map(drop)
            .ok_or_else(|| Error::InvalidArgument(format!("LBA range {lba}+{blocks} overflows")))
    }

    /// Reads `buf.len()` bytes (a multiple of the block size) from block `lba` of `ns`.
    pub fn read(&mut self, ns: &Namespace, lba: u64, buf: &mut [u8]) -> Result<()> {
        Self::lba_end(lba, Self::blocks_of(ns, buf.len())?)?;
        let chunk = self.chunk_bytes(ns);
        let mut lba = lba;
        for part in buf.chunks_mut(chunk) {
            let blocks = u32::try_from(part.len() / ns.block_size as usize).unwrap_or(u32::MAX);
            let (p1, p2) = self.bounce_prps(part.len());
            let sqe = Sqe::new(io::READ, ns.nsid)
                .with_prps(p1, p2)
                .with_lba_range(lba, blocks);
            self.run(sqe)?;
            self.mem.read_bytes(self.bounce_off, part)?;
            lba += u64::from(blocks);
        }
        Ok(())
    }

    /// Writes `buf` (a multiple of the block size) at block `lba` of `ns`.
    pub fn write(&mut self, ns: &Namespace, lba: u64, buf: &[u8]) -> Result<()> {
        Self::lba_end(lba, Self::blocks_of(ns, buf.len())?)?;
        let chunk = self.chunk_bytes(ns);
        let mut lba = lba;
        for part in buf.chunks(chunk) {
            let blocks = u32::try_from(part.len() / ns.block_size as usize).unwrap_or(u32::MAX);
            self.mem.write_bytes(self.bounce_off, part)?;
            let (p1, p2) = self.bounce_prps(part.len());
            let sqe = Sqe::new(io::WRITE, ns.nsid)
                .with_prps(p1, p2)
                .with_lba_range(lba, blocks);
            self.run(sqe)?;
            lba += u64::from(blocks);
        }
        Ok(())
    }

    /// Flushes the volatile write cache of `ns`.
    pub fn flush(&mut self, ns: &Namespace) -> Result<()> {
        self.run(Sqe::new(io::FLUSH, ns.nsid))
    }

    /// Zeroes `blocks` blocks from `lba` (Write Zeroes).
    pub fn write_zeroes(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<()> {
        Self::lba_end(lba, blocks)?;
        let mut done = 0;
        while done < blocks {
            let n = u32::try_from(blocks - done)
                .unwrap_or(u32::MAX)
                .min(MAX_BLOCKS_PER_COMMAND);
            self.run(Sqe::new(io::WRITE_ZEROES, ns.nsid).with_lba_range(lba + done, n))?;
            done += u64::from(n);
        }
        Ok(())
    }

    /// Deallocates (trims) `blocks` blocks from `lba` with Dataset Management.
    pub fn deallocate(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<()> {
        Self::lba_end(lba, blocks)?;
        let per_range = u64::from(u32::MAX);
        let mut next = lba;
        let end = lba + blocks;
        while next < end {
            let mut ranges = 0usize;
            while next < end && ranges < DSM_RANGES {
                let n = (end - next).min(per_range);
                let at = self.dsm_off + 16 * ranges;
                self.mem.write_u32(at, 0);
                self.mem
                    .write_u32(at + 4, u32::try_from(n).unwrap_or(u32::MAX));
                self.mem.write_u64(at + 8, next);
                next += n;
                ranges += 1;
            }
            let iova = self.mem.iova() + self.dsm_off as u64;
            let sqe = Sqe::new(io::DSM, ns.nsid)
                .with_prps(iova, 0)
                .with_cdw(10, u32::try_from(ranges - 1).unwrap_or(0xff))
                .with_cdw(11, io::DSM_DEALLOCATE);
            self.run(sqe)?;
        }
        Ok(())
    }
}

impl<F: PciFunction> Drop for IoQueuePair<F> {
    fn drop(&mut self) {
        if self.check_usable().is_err() {
            return;
        }
        let qid = u32::from(self.queue.qid);
        let sq = self
            .ctrl
            .admin_command(Sqe::new(admin::DELETE_SQ, 0).with_cdw(10, qid), None);
        let cq = sq.and_then(|_| {
            self.ctrl
                .admin_command(Sqe::new(admin::DELETE_CQ, 0).with_cdw(10, qid), None)
        });
        match cq {
            Ok(_) => self.ctrl.lock_qids()[usize::from(self.queue.qid)] = false,
            // The queue id stays reserved: the controller may still own the queue.
            Err(e) => tracing::warn!("deleting NVMe I/O queue {qid} failed: {e}"),
        }
    }
}
