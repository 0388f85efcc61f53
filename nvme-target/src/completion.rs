//! What a command handler returns, and the one mapping from the target's errors to NVMe
//! completion status (Base 4.6.1.2, Fabrics 3.3).

use nvme_spec::cmds::{AdminCmd, FabricsCmd, IoCmd, ParseError};
use nvme_spec::fabrics::connect_status;
use nvme_spec::status;
use thiserror::Error;

/// A command parsed for the queue it arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// A Fabrics command (any queue).
    Fabrics(FabricsCmd),
    /// An admin command (admin queue).
    Admin(AdminCmd),
    /// An NVM command set I/O command (I/O queue).
    Io(IoCmd),
}

impl Command {
    /// Whether the command carries data from the host.
    pub fn host_data(&self) -> bool {
        match self {
            Self::Fabrics(f) => matches!(f, FabricsCmd::Connect(_) | FabricsCmd::AuthSend(_)),
            Self::Admin(_) => false,
            Self::Io(c) => c.host_data(),
        }
    }
}

/// A completion queue entry's status and result, before it is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The 15-bit status field.
    pub status: u16,
    /// Dwords 0 and 1.
    pub result: u64,
}

impl Completion {
    /// Success with a result.
    pub fn ok(result: u64) -> Self {
        Self {
            status: status::SUCCESS,
            result,
        }
    }

    /// Success with a zero result.
    pub fn success() -> Self {
        Self::ok(0)
    }
}

/// Why a command failed. Each variant is one NVMe status; [`Completion::from`] is the only
/// place that knows which.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub(crate) enum Error {
    /// The entry is not a command this queue runs.
    #[error("unparsable command")]
    Parse(#[from] ParseError),
    /// A field's value is not allowed (or not supported).
    #[error("invalid field in command")]
    InvalidField,
    /// The transfer is larger than MDTS.
    #[error("transfer larger than the maximum data transfer size")]
    TooLarge,
    /// No such active namespace.
    #[error("invalid namespace")]
    InvalidNamespace,
    /// The command is not allowed in the controller's state.
    #[error("command sequence error")]
    Sequence,
    /// The SGL's length disagrees with the command or its data.
    #[error("data SGL length invalid")]
    SglLength,
    /// The SGL descriptor type does not fit the command.
    #[error("SGL descriptor type invalid")]
    SglType,
    /// In-capsule data at a non-zero offset.
    #[error("SGL offset invalid")]
    SglOffset,
    /// The LBA range passes the namespace's end.
    #[error("LBA out of range")]
    LbaOutOfRange,
    /// No device buffer for in-capsule data (the pool is exhausted for now).
    #[error("no device buffer free")]
    NoBuffer,
    /// A write landing in the device stopped when the namespace's reservations became
    /// active (the host retries it, and the retry meets the reservation).
    #[error("interrupted by a reservation change")]
    Interrupted,
    /// The device failed a read (with its own NVMe status, if it gave one).
    #[error("read failed at the device")]
    ReadFailed(Option<u16>),
    /// The device failed a write, flush, write zeroes or deallocate (its status, if any).
    #[error("write failed at the device")]
    WriteFailed(Option<u16>),
    /// No such log page on this controller.
    #[error("invalid log page")]
    InvalidLogPage,
    /// Set Features asked to save a feature that cannot be saved.
    #[error("feature not saveable")]
    NotSaveable,
    /// More Asynchronous Event Requests than AERL allows.
    #[error("asynchronous event request limit exceeded")]
    AerLimit,
    /// Connect with a record format other than 0.
    #[error("connect: incompatible format")]
    ConnectFormat,
    /// Connect with an invalid parameter at `offset` of the command or (`in_data`) its data.
    #[error("connect: invalid parameter at offset {offset}")]
    ConnectParam {
        /// Whether the offset is in the Connect data.
        in_data: bool,
        /// Byte offset of the parameter.
        offset: u16,
    },
    /// Connect from a host the subsystem does not allow (the host NQN's offset is reported).
    #[error("connect: host not allowed")]
    ConnectHost,
    /// No controller ID is free.
    #[error("connect: controller busy")]
    ControllerBusy,
    /// Too many commands waiting for their data.
    #[error("too many commands waiting for data")]
    QueueFull,
    /// The command's data arrived with a bad data digest.
    #[error("data digest error")]
    DataDigest,
    /// The queue must authenticate first (DH-HMAC-CHAP).
    #[error("authentication required")]
    AuthRequired,
    /// Something the target itself got wrong (a configuration or bookkeeping error).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The system's random source failed.
    #[error("no random numbers")]
    Random,
    /// Aborted by an Abort command.
    #[error("aborted by request")]
    AbortRequested,
    /// Aborted because a Reservation Acquire (Preempt and Abort) removed its host's
    /// registration.
    #[error("aborted: registration preempted")]
    PreemptAborted,
    /// Aborted because its queue went away.
    #[error("aborted: queue deleted")]
    SqDeletion,
    /// Compare found data that differs from the host's.
    #[error("compare failure")]
    CompareFailure,
    /// The other command of a fused operation failed.
    #[error("aborted: the fused command failed")]
    FusedFailed,
    /// A fused command without its partner next to it on the queue.
    #[error("aborted: missing fused command")]
    FusedMissing,
    /// A reservation forbids the command to this host (or a key did not match).
    #[error("reservation conflict")]
    ResvConflict,
    /// A 64-bit host identifier structure asked of a controller whose hosts have 128-bit
    /// ones (Reservation Report without EDS on fabrics).
    #[error("host identifier inconsistent format")]
    HostIdFormat,
    /// The namespace's ANA group is inaccessible through this port.
    #[error("ANA group inaccessible on this port")]
    AnaInaccessible,
    /// The namespace's ANA group is lost for good through this port.
    #[error("ANA group persistently lost on this port")]
    AnaPersistentLoss,
    /// The namespace's ANA group is changing state on this port.
    #[error("ANA group in transition on this port")]
    AnaTransition,
}

