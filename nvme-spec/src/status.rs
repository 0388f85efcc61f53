//! Completion status codes (Base 4.6.1.2, Fabrics 3.3).
//!
//! A status value here is the 15-bit status field: SC in bits 7:0, SCT in bits 10:8 and DNR in
//! bit 14.

/// Do Not Retry bit of the status field.
pub const DNR: u16 = 1 << 14;

/// Builds a status field from its type and code.
pub const fn status(sct: u8, sc: u8) -> u16 {
    ((sct as u16 & 0x7) << 8) | sc as u16
}

/// Status code type of a status field.
pub const fn sct(status: u16) -> u8 {
    ((status >> 8) & 0x7) as u8
}

/// Status code of a status field.
pub const fn sc(status: u16) -> u8 {
    (status & 0xff) as u8
}

/// Successful completion.
pub const SUCCESS: u16 = 0;
/// Invalid Command Opcode.
pub const INVALID_OPCODE: u16 = status(0, 0x01);
/// Invalid Field in Command.
pub const INVALID_FIELD: u16 = status(0, 0x02);
/// Command ID Conflict.
pub const CID_CONFLICT: u16 = status(0, 0x03);
/// Data Transfer Error.
pub const DATA_TRANSFER_ERROR: u16 = status(0, 0x04);
/// Internal Error.
pub const INTERNAL_ERROR: u16 = status(0, 0x06);
/// Command Abort Requested.
pub const ABORT_REQUESTED: u16 = status(0, 0x07);
/// Command Aborted due to SQ Deletion.
pub const ABORTED_SQ_DELETION: u16 = status(0, 0x08);
/// Command Aborted due to Failed Fused Command.
pub const ABORTED_FAILED_FUSED: u16 = status(0, 0x09);
/// Command Aborted due to Missing Fused Command.
pub const ABORTED_MISSING_FUSED: u16 = status(0, 0x0a);
/// Invalid Namespace or Format.
pub const INVALID_NS: u16 = status(0, 0x0b);
/// Command Sequence Error.
pub const COMMAND_SEQUENCE_ERROR: u16 = status(0, 0x0c);
/// Data SGL Length Invalid.
pub const SGL_LENGTH_INVALID: u16 = status(0, 0x0f);
/// SGL Descriptor Type Invalid.
pub const SGL_TYPE_INVALID: u16 = status(0, 0x11);
/// SGL Offset Invalid.
pub const SGL_OFFSET_INVALID: u16 = status(0, 0x16);
/// Command Aborted due to Preempt and Abort (Base 8.19): a command of a preempted host.
pub const ABORTED_PREEMPT_ABORT: u16 = status(0, 0x1b);
/// Command Interrupted: the command could not complete this time; the host retries it.
pub const COMMAND_INTERRUPTED: u16 = status(0, 0x21);
/// Command Aborted due to host path error... (transient transport error).
pub const TRANSIENT_TRANSPORT_ERROR: u16 = status(0, 0x22);
/// LBA Out of Range.
pub const LBA_OUT_OF_RANGE: u16 = status(0, 0x80);
/// Capacity Exceeded.
pub const CAPACITY_EXCEEDED: u16 = status(0, 0x81);
/// Namespace Not Ready.
pub const NS_NOT_READY: u16 = status(0, 0x82);
/// Reservation Conflict.
pub const RESERVATION_CONFLICT: u16 = status(0, 0x83);
/// Host Identifier Inconsistent Format (a 64-bit host identifier structure asked of a
/// controller whose hosts use 128-bit ones).
pub const HOST_ID_INCONSISTENT: u16 = status(0, 0x18);

/// Command specific: Invalid Queue Identifier.
pub const INVALID_QID: u16 = status(1, 0x01);
/// Command specific: Invalid Queue Size.
pub const INVALID_QUEUE_SIZE: u16 = status(1, 0x02);
/// Command specific: Asynchronous Event Request Limit Exceeded.
pub const AER_LIMIT_EXCEEDED: u16 = status(1, 0x05);
/// Command specific: Invalid Log Page.
pub const INVALID_LOG_PAGE: u16 = status(1, 0x09);
/// Command specific: Feature Identifier Not Saveable.
pub const FEATURE_NOT_SAVEABLE: u16 = status(1, 0x0d);
/// Command specific (Fabrics Connect): Incompatible Format.
pub const CONNECT_INCOMPATIBLE_FORMAT: u16 = status(1, 0x80);
/// Command specific (Fabrics Connect): Controller Busy.
pub const CONNECT_CTRL_BUSY: u16 = status(1, 0x81);
/// Command specific (Fabrics Connect): Connect Invalid Parameters.
pub const CONNECT_INVALID_PARAM: u16 = status(1, 0x82);
/// Command specific (Fabrics Connect): Connect Restart Discovery.
pub const CONNECT_RESTART_DISC: u16 = status(1, 0x83);
/// Command specific (Fabrics Connect): Connect Invalid Host.
pub const CONNECT_INVALID_HOST: u16 = status(1, 0x84);

/// Media error: Deallocated or Unwritten Logical Block.
pub const DEALLOCATED_OR_UNWRITTEN: u16 = status(2, 0x87);
/// Media error: Unrecovered Read Error.
pub const UNRECOVERED_READ_ERROR: u16 = status(2, 0x81);
/// Media error: Compare Failure.
pub const COMPARE_FAILURE: u16 = status(2, 0x85);
/// Media error: Write Fault.
pub const WRITE_FAULT: u16 = status(2, 0x80);

/// Path related: Asymmetric Access Persistent Loss.
pub const ANA_PERSISTENT_LOSS: u16 = status(3, 0x01);
/// Path related: Asymmetric Access Inaccessible.
pub const ANA_INACCESSIBLE: u16 = status(3, 0x02);
/// Path related: Asymmetric Access Transition.
pub const ANA_TRANSITION: u16 = status(3, 0x03);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_host_is_sct1_sc84() {
        assert_eq!(CONNECT_INVALID_HOST, 0x184);
        assert_eq!(sct(CONNECT_INVALID_HOST), 1);
        assert_eq!(sc(CONNECT_INVALID_HOST), 0x84);
    }

    #[test]
    fn generic_codes() {
        assert_eq!(INVALID_FIELD, 0x002);
        assert_eq!(LBA_OUT_OF_RANGE, 0x080);
        assert_eq!(sct(LBA_OUT_OF_RANGE), 0);
        assert_eq!(sct(UNRECOVERED_READ_ERROR), 2);
        assert_eq!(INVALID_LOG_PAGE | DNR, 0x4109);
        assert_eq!(RESERVATION_CONFLICT, 0x083);
        assert_eq!(COMPARE_FAILURE, 0x285);
        assert_eq!(
            (ABORTED_FAILED_FUSED, ABORTED_MISSING_FUSED),
            (0x009, 0x00a)
        );
        assert_eq!(HOST_ID_INCONSISTENT, 0x018);
        assert_eq!(ABORTED_PREEMPT_ABORT, 0x01b);
    }

    #[test]
    fn ana_codes_are_path_related() {
        assert_eq!(ANA_PERSISTENT_LOSS, 0x301);
        assert_eq!(ANA_INACCESSIBLE, 0x302);
        assert_eq!(ANA_TRANSITION, 0x303);
    }
}
