//! Controller bring-up, the admin queue, identify, queue creation, reset and shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ffi::{DmaBuffer, PciFunction, RegisterIo, VfioPci};

use crate::cmd::{Cqe, Sqe, admin};
use crate::error::{Error, Result};
use crate::io::IoQueuePair;
use crate::prp::PAGE_SIZE;
use crate::queue::QueuePair;
use crate::regs::{self, Cap, Cc, Csts};

/// Admin queue depth.
const ADMIN_DEPTH: u16 = 32;
/// I/O queues requested with Set Features (Number of Queues).
const WANTED_IO_QUEUES: u16 = 64;
/// Default command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest transfer per command the driver uses, whatever MDTS allows.
pub const MAX_TRANSFER_CAP: usize = 1 << 20;

/// What Identify Controller reported (NVMe Base Specification 2.0, figure 275).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// PCI vendor id.
    pub vendor_id: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Controller id.
    pub cntlid: u16,
    /// Version register (VS).
    pub version: u32,
    /// Maximum data transfer per command in bytes (MDTS), `None` if unlimited.
    pub mdts_bytes: Option<usize>,
    /// Number of namespaces (NN).
    pub namespaces: u32,
    /// Optional NVM Command Support (ONCS).
    pub oncs: u16,
    /// Whether a volatile write cache is present (VWC bit 0).
    pub volatile_write_cache: bool,
    /// Maximum queue entries (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// I/O queue pairs granted by Set Features (Number of Queues).
    pub io_queues: u16,
}

impl ControllerInfo {
    /// Whether Dataset Management (deallocate) is supported.
    pub fn supports_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
    /// Whether Write Zeroes is supported.
    pub fn supports_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }
    /// Largest transfer per command the driver issues.
    pub fn max_transfer(&self) -> usize {
        self.mdts_bytes
            .map_or(MAX_TRANSFER_CAP, |m| m.min(MAX_TRANSFER_CAP))
    }
}

/// What Identify Namespace reported (NVM Command Set Specification, figure 97).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Metadata bytes per block of the current format.
    pub metadata_size: u16,
}

