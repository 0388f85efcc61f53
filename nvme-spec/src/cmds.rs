//! Typed commands: a raw [`Sqe`] parses once into an [`AdminCmd`], [`FabricsCmd`] or
//! [`IoCmd`] with its fields decoded (Base 5, Fabrics 3, NVM Command Set 3).
//!
//! Two layers: the 64 bytes become a checked [`Sqe`] view (zerocopy, exact size), and the
//! view becomes a typed command with `TryFrom`. A command that does not parse is a
//! [`ParseError`]; the target maps it to a completion status in one place.

use thiserror::Error;
use zerocopy::FromBytes;

use crate::command::{Sqe, admin_opcode, io_opcode};
use crate::fabrics::{ConnectCmd, PropertyCmd, fctype};
use crate::log::GetLogPage;
use crate::resv::{
    AcquireAction, Cptpl, RegisterAction, ReleaseAction, ResvAcquire, ResvRegister, ResvRelease,
    ResvReport, ResvType,
};

/// Why a submission queue entry is not a command the controller runs.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not 64 bytes.
    #[error("a submission queue entry is 64 bytes")]
    Size,
    /// FUSE bits on a command that cannot be fused (only Compare, then Write, can).
    #[error("this command cannot be part of a fused operation")]
    Fused,
    /// An opcode the queue does not run.
    #[error("opcode {0:#04x} is not supported here")]
    Opcode(u8),
    /// A Fabrics command type the controller does not run.
    #[error("fabrics command type {0:#04x} is not supported")]
    Fctype(u8),
    /// A field with a value the command does not allow.
    #[error("invalid {0} field")]
    Field(&'static str),
}

/// Parses the first layer: 64 bytes into a checked submission queue entry view.
pub fn sqe_from_bytes(bytes: &[u8]) -> Result<&Sqe, ParseError> {
    Sqe::ref_from_bytes(bytes).map_err(|_| ParseError::Size)
}

/// Whether the entry is a Fabrics command (opcode 7Fh), whatever queue it arrived on.
pub fn is_fabrics(sqe: &Sqe) -> bool {
    sqe.opcode == admin_opcode::FABRICS
}

fn check_fuse(sqe: &Sqe) -> Result<(), ParseError> {
    if sqe.flags & 0x03 != 0 {
        Err(ParseError::Fused)
    } else {
        Ok(())
    }
}

/// Identify (Base 5.17, figure 273).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identify {
    /// Controller or Namespace Structure (CDW10 bits 7:0).
    pub cns: u8,
    /// Controller identifier (CDW10 bits 31:16).
    pub cntid: u16,
    /// Namespace the structure is about, or the list's starting point.
    pub nsid: u32,
    /// Command Set Identifier (CDW11 bits 31:24).
    pub csi: u8,
}

/// Set Features (Base 5.27, figure 322).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetFeatures {
    /// Feature identifier (CDW10 bits 7:0).
    pub fid: u8,
    /// Save (CDW10 bit 31).
    pub save: bool,
    /// Namespace, for namespace-specific features.
    pub nsid: u32,
    /// Feature-specific dword 11.
    pub cdw11: u32,
}

/// The attribute Get Features reports (Base 5.15, figure 189).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSelect {
    /// The value in use.
    Current,
    /// The default value.
    Default,
    /// The saved value.
    Saved,
    /// Whether the feature is saveable, namespace specific, changeable.
    Supported,
}

/// Get Features (Base 5.15, figure 188).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetFeatures {
    /// Feature identifier (CDW10 bits 7:0).
    pub fid: u8,
    /// Select (CDW10 bits 10:8).
    pub sel: FeatureSelect,
    /// Namespace, for namespace-specific features.
    pub nsid: u32,
    /// Feature-specific dword 11.
    pub cdw11: u32,
}

/// Abort (Base 5.1, figure 137).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    /// Submission queue of the command to abort (CDW10 bits 15:0).
    pub sqid: u16,
    /// Its command identifier (CDW10 bits 31:16).
    pub cid: u16,
}

/// The admin commands a fabrics controller runs (Base 5, figure 139).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminCmd {
    /// Identify.
    Identify(Identify),
    /// Get Log Page.
    GetLogPage(GetLogPage),
    /// Set Features.
    SetFeatures(SetFeatures),
    /// Get Features.
    GetFeatures(GetFeatures),
    /// Abort.
    Abort(Abort),
    /// Asynchronous Event Request.
    AsyncEventRequest,
    /// Keep Alive.
    KeepAlive,
}

