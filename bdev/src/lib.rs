//! The block device layer (like SPDK's bdev): one asynchronous block-I/O interface for every
//! kind of backplane device, and the engines behind it.
//!
//! A controller thread opens a [`BlockIo`] handle per device. [`BlockIo::submit`] returns at
//! once; the engine completes the request later, on the same thread, by handing a
//! [`Completion`] to the request's [`Sink`] (usually a [`CompletionQueue`] its caller waits
//! on). Many requests are in flight per handle and they complete in any order. Data lives in
//! [`IoBuf`]s from the thread's [`BufPool`]: the caller lends a buffer to the request and gets
//! it back in the completion, so a read's bytes go from the device to a socket, and a
//! write's from a socket to the device, without a copy in between (the nvme-pcie engine maps
//! the pool for its controller's DMA; O_DIRECT files read into it).
//!
//! Engines: [`ram`] (completes at once), [`file`] (io_uring, or a small thread pool where the
//! kernel has no io_uring), [`pcie`] (queue pairs of the user-space NVMe driver at real
//! queue depth), [`stripe`] (RAID0 over member handles, pieces in flight together),
//! [`throttle`] (a token bucket that delays only the reads it limits). [`span`] turns any
//! byte range into the whole blocks a device reads.

mod buf;
mod cq;
mod fdops;
mod io;
pub mod slots;

pub mod blocking;
pub mod file;
pub mod pcie;
pub mod ram;
pub mod span;
pub mod stripe;
pub mod throttle;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use buf::{BufPool, IoBuf, PoolClass};
pub use cq::{CompletionQueue, flush_all};
pub use io::{BlockIo, Completion, Extent, Geometry, IoError, Op, Request, Sink};
