//! Kernel device interfaces: VFIO, PCI BAR mapping and DMA-able memory.
//!
//! This is the only crate of the workspace that contains device-touching `unsafe` code.
