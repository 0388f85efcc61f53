//! User-space NVMe PCIe driver: controller bring-up, admin and I/O queue pairs, polled
//! completions.
//!
//! ```no_run
//! # fn main() -> Result<(), nvme_driver::Error> {
//! let ctrl = nvme_driver::Controller::open("0000:00:04.0")?;
//! let ns = ctrl.namespace(1)?;
//! let mut qp = ctrl.create_io_queue_pair(64)?;
//! let mut block = vec![0u8; ns.block_size as usize];
//! qp.read(&ns, 0, &mut block)?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod cmd;
pub mod controller;
pub mod error;
pub mod io;
pub mod prp;
mod queue;
pub mod regs;
pub mod setup;
#[cfg(test)]
mod sim;

pub use cmd::Status;
pub use controller::{Controller, ControllerInfo, Namespace};
pub use error::{Error, Result};
pub use io::IoQueuePair;
