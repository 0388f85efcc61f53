//! `nvme-pcie` devices: a namespace of an NVMe subsystem reached with the user-space driver.
//! Each Baton controller thread reaches it through its own PCIe controller (`controllers[i
//! mod n]`) and its own I/O queue pair, so no lock is taken per I/O.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ffi::vfio::VfioPci;
use nvme_driver::{Controller, DriverError, IoQueuePair, NamespaceInfo};

use super::{Device, DeviceHandle};

type Ctrl = Controller<VfioPci>;

/// A shared namespace behind several PCIe controllers.
#[derive(Debug)]
pub struct PcieDevice {
    name: String,
    nsid: u32,
    depth: u16,
    ns: NamespaceInfo,
    bdfs: Vec<String>,
    controllers: Vec<Mutex<Option<Ctrl>>>,
    next: AtomicUsize,
    queue_pairs: std::sync::atomic::AtomicU64,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn open_ctrl(bdf: &str) -> io::Result<Ctrl> {
    let dev = Arc::new(VfioPci::open(bdf).map_err(|e| io_err(format!("{bdf}: {e}")))?);
    Controller::new(dev).map_err(|e| io_err(format!("{bdf}: {e}")))
}

impl PcieDevice {
    /// Brings up the first controller and reads the namespace geometry.
    pub fn open(name: &str, bdfs: &[String], nsid: u32, depth: u16) -> io::Result<Self> {
        let mut first = open_ctrl(&bdfs[0])?;
        let ns = first
            .namespace(nsid)
            .map_err(|e| io_err(format!("{}: namespace {nsid}: {e}", bdfs[0])))?;
        let controllers: Vec<Mutex<Option<Ctrl>>> = bdfs.iter().map(|_| Mutex::new(None)).collect();
        *controllers[0]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(first);
        Ok(Self {
            name: name.to_owned(),
            nsid,
            depth,
            ns,
            bdfs: bdfs.to_vec(),
            controllers,
            next: AtomicUsize::new(0),
            queue_pairs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The PCIe controller the calling thread uses: Baton controller i takes `i mod n`.
    fn pick(&self) -> usize {
        let n = self.controllers.len();
        std::thread::current()
            .name()
            .and_then(|t| t.strip_prefix("baton-ctrl-"))
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed))
            % n
    }
}

impl Device for PcieDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.ns.blocks * u64::from(self.ns.block_size)
    }

    fn open_handle(&self) -> io::Result<Box<dyn DeviceHandle>> {
        let i = self.pick();
        let mut slot = self.controllers[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(open_ctrl(&self.bdfs[i])?);
        }
        let Some(ctrl) = slot.as_mut() else {
            return Err(io_err("controller vanished"));
        };
        let ns = ctrl.namespace(self.nsid).map_err(io_err)?;
        let qp = ctrl.create_io_queue_pair(self.depth).map_err(io_err)?;
        let max = ctrl.max_transfer();
        self.queue_pairs.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PcieHandle {
            qp: RefCell::new(qp),
            ns,
            max,
        }))
    }

    fn queue_pairs(&self) -> Option<u64> {
        Some(self.queue_pairs.load(Ordering::Relaxed))
    }
}

/// One thread's queue pair on one PCIe controller.
struct PcieHandle {
    qp: RefCell<IoQueuePair<VfioPci>>,
    ns: NamespaceInfo,
    max: usize,
}

impl PcieHandle {
    fn blocks(&self, offset: u64, len: usize) -> io::Result<u64> {
        let bs = u64::from(self.ns.block_size);
        if offset % bs != 0 || len as u64 % bs != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "nvme-pcie I/O must be whole blocks",
            ));
        }
        Ok(offset / bs)
    }
}

fn drv(e: DriverError) -> io::Error {
    io_err(e)
}

impl DeviceHandle for PcieHandle {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let slba = self.blocks(offset, buf.len())?;
        let per = self.max / self.ns.block_size as usize;
        for (i, chunk) in buf.chunks_mut(self.max).enumerate() {
            self.qp
                .borrow_mut()
                .read(&self.ns, slba + (i * per) as u64, chunk)
                .map_err(drv)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let slba = self.blocks(offset, buf.len())?;
        let per = self.max / self.ns.block_size as usize;
        for (i, chunk) in buf.chunks(self.max).enumerate() {
            self.qp
                .borrow_mut()
                .write(&self.ns, slba + (i * per) as u64, chunk)
                .map_err(drv)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.qp.borrow_mut().flush(&self.ns).map_err(drv)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let slba = self.blocks(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        let mut left = len / u64::from(self.ns.block_size);
        let mut at = slba;
        while left > 0 {
            let n = left.min(65536);
            self.qp
                .borrow_mut()
                .write_zeroes(&self.ns, at, u32::try_from(n).unwrap_or(65536))
                .map_err(drv)?;
            at += n;
            left -= n;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let slba = self.blocks(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        let nlb = u32::try_from(len / u64::from(self.ns.block_size)).unwrap_or(u32::MAX);
        self.qp
            .borrow_mut()
            .deallocate(&self.ns, &[(slba, nlb)])
            .map_err(drv)
    }
}