impl Namespace {
    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

struct Admin {
    mem: DmaBuffer,
    data_off: usize,
    queue: QueuePair,
}

/// Field order matters: DMA memory (admin queue) is released before the PCI function.
pub(crate) struct Inner<F: PciFunction> {
    cap: Cap,
    ready_timeout: Duration,
    pub(crate) command_timeout: Duration,
    admin: Mutex<Admin>,
    info: ControllerInfo,
    pub(crate) generation: AtomicU64,
    qids: Mutex<Vec<bool>>,
    shut_down: AtomicBool,
    pub(crate) func: F,
}

/// An NVMe controller driven from user space.
///
/// `Sync`: admin operations serialize on a mutex; I/O runs on [`IoQueuePair`]s, each owned
/// by one thread.
pub struct Controller<F: PciFunction = VfioPci> {
    inner: Arc<Inner<F>>,
}

impl Controller<VfioPci> {
    /// Opens the controller at PCI address `bdf` (bound to vfio-pci) and brings it up.
    pub fn open(bdf: &str) -> Result<Self> {
        Self::new(VfioPci::open(bdf)?)
    }
}

fn wait_csts(
    regs: &impl RegisterIo,
    timeout: Duration,
    what: &'static str,
    done: impl Fn(Csts) -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let csts = Csts(regs.read32(regs::CSTS));
        if done(csts) {
            return Ok(());
        }
        if csts.cfs() && what == "enable" {
            return Err(Error::ControllerFatal);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what,
                ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn ascii(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

impl<F: PciFunction> Controller<F> {
    /// Brings up the controller behind `func`: disable, admin queue, enable, Identify
    /// Controller, Set Features (Number of Queues).
    pub fn new(func: F) -> Result<Self> {
        Self::with_timeout(func, DEFAULT_COMMAND_TIMEOUT)
    }

    /// As [`Controller::new`] with a command timeout.
    pub fn with_timeout(func: F, command_timeout: Duration) -> Result<Self> {
        let regs = func.bar0();
        if regs.len() < regs::DOORBELL_BASE + 8 {
            return Err(Error::Unsupported(format!(
                "BAR 0 of {} is only {} bytes",
                func.name(),
                regs.len()
            )));
        }
        let cap = Cap(regs.read64(regs::CAP));
        if cap.0 == u64::MAX {
            return Err(Error::Unsupported(format!(
                "{} does not answer register reads",
                func.name()
            )));
        }
        if cap.mpsmin() != 0 {
            return Err(Error::Unsupported(format!(
                "minimum memory page size {} bytes (only 4 KiB pages are supported)",
                4096u64 << cap.mpsmin()
            )));
        }
        if !cap.css_nvm() {
            return Err(Error::Unsupported(
                "the NVM command set is not supported".into(),
            ));
        }
        let ready_timeout = Duration::from_millis(cap.timeout_ms().max(500));
        let depth = ADMIN_DEPTH.min(u16::try_from(cap.mqes()).unwrap_or(u16::MAX));
        let (sq_bytes, cq_bytes) = QueuePair::ring_bytes(depth);
        let mem = func.alloc_dma(sq_bytes + cq_bytes + PAGE_SIZE)?;
        let admin = Admin {
            data_off: sq_bytes + cq_bytes,
            queue: QueuePair::new(0, depth, cap.dstrd(), 0, sq_bytes),
            mem,
        };
        let placeholder = ControllerInfo {
            vendor_id: 0,
            serial: String::new(),
            model: String::new(),
            firmware: String::new(),
            cntlid: 0,
            version: regs.read32(regs::VS),
            mdts_bytes: None,
            namespaces: 0,
            oncs: 0,
            volatile_write_cache: false,
            max_queue_entries: cap.mqes(),
            io_queues: 0,
        };
        let mut inner = Inner {
            func,
            cap,
            ready_timeout,
            command_timeout,
            admin: Mutex::new(admin),
            info: placeholder,
            generation: AtomicU64::new(0),
            qids: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
        };
        inner.enable()?;
        let io_queues = inner.set_queue_count()?;
        let mut info = inner.identify_controller()?;
        info.io_queues = io_queues;
        info.version = inner.info.version;
        info.max_queue_entries = cap.mqes();
        inner.info = info;
        *inner
            .qids
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            vec![false; usize::from(io_queues) + 1];
        Ok(Controller {
            inner: Arc::new(inner),
        })
    }

    /// Identify Controller data and limits.
    pub fn info(&self) -> &ControllerInfo {
        &self.inner.info
    }

    /// Controller capabilities register.
    pub fn cap(&self) -> Cap {
        self.inner.cap
    }

    /// Identifies namespace `nsid`.
    pub fn namespace(&self, nsid: u32) -> Result<Namespace> {
        if nsid == 0 || nsid > self.inner.info.namespaces {
            return Err(Error::NoSuchNamespace(nsid));
        }
        let mut data = [0u8; 4096];
        self.inner.admin_command(
            Sqe::new(admin::IDENTIFY, nsid).with_cdw(10, admin::CNS_NAMESPACE),
            Some(&mut data),
        )?;
        let nsze = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
        if nsze == 0 {
            return Err(Error::NoSuchNamespace(nsid));
        }
        let nlbaf = usize::from(data[25]);
        let flbas = data[26];
        let format = usize::from(flbas & 0xf) | (usize::from((flbas >> 5) & 3) << 4);
        if format > nlbaf {
            return Err(Error::Unsupported(format!(
                "namespace {nsid} uses LBA format {format} of {}",
                nlbaf + 1
            )));
        }
        let lbaf = 128 + 4 * format;
        let ms = u16::from_le_bytes([data[lbaf], data[lbaf + 1]]);
        let lbads = data[lbaf + 2];
        if !(9..=16).contains(&lbads) {
            return Err(Error::Unsupported(format!(
                "namespace {nsid} block size 2^{lbads}"
            )));
        }
        Ok(Namespace {
            nsid,
            blocks: nsze,
            block_size: 1 << lbads,
            metadata_size: ms,
        })
    }

    /// Creates an I/O queue pair of `depth` entries (2..=CAP.MQES) for the calling thread.
    pub fn create_io_queue_pair(&self, depth: u16) -> Result<IoQueuePair<F>> {
        IoQueuePair::create(Arc::clone(&self.inner), depth)
    }

    /// Resets the controller after a fatal status or a timeout: disables it (with a
    /// function-level reset if it does not become idle), re-creates the admin queue and
    /// enables it. Existing I/O queue pairs are lost and answer [`Error::QueueLost`].
    pub fn reset(&self) -> Result<()> {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut qids = self.inner.lock_qids();
            qids.iter_mut().for_each(|q| *q = false);
        }
        if self.inner.disable().is_err() {
            self.inner.func.reset()?;
            self.inner.disable()?;
        }
        self.inner.enable()?;
        self.inner.set_queue_count().map(drop)
    }

    /// Shuts the controller down cleanly (CC.SHN normal, waits for CSTS.SHST complete).
    /// Also done when the last handle (controller or queue pair) is dropped.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.shutdown()
    }
}

impl<F: PciFunction> Inner<F> {
    fn regs(&self) -> &F::Regs {
        self.func.bar0()
    }

    fn lock_admin(&self) -> MutexGuard<'_, Admin> {
        self.admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn lock_qids(&self) -> MutexGuard<'_, Vec<bool>> {
        self.qids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn dstrd(&self) -> u8 {
        self.cap.dstrd()
    }

    pub(crate) fn info(&self) -> &ControllerInfo {
        &self.info
    }

    fn disable(&self) -> Result<()> {
        let regs = self.regs();
        let cc = Cc(regs.read32(regs::CC));
        if cc.en() {
            regs.write32(regs::CC, cc.0 & !Cc::EN);
        }
        wait_csts(regs, self.ready_timeout, "disable", |c| !c.rdy())
    }

    fn enable(&self) -> Result<()> {
        self.disable()?;
        let regs = self.regs();
        let mut admin = self.lock_admin();
        let depth = admin.queue.depth;
        let (sq_bytes, cq_bytes) = QueuePair::ring_bytes(depth);
        admin.mem.zero(0, sq_bytes + cq_bytes)?;
        admin.queue = QueuePair::new(0, depth, self.cap.dstrd(), 0, sq_bytes);
        let iova = admin.mem.iova();
        regs.write32(
            regs::AQA,
            (u32::from(depth - 1) << 16) | u32::from(depth - 1),
        );
        regs.write64(regs::ASQ, iova);
        regs.write64(regs::ACQ, iova + sq_bytes as u64);
        regs.write32(regs::CC, Cc::enabled().0);
        drop(admin);
        self.shut_down.store(false, Ordering::SeqCst);
        wait_csts(regs, self.ready_timeout, "enable", |c| c.rdy())
    }

    /// Runs an admin command; `data` (at most 4 KiB) is the command's data page, copied in
    /// before and out after.
    pub(crate) fn admin_command(&self, sqe: Sqe, data: Option<&mut [u8; 4096]>) -> Result<Cqe> {
        let mut admin = self.lock_admin();
        let Admin {
            mem,
            data_off,
            queue,
        } = &mut *admin;
        let sqe = match &data {
            Some(d) => {
                mem.write_bytes(*data_off, &d[..])?;
                sqe.with_prps(mem.iova() + *data_off as u64, 0)
            }
            None => sqe,
        };
        let cqe = queue.execute(mem, self.regs(), sqe, self.command_timeout)?;
        if let Some(d) = data {
            mem.read_bytes(*data_off, &mut d[..])?;
        }
        Ok(cqe)
    }

    fn set_queue_count(&self) -> Result<u16> {
        let want = u32::from(WANTED_IO_QUEUES - 1);
        let cqe = self.admin_command(
            Sqe::new(admin::SET_FEATURES, 0)
                .with_cdw(10, admin::FEAT_NUM_QUEUES)
                .with_cdw(11, (want << 16) | want),
            None,
        )?;
        let nsqa = (cqe.result() & 0xffff) as u16;
        let ncqa = (cqe.result() >> 16) as u16;
        Ok(nsqa.min(ncqa).saturating_add(1).min(WANTED_IO_QUEUES))
    }

    fn identify_controller(&self) -> Result<ControllerInfo> {
        let mut d = [0u8; 4096];
        self.admin_command(
            Sqe::new(admin::IDENTIFY, 0).with_cdw(10, admin::CNS_CONTROLLER),
            Some(&mut d),
        )?;
        let mdts = d[77];
        Ok(ControllerInfo {
            vendor_id: u16::from_le_bytes([d[0], d[1]]),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            firmware: ascii(&d[64..72]),
            cntlid: u16::from_le_bytes([d[78], d[79]]),
            version: 0,
            mdts_bytes: (mdts != 0).then(|| PAGE_SIZE << mdts.min(20)),
            namespaces: u32::from_le_bytes([d[516], d[517], d[518], d[519]]),
            oncs: u16::from_le_bytes([d[520], d[521]]),
            volatile_write_cache: d[525] & 1 != 0,
            max_queue_entries: 0,
            io_queues: 0,
        })
    }

    fn shutdown(&self) -> Result<()> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let regs = self.regs();
        let cc = Cc(regs.read32(regs::CC));
        if !cc.en() {
            return Ok(());
        }
        regs.write32(regs::CC, (cc.0 & !Cc::SHN_MASK) | Cc::SHN_NORMAL);
        wait_csts(regs, self.ready_timeout, "shutdown", |c| c.shst() == 2)?;
        self.disable()
    }
}

impl<F: PciFunction> Drop for Inner<F> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("NVMe controller {} shutdown failed: {e}", self.func.name());
        }
    }
}
