//! Submission and completion queue entries (Base 4.2, 4.6) and command opcodes.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Admin command opcodes (Base 5).
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics command (the function is in `fctype`).
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set I/O opcodes (NVM Command Set 3).
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0c;
    /// Reservation Register.
    pub const RESV_REGISTER: u8 = 0x0d;
    /// Reservation Report.
    pub const RESV_REPORT: u8 = 0x0e;
    /// Reservation Acquire.
    pub const RESV_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESV_RELEASE: u8 = 0x15;
}

/// Feature identifiers (Base 5.27.1).
pub mod feature {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Error Recovery (time-limited error recovery, DULBE).
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of Queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const IRQ_COALESCE: u8 = 0x08;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT: u8 = 0x0b;
    /// Keep Alive Timer.
    pub const KATO: u8 = 0x0f;
    /// Host Identifier (the 128-bit one from Connect on fabrics).
    pub const HOST_ID: u8 = 0x81;
    /// Reservation Notification Mask (namespace specific).
    pub const RESV_MASK: u8 = 0x82;
    /// Reservation Persistence (namespace specific).
    pub const RESV_PERSIST: u8 = 0x83;
}

/// Identify CNS values (Base 5.17).
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESC_LIST: u8 = 0x03;
    /// Controllers in the NVM subsystem that attach the namespace.
    pub const NS_CTRL_LIST: u8 = 0x12;
    /// Controllers in the NVM subsystem.
    pub const CTRL_LIST: u8 = 0x13;
}

/// SGL descriptor (Base 4.3.2), as carried in DPTR by NVMe/TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SglDescriptor {
    /// Address or offset (in-capsule data: offset into the capsule's data).
    pub addr: U64,
    /// Length in bytes.
    pub length: U32,
    /// Reserved.
    pub rsvd: [u8; 3],
    /// Descriptor type (bits 7:4) and subtype (bits 3:0).
    pub kind: u8,
}
const _: () = assert!(size_of::<SglDescriptor>() == 16);

impl SglDescriptor {
    /// Data Block descriptor, Offset subtype: in-capsule data (TCP 3.3.2).
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype: data moved by R2T/C2H (TCP 3.3.2).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5a;
}

/// Submission queue entry (Base 4.2). Fabrics commands overlay their fields on the same
/// 64 bytes; see [`crate::fabrics`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Sqe {
    /// Opcode.
    pub opcode: u8,
    /// Fused operation (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Namespace identifier (for Fabrics commands, byte 4 is FCTYPE).
    pub nsid: U32,
    /// Command dword 2.
    pub cdw2: U32,
    /// Command dword 3.
    pub cdw3: U32,
    /// Metadata pointer.
    pub mptr: U64,
    /// Data pointer (an SGL descriptor on fabrics).
    pub dptr: SglDescriptor,
    /// Command dword 10.
    pub cdw10: U32,
    /// Command dword 11.
    pub cdw11: U32,
    /// Command dword 12.
    pub cdw12: U32,
    /// Command dword 13.
    pub cdw13: U32,
    /// Command dword 14.
    pub cdw14: U32,
    /// Command dword 15.
    pub cdw15: U32,
}
const _: () = assert!(size_of::<Sqe>() == 64);

impl Sqe {
    /// Starting LBA of a Read, Write or Write Zeroes command (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }

    /// Number of logical blocks, converted from the 0's based field in CDW12 bits 15:0.
    pub fn nlb(&self) -> u32 {
        (self.cdw12.get() & 0xffff) + 1
    }

    /// Sets SLBA and the 0's based NLB field.
    pub fn set_lba_range(&mut self, slba: u64, nlb: u32) {
        self.cdw10.set((slba & 0xffff_ffff) as u32);
        self.cdw11.set((slba >> 32) as u32);
        let cdw12 = self.cdw12.get() & !0xffff;
        self.cdw12.set(cdw12 | (nlb.saturating_sub(1) & 0xffff));
    }
}

/// Completion queue entry (Base 4.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Cqe {
    /// Command specific result, dword 0.
    pub result: U32,
    /// Command specific result, dword 1.
    pub result_hi: U32,
    /// Submission queue head pointer.
    pub sqhd: U16,
    /// Submission queue identifier.
    pub sqid: U16,
    /// Command identifier.
    pub cid: U16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: U16,
}
const _: () = assert!(size_of::<Cqe>() == 16);

impl Cqe {
    /// The 15-bit status field (SC in bits 7:0, SCT in 10:8, CRD, More, DNR).
    pub fn status_field(&self) -> u16 {
        self.status.get() >> 1
    }

    /// Sets the status field, leaving the phase tag clear.
    pub fn set_status_field(&mut self, status: u16) {
        self.status.set(status << 1);
    }

    /// The 64-bit result (dwords 0 and 1), as Property Get returns it.
    pub fn result64(&self) -> u64 {
        u64::from(self.result.get()) | (u64::from(self.result_hi.get()) << 32)
    }
}

/// One Dataset Management range (NVM Command Set 3.2.3.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: U32,
    /// Length in logical blocks.
    pub nlb: U32,
    /// Starting LBA.
    pub slba: U64,
}
const _: () = assert!(size_of::<DsmRange>() == 16);

/// DSM attribute (CDW11): deallocate.
pub const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;