impl Error {
    /// The path error for I/O through a port where the namespace's group is in `state`;
    /// `None` when the path serves I/O.
    pub fn for_ana(state: crate::ana::AnaState) -> Option<Self> {
        use crate::ana::AnaState;
        match state {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(Self::AnaInaccessible),
            AnaState::PersistentLoss => Some(Self::AnaPersistentLoss),
            AnaState::Change => Some(Self::AnaTransition),
        }
    }
}

/// Authentication Required (command specific, Base 2.0 figure 103).
const AUTH_REQUIRED: u16 = status::status(1, 0x91);
/// Connect offsets (Fabrics figure 20): the host NQN in the Connect data.
const DATA_HOSTNQN: u16 = 512;

impl From<Error> for Completion {
    fn from(e: Error) -> Self {
        let dnr = |st: u16| st | status::DNR;
        let (st, result) = match e {
            Error::Parse(p) => (
                dnr(match p {
                    ParseError::Opcode(_) | ParseError::Fctype(_) => status::INVALID_OPCODE,
                    ParseError::Fused | ParseError::Field(_) | ParseError::Size => {
                        status::INVALID_FIELD
                    }
                }),
                0,
            ),
            Error::InvalidField | Error::TooLarge => (dnr(status::INVALID_FIELD), 0),
            Error::InvalidNamespace => (dnr(status::INVALID_NS), 0),
            Error::Sequence => (dnr(status::COMMAND_SEQUENCE_ERROR), 0),
            Error::SglLength => (dnr(status::SGL_LENGTH_INVALID), 0),
            Error::SglType => (dnr(status::SGL_TYPE_INVALID), 0),
            Error::SglOffset => (dnr(status::SGL_OFFSET_INVALID), 0),
            Error::LbaOutOfRange => (dnr(status::LBA_OUT_OF_RANGE), 0),
            // Retryable: buffers come back as other commands finish.
            Error::NoBuffer => (status::NS_NOT_READY, 0),
            Error::Interrupted => (status::COMMAND_INTERRUPTED, 0),
            Error::ReadFailed(st) => (st.unwrap_or(status::UNRECOVERED_READ_ERROR), 0),
            Error::WriteFailed(st) => (st.unwrap_or(status::WRITE_FAULT), 0),
            Error::InvalidLogPage => (dnr(status::INVALID_LOG_PAGE), 0),
            Error::NotSaveable => (dnr(status::FEATURE_NOT_SAVEABLE), 0),
            Error::AerLimit => (dnr(status::AER_LIMIT_EXCEEDED), 0),
            Error::ConnectFormat => (dnr(status::CONNECT_INCOMPATIBLE_FORMAT), 0),
            Error::ConnectParam { in_data, offset } => (
                dnr(status::CONNECT_INVALID_PARAM),
                u64::from(connect_status::invalid_param_result(in_data, offset)),
            ),
            Error::ConnectHost => (
                dnr(status::CONNECT_INVALID_HOST),
                u64::from(connect_status::invalid_param_result(true, DATA_HOSTNQN)),
            ),
            // Busy may clear: retrying is allowed.
            Error::ControllerBusy => (status::CONNECT_CTRL_BUSY, 0),
            Error::QueueFull => (status::INTERNAL_ERROR, 0),
            Error::DataDigest => (status::TRANSIENT_TRANSPORT_ERROR, 0),
            Error::AuthRequired => (dnr(AUTH_REQUIRED), 0),
            Error::Random | Error::Internal(_) => (status::INTERNAL_ERROR, 0),
            Error::AbortRequested => (status::ABORT_REQUESTED, 0),
            // No DNR: a retry meets the reservation as it is now (a conflict, or access the
            // type still grants the unregistered host); the abort only drops what was queued.
            Error::PreemptAborted => (status::ABORTED_PREEMPT_ABORT, 0),
            Error::SqDeletion => (status::ABORTED_SQ_DELETION, 0),
            // Path errors are retried on another path (no DNR): the host fails over.
            Error::AnaInaccessible => (status::ANA_INACCESSIBLE, 0),
            Error::AnaPersistentLoss => (status::ANA_PERSISTENT_LOSS, 0),
            Error::AnaTransition => (status::ANA_TRANSITION, 0),
            Error::CompareFailure => (dnr(status::COMPARE_FAILURE), 0),
            Error::FusedFailed => (status::ABORTED_FAILED_FUSED, 0),
            Error::FusedMissing => (dnr(status::ABORTED_MISSING_FUSED), 0),
            Error::ResvConflict => (dnr(status::RESERVATION_CONFLICT), 0),
            Error::HostIdFormat => (dnr(status::HOST_ID_INCONSISTENT), 0),
        };
        Self { status: st, result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_map_to_opcode_or_field() {
        let c = Completion::from(Error::Parse(ParseError::Opcode(0x7e)));
        assert_eq!(c.status, status::INVALID_OPCODE | status::DNR);
        let c = Completion::from(Error::Parse(ParseError::Fused));
        assert_eq!(c.status, status::INVALID_FIELD | status::DNR);
    }

    #[test]
    fn connect_errors_carry_the_offset() {
        let c = Completion::from(Error::ConnectParam {
            in_data: false,
            offset: 44,
        });
        assert_eq!(c.status, status::CONNECT_INVALID_PARAM | status::DNR);
        assert_eq!(c.result, 44);
        let c = Completion::from(Error::ConnectHost);
        assert_eq!(c.result, (1 << 16) | 512);
        assert_eq!(
            Completion::from(Error::ControllerBusy).status & status::DNR,
            0
        );
    }

    #[test]
    fn device_failures_keep_the_devices_status() {
        assert_eq!(
            Completion::from(Error::ReadFailed(None)).status,
            status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(
            Completion::from(Error::WriteFailed(None)).status,
            status::WRITE_FAULT
        );
        let lba = status::LBA_OUT_OF_RANGE;
        assert_eq!(Completion::from(Error::WriteFailed(Some(lba))).status, lba);
        assert_eq!(
            Completion::from(Error::AuthRequired).status,
            status::status(1, 0x91) | status::DNR
        );
    }

    #[test]
    fn ana_path_errors_may_be_retried_elsewhere() {
        use crate::ana::AnaState;
        assert_eq!(Error::for_ana(AnaState::Optimized), None);
        assert_eq!(Error::for_ana(AnaState::NonOptimized), None);
        for (st, code) in [
            (AnaState::Inaccessible, status::ANA_INACCESSIBLE),
            (AnaState::PersistentLoss, status::ANA_PERSISTENT_LOSS),
            (AnaState::Change, status::ANA_TRANSITION),
        ] {
            let c = Completion::from(Error::for_ana(st).unwrap());
            assert_eq!(c.status, code);
            assert_eq!(c.status & status::DNR, 0);
        }
    }
}
