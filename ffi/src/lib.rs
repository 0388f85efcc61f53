//! Kernel device interfaces: VFIO, PCI BAR mapping, DMA-able memory and the RAM device's
//! shared mapping.
//!
//! This is the only crate of the workspace that contains device-touching `unsafe` code. It
//! exports safe handles: [`Mmio`] for registers and doorbells (volatile accesses, bounds
//! checked), [`DmaRegion`] for memory a device reads and writes (copy in/out, volatile
//! words, its IOVA), and the [`PciDevice`] trait that drivers are written against, with
//! [`vfio::VfioPci`] as the real implementation. No Rust reference ever points into BAR or
//! DMA memory.

pub mod dma;
pub mod generated;
pub mod iomem;
pub mod mmio;
pub mod setup;
pub mod shm;
pub mod uring;
pub mod vfio;

pub use dma::{DmaBacking, DmaRegion, VecBacking};
pub use iomem::{IoChunk, IoSlab};
pub use mmio::Mmio;
pub use shm::{IoVec, IoVecMut, SharedMap, readv, writev};

/// Why a device could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The machine is not prepared (VFIO missing, device not bound, no hugepages ...).
    #[error("{0}")]
    Setup(String),
    /// The device does not look like expected.
    #[error("{0}")]
    Device(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Sys { what, source }
    }
}

/// A PCI function a driver can program: its BAR0 registers and DMA memory it can see.
pub trait PciDevice {
    /// BAR0 (for NVMe: the controller registers and doorbells).
    fn bar0(&self) -> &dyn Mmio;
    /// Allocates `len` bytes of zeroed DMA memory, 4 KiB aligned, mapped for the device.
    fn alloc_dma(&self, len: usize) -> Result<DmaRegion, Error>;
    /// Resets the function (FLR or equivalent).
    fn reset(&self) -> Result<(), Error>;
    /// Makes `slab` reachable by the device and returns its device address (IOVA). The
    /// device keeps the slab alive and mapped until the device itself is dropped, so a
    /// late DMA can never reach memory the process has given back.
    fn map_slab(&self, slab: &IoSlab) -> Result<u64, Error>;
}
