//! Identify data structures (Base 5.17.2, NVM Command Set 4.1.5).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Identify Controller data structure (Base figure 275): 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: U16,
    /// PCI subsystem vendor ID.
    pub ssvid: U16,
    /// Serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI identifier.
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities (see [`cmic`]).
    pub cmic: u8,
    /// Maximum data transfer size, a power of two in units of the minimum page size.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version.
    pub ver: U32,
    /// RTD3 resume latency.
    pub rtd3r: U32,
    /// RTD3 entry latency.
    pub rtd3e: U32,
    /// Optional asynchronous events supported (see [`oaes`]).
    pub oaes: U32,
    /// Controller attributes.
    pub ctratt: U32,
    /// Read recovery levels supported.
    pub rrls: U16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller type: 1 I/O, 2 discovery, 3 administrative.
    pub cntrltype: u8,
    /// FRU globally unique identifier.
    pub fguid: [u8; 16],
    /// Command retry delay times.
    pub crdt: [U16; 3],
    /// Reserved (and NVMe-MI fields).
    pub rsvd134: [u8; 122],
    /// Optional admin command support.
    pub oacs: U16,
    /// Abort command limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries, 0's based.
    pub elpe: u8,
    /// Number of power states supported, 0's based.
    pub npss: u8,
    /// Admin vendor specific command configuration.
    pub avscc: u8,
    /// Autonomous power state transition attributes.
    pub apsta: u8,
    /// Warning composite temperature threshold.
    pub wctemp: U16,
    /// Critical composite temperature threshold.
    pub cctemp: U16,
    /// Reserved (MTFA .. MEGCAP).
    pub rsvd270: [u8; 50],
    /// Keep alive support, in 100 ms units.
    pub kas: U16,
    /// Reserved (HCTMA, MNTMT, MXTMT, SANICAP, HMMINDS, HMMAXD, NSETIDMAX, ENDGIDMAX).
    pub rsvd322: [u8; 20],
    /// ANA transition time: seconds a group may stay in the change state.
    pub anatt: u8,
    /// ANA capabilities (see [`anacap`]).
    pub anacap: u8,
    /// Largest ANA group ID.
    pub anagrpmax: U32,
    /// Number of ANA group IDs supported.
    pub nanagrpid: U32,
    /// Persistent event log size, in 64 KiB units.
    pub pels: U32,
    /// Reserved (domain identifier, MEGCAP and reserved).
    pub rsvd356: [u8; 156],
    /// Submission queue entry size (max in bits 7:4, required in 3:0), log2.
    pub sqes: u8,
    /// Completion queue entry size (max in bits 7:4, required in 3:0), log2.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: U16,
    /// Number of namespaces (largest valid NSID).
    pub nn: U32,
    /// Optional NVM command support (bit 2: DSM, bit 3: Write Zeroes).
    pub oncs: U16,
    /// Fused operation support.
    pub fuses: U16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache (bit 0 present).
    pub vwc: u8,
    /// Atomic write unit normal.
    pub awun: U16,
    /// Atomic write unit power fail.
    pub awupf: U16,
    /// I/O command set vendor specific command configuration.
    pub icsvscc: u8,
    /// Namespace write protection capabilities.
    pub nwpc: u8,
    /// Atomic compare & write unit.
    pub acwu: U16,
    /// Optional copy formats supported.
    pub ocfs: U16,
    /// SGL support.
    pub sgls: U32,
    /// Maximum number of allowed namespaces.
    pub mnan: U32,
    /// Reserved.
    pub rsvd544: [u8; 224],
    /// NVM subsystem NQN.
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// I/O queue command capsule supported size, in 16-byte units.
    pub ioccsz: U32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: U32,
    /// In-capsule data offset, in 16-byte units.
    pub icdoff: U16,
    /// Fabrics controller attributes.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors.
    pub msdbd: u8,
    /// Optional fabric commands supported.
    pub ofcs: U16,
    /// Reserved.
    pub rsvd1806: [u8; 242],
    /// Power state descriptors (32 of 32 bytes).
    pub psd: [[u8; 32]; 32],
    /// Vendor specific.
    pub vs: [u8; 1024],
}
const _: () = assert!(size_of::<IdentifyController>() == 4096);

impl Default for IdentifyController {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Controller type reported in [`IdentifyController::cntrltype`].
pub mod cntrltype {
    /// I/O controller.
    pub const IO: u8 = 1;
    /// Discovery controller.
    pub const DISCOVERY: u8 = 2;
}

/// LBA format descriptor (NVM Command Set figure 98).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct LbaFormat {
    /// Metadata size.
    pub ms: U16,
    /// LBA data size, log2.
    pub lbads: u8,
    /// Relative performance.
    pub rp: u8,
}
const _: () = assert!(size_of::<LbaFormat>() == 4);

