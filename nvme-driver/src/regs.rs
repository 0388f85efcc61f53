//! Controller registers (NVMe Base Specification 2.0, section 3.1 "Register Definition").

/// Controller Capabilities (64-bit).
pub const CAP: usize = 0x00;
/// Version.
pub const VS: usize = 0x08;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue base address (64-bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue base address (64-bit).
pub const ACQ: usize = 0x30;
/// First doorbell register.
pub const DOORBELL_BASE: usize = 0x1000;

/// Offset of the submission-queue tail doorbell of queue `qid` for stride `dstrd`.
pub fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    DOORBELL_BASE + (2 * usize::from(qid)) * (4 << dstrd)
}

/// Offset of the completion-queue head doorbell of queue `qid` for stride `dstrd`.
pub fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    DOORBELL_BASE + (2 * usize::from(qid) + 1) * (4 << dstrd)
}

/// CAP: Controller Capabilities (section 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (the register is 0-based).
    pub fn mqes(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Timeout (worst-case ready transition time) in milliseconds.
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell Stride exponent: doorbells are `4 << dstrd` bytes apart.
    pub fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    /// NVM command set supported (CSS bit 0).
    pub fn css_nvm(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }
    /// Memory Page Size Minimum exponent: `4096 << mpsmin` bytes.
    pub fn mpsmin(self) -> u8 {
        ((self.0 >> 48) & 0xf) as u8
    }
    /// Memory Page Size Maximum exponent.
    pub fn mpsmax(self) -> u8 {
        ((self.0 >> 52) & 0xf) as u8
    }
}

/// CC: Controller Configuration (section 3.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown Notification: normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// Shutdown Notification mask.
    pub const SHN_MASK: u32 = 3 << 14;

    /// The configuration the driver enables with: NVM command set, 4 KiB pages, round
    /// robin, 64-byte SQ entries, 16-byte CQ entries.
    pub fn enabled() -> Self {
        Cc(Self::EN | (6 << 16) | (4 << 20))
    }
    /// Enable bit.
    pub fn en(self) -> bool {
        self.0 & Self::EN != 0
    }
    /// Shutdown notification field.
    pub fn shn(self) -> u32 {
        (self.0 >> 14) & 3
    }
    /// Memory page size exponent.
    pub fn mps(self) -> u32 {
        (self.0 >> 7) & 0xf
    }
    /// I/O submission queue entry size exponent.
    pub fn iosqes(self) -> u32 {
        (self.0 >> 16) & 0xf
    }
    /// I/O completion queue entry size exponent.
    pub fn iocqes(self) -> u32 {
        (self.0 >> 20) & 0xf
    }
}

/// CSTS: Controller Status (section 3.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;

    /// Ready bit.
    pub fn rdy(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller Fatal Status bit.
    pub fn cfs(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown Status field: 0 normal, 1 occurring, 2 complete.
    pub fn shst(self) -> u32 {
        (self.0 >> 2) & 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let cap = Cap(0x0000_0020_0000_03ff | (0xf << 24) | (1 << 16) | (2 << 48) | (4 << 52));
        assert_eq!(cap.mqes(), 1024);
        assert!(cap.cqr());
        assert_eq!(cap.timeout_ms(), 15 * 500);
        assert_eq!(cap.dstrd(), 0);
        assert!(cap.css_nvm());
        assert_eq!(cap.mpsmin(), 2);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(Cap(3 << 32).dstrd(), 3);
    }

    #[test]
    fn cc_and_csts_fields() {
        let cc = Cc::enabled();
        assert!(cc.en());
        assert_eq!(cc.mps(), 0);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(Cc(Cc::SHN_NORMAL).shn(), 1);
        assert!(Csts(1).rdy());
        assert!(Csts(2).cfs());
        assert_eq!(Csts(Csts::SHST_COMPLETE).shst(), 2);
    }

    #[test]
    fn doorbells() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 0), 0x1018);
        assert_eq!(cq_head_doorbell(1, 2), 0x1000 + 3 * 16);
    }
}
