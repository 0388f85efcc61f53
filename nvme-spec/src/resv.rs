//! Reservations (Base 8.19, NVM Command Set 3.2.4-3.2.7): the command fields, their data,
//! the Reservation Status data structures and the Reservation Notification log page.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Reservation types (NVM Command Set figure 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResvType {
    /// Write Exclusive.
    WriteExclusive,
    /// Exclusive Access.
    ExclusiveAccess,
    /// Write Exclusive - Registrants Only.
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access - Registrants Only.
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive - All Registrants.
    WriteExclusiveAllRegistrants,
    /// Exclusive Access - All Registrants.
    ExclusiveAccessAllRegistrants,
}

impl ResvType {
    /// The type for an RTYPE value (1 to 6).
    pub fn from_rtype(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::WriteExclusive,
            2 => Self::ExclusiveAccess,
            3 => Self::WriteExclusiveRegistrantsOnly,
            4 => Self::ExclusiveAccessRegistrantsOnly,
            5 => Self::WriteExclusiveAllRegistrants,
            6 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The RTYPE value.
    pub fn rtype(self) -> u8 {
        match self {
            Self::WriteExclusive => 1,
            Self::ExclusiveAccess => 2,
            Self::WriteExclusiveRegistrantsOnly => 3,
            Self::ExclusiveAccessRegistrantsOnly => 4,
            Self::WriteExclusiveAllRegistrants => 5,
            Self::ExclusiveAccessAllRegistrants => 6,
        }
    }

    /// Whether every registrant holds the reservation (the All Registrants types).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }

    /// Whether registrants that do not hold it may still write (and, for the exclusive
    /// access kinds, read): the Registrants Only and All Registrants types.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, Self::WriteExclusive | Self::ExclusiveAccess)
    }

    /// Whether reads are refused to those without access (the Exclusive Access kinds).
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            Self::ExclusiveAccess
                | Self::ExclusiveAccessRegistrantsOnly
                | Self::ExclusiveAccessAllRegistrants
        )
    }
}

/// Reservation Register action (RREGA, NVM Command Set figure 58).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterAction {
    /// Register the host with NRKEY.
    Register,
    /// Unregister the host.
    Unregister,
    /// Replace the host's key with NRKEY.
    Replace,
}

/// Change Persist Through Power Loss state (CPTPL, NVM Command Set figure 58).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cptpl {
    /// No change.
    NoChange,
    /// Reservations are released and registrants cleared on a power loss.
    Clear,
    /// Reservations and registrants persist across a power loss.
    Persist,
}

/// Reservation Register (NVM Command Set 3.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegister {
    /// Action.
    pub action: RegisterAction,
    /// Ignore Existing Key (CDW10 bit 3).
    pub iekey: bool,
    /// Change Persist Through Power Loss state (CDW10 bits 31:30).
    pub cptpl: Cptpl,
}

/// Reservation Acquire action (RACQA, NVM Command Set figure 54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireAction {
    /// Acquire the reservation.
    Acquire,
    /// Preempt the registrants (and holder) with key PRKEY.
    Preempt,
    /// Preempt, and abort the preempted hosts' commands.
    PreemptAbort,
}

/// Reservation Acquire (NVM Command Set 3.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvAcquire {
    /// Action.
    pub action: AcquireAction,
    /// Ignore Existing Key (CDW10 bit 3).
    pub iekey: bool,
    /// Reservation type (CDW10 bits 15:8); `None` for a value that is no type.
    pub rtype: Option<ResvType>,
}

/// Reservation Release action (RRELA, NVM Command Set figure 62).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseAction {
    /// Release the reservation.
    Release,
    /// Clear the reservation and every registrant.
    Clear,
}

/// Reservation Release (NVM Command Set 3.2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRelease {
    /// Action.
    pub action: ReleaseAction,
    /// Ignore Existing Key (CDW10 bit 3).
    pub iekey: bool,
    /// Reservation type (CDW10 bits 15:8, the raw value: it must match the reservation's).
    pub rtype: u8,
}

/// Reservation Report (NVM Command Set 3.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvReport {
    /// Bytes the host asked for (CDW10, 0's based dwords).
    pub len: u64,
    /// Extended Data Structure: 128-bit host identifiers (CDW11 bit 0).
    pub eds: bool,
}

