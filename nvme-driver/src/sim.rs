//! A simulated NVMe controller for unit tests: registers, admin and I/O queues in heap
//! "DMA" memory ([`ffi::testing::HeapDma`]), processing submissions synchronously when a
//! doorbell is written and posting completions with phase tags, plus fault injection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ffi::testing::HeapDma;
use ffi::{DmaBuffer, PciFunction, RegisterIo};

use crate::cmd::{Cqe, Sqe, Status, admin, io};
use crate::regs;

const PAGE: u64 = 4096;
const PAGE_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct SimSq {
    base: u64,
    size: u16,
    cqid: u16,
    head: u16,
}

#[derive(Debug, Clone, Copy)]
struct SimCq {
    base: u64,
    size: u16,
    tail: u16,
    phase: bool,
}

/// Everything the simulated controller holds; tests inspect and script it.
#[derive(Debug)]
pub(crate) struct SimState {
    pub cap: u64,
    pub cc: u32,
    pub csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: BTreeMap<u16, SimSq>,
    cqs: BTreeMap<u16, SimCq>,
    pub block_size: usize,
    pub blocks: u64,
    pub data: Vec<u8>,
    /// MDTS exponent reported (0 = unlimited).
    pub mdts: u8,
    /// I/O queues granted by Set Features.
    pub granted: u16,
    /// Next I/O command completes with this status.
    pub fail_next: Option<Status>,
    /// Next N I/O commands are never completed.
    pub swallow: u32,
    /// Next I/O command raises CSTS.CFS instead of completing.
    pub fatal_next: bool,
    /// Commands executed, by (queue is I/O, opcode).
    pub executed: BTreeMap<(bool, u8), u64>,
    /// Completion-queue phase flips seen on I/O queues.
    pub io_phase_flips: u64,
    /// Largest number of PRP list entries walked by one command.
    pub max_list_entries: usize,
    /// Shutdown notifications seen.
    pub shutdowns: u32,
    /// Function-level resets.
    pub resets: u32,
    /// Queue deletions (SQ + CQ).
    pub deletions: u32,
}

pub(crate) struct SimDevice {
    pub dma: HeapDma,
    state: Mutex<SimState>,
}

/// The simulated PCI function handed to [`crate::Controller::new`].
pub(crate) struct SimPci {
    pub dev: Arc<SimDevice>,
    regs: SimRegs,
}

pub(crate) struct SimRegs {
    dev: Arc<SimDevice>,
}

impl SimPci {
    /// A controller with one namespace of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: usize, blocks: u64) -> Self {
        let cap = 1023 | (1 << 16) | (2 << 24) | (1 << 37);
        let dev = Arc::new(SimDevice {
            dma: HeapDma::new(),
            state: Mutex::new(SimState {
                cap,
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                sqs: BTreeMap::new(),
                cqs: BTreeMap::new(),
                block_size,
                blocks,
                data: vec![0; block_size * usize::try_from(blocks).unwrap()],
                mdts: 6,
                granted: 4,
                fail_next: None,
                swallow: 0,
                fatal_next: false,
                executed: BTreeMap::new(),
                io_phase_flips: 0,
                max_list_entries: 0,
                shutdowns: 0,
                resets: 0,
                deletions: 0,
            }),
        });
        SimPci {
            regs: SimRegs {
                dev: Arc::clone(&dev),
            },
            dev,
        }
    }
}

impl SimDevice {
    pub fn state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn executed(&self, io: bool, opcode: u8) -> u64 {
        self.state()
            .executed
            .get(&(io, opcode))
            .copied()
            .unwrap_or(0)
    }
}

impl PciFunction for SimPci {
    type Regs = SimRegs;

    fn name(&self) -> &str {
        "sim"
    }

    fn bar0(&self) -> &SimRegs {
        &self.regs
    }

    fn alloc_dma(&self, len: usize) -> ffi::Result<DmaBuffer> {
        self.dev.dma.alloc(len)
    }

    fn reset(&self) -> ffi::Result<()> {
        let mut s = self.dev.state();
        s.resets += 1;
        s.cc = 0;
        s.csts = 0;
        s.sqs.clear();
        s.cqs.clear();
        Ok(())
    }
}

fn lo(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

fn set_lo(v: &mut u64, x: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(x);
}

fn set_hi(v: &mut u64, x: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(x) << 32);
}

impl RegisterIo for SimRegs {
    fn len(&self) -> usize {
        0x4000
    }