/// Identify Namespace data structure for the NVM command set (NVM CS figure 97): 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: U64,
    /// Namespace capacity in logical blocks.
    pub ncap: U64,
    /// Namespace utilization in logical blocks.
    pub nuse: U64,
    /// Namespace features (bit 0 thin provisioning, bit 4 optimal performance fields).
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based.
    pub nlbaf: u8,
    /// Formatted LBA size (index into `lbaf`).
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Namespace multi-path I/O and sharing capabilities (bit 0: may be shared).
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// Deallocate logical block features (bits 2:0 = 001b: deallocated blocks read as zeroes).
    pub dlfeat: u8,
    /// Namespace atomic write unit normal.
    pub nawun: U16,
    /// Namespace atomic write unit power fail.
    pub nawupf: U16,
    /// Namespace atomic compare & write unit.
    pub nacwu: U16,
    /// Namespace atomic boundary size normal.
    pub nabsn: U16,
    /// Namespace atomic boundary offset.
    pub nabo: U16,
    /// Namespace atomic boundary size power fail.
    pub nabspf: U16,
    /// Namespace optimal I/O boundary in logical blocks.
    pub noiob: U16,
    /// NVM capacity in bytes (128-bit).
    pub nvmcap: [u8; 16],
    /// Namespace preferred write granularity, 0's based.
    pub npwg: U16,
    /// Namespace preferred write alignment, 0's based.
    pub npwa: U16,
    /// Namespace preferred deallocate granularity, 0's based.
    pub npdg: U16,
    /// Namespace preferred deallocate alignment, 0's based.
    pub npda: U16,
    /// Namespace optimal write size, 0's based.
    pub nows: U16,
    /// Reserved (MSSRL .. NULBAF and reserved).
    pub rsvd74: [u8; 18],
    /// ANA group identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace attributes.
    pub nsattr: u8,
    /// NVM set identifier.
    pub nvmsetid: U16,
    /// Endurance group identifier.
    pub endgid: U16,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA formats.
    pub lbaf: [LbaFormat; 64],
    /// Reserved and vendor specific.
    pub rsvd384: [u8; 3712],
}
const _: () = assert!(size_of::<IdentifyNamespace>() == 4096);

impl Default for IdentifyNamespace {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Namespace identification descriptor header (Base figure 280).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct NsDescriptorHeader {
    /// Namespace identifier type ([`nidt`]).
    pub nidt: u8,
    /// Namespace identifier length.
    pub nidl: u8,
    /// Reserved.
    pub rsvd: U16,
}
const _: () = assert!(size_of::<NsDescriptorHeader>() == 4);

/// Namespace identifier types (Base figure 281).
pub mod nidt {
    /// IEEE EUI-64 (8 bytes).
    pub const EUI64: u8 = 1;
    /// NGUID (16 bytes).
    pub const NGUID: u8 = 2;
    /// UUID (16 bytes).
    pub const UUID: u8 = 3;
    /// Command set identifier (1 byte).
    pub const CSI: u8 = 4;
}

/// Writes a namespace identification descriptor list (NGUID, UUID, CSI 0) into `out`
/// (4096 bytes, zeroed first).
pub fn write_ns_descriptors(out: &mut [u8], nguid: &[u8; 16], uuid: &[u8; 16]) {
    out.fill(0);
    let mut at = 0;
    let mut put = |nidt: u8, id: &[u8]| {
        let h = NsDescriptorHeader {
            nidt,
            nidl: u8::try_from(id.len()).unwrap_or(u8::MAX),
            rsvd: U16::ZERO,
        };
        out[at..at + 4].copy_from_slice(h.as_bytes());
        out[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    put(nidt::NGUID, nguid);
    put(nidt::UUID, uuid);
    put(nidt::CSI, &[0]);
}

/// CMIC bits of Identify Controller (Base figure 275).
pub mod cmic {
    /// The NVM subsystem has more than one port.
    pub const MULTI_PORT: u8 = 1 << 0;
    /// The NVM subsystem may have more than one controller.
    pub const MULTI_CTRL: u8 = 1 << 1;
    /// Asymmetric Namespace Access Reporting.
    pub const ANA: u8 = 1 << 3;
}

/// OAES bits of Identify Controller (Base figure 275): the notices the controller sends.
pub mod oaes {
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Asymmetric Namespace Access Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery Log Page Change Notices (discovery controllers).
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// ANACAP bits of Identify Controller (Base figure 275).
pub mod anacap {
    /// Reports the ANA Optimized state.
    pub const OPTIMIZED: u8 = 1 << 0;
    /// Reports the ANA Non-Optimized state.
    pub const NON_OPTIMIZED: u8 = 1 << 1;
    /// Reports the ANA Inaccessible state.
    pub const INACCESSIBLE: u8 = 1 << 2;
    /// Reports the ANA Persistent Loss state.
    pub const PERSISTENT_LOSS: u8 = 1 << 3;
    /// Reports the ANA Change state.
    pub const CHANGE: u8 = 1 << 4;
    /// A namespace's ANAGRPID does not change while it is attached.
    pub const GRPID_STATIC: u8 = 1 << 6;
}