/// Reservation Register data (NVM Command Set figure 59).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RegisterData {
    /// Current Reservation Key.
    pub crkey: U64,
    /// New Reservation Key.
    pub nrkey: U64,
}
const _: () = assert!(size_of::<RegisterData>() == 16);

/// Reservation Acquire data (NVM Command Set figure 55).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct AcquireData {
    /// Current Reservation Key.
    pub crkey: U64,
    /// Preempt Reservation Key.
    pub prkey: U64,
}
const _: () = assert!(size_of::<AcquireData>() == 16);

/// Reservation Release data (NVM Command Set figure 63).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReleaseData {
    /// Current Reservation Key.
    pub crkey: U64,
}
const _: () = assert!(size_of::<ReleaseData>() == 8);

/// Reservation Status header (NVM Command Set figure 56), followed by 40 reserved bytes in
/// the extended structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ResvStatusHeader {
    /// Generation: bumped by every Register, preempt and clear.
    pub generation: U32,
    /// Reservation type held (0: none).
    pub rtype: u8,
    /// Number of registered controllers (registrants here: the dynamic model).
    pub regctl: U16,
    /// Reserved.
    pub rsvd7: [u8; 2],
    /// Persist Through Power Loss State.
    pub ptpls: u8,
    /// Reserved.
    pub rsvd10: [u8; 14],
}
const _: () = assert!(size_of::<ResvStatusHeader>() == 24);

/// Registered Controller extended data structure (NVM Command Set figure 58): one per
/// registrant, with its 128-bit host identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RegisteredCtrlExt {
    /// Controller ID (FFFFh: the dynamic controller model, the registrant is a host).
    pub cntlid: U16,
    /// Reservation Status: bit 0 set if the registrant holds the reservation.
    pub rcsts: u8,
    /// Reserved.
    pub rsvd3: [u8; 5],
    /// Reservation Key.
    pub rkey: U64,
    /// Host Identifier (128 bits).
    pub hostid: [u8; 16],
    /// Reserved.
    pub rsvd32: [u8; 32],
}
const _: () = assert!(size_of::<RegisteredCtrlExt>() == 64);

/// Bytes before the first extended registered controller structure.
pub const EXT_HEADER_LEN: usize = 64;

/// Reservation Notification log page types (Base figure 264).
pub mod notice {
    /// Registration Preempted.
    pub const REGISTRATION_PREEMPTED: u8 = 1;
    /// Reservation Released.
    pub const RESERVATION_RELEASED: u8 = 2;
    /// Reservation Preempted.
    pub const RESERVATION_PREEMPTED: u8 = 3;
}

/// Reservation Notification log page (Base 5.16.1.25, figure 263).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ResvNotificationLog {
    /// Log Page Count: a running count of notifications (0 when none is returned).
    pub count: U64,
    /// Reservation Notification Log Page Type (0: empty, see [`notice`]).
    pub kind: u8,
    /// Number of Available Log Pages after this one.
    pub available: u8,
    /// Reserved.
    pub rsvd10: [u8; 2],
    /// Namespace the notification is about.
    pub nsid: U32,
    /// Reserved.
    pub rsvd16: [u8; 48],
}
const _: () = assert!(size_of::<ResvNotificationLog>() == 64);

/// Reservation Capabilities of Identify Namespace (RESCAP, NVM Command Set figure 97): every
/// type, IEKEY honoured (bit 7). Bit 0 (persist through power loss) is not set.
pub const RESCAP_ALL_TYPES_IEKEY: u8 = 0b1111_1110;

/// Asynchronous event: I/O command specific status, Reservation Log Page Available.
pub const AEN_TYPE_IO_SPECIFIC: u8 = 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_classify() {
        for v in 1..=6 {
            let t = ResvType::from_rtype(v).unwrap();
            assert_eq!(t.rtype(), v);
            assert_eq!(t.all_registrants(), v >= 5);
            assert_eq!(t.registrants_have_access(), v >= 3);
            assert_eq!(t.exclusive_access(), v % 2 == 0);
        }
        assert_eq!(ResvType::from_rtype(0), None);
        assert_eq!(ResvType::from_rtype(7), None);
    }
}