    fn read32(&self, offset: usize) -> u32 {
        let s = self.dev.state();
        match offset {
            regs::CAP => lo(s.cap),
            0x04 => (s.cap >> 32) as u32,
            regs::VS => 0x0002_0000,
            regs::CC => s.cc,
            regs::CSTS => s.csts,
            regs::AQA => s.aqa,
            regs::ASQ => lo(s.asq),
            0x2c => (s.asq >> 32) as u32,
            regs::ACQ => lo(s.acq),
            0x34 => (s.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let dev = &self.dev;
        let mut s = dev.state();
        match offset {
            regs::CC => {
                let was = s.cc;
                s.cc = value;
                if value & 1 != 0 && was & 1 == 0 {
                    let asqs = (s.aqa & 0xfff) as u16 + 1;
                    let acqs = ((s.aqa >> 16) & 0xfff) as u16 + 1;
                    let (asq, acq) = (s.asq, s.acq);
                    s.sqs.insert(
                        0,
                        SimSq {
                            base: asq,
                            size: asqs,
                            cqid: 0,
                            head: 0,
                        },
                    );
                    s.cqs.insert(
                        0,
                        SimCq {
                            base: acq,
                            size: acqs,
                            tail: 0,
                            phase: true,
                        },
                    );
                    s.csts |= regs::Csts::RDY;
                } else if value & 1 == 0 && was & 1 != 0 {
                    s.sqs.clear();
                    s.cqs.clear();
                    s.csts = 0;
                }
                if (value >> 14) & 3 != 0 && (was >> 14) & 3 == 0 {
                    s.shutdowns += 1;
                    s.csts |= regs::Csts::SHST_COMPLETE;
                }
            }
            regs::AQA => s.aqa = value,
            regs::ASQ => set_lo(&mut s.asq, value),
            0x2c => set_hi(&mut s.asq, value),
            regs::ACQ => set_lo(&mut s.acq, value),
            0x34 => set_hi(&mut s.acq, value),
            o if o >= regs::DOORBELL_BASE => {
                let idx = (o - regs::DOORBELL_BASE) / 4;
                let qid = u16::try_from(idx / 2).unwrap();
                if idx % 2 == 0 && s.csts & regs::Csts::CFS == 0 {
                    process(&dev.dma, &mut s, qid, u16::try_from(value).unwrap());
                }
            }
            _ => {}
        }
    }
}

/// Processes queue `qid` up to the new tail.
fn process(dma: &HeapDma, s: &mut SimState, qid: u16, tail: u16) {
    loop {
        let Some(mut sq) = s.sqs.get(&qid).copied() else {
            return;
        };
        if sq.head == tail {
            return;
        }
        let mut raw = [0u8; 64];
        assert!(
            dma.read(sq.base + u64::from(sq.head) * 64, &mut raw),
            "SQ {qid} not in DMA memory"
        );
        let mut sqe = Sqe::default();
        for (i, dw) in sqe.0.iter_mut().enumerate() {
            *dw = u32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().unwrap());
        }
        sq.head = (sq.head + 1) % sq.size;
        s.sqs.insert(qid, sq);
        *s.executed.entry((qid != 0, sqe.opcode())).or_default() += 1;
        let (result, status) = if qid == 0 {
            admin_cmd(dma, s, &sqe)
        } else {
            if s.fatal_next {
                s.fatal_next = false;
                s.csts |= regs::Csts::CFS;
                return;
            }
            if s.swallow > 0 {
                s.swallow -= 1;
                continue;
            }
            match s.fail_next.take() {
                Some(st) => (0, st),
                None => io_cmd(dma, s, &sqe),
            }
        };
        let Some(mut cq) = s.cqs.get(&sq.cqid).copied() else {
            continue;
        };
        let cqe = Cqe::new(result, sq.head, qid, sqe.cid(), cq.phase, status);
        let mut bytes = [0u8; 16];
        for (i, dw) in cqe.0.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&dw.to_le_bytes());
        }
        assert!(
            dma.write(cq.base + u64::from(cq.tail) * 16, &bytes),
            "CQ {} not in DMA memory",
            sq.cqid
        );
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
            if qid != 0 {
                s.io_phase_flips += 1;
            }
        }
        s.cqs.insert(sq.cqid, cq);
    }
}

fn generic(sc: u8) -> Status {
    Status::new(0, sc)
}

