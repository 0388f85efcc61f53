//! NVMe/TCP target library: PDU codec, connection state machine, Fabrics, admin and I/O
//! command handling against a [`BlockDevice`], a discovery controller, and a small NVMe/TCP
//! host used by tests and benchmarks.
#![forbid(unsafe_code)]

pub mod blockdev;

pub use blockdev::BlockDevice;
