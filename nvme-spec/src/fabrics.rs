//! NVMe over Fabrics commands (Fabrics 3): Connect and Property Get/Set.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::command::SglDescriptor;

/// Fabrics command types (FCTYPE, Fabrics 3.1).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTH_RECEIVE: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// The NQN of the discovery subsystem (Base 7.9).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Connect command (Fabrics 3.3), the 64-byte SQE as the Connect function lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnectCmd {
    /// Opcode (7Fh).
    pub opcode: u8,
    /// Reserved / flags.
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Fabrics command type (01h).
    pub fctype: u8,
    /// Reserved.
    pub rsvd1: [u8; 19],
    /// SGL for the Connect data.
    pub dptr: SglDescriptor,
    /// Record format (0).
    pub recfmt: U16,
    /// Queue ID: 0 for the admin queue.
    pub qid: U16,
    /// Submission queue size, 0's based.
    pub sqsize: U16,
    /// Connect attributes.
    pub cattr: u8,
    /// Reserved.
    pub rsvd2: u8,
    /// Keep-alive timeout in milliseconds (admin queue only).
    pub kato: U32,
    /// Reserved.
    pub rsvd3: [u8; 12],
}
const _: () = assert!(size_of::<ConnectCmd>() == 64);

/// Connect command data (Fabrics 3.3, figure 20): 1024 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ConnectData {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller ID: FFFFh asks for any controller (dynamic model); I/O queues name theirs.
    pub cntlid: U16,
    /// Reserved.
    pub rsvd1: [u8; 238],
    /// Subsystem NQN, NUL-terminated.
    pub subnqn: [u8; 256],
    /// Host NQN, NUL-terminated.
    pub hostnqn: [u8; 256],
    /// Reserved.
    pub rsvd2: [u8; 256],
}
const _: () = assert!(size_of::<ConnectData>() == 1024);

impl Default for ConnectData {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Connect response fields in the CQE's dword 0 (Fabrics 3.3, figure 21).
pub mod connect_status {
    /// Invalid Parameters: the byte offset in the command or data is reported in dword 0.
    pub fn invalid_param_result(in_data: bool, offset: u16) -> u32 {
        (u32::from(in_data) << 16) | u32::from(offset)
    }
}

/// Property Get / Property Set command (Fabrics 3.4, 3.5).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct PropertyCmd {
    /// Opcode (7Fh).
    pub opcode: u8,
    /// Reserved / flags.
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Fabrics command type (00h set, 04h get).
    pub fctype: u8,
    /// Reserved.
    pub rsvd1: [u8; 35],
    /// Attributes: bits 2:0 size (0 = 4 bytes, 1 = 8 bytes).
    pub attrib: u8,
    /// Reserved.
    pub rsvd2: [u8; 3],
    /// Property offset (a controller register offset).
    pub offset: U32,
    /// Value to set (Property Set only).
    pub value: U64,
    /// Reserved.
    pub rsvd3: [u8; 8],
}
const _: () = assert!(size_of::<PropertyCmd>() == 64);

impl Default for PropertyCmd {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl PropertyCmd {
    /// Property size in bytes (4 or 8).
    pub fn size(&self) -> usize {
        if self.attrib & 0x7 == 1 { 8 } else { 4 }
    }
}