fn admin_cmd(dma: &HeapDma, s: &mut SimState, sqe: &Sqe) -> (u32, Status) {
    let qid = (sqe.cdw(10) & 0xffff) as u16;
    let size = (sqe.cdw(10) >> 16) as u16 + 1;
    match sqe.opcode() {
        admin::IDENTIFY => {
            let mut page = [0u8; 4096];
            match sqe.cdw(10) & 0xff {
                admin::CNS_CONTROLLER => {
                    page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                    page[4..12].copy_from_slice(b"SIM0001 ");
                    page[24..32].copy_from_slice(b"Baton NV");
                    page[64..68].copy_from_slice(b"1.0 ");
                    page[77] = s.mdts;
                    page[78] = 1;
                    page[516] = 1;
                    page[520] = 0x0c;
                    page[525] = 1;
                }
                admin::CNS_NAMESPACE if sqe.nsid() == 1 => {
                    page[0..8].copy_from_slice(&s.blocks.to_le_bytes());
                    page[8..16].copy_from_slice(&s.blocks.to_le_bytes());
                    page[130] = u8::try_from(s.block_size.trailing_zeros()).unwrap();
                }
                admin::CNS_NAMESPACE => return (0, generic(0x0b)),
                _ => return (0, generic(0x02)),
            }
            if !dma.write(sqe.prp1(), &page) {
                return (0, generic(0x04));
            }
            (0, Status::SUCCESS)
        }
        admin::SET_FEATURES if sqe.cdw(10) == admin::FEAT_NUM_QUEUES => {
            let g = u32::from(s.granted - 1);
            (g << 16 | g, Status::SUCCESS)
        }
        admin::CREATE_CQ => {
            if qid == 0 || qid > s.granted || s.cqs.contains_key(&qid) {
                return (0, Status::new(1, 0x01));
            }
            if u64::from(size) > (s.cap & 0xffff) + 1 || size < 2 {
                return (0, Status::new(1, 0x02));
            }
            s.cqs.insert(
                qid,
                SimCq {
                    base: sqe.prp1(),
                    size,
                    tail: 0,
                    phase: true,
                },
            );
            (0, Status::SUCCESS)
        }
        admin::CREATE_SQ => {
            let cqid = (sqe.cdw(11) >> 16) as u16;
            if qid == 0 || qid > s.granted || s.sqs.contains_key(&qid) {
                return (0, Status::new(1, 0x01));
            }
            if !s.cqs.contains_key(&cqid) {
                return (0, Status::new(1, 0x00));
            }
            s.sqs.insert(
                qid,
                SimSq {
                    base: sqe.prp1(),
                    size,
                    cqid,
                    head: 0,
                },
            );
            (0, Status::SUCCESS)
        }
        admin::DELETE_SQ => {
            s.deletions += 1;
            if qid == 0 || s.sqs.remove(&qid).is_none() {
                (0, Status::new(1, 0x01))
            } else {
                (0, Status::SUCCESS)
            }
        }
        admin::DELETE_CQ => {
            s.deletions += 1;
            if s.sqs.values().any(|sq| sq.cqid == qid) {
                return (0, Status::new(1, 0x0c));
            }
            if qid == 0 || s.cqs.remove(&qid).is_none() {
                (0, Status::new(1, 0x01))
            } else {
                (0, Status::SUCCESS)
            }
        }
        _ => (0, generic(0x01)),
    }
}

/// Walks PRPs for `len` bytes; `Err` carries the status to complete with.
fn walk_prps(
    dma: &HeapDma,
    s: &mut SimState,
    prp1: u64,
    prp2: u64,
    len: usize,
) -> Result<Vec<(u64, usize)>, Status> {
    if prp1 % 4 != 0 {
        return Err(generic(0x13));
    }
    let first = len.min(PAGE_BYTES - usize::try_from(prp1 % PAGE).unwrap());
    let mut out = vec![(prp1, first)];
    let mut left = len - first;
    if left == 0 {
        return Ok(out);
    }
    if left <= PAGE_BYTES {
        if prp2 % PAGE != 0 {
            return Err(generic(0x13));
        }
        out.push((prp2, left));
        return Ok(out);
    }
    if prp2 % 8 != 0 {
        return Err(generic(0x13));
    }
    let mut at = prp2;
    let mut entries = 0;
    while left > 0 {
        let mut e = [0u8; 8];
        if !dma.read(at, &mut e) {
            return Err(generic(0x04));
        }
        let entry = u64::from_le_bytes(e);
        entries += 1;
        if at % PAGE == PAGE - 8 && left > PAGE_BYTES {
            at = entry;
            continue;
        }
        if entry % PAGE != 0 {
            return Err(generic(0x13));
        }
        let n = left.min(PAGE_BYTES);
        out.push((entry, n));
        left -= n;
        at += 8;
    }
    s.max_list_entries = s.max_list_entries.max(entries);
    Ok(out)
}

