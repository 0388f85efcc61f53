//! A user-space, polled NVMe PCIe driver on top of [`ffi::PciDevice`] (VFIO in production,
//! a simulated controller in tests): controller bring-up, admin queue, Identify, I/O queue
//! pairs owned by one thread each, PRP lists, and Read/Write/Flush/Write Zeroes/Dataset
//! Management with typed errors carrying the NVMe status. No interrupts and no locks on the
//! submit/complete path.

mod controller;
mod io_queue;
mod prp;
mod queue;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use controller::{Controller, IoQueuePair, NamespaceInfo};
pub use io_queue::{IoCommand, IoQueue, SubmitError};

/// Memory page size the driver programs (CC.MPS = 0).
pub const PAGE: usize = 4096;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The device layer failed.
    #[error(transparent)]
    Device(#[from] ffi::Error),
    /// A command completed with an error status.
    #[error("NVMe status {status:#x} (SCT {sct}, SC {sc:#x}) for opcode {opcode:#x}")]
    Status {
        /// Status field.
        status: u16,
        /// Status code type.
        sct: u8,
        /// Status code.
        sc: u8,
        /// The command's opcode.
        opcode: u8,
    },
    /// The controller did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The controller reported a fatal status (CSTS.CFS).
    #[error("controller fatal status")]
    Fatal,
    /// A request the driver refuses (alignment, size, range).
    #[error("{0}")]
    Invalid(String),
    /// A command on this queue timed out earlier; its completion may still arrive, so the
    /// queue is not used again (reset the controller and create a new queue pair).
    #[error("queue {0} is unusable after a timed out command")]
    QueueBroken(u16),
}

impl DriverError {
    fn status(status: u16, opcode: u8) -> Self {
        Self::Status {
            status,
            sct: nvme_spec::status::sct(status),
            sc: nvme_spec::status::sc(status),
            opcode,
        }
    }
}
