//! `nvme-pcie` devices: a namespace of an NVMe subsystem reached with the user-space driver.
//! Each Baton controller thread reaches it through its own PCIe controller (controller `i`
//! uses `controllers[i mod n]`) and its own I/O queue pair, with many commands in flight and
//! DMA straight into the thread's buffer pool (see [`bdev::pcie`]).

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bdev::pcie::PcieNamespace;
use bdev::{BlockIo, BufPool};
use ffi::vfio::VfioPci;

use super::Device;

/// A command the device has not completed in this long fails, and its queue is retired (a
/// controller with a fatal status is reset, see [`bdev::pcie`]).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A shared namespace behind several PCIe controllers.
#[derive(Debug)]
pub struct PcieDevice {
    name: String,
    ns: PcieNamespace<VfioPci>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl PcieDevice {
    /// Opens every PCIe controller (VFIO) and brings up the first to read the namespace's
    /// geometry; `depth` entries per I/O queue pair.
    pub fn open(name: &str, bdfs: &[String], nsid: u32, depth: u16) -> io::Result<Self> {
        let devices = bdfs
            .iter()
            .map(|bdf| {
                VfioPci::open(bdf)
                    .map(Arc::new)
                    .map_err(|e| io_err(format!("{bdf}: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let ns = PcieNamespace::new(devices, nsid, depth, COMMAND_TIMEOUT).map_err(|e| {
            io_err(format!(
                "{}: namespace {nsid}: {e}",
                bdfs.first().map_or("", String::as_str)
            ))
        })?;
        Ok(Self {
            name: name.to_owned(),
            ns,
        })
    }
}

impl Device for PcieDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.ns.geometry().size
    }

    fn block_size(&self) -> u32 {
        self.ns.geometry().block_size
    }

    fn open_io(&self, path: usize, pool: &BufPool) -> io::Result<Rc<dyn BlockIo>> {
        let io = self.ns.open(path, pool).map_err(io_err)?;
        Ok(Rc::new(io))
    }

    fn queue_pairs(&self) -> Option<u64> {
        Some(self.ns.queue_pairs())
    }

    fn resets(&self) -> Option<u64> {
        Some(self.ns.resets())
    }

    fn is_down(&self) -> Option<bool> {
        Some(self.ns.is_down())
    }
}