impl TryFrom<&Sqe> for AdminCmd {
    type Error = ParseError;

    fn try_from(sqe: &Sqe) -> Result<Self, ParseError> {
        check_fuse(sqe)?;
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let nsid = sqe.nsid.get();
        Ok(match sqe.opcode {
            admin_opcode::IDENTIFY => Self::Identify(Identify {
                cns: (cdw10 & 0xff) as u8,
                cntid: (cdw10 >> 16) as u16,
                nsid,
                csi: (cdw11 >> 24) as u8,
            }),
            admin_opcode::GET_LOG_PAGE => Self::GetLogPage(GetLogPage::from_sqe(sqe)),
            admin_opcode::SET_FEATURES => Self::SetFeatures(SetFeatures {
                fid: (cdw10 & 0xff) as u8,
                save: cdw10 & (1 << 31) != 0,
                nsid,
                cdw11,
            }),
            admin_opcode::GET_FEATURES => Self::GetFeatures(GetFeatures {
                fid: (cdw10 & 0xff) as u8,
                sel: match (cdw10 >> 8) & 0x7 {
                    0 => FeatureSelect::Current,
                    1 => FeatureSelect::Default,
                    2 => FeatureSelect::Saved,
                    3 => FeatureSelect::Supported,
                    _ => return Err(ParseError::Field("SEL")),
                },
                nsid,
                cdw11,
            }),
            admin_opcode::ABORT => Self::Abort(Abort {
                sqid: (cdw10 & 0xffff) as u16,
                cid: (cdw10 >> 16) as u16,
            }),
            admin_opcode::ASYNC_EVENT => Self::AsyncEventRequest,
            admin_opcode::KEEP_ALIVE => Self::KeepAlive,
            // Queue creation and deletion are the Fabrics Connect's job (Fabrics 1.1, 2.1).
            op => return Err(ParseError::Opcode(op)),
        })
    }
}

/// The fields of a Connect command (Fabrics 3.3, figure 19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Record format.
    pub recfmt: u16,
    /// Queue to create: 0 is the admin queue.
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    /// Connect attributes.
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds.
    pub kato_ms: u32,
}

/// A Property Get or Set (Fabrics 3.4, 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property {
    /// Register offset.
    pub offset: u32,
    /// Access size in bytes: 4 or 8.
    pub size: usize,
}

/// Authentication Send or Receive (Fabrics 3.1, Base 8.13.5): the security protocol and
/// the transfer or allocation length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthTransfer {
    /// Security protocol (SECP, CDW10 bits 31:24).
    pub secp: u8,
    /// SP specific 0 (CDW10 bits 15:8).
    pub spsp0: u8,
    /// SP specific 1 (CDW10 bits 23:16).
    pub spsp1: u8,
    /// Transfer length (Send) or allocation length (Receive), CDW11.
    pub len: u32,
}

/// The Fabrics commands (Fabrics 3, figure 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FabricsCmd {
    /// Connect: the connection becomes a queue.
    Connect(Connect),
    /// Property Get.
    PropertyGet(Property),
    /// Property Set with its value.
    PropertySet(Property, u64),
    /// Disconnect: the queue ends.
    Disconnect,
    /// Authentication Send: a message from the host.
    AuthSend(AuthTransfer),
    /// Authentication Receive: the controller's next message.
    AuthReceive(AuthTransfer),
}

impl TryFrom<&Sqe> for FabricsCmd {
    type Error = ParseError;