fn io_cmd(dma: &HeapDma, s: &mut SimState, sqe: &Sqe) -> (u32, Status) {
    if sqe.nsid() != 1 {
        return (0, generic(0x0b));
    }
    let bs = s.block_size;
    let in_range =
        |s: &SimState, slba: u64, n: u64| slba.checked_add(n).is_some_and(|end| end <= s.blocks);
    match sqe.opcode() {
        io::FLUSH => (0, Status::SUCCESS),
        io::READ | io::WRITE | io::WRITE_ZEROES => {
            let (slba, n) = (sqe.slba(), u64::from(sqe.nlb()));
            if !in_range(s, slba, n) {
                return (0, generic(0x80));
            }
            let start = usize::try_from(slba).unwrap() * bs;
            let len = usize::try_from(n).unwrap() * bs;
            if sqe.opcode() == io::WRITE_ZEROES {
                s.data[start..start + len].fill(0);
                return (0, Status::SUCCESS);
            }
            if s.mdts != 0 && len > (4096 << s.mdts) {
                return (0, generic(0x02));
            }
            let ranges = match walk_prps(dma, s, sqe.prp1(), sqe.prp2(), len) {
                Ok(r) => r,
                Err(st) => return (0, st),
            };
            let mut pos = start;
            for (iova, n) in ranges {
                let ok = if sqe.opcode() == io::READ {
                    dma.write(iova, &s.data[pos..pos + n])
                } else {
                    dma.read(iova, &mut s.data[pos..pos + n])
                };
                if !ok {
                    return (0, generic(0x04));
                }
                pos += n;
            }
            (0, Status::SUCCESS)
        }
        io::DSM => {
            let nr = (sqe.cdw(10) & 0xff) as usize + 1;
            let mut raw = vec![0u8; nr * 16];
            if !dma.read(sqe.prp1(), &mut raw) {
                return (0, generic(0x04));
            }
            for r in raw.chunks(16) {
                let n = u64::from(u32::from_le_bytes(r[4..8].try_into().unwrap()));
                let slba = u64::from_le_bytes(r[8..16].try_into().unwrap());
                if !in_range(s, slba, n) {
                    return (0, generic(0x80));
                }
                if sqe.cdw(11) & io::DSM_DEALLOCATE != 0 {
                    let start = usize::try_from(slba).unwrap() * bs;
                    s.data[start..start + usize::try_from(n).unwrap() * bs].fill(0);
                }
            }
            (0, Status::SUCCESS)
        }
        _ => (0, generic(0x01)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Controller, Error};

    fn controller(block_size: usize, blocks: u64) -> (Arc<SimDevice>, Controller<SimPci>) {
        let sim = SimPci::new(block_size, blocks);
        let dev = Arc::clone(&sim.dev);
        let ctrl = Controller::with_timeout(sim, Duration::from_millis(50)).unwrap();
        (dev, ctrl)
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    fn handles_have_the_intended_thread_bounds() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Controller<SimPci>>();
        send_sync::<Controller>();
        send::<crate::IoQueuePair<SimPci>>();
        send::<crate::IoQueuePair<ffi::VfioPci>>();
    }

    #[test]
    fn bring_up_and_identify() {
        let (dev, ctrl) = controller(512, 4096);
        let info = ctrl.info();
        assert_eq!(info.vendor_id, 0x1b36);
        assert_eq!(info.serial, "SIM0001");
        assert_eq!(info.model, "Baton NV");
        assert_eq!(info.mdts_bytes, Some(4096 << 6));
        assert_eq!(info.max_transfer(), 256 << 10);
        assert_eq!(info.namespaces, 1);
        assert_eq!(info.io_queues, 4);
        assert_eq!(info.max_queue_entries, 1024);
        assert!(info.supports_dsm() && info.supports_write_zeroes() && info.volatile_write_cache);
        let ns = ctrl.namespace(1).unwrap();
        assert_eq!((ns.nsid, ns.blocks, ns.block_size), (1, 4096, 512));
        assert_eq!(ns.size_bytes(), 2 << 20);
        assert!(matches!(ctrl.namespace(2), Err(Error::NoSuchNamespace(2))));
        assert!(matches!(ctrl.namespace(0), Err(Error::NoSuchNamespace(0))));
        let s = dev.state();
        assert_eq!(s.cc & 1, 1);
        assert_eq!(s.csts & 1, 1);
        assert_eq!((s.aqa & 0xfff) + 1, 32);
    }

    #[test]
    fn io_round_trips_at_every_size() {
        let (dev, ctrl) = controller(512, 8192);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(16).unwrap();
        let mut lba = 0;
        for (i, len) in [
            512usize,
            4096,
            4608,
            8192,
            12288,
            64 << 10,
            256 << 10,
            (256 << 10) + 512,
            1 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(len, i as u64);
            qp.write(&ns, lba, &data).unwrap();
            let mut back = vec![0u8; len];
            qp.read(&ns, lba, &mut back).unwrap();
            assert!(back == data, "round trip of {len} bytes");
            let start = usize::try_from(lba).unwrap() * 512;
            assert!(
                dev.state().data[start..start + len] == data[..],
                "device holds {len} bytes"
            );
            lba += (len / 512) as u64;
        }
        // 256 KiB = 64 pages: 63 list entries in one list page.
        assert_eq!(dev.state().max_list_entries, 63);
        // 1 MiB goes in four MDTS-sized commands.
        assert!(dev.executed(true, io::WRITE) >= 9 + 3);
    }

    #[test]
    fn four_k_namespace() {
        let (_dev, ctrl) = controller(4096, 512);
        let ns = ctrl.namespace(1).unwrap();
        assert_eq!(ns.block_size, 4096);
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let data = pattern(3 * 4096, 9);
        qp.write(&ns, 511 - 2, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        qp.read(&ns, 509, &mut back).unwrap();
        assert_eq!(back, data);
        let e = qp.write(&ns, 0, &[0u8; 512]).unwrap_err();
        assert!(e.to_string().contains("4096-byte block size"), "{e}");
    }

    #[test]
    fn queue_wraps_and_flips_phase_over_thousands_of_commands() {
        let (dev, ctrl) = controller(512, 1024);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(4).unwrap();
        for i in 0..5000u64 {
            let lba = i % 1024;
            let data = pattern(512, i);
            qp.write(&ns, lba, &data).unwrap();
            let mut back = [0u8; 512];
            qp.read(&ns, lba, &mut back).unwrap();
            assert_eq!(back[..], data[..], "command pair {i}");
        }
        assert_eq!(dev.executed(true, io::WRITE), 5000);
        assert_eq!(dev.state().io_phase_flips, 10_000 / 4);
        // The admin queue wraps too (32 entries).
        for _ in 0..100 {
            ctrl.namespace(1).unwrap();
        }
    }

    #[test]
    fn error_status_is_typed_and_queue_stays_usable() {
        let (dev, ctrl) = controller(512, 100);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let mut buf = vec![0u8; 1024];
        let e = qp.read(&ns, 99, &mut buf).unwrap_err();
        let st = e.status().unwrap();
        assert_eq!((st.sct(), st.sc()), (0, 0x80), "{e}");
        assert!(e.to_string().contains("LBA out of range"), "{e}");
        dev.state().fail_next = Some(Status::new(2, 0x81));
        let e = qp.write(&ns, 0, &buf).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Status {
                    opcode: io::WRITE,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.status().unwrap().sct(), 2);
        qp.read(&ns, 98, &mut buf).unwrap();
        let e = qp.read(&ns, u64::MAX, &mut buf).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn timeout_breaks_the_queue_and_reset_recovers() {
        let (dev, ctrl) = controller(512, 100);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        dev.state().swallow = 1;
        let e = qp.flush(&ns).unwrap_err();
        assert!(matches!(e, Error::Timeout { ms: 50, .. }), "{e}");
        assert!(matches!(qp.flush(&ns), Err(Error::QueueBroken(1))));
        ctrl.reset().unwrap();
        assert!(matches!(qp.flush(&ns), Err(Error::QueueLost(1))));
        drop(qp);
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        qp.write(&ns, 1, &[7u8; 512]).unwrap();
        let mut back = [0u8; 512];
        qp.read(&ns, 1, &mut back).unwrap();
        assert_eq!(back, [7u8; 512]);
    }

    #[test]
    fn fatal_status_is_reported_and_reset_recovers() {
        let (dev, ctrl) = controller(512, 100);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        dev.state().fatal_next = true;
        assert!(matches!(qp.flush(&ns), Err(Error::ControllerFatal)));
        ctrl.reset().unwrap();
        assert_eq!(dev.state().csts & regs::Csts::CFS, 0);
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        qp.flush(&ns).unwrap();
    }

    #[test]
    fn queue_ids_are_limited_and_freed() {
        let (dev, ctrl) = controller(512, 100);
        let qps: Vec<_> = (0..4)
            .map(|_| ctrl.create_io_queue_pair(4).unwrap())
            .collect();
        assert_eq!(
            qps.iter().map(|q| q.qid()).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(matches!(
            ctrl.create_io_queue_pair(4),
            Err(Error::NoFreeQueue(4))
        ));
        drop(qps);
        assert_eq!(dev.state().deletions, 8);
        assert_eq!(ctrl.create_io_queue_pair(4).unwrap().qid(), 1);
        assert!(matches!(
            ctrl.create_io_queue_pair(1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ctrl.create_io_queue_pair(2000),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn write_zeroes_deallocate_and_flush() {
        let (dev, ctrl) = controller(512, 200_000);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let ones = vec![0xffu8; 512 * 8];
        qp.write(&ns, 10, &ones).unwrap();
        qp.write_zeroes(&ns, 11, 2).unwrap();
        let mut back = vec![0u8; 512 * 8];
        qp.read(&ns, 10, &mut back).unwrap();
        assert!(back[..512].iter().all(|b| *b == 0xff));
        assert!(back[512..1536].iter().all(|b| *b == 0));
        assert!(back[1536..].iter().all(|b| *b == 0xff));
        qp.deallocate(&ns, 14, 3).unwrap();
        qp.read(&ns, 10, &mut back).unwrap();
        assert!(back[2048..3584].iter().all(|b| *b == 0));
        assert!(back[3584..].iter().all(|b| *b == 0xff));
        // More than 65536 blocks take several Write Zeroes commands.
        qp.write_zeroes(&ns, 0, 150_000).unwrap();
        assert_eq!(dev.executed(true, io::WRITE_ZEROES), 1 + 3);
        qp.flush(&ns).unwrap();
        assert_eq!(dev.executed(true, io::FLUSH), 1);
        assert!(
            matches!(qp.deallocate(&ns, 199_999, 2).unwrap_err().status(), Some(s) if s.sc() == 0x80)
        );
    }

    #[test]
    fn queue_pairs_run_on_their_own_threads() {
        let (_dev, ctrl) = controller(512, 1024);
        let ns = ctrl.namespace(1).unwrap();
        std::thread::scope(|scope| {
            for t in 0..2u64 {
                let mut qp = ctrl.create_io_queue_pair(16).unwrap();
                scope.spawn(move || {
                    for i in 0..200u64 {
                        let lba = t * 512 + i;
                        let data = pattern(512, lba);
                        qp.write(&ns, lba, &data).unwrap();
                        let mut back = [0u8; 512];
                        qp.read(&ns, lba, &mut back).unwrap();
                        assert_eq!(back[..], data[..]);
                    }
                });
            }
        });
    }

    #[test]
    fn shutdown_on_drop() {
        let (dev, ctrl) = controller(512, 100);
        let qp = ctrl.create_io_queue_pair(4).unwrap();
        drop(ctrl);
        assert_eq!(
            dev.state().shutdowns,
            0,
            "a live queue pair keeps the controller up"
        );
        drop(qp);
        let s = dev.state();
        assert_eq!(s.shutdowns, 1);
        assert_eq!(s.cc & 1, 0);
    }

    #[test]
    fn refuses_unsupported_controllers() {
        let sim = SimPci::new(512, 10);
        sim.dev.state().cap |= 1 << 48;
        let e = Controller::new(sim).err().unwrap();
        assert!(e.to_string().contains("page size"), "{e}");
        let sim = SimPci::new(512, 10);
        sim.dev.state().cap &= !(1 << 37);
        assert!(matches!(Controller::new(sim), Err(Error::Unsupported(_))));
    }

    #[test]
    fn dma_buffers_are_released() {
        let (dev, ctrl) = controller(512, 10);
        let qp = ctrl.create_io_queue_pair(4).unwrap();
        assert_eq!(dev.dma.live_buffers(), 2);
        drop(qp);
        assert_eq!(dev.dma.live_buffers(), 1);
        drop(ctrl);
        assert_eq!(dev.dma.live_buffers(), 0);
    }
}
