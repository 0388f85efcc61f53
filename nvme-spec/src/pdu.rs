//! NVMe/TCP PDU headers (TCP 3.6).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::command::{Cqe, Sqe};

/// PDU types (TCP 3.6.1).
pub mod pdu_type {
    /// Initialize Connection Request.
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller termination request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to host termination request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// PDU header flags (TCP 3.6.2).
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 1 << 1;
    /// Last data PDU of the command (H2CData, C2HData).
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData only: the command succeeded and no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq/ICResp DGST field bits.
pub mod dgst {
    /// Header digest enabled.
    pub const HDGST_ENABLE: u8 = 1 << 0;
    /// Data digest enabled.
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// Fatal error status values carried by a TermReq (TCP 3.6.2.4).
pub mod fes {
    /// Invalid PDU header field (FEI is the byte offset).
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Size of a header or data digest.
pub const DIGEST_LEN: usize = 4;
/// Largest header the target echoes back in a TermReq (TCP 3.6.2.4).
pub const TERM_REQ_MAX_ECHO: usize = 128;

/// Common header of every PDU (TCP 3.6.2).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CommonHeader {
    /// PDU type.
    pub pdu_type: u8,
    /// Flags.
    pub flags: u8,
    /// PDU header length.
    pub hlen: u8,
    /// PDU data offset (0 if there is no data).
    pub pdo: u8,
    /// Total PDU length including header, digests, padding and data.
    pub plen: U32,
}
const _: () = assert!(size_of::<CommonHeader>() == 8);

impl CommonHeader {
    /// A header of the given type with the given lengths.
    pub fn new(pdu_type: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Self {
        Self {
            pdu_type,
            flags,
            hlen,
            pdo,
            plen: U32::new(plen),
        }
    }
}

/// ICReq (TCP 3.6.2.2).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IcReq {
    /// Common header (type 00h, hlen 128, plen 128).
    pub ch: CommonHeader,
    /// PDU format version (0).
    pub pfv: U16,
    /// Host PDU data alignment, in dwords, 0's based.
    pub hpda: u8,
    /// Digests the host asks for ([`dgst`]).
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcReq>() == 128);

/// ICResp (TCP 3.6.2.3).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IcResp {
    /// Common header (type 01h, hlen 128, plen 128).
    pub ch: CommonHeader,
    /// PDU format version (0).
    pub pfv: U16,
    /// Controller PDU data alignment (0: no padding).
    pub cpda: u8,
    /// Digests enabled on this connection.
    pub dgst: u8,
    /// Largest H2CData payload the controller accepts.
    pub maxh2cdata: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcResp>() == 128);

/// Length of ICReq and ICResp PDUs.
pub const IC_LEN: usize = 128;

/// H2C/C2H TermReq header (TCP 3.6.2.4, 3.6.2.5); the offending header follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct TermReq {
    /// Common header (hlen 24).
    pub ch: CommonHeader,
    /// Fatal error status ([`fes`]).
    pub fes: U16,
    /// Fatal error information (e.g. the offending field's byte offset).
    pub fei: U32,
    /// Reserved.
    pub rsvd: [u8; 10],
}
const _: () = assert!(size_of::<TermReq>() == 24);

/// CapsuleCmd header (TCP 3.6.2.6): common header and the 64-byte SQE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CapsuleCmd {
    /// Common header (type 04h, hlen 72).
    pub ch: CommonHeader,
    /// The command.
    pub sqe: Sqe,
}
const _: () = assert!(size_of::<CapsuleCmd>() == 72);

/// CapsuleResp (TCP 3.6.2.7): common header and the 16-byte CQE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CapsuleResp {
    /// Common header (type 05h, hlen 24).
    pub ch: CommonHeader,
    /// The completion.
    pub cqe: Cqe,
}
const _: () = assert!(size_of::<CapsuleResp>() == 24);

/// H2CData and C2HData header (TCP 3.6.2.8, 3.6.2.9).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DataHeader {
    /// Common header (type 06h or 07h, hlen 24).
    pub ch: CommonHeader,
    /// Command capsule CID.
    pub cccid: U16,
    /// Transfer tag from the R2T (H2CData only).
    pub ttag: U16,
    /// Offset of this PDU's data within the command's data.
    pub datao: U32,
    /// Length of this PDU's data.
    pub datal: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<DataHeader>() == 24);

/// R2T (TCP 3.6.2.10).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct R2t {
    /// Common header (type 09h, hlen 24).
    pub ch: CommonHeader,
    /// Command capsule CID.
    pub cccid: U16,
    /// Transfer tag the host echoes in its H2CData PDUs.
    pub ttag: U16,
    /// Offset of the requested data.
    pub r2to: U32,
    /// Length of the requested data.
    pub r2tl: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(size_of::<R2t>() == 24);

/// Header length of CapsuleResp, H2CData, C2HData, R2T and TermReq PDUs.
pub const SHORT_HLEN: u8 = 24;
/// Header length of a CapsuleCmd.
pub const CAPSULE_CMD_HLEN: u8 = 72;

/// The header length a PDU type must carry, or `None` for an unknown type.
pub fn expected_hlen(pdu_type: u8) -> Option<u8> {
    match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => Some(128),
        pdu_type::CAPSULE_CMD => Some(CAPSULE_CMD_HLEN),
        pdu_type::H2C_TERM_REQ
        | pdu_type::C2H_TERM_REQ
        | pdu_type::CAPSULE_RESP
        | pdu_type::H2C_DATA
        | pdu_type::C2H_DATA
        | pdu_type::R2T => Some(SHORT_HLEN),
        _ => None,
    }
}
