//! NVMe base, NVMe over Fabrics and NVMe/TCP wire structures.
//!
//! Every structure here is a `#[repr(C)]` zerocopy layout with little-endian fields and a
//! compile-time size check. Nothing in this crate performs I/O. Section numbers refer to the
//! NVM Express Base Specification 2.0 ("Base"), the NVMe over Fabrics specification 1.1
//! ("Fabrics") and the NVMe/TCP Transport Specification 1.0 ("TCP").
#![forbid(unsafe_code)]

pub mod auth;
pub mod cmds;
pub mod command;
pub mod event;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod pdu;
pub mod regs;
pub mod resv;
pub mod status;

#[cfg(test)]
mod layout_tests;

pub use zerocopy::little_endian::{U16, U32, U64};
pub use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Copies `s` into a fixed, zero-padded byte field (NQNs).
pub fn put_str(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Copies `s` into a fixed, space-padded ASCII field (serial, model, firmware, TRSVCID).
pub fn put_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a zero- or space-padded string field, stopping at the first NUL.
pub fn get_str(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).unwrap_or("").trim_end()
}
