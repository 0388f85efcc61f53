//! Log pages (Base 5.16): error information, SMART / health, changed namespace list,
//! asymmetric namespace access and the discovery log (Base 5.16.1.23).

use zerocopy::little_endian::{U16, U32, U64, U128};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::command::Sqe;

/// Log page identifiers.
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
    /// Discovery.
    pub const DISCOVERY: u8 = 0x70;
    /// Reservation Notification.
    pub const RESV_NOTIFICATION: u8 = 0x80;
}

/// The fields of a Get Log Page command (Base 5.16, figures 195-198).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log page identifier.
    pub lid: u8,
    /// Log specific field.
    pub lsp: u8,
    /// Retain asynchronous event.
    pub rae: bool,
    /// Bytes requested.
    pub len: u64,
    /// Byte offset into the log page.
    pub offset: u64,
}

impl GetLogPage {
    /// Decodes CDW10-13 of a Get Log Page command.
    pub fn from_sqe(sqe: &Sqe) -> Self {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let numd = u64::from(cdw10 >> 16) | (u64::from(cdw11 & 0xffff) << 16);
        Self {
            lid: (cdw10 & 0xff) as u8,
            lsp: ((cdw10 >> 8) & 0x7f) as u8,
            rae: cdw10 & (1 << 15) != 0,
            len: (numd + 1) * 4,
            offset: u64::from(sqe.cdw12.get()) | (u64::from(sqe.cdw13.get()) << 32),
        }
    }

    /// Encodes the fields into `sqe` (the length must be a non-zero multiple of 4).
    pub fn encode(&self, sqe: &mut Sqe) {
        let numd = (self.len / 4).saturating_sub(1);
        sqe.cdw10.set(
            u32::from(self.lid)
                | (u32::from(self.lsp & 0x7f) << 8)
                | (u32::from(self.rae) << 15)
                | (((numd & 0xffff) as u32) << 16),
        );
        sqe.cdw11.set(((numd >> 16) & 0xffff) as u32);
        sqe.cdw12.set((self.offset & 0xffff_ffff) as u32);
        sqe.cdw13.set((self.offset >> 32) as u32);
    }
}

/// Error information log entry (Base figure 205): 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ErrorLogEntry {
    /// Error count (unique, increasing; 0 means an empty entry).
    pub error_count: U64,
    /// Submission queue ID.
    pub sqid: U16,
    /// Command ID.
    pub cmdid: U16,
    /// Status field (phase tag in bit 0).
    pub status: U16,
    /// Parameter error location.
    pub pel: U16,
    /// LBA.
    pub lba: U64,
    /// Namespace.
    pub nsid: U32,
    /// Vendor specific information available.
    pub vsia: u8,
    /// Transport type (3: TCP).
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command specific information.
    pub csi: U64,
    /// Transport type specific information.
    pub tsi: U16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}
const _: () = assert!(size_of::<ErrorLogEntry>() == 64);

/// SMART / Health Information log page (Base figure 207): 512 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct SmartLog {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature in kelvins.
    pub temperature: [u8; 2],
    /// Available spare, percent.
    pub avail_spare: u8,
    /// Available spare threshold, percent.
    pub spare_thresh: u8,
    /// Percentage used.
    pub percent_used: u8,
    /// Endurance group critical warning summary.
    pub endu_grp_crit_warn: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data units read, in thousands of 512-byte units.
    pub data_units_read: U128,
    /// Data units written, in thousands of 512-byte units.
    pub data_units_written: U128,
    /// Host read commands.
    pub host_reads: U128,
    /// Host write commands.
    pub host_writes: U128,
    /// Controller busy time, minutes.
    pub ctrl_busy_time: U128,
    /// Power cycles.
    pub power_cycles: U128,
    /// Power on hours.
    pub power_on_hours: U128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: U128,
    /// Media and data integrity errors.
    pub media_errors: U128,
    /// Number of error information log entries.
    pub num_err_log_entries: U128,
    /// Warning composite temperature time, minutes.
    pub warning_temp_time: U32,
    /// Critical composite temperature time, minutes.
    pub critical_comp_time: U32,
    /// Temperature sensors 1-8.
    pub temp_sensor: [U16; 8],
    /// Reserved (thermal management and reserved).
    pub rsvd216: [u8; 296],
}
const _: () = assert!(size_of::<SmartLog>() == 512);

impl Default for SmartLog {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Firmware Slot Information log page (Base 5.16.1.4): 512 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct FirmwareSlotLog {
    /// Active firmware info: bits 2:0 the active slot, bits 6:4 the slot for the next reset.
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware revision in slots 1 to 7 (ASCII, space padded; zeroes for an empty slot).
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}
const _: () = assert!(size_of::<FirmwareSlotLog>() == 512);

/// Commands Supported and Effects log page (Base 5.16.1.6): 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct CommandEffectsLog {
    /// Admin command effects, indexed by opcode.
    pub acs: [U32; 256],
    /// I/O command effects, indexed by opcode.
    pub iocs: [U32; 256],
    /// Reserved.
    pub rsvd2048: [u8; 2048],
}
const _: () = assert!(size_of::<CommandEffectsLog>() == 4096);