    fn try_from(sqe: &Sqe) -> Result<Self, ParseError> {
        if !is_fabrics(sqe) {
            return Err(ParseError::Opcode(sqe.opcode));
        }
        check_fuse(sqe)?;
        let bytes = zerocopy::IntoBytes::as_bytes(sqe);
        let fct = (sqe.nsid.get() & 0xff) as u8;
        Ok(match fct {
            fctype::CONNECT => {
                let c = ConnectCmd::read_from_bytes(bytes).map_err(|_| ParseError::Size)?;
                Self::Connect(Connect {
                    recfmt: c.recfmt.get(),
                    qid: c.qid.get(),
                    sqsize: c.sqsize.get(),
                    cattr: c.cattr,
                    kato_ms: c.kato.get(),
                })
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let p = PropertyCmd::read_from_bytes(bytes).map_err(|_| ParseError::Size)?;
                let prop = Property {
                    offset: p.offset.get(),
                    size: p.size(),
                };
                if fct == fctype::PROPERTY_GET {
                    Self::PropertyGet(prop)
                } else {
                    Self::PropertySet(prop, p.value.get())
                }
            }
            fctype::DISCONNECT => Self::Disconnect,
            fctype::AUTH_SEND | fctype::AUTH_RECEIVE => {
                let cdw10 = sqe.cdw10.get();
                let t = AuthTransfer {
                    secp: (cdw10 >> 24) as u8,
                    spsp0: ((cdw10 >> 8) & 0xff) as u8,
                    spsp1: ((cdw10 >> 16) & 0xff) as u8,
                    len: sqe.cdw11.get(),
                };
                if fct == fctype::AUTH_SEND {
                    Self::AuthSend(t)
                } else {
                    Self::AuthReceive(t)
                }
            }
            other => return Err(ParseError::Fctype(other)),
        })
    }
}

/// A range of logical blocks (NVM Command Set 3.2, CDW10-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaRange {
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks (already converted from the 0's based field).
    pub nlb: u32,
}

impl LbaRange {
    fn of(sqe: &Sqe) -> Self {
        Self {
            slba: sqe.slba(),
            nlb: sqe.nlb(),
        }
    }
}

/// Dataset Management (NVM Command Set 3.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dsm {
    /// Number of ranges, 1 to 256 (converted from the 0's based NR).
    pub ranges: usize,
    /// Attribute Deallocate (CDW11 bit 2).
    pub deallocate: bool,
}

/// The NVM command set I/O commands Baton runs (NVM Command Set 3, figure 18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCmd {
    /// Compare: host data compared with the range (FUSE 00b).
    Compare(LbaRange),
    /// The first command of a fused Compare and Write (Compare with FUSE 01b).
    FusedCompare(LbaRange),
    /// The second command of a fused Compare and Write (Write with FUSE 10b).
    FusedWrite(LbaRange),
    /// Verify: the range is read and checked, no data moves.
    Verify(LbaRange),
    /// Reservation Register (data: [`crate::resv::RegisterData`]).
    ResvRegister(ResvRegister),
    /// Reservation Acquire (data: [`crate::resv::AcquireData`]).
    ResvAcquire(ResvAcquire),
    /// Reservation Release (data: [`crate::resv::ReleaseData`]).
    ResvRelease(ResvRelease),
    /// Reservation Report (data to the host).
    ResvReport(ResvReport),
    /// Flush.
    Flush,
    /// Read: data to the host.
    Read(LbaRange),
    /// Write: data from the host.
    Write(LbaRange),
    /// Write Zeroes.
    WriteZeroes(LbaRange),
    /// Dataset Management: a range list from the host.
    Dsm(Dsm),
}

impl IoCmd {
    /// Whether the command carries data from the host.
    pub fn host_data(&self) -> bool {
        matches!(
            self,
            Self::Write(_)
                | Self::Dsm(_)
                | Self::Compare(_)
                | Self::FusedCompare(_)
                | Self::FusedWrite(_)
                | Self::ResvRegister(_)
                | Self::ResvAcquire(_)
                | Self::ResvRelease(_)
        )
    }

    /// The command's LBA range, if it has one.
    pub fn range(&self) -> Option<LbaRange> {
        match *self {
            Self::Read(r)
            | Self::Write(r)
            | Self::WriteZeroes(r)
            | Self::Compare(r)
            | Self::FusedCompare(r)
            | Self::FusedWrite(r)
            | Self::Verify(r) => Some(r),
            Self::Flush
            | Self::Dsm(_)
            | Self::ResvRegister(_)
            | Self::ResvAcquire(_)
            | Self::ResvRelease(_)
            | Self::ResvReport(_) => None,
        }
    }

    /// Whether the command is in the write group that reservations restrict (Base 8.19.7):
    /// it changes the namespace's content. The rest of the reads and writes are the read
    /// group; the reservation commands themselves are in neither.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Self::Flush
                | Self::Write(_)
                | Self::WriteZeroes(_)
                | Self::Dsm(_)
                | Self::FusedWrite(_)
        )
    }

    /// Whether the command is in the read group that the exclusive access reservations
    /// restrict.
    pub fn reads(&self) -> bool {
        matches!(
            self,
            Self::Read(_) | Self::Compare(_) | Self::FusedCompare(_) | Self::Verify(_)
        )
    }
}

