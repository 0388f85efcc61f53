//! Kernel device interfaces: VFIO, PCI BAR mapping and DMA-able memory.
//!
//! This is the only crate of the workspace that contains device-touching `unsafe` code.
//! Layers: [`sys::VfioSys`] holds every system call (with a double in [`testing`]),
//! [`vfio::VfioPci`] builds a VFIO-owned PCI function on it, [`Mmio`] and [`DmaBuffer`]
//! give safe volatile access to BAR and DMA memory.

pub mod dma;
pub mod error;
pub mod generated;
pub mod mmio;
pub mod sys;
pub mod testing;
pub mod vfio;

pub use dma::{DmaBuffer, HUGEPAGE_SIZE};
pub use error::{Error, Result};
pub use mmio::{Mmio, RegisterIo};
pub use vfio::{PciFunction, VfioPci, check_bdf};