/// Bits of a Commands Supported and Effects entry (Base 5.16.1.6, figure 211).
pub mod effects {
    /// Command Supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical Block Content Change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace Capability Change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace Inventory Change.
    pub const NIC: u32 = 1 << 3;
    /// Controller Capability Change.
    pub const CCC: u32 = 1 << 4;
}

/// Discovery log page header (Base figure 262): 1024 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log changes.
    pub genctr: U64,
    /// Number of records.
    pub numrec: U64,
    /// Record format (0).
    pub recfmt: U16,
    /// Reserved.
    pub rsvd: [u8; 1006],
}
const _: () = assert!(size_of::<DiscoveryLogHeader>() == 1024);

impl Default for DiscoveryLogHeader {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Discovery log page entry (Base figure 263): 1024 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct DiscoveryLogEntry {
    /// Transport type (3: TCP).
    pub trtype: u8,
    /// Address family (1: IPv4, 2: IPv6).
    pub adrfam: u8,
    /// Subsystem type (2: NVM subsystem, 3: current discovery subsystem).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: U16,
    /// Controller ID (FFFFh: dynamic model).
    pub cntlid: U16,
    /// Admin max SQ size.
    pub asqsz: U16,
    /// Entry flags.
    pub eflags: U16,
    /// Reserved.
    pub rsvd12: [u8; 20],
    /// Transport service identifier (the TCP port, ASCII, space padded).
    pub trsvcid: [u8; 32],
    /// Reserved.
    pub rsvd64: [u8; 192],
    /// Subsystem NQN.
    pub subnqn: [u8; 256],
    /// Transport address (ASCII, space padded).
    pub traddr: [u8; 256],
    /// Transport specific address subtype (TCP: byte 0 is SECTYPE).
    pub tsas: [u8; 256],
}
const _: () = assert!(size_of::<DiscoveryLogEntry>() == 1024);

impl Default for DiscoveryLogEntry {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Discovery entry values.
pub mod disc {
    /// Transport type TCP.
    pub const TRTYPE_TCP: u8 = 3;
    /// Address family IPv4.
    pub const ADRFAM_IPV4: u8 = 1;
    /// Address family IPv6.
    pub const ADRFAM_IPV6: u8 = 2;
    /// Subsystem type: a referral to another discovery subsystem.
    pub const SUBTYPE_REFERRAL: u8 = 1;
    /// Subsystem type: NVM subsystem.
    pub const SUBTYPE_NVME: u8 = 2;
    /// Subsystem type: current discovery subsystem.
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// TREQ: secure channel not required.
    pub const TREQ_NOT_REQUIRED: u8 = 0x02;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_round_trip() {
        let g = GetLogPage {
            lid: lid::DISCOVERY,
            lsp: 0,
            rae: true,
            len: 4096,
            offset: 8192,
        };
        let mut sqe = Sqe::default();
        g.encode(&mut sqe);
        assert_eq!(GetLogPage::from_sqe(&sqe), g);
        // NUMDL/NUMDU split: 0x12345 dwords.
        let big = GetLogPage {
            len: 0x12345 * 4,
            ..g
        };
        big.encode(&mut sqe);
        assert_eq!(sqe.cdw10.get() >> 16, 0x2344);
        assert_eq!(sqe.cdw11.get(), 1);
        assert_eq!(GetLogPage::from_sqe(&sqe).len, 0x12345 * 4);
    }
}

/// Asymmetric Namespace Access log page (Base 5.16.1.13): a header, then one group
/// descriptor per ANA group, each followed by its namespace IDs (`u32` each).
pub mod ana {
    use super::{FromBytes, Immutable, IntoBytes, KnownLayout, U16, U32, U64, Unaligned};

    /// Log specific field bit: Return Groups Only (no namespace lists).
    pub const LSP_RGO: u8 = 1 << 0;

    /// ANA states (Base 8.1.2).
    pub mod state {
        /// ANA Optimized.
        pub const OPTIMIZED: u8 = 0x01;
        /// ANA Non-Optimized.
        pub const NON_OPTIMIZED: u8 = 0x02;
        /// ANA Inaccessible.
        pub const INACCESSIBLE: u8 = 0x03;
        /// ANA Persistent Loss.
        pub const PERSISTENT_LOSS: u8 = 0x04;
        /// ANA Change.
        pub const CHANGE: u8 = 0x0f;
    }

    /// The log's header (Base figure 218): 16 bytes.
    #[repr(C)]
    #[derive(
        Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
    )]
    pub struct Header {
        /// Change count: increments whenever any group descriptor changes.
        pub chgcnt: U64,
        /// Number of group descriptors that follow.
        pub ngrps: U16,
        /// Reserved.
        pub rsvd10: [u8; 6],
    }
    const _: () = assert!(size_of::<Header>() == 16);

    /// An ANA group descriptor (Base figure 219): 32 bytes, then `nnsids` namespace IDs.
    #[repr(C)]
    #[derive(
        Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
    )]
    pub struct GroupDescriptor {
        /// ANA group ID.
        pub grpid: U32,
        /// Number of namespace IDs that follow (0 with RGO).
        pub nnsids: U32,
        /// Change count of this group.
        pub chgcnt: U64,
        /// ANA state in bits 3:0.
        pub state: u8,
        /// Reserved.
        pub rsvd17: [u8; 15],
    }
    const _: () = assert!(size_of::<GroupDescriptor>() == 32);
}