fn resv_cmd(sqe: &Sqe) -> Option<IoCmd> {
    let cdw10 = sqe.cdw10.get();
    let action = cdw10 & 0x7;
    let iekey = cdw10 & (1 << 3) != 0;
    let rtype = ((cdw10 >> 8) & 0xff) as u8;
    Some(match sqe.opcode {
        io_opcode::RESV_REGISTER => IoCmd::ResvRegister(ResvRegister {
            action: match action {
                0 => RegisterAction::Register,
                1 => RegisterAction::Unregister,
                2 => RegisterAction::Replace,
                _ => return None,
            },
            iekey,
            cptpl: match cdw10 >> 30 {
                0 => Cptpl::NoChange,
                2 => Cptpl::Clear,
                3 => Cptpl::Persist,
                _ => return None,
            },
        }),
        io_opcode::RESV_ACQUIRE => IoCmd::ResvAcquire(ResvAcquire {
            action: match action {
                0 => AcquireAction::Acquire,
                1 => AcquireAction::Preempt,
                2 => AcquireAction::PreemptAbort,
                _ => return None,
            },
            iekey,
            rtype: ResvType::from_rtype(rtype),
        }),
        io_opcode::RESV_RELEASE => IoCmd::ResvRelease(ResvRelease {
            action: match action {
                0 => ReleaseAction::Release,
                1 => ReleaseAction::Clear,
                _ => return None,
            },
            iekey,
            rtype,
        }),
        io_opcode::RESV_REPORT => IoCmd::ResvReport(ResvReport {
            len: (u64::from(cdw10) + 1) * 4,
            eds: sqe.cdw11.get() & 1 != 0,
        }),
        _ => return None,
    })
}

impl TryFrom<&Sqe> for IoCmd {
    type Error = ParseError;

