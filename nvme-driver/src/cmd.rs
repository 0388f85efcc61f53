//! Submission and completion queue entries (NVMe Base Specification 2.0, sections 4.2 and
//! 4.6) and the command opcodes the driver issues.

/// Size of a submission queue entry.
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// Admin command opcodes (section 5).
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Feature identifier: Number of Queues.
    pub const FEAT_NUM_QUEUES: u32 = 0x07;
    /// Identify CNS: namespace.
    pub const CNS_NAMESPACE: u32 = 0x00;
    /// Identify CNS: controller.
    pub const CNS_CONTROLLER: u32 = 0x01;
}

/// NVM command set I/O opcodes (NVM Command Set Specification, section 3).
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// DSM attribute: deallocate.
    pub const DSM_DEALLOCATE: u32 = 1 << 2;
}

/// A submission queue entry as sixteen little-endian dwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sqe(pub [u32; 16]);

impl Sqe {
    /// A command with `opcode` for namespace `nsid` (command id set at submission).
    pub fn new(opcode: u8, nsid: u32) -> Self {
        let mut d = [0u32; 16];
        d[0] = u32::from(opcode);
        d[1] = nsid;
        Sqe(d)
    }
    /// Opcode (CDW0 bits 7:0).
    pub fn opcode(&self) -> u8 {
        (self.0[0] & 0xff) as u8
    }
    /// Command identifier (CDW0 bits 31:16).
    pub fn cid(&self) -> u16 {
        (self.0[0] >> 16) as u16
    }
    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.0[0] = (self.0[0] & 0xffff) | (u32::from(cid) << 16);
    }
    /// Namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.0[1]
    }
    /// PRP entry 1.
    pub fn prp1(&self) -> u64 {
        u64::from(self.0[6]) | (u64::from(self.0[7]) << 32)
    }
    /// PRP entry 2.
    pub fn prp2(&self) -> u64 {
        u64::from(self.0[8]) | (u64::from(self.0[9]) << 32)
    }
    /// Sets both PRP entries.
    pub fn with_prps(mut self, prp1: u64, prp2: u64) -> Self {
        self.0[6] = (prp1 & 0xffff_ffff) as u32;
        self.0[7] = (prp1 >> 32) as u32;
        self.0[8] = (prp2 & 0xffff_ffff) as u32;
        self.0[9] = (prp2 >> 32) as u32;
        self
    }
    /// Command dword `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        self.0[n]
    }
    /// Sets command dword `n` (10..=15).
    pub fn with_cdw(mut self, n: usize, value: u32) -> Self {
        self.0[n] = value;
        self
    }
    /// Starting LBA of an NVM read/write (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.0[10]) | (u64::from(self.0[11]) << 32)
    }
    /// Sets the starting LBA and the 1-based block count (1..=65536, stored 0-based in
    /// CDW12 bits 15:0).
    pub fn with_lba_range(mut self, slba: u64, blocks: u32) -> Self {
        self.0[10] = (slba & 0xffff_ffff) as u32;
        self.0[11] = (slba >> 32) as u32;
        self.0[12] = blocks.wrapping_sub(1) & 0xffff;
        self
    }
    /// Number of logical blocks of an NVM read/write, 1-based.
    pub fn nlb(&self) -> u32 {
        (self.0[12] & 0xffff) + 1
    }
}

/// Completion status (section 4.6.1): Status Code Type, Status Code, More, Do Not Retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// Builds a status from its type and code.
    pub fn new(sct: u8, sc: u8) -> Self {
        Status((u16::from(sct & 7) << 8) | u16::from(sc))
    }
    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Status Code.
    pub fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    /// More status information available.
    pub fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Whether the command succeeded.
    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
    /// A short description of well-known codes.
    pub fn describe(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x13) => "PRP offset invalid",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x00) => "completion queue invalid",
            (1, 0x0c) => "invalid queue deletion",
            (2, _) => "media or data integrity error",
            (0, _) => "generic command status",
            (1, _) => "command specific status",
            _ => "vendor or path status",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCT {:#x} SC {:#04x} ({})",
            self.sct(),
            self.sc(),
            self.describe()
        )?;
        if self.dnr() {
            f.write_str(", do not retry")?;
        }
        Ok(())
    }
}

/// A completion queue entry, copied out of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe(pub [u32; 4]);

impl Cqe {
    /// A completion for command `cid` of queue `sqid` with the new SQ head and phase.
    pub fn new(result: u32, sqhd: u16, sqid: u16, cid: u16, phase: bool, status: Status) -> Self {
        Cqe([
            result,
            0,
            u32::from(sqhd) | (u32::from(sqid) << 16),
            u32::from(cid) | (u32::from(phase) << 16) | (u32::from(status.0) << 17),
        ])
    }
    /// Command specific result (DW0).
    pub fn result(&self) -> u32 {
        self.0[0]
    }
    /// Submission queue head pointer.
    pub fn sqhd(&self) -> u16 {
        (self.0[2] & 0xffff) as u16
    }
    /// Submission queue identifier.
    pub fn sqid(&self) -> u16 {
        (self.0[2] >> 16) as u16
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        (self.0[3] & 0xffff) as u16
    }
    /// Phase tag.
    pub fn phase(&self) -> bool {
        self.0[3] & (1 << 16) != 0
    }
    /// Status field.
    pub fn status(&self) -> Status {
        Status(((self.0[3] >> 17) & 0x7fff) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::new(io::WRITE, 1)
            .with_prps(0x1_2345_6000, 0xabc_d000)
            .with_lba_range(0x1_0000_0002, 8);
        s.set_cid(0xbeef);
        assert_eq!(s.opcode(), io::WRITE);
        assert_eq!(s.cid(), 0xbeef);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.prp1(), 0x1_2345_6000);
        assert_eq!(s.prp2(), 0xabc_d000);
        assert_eq!(s.slba(), 0x1_0000_0002);
        assert_eq!(s.nlb(), 8);
        assert_eq!(s.cdw(12), 7);
        assert_eq!(Sqe::new(0, 0).with_cdw(13, 5).cdw(13), 5);
    }

    #[test]
    fn cqe_fields() {
        let c = Cqe::new(0x55, 17, 3, 0x1234, true, Status::new(1, 2));
        assert_eq!(c.result(), 0x55);
        assert_eq!(c.sqhd(), 17);
        assert_eq!(c.sqid(), 3);
        assert_eq!(c.cid(), 0x1234);
        assert!(c.phase());
        assert_eq!(c.status().sct(), 1);
        assert_eq!(c.status().sc(), 2);
        assert!(!c.status().is_success());
        assert!(!Cqe::new(0, 0, 0, 0, false, Status::SUCCESS).phase());
    }

    #[test]
    fn status_bits() {
        let s = Status(0x80 | (1 << 14) | (1 << 13));
        assert_eq!((s.sct(), s.sc()), (0, 0x80));
        assert!(s.dnr() && s.more());
        assert!(s.to_string().contains("LBA out of range"));
        assert!(Status::SUCCESS.is_success());
    }
}
