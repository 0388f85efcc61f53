//! NVMe base, NVMe over Fabrics and NVMe/TCP wire structures.
//!
//! Every structure here is a `#[repr(C)]` zerocopy layout with little-endian fields and a
//! compile-time size check. Nothing in this crate performs I/O.
#![forbid(unsafe_code)]