    fn try_from(sqe: &Sqe) -> Result<Self, ParseError> {
        // FUSE (CDW0 bits 9:8): 01b first, 10b second of a fused operation.
        match (sqe.flags & 0x03, sqe.opcode) {
            (0, _) => {}
            (1, io_opcode::COMPARE) => return Ok(Self::FusedCompare(LbaRange::of(sqe))),
            (2, io_opcode::WRITE) => return Ok(Self::FusedWrite(LbaRange::of(sqe))),
            _ => return Err(ParseError::Fused),
        }
        Ok(match sqe.opcode {
            io_opcode::FLUSH => Self::Flush,
            io_opcode::COMPARE => Self::Compare(LbaRange::of(sqe)),
            io_opcode::VERIFY => Self::Verify(LbaRange::of(sqe)),
            io_opcode::RESV_REGISTER
            | io_opcode::RESV_ACQUIRE
            | io_opcode::RESV_RELEASE
            | io_opcode::RESV_REPORT => {
                resv_cmd(sqe).ok_or(ParseError::Field("reservation action"))?
            }
            io_opcode::READ => Self::Read(LbaRange::of(sqe)),
            io_opcode::WRITE => Self::Write(LbaRange::of(sqe)),
            io_opcode::WRITE_ZEROES => Self::WriteZeroes(LbaRange::of(sqe)),
            io_opcode::DSM => Self::Dsm(Dsm {
                ranges: (sqe.cdw10.get() & 0xff) as usize + 1,
                deallocate: sqe.cdw11.get() & crate::command::DSM_ATTR_DEALLOCATE != 0,
            }),
            op => return Err(ParseError::Opcode(op)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::feature;
    use zerocopy::{FromZeros, IntoBytes};

    fn sqe(opcode: u8) -> Sqe {
        let mut s = Sqe::new_zeroed();
        s.opcode = opcode;
        s
    }

    #[test]
    fn first_layer_checks_the_size() {
        assert_eq!(sqe_from_bytes(&[0; 63]).err(), Some(ParseError::Size));
        let s = sqe(io_opcode::READ);
        assert_eq!(sqe_from_bytes(s.as_bytes()).map(|v| v.opcode), Ok(2));
    }

    #[test]
    fn identify_fields() {
        let mut s = sqe(admin_opcode::IDENTIFY);
        s.cdw10.set(0x0007_0003);
        s.cdw11.set(0x0200_0000);
        s.nsid.set(5);
        let want = Identify {
            cns: 3,
            cntid: 7,
            nsid: 5,
            csi: 2,
        };
        assert_eq!(AdminCmd::try_from(&s), Ok(AdminCmd::Identify(want)));
    }

    #[test]
    fn features_fields() {
        let mut s = sqe(admin_opcode::SET_FEATURES);
        s.cdw10.set((1 << 31) | u32::from(feature::NUM_QUEUES));
        s.cdw11.set(0x0003_0003);
        let Ok(AdminCmd::SetFeatures(f)) = AdminCmd::try_from(&s) else {
            panic!("not Set Features");
        };
        assert!(f.save);
        assert_eq!((f.fid, f.cdw11), (feature::NUM_QUEUES, 0x0003_0003));
        let mut g = sqe(admin_opcode::GET_FEATURES);
        g.cdw10.set((3 << 8) | u32::from(feature::KATO));
        let Ok(AdminCmd::GetFeatures(f)) = AdminCmd::try_from(&g) else {
            panic!("not Get Features");
        };
        assert_eq!(f.sel, FeatureSelect::Supported);
        g.cdw10.set(4 << 8);
        assert_eq!(AdminCmd::try_from(&g), Err(ParseError::Field("SEL")));
    }

    #[test]
    fn abort_fields() {
        let mut s = sqe(admin_opcode::ABORT);
        s.cdw10.set(0x1234_0002);
        assert_eq!(
            AdminCmd::try_from(&s),
            Ok(AdminCmd::Abort(Abort {
                sqid: 2,
                cid: 0x1234
            }))
        );
    }

    #[test]
    fn queue_management_and_fused_are_refused() {
        assert_eq!(
            AdminCmd::try_from(&sqe(admin_opcode::CREATE_SQ)),
            Err(ParseError::Opcode(admin_opcode::CREATE_SQ))
        );
        let mut s = sqe(admin_opcode::KEEP_ALIVE);
        assert_eq!(AdminCmd::try_from(&s), Ok(AdminCmd::KeepAlive));
        s.flags = 1;
        assert_eq!(AdminCmd::try_from(&s), Err(ParseError::Fused));
        let mut w = sqe(io_opcode::READ);
        w.flags = 2;
        assert_eq!(IoCmd::try_from(&w), Err(ParseError::Fused));
    }

    #[test]
    fn io_fields() {
        let mut s = sqe(io_opcode::WRITE);
        s.set_lba_range(0x1_0000_0002, 8);
        let r = LbaRange {
            slba: 0x1_0000_0002,
            nlb: 8,
        };
        assert_eq!(IoCmd::try_from(&s), Ok(IoCmd::Write(r)));
        assert!(IoCmd::Write(r).host_data() && IoCmd::Write(r).range() == Some(r));
        s.opcode = io_opcode::READ;
        assert!(IoCmd::try_from(&s).is_ok_and(|c| !c.host_data() && c.range() == Some(r)));
        s.opcode = 0x04;
        assert_eq!(IoCmd::try_from(&s), Err(ParseError::Opcode(0x04)));
        let mut d = sqe(io_opcode::DSM);
        d.cdw10.set(255);
        d.cdw11.set(crate::command::DSM_ATTR_DEALLOCATE);
        assert_eq!(
            IoCmd::try_from(&d),
            Ok(IoCmd::Dsm(Dsm {
                ranges: 256,
                deallocate: true
            }))
        );
        assert_eq!(IoCmd::try_from(&sqe(0x7e)), Err(ParseError::Opcode(0x7e)));
    }

    #[test]
    fn compare_verify_and_fuse_bits() {
        let r = LbaRange { slba: 9, nlb: 2 };
        let mut s = sqe(io_opcode::COMPARE);
        s.set_lba_range(9, 2);
        assert_eq!(IoCmd::try_from(&s), Ok(IoCmd::Compare(r)));
        s.flags = 1;
        assert_eq!(IoCmd::try_from(&s), Ok(IoCmd::FusedCompare(r)));
        s.flags = 2;
        assert_eq!(IoCmd::try_from(&s), Err(ParseError::Fused));
        s.opcode = io_opcode::WRITE;
        assert_eq!(IoCmd::try_from(&s), Ok(IoCmd::FusedWrite(r)));
        s.flags = 3;
        assert_eq!(IoCmd::try_from(&s), Err(ParseError::Fused));
        s.flags = 0;
        s.opcode = io_opcode::VERIFY;
        let v = IoCmd::try_from(&s).unwrap();
        assert_eq!(v, IoCmd::Verify(r));
        assert!(!v.host_data() && v.reads() && !v.writes());
        assert!(IoCmd::FusedWrite(r).writes() && IoCmd::Flush.writes());
    }

    #[test]
    fn reservation_fields() {
        let mut s = sqe(io_opcode::RESV_REGISTER);
        s.cdw10.set((3 << 30) | (1 << 3) | 2);
        assert_eq!(
            IoCmd::try_from(&s),
            Ok(IoCmd::ResvRegister(ResvRegister {
                action: RegisterAction::Replace,
                iekey: true,
                cptpl: Cptpl::Persist
            }))
        );
        s.cdw10.set(1 << 30);
        assert!(IoCmd::try_from(&s).is_err());
        s.cdw10.set(3);
        assert!(IoCmd::try_from(&s).is_err());
        let mut a = sqe(io_opcode::RESV_ACQUIRE);
        a.cdw10.set((4 << 8) | 1);
        assert_eq!(
            IoCmd::try_from(&a),
            Ok(IoCmd::ResvAcquire(ResvAcquire {
                action: AcquireAction::Preempt,
                iekey: false,
                rtype: Some(ResvType::ExclusiveAccessRegistrantsOnly)
            }))
        );
        a.cdw10.set(7 << 8);
        assert!(matches!(
            IoCmd::try_from(&a),
            Ok(IoCmd::ResvAcquire(ResvAcquire { rtype: None, .. }))
        ));
        let mut r = sqe(io_opcode::RESV_RELEASE);
        r.cdw10.set((2 << 8) | 1);
        assert_eq!(
            IoCmd::try_from(&r),
            Ok(IoCmd::ResvRelease(ResvRelease {
                action: ReleaseAction::Clear,
                iekey: false,
                rtype: 2
            }))
        );
        let mut p = sqe(io_opcode::RESV_REPORT);
        p.cdw10.set(15);
        p.cdw11.set(1);
        assert_eq!(
            IoCmd::try_from(&p),
            Ok(IoCmd::ResvReport(ResvReport { len: 64, eds: true }))
        );
    }

    #[test]
    fn fabrics_fields() {
        let mut c = ConnectCmd::new_zeroed();
        c.opcode = admin_opcode::FABRICS;
        c.fctype = fctype::CONNECT;
        c.qid.set(3);
        c.sqsize.set(127);
        c.kato.set(5000);
        let s = Sqe::read_from_bytes(c.as_bytes()).unwrap();
        assert_eq!(
            FabricsCmd::try_from(&s),
            Ok(FabricsCmd::Connect(Connect {
                recfmt: 0,
                qid: 3,
                sqsize: 127,
                cattr: 0,
                kato_ms: 5000
            }))
        );
        let mut p = PropertyCmd::new_zeroed();
        p.opcode = admin_opcode::FABRICS;
        p.fctype = fctype::PROPERTY_SET;
        p.attrib = 1;
        p.offset.set(0x14);
        p.value.set(0x46_0001);
        let s = Sqe::read_from_bytes(p.as_bytes()).unwrap();
        assert_eq!(
            FabricsCmd::try_from(&s),
            Ok(FabricsCmd::PropertySet(
                Property {
                    offset: 0x14,
                    size: 8
                },
                0x46_0001
            ))
        );
        let mut s = sqe(admin_opcode::FABRICS);
        s.nsid.set(u32::from(fctype::AUTH_SEND));
        s.cdw10.set(0xe901_0100);
        s.cdw11.set(72);
        assert_eq!(
            FabricsCmd::try_from(&s),
            Ok(FabricsCmd::AuthSend(AuthTransfer {
                secp: 0xe9,
                spsp0: 1,
                spsp1: 1,
                len: 72
            }))
        );
        s.nsid.set(0x42);
        assert_eq!(FabricsCmd::try_from(&s), Err(ParseError::Fctype(0x42)));
    }
}
