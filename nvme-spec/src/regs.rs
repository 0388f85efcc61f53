//! Controller properties (Base 3.1.3): register offsets and bit fields.

/// Register offsets.
pub mod offset {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Controller Configuration.
    pub const CC: u32 = 0x14;
    /// Controller Status.
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u32 = 0x20;
}

/// Version 1.3.0, the first with namespace descriptor lists, which hosts then ask for.
pub const VERSION_1_3: u32 = 0x0001_0300;

/// Controller Capabilities (Base 3.1.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, 0's based (bits 15:0).
    pub fn mqes(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
    /// Contiguous Queues Required (bit 16).
    pub fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Timeout in 500 ms units (bits 31:24).
    pub fn to(self) -> u8 {
        ((self.0 >> 24) & 0xff) as u8
    }
    /// Doorbell stride: 2^(2 + DSTRD) bytes (bits 35:32).
    pub fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    /// Command Sets Supported (bits 44:37); bit 0 is the NVM command set.
    pub fn css(self) -> u8 {
        ((self.0 >> 37) & 0xff) as u8
    }
    /// Memory Page Size Minimum: 2^(12 + MPSMIN) (bits 51:48).
    pub fn mpsmin(self) -> u8 {
        ((self.0 >> 48) & 0xf) as u8
    }
    /// Memory Page Size Maximum: 2^(12 + MPSMAX) (bits 55:52).
    pub fn mpsmax(self) -> u8 {
        ((self.0 >> 52) & 0xf) as u8
    }
    /// Builds CAP from its fields.
    pub fn build(mqes: u16, cqr: bool, to: u8, dstrd: u8, css: u8, mpsmin: u8, mpsmax: u8) -> Self {
        Self(
            u64::from(mqes)
                | (u64::from(cqr) << 16)
                | (u64::from(to) << 24)
                | (u64::from(dstrd & 0xf) << 32)
                | (u64::from(css) << 37)
                | (u64::from(mpsmin & 0xf) << 48)
                | (u64::from(mpsmax & 0xf) << 52),
        )
    }
}

/// Controller Configuration (Base 3.1.3.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable (bit 0).
    pub fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (bits 6:4).
    pub fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size: 2^(12 + MPS) (bits 10:7).
    pub fn mps(self) -> u8 {
        ((self.0 >> 7) & 0xf) as u8
    }
    /// Shutdown Notification (bits 15:14): 01b normal, 10b abrupt.
    pub fn shn(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission Queue Entry Size, log2 (bits 19:16).
    pub fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// I/O Completion Queue Entry Size, log2 (bits 23:20).
    pub fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// Builds CC from its fields.
    pub fn build(en: bool, css: u8, mps: u8, shn: u8, iosqes: u8, iocqes: u8) -> Self {
        Self(
            u32::from(en)
                | (u32::from(css & 0x7) << 4)
                | (u32::from(mps & 0xf) << 7)
                | (u32::from(shn & 0x3) << 14)
                | (u32::from(iosqes & 0xf) << 16)
                | (u32::from(iocqes & 0xf) << 20),
        )
    }
}

/// Controller Status (Base 3.1.3.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    /// Shutdown processing occurring.
    pub const SHST_OCCURRING: u8 = 0b01;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u8 = 0b10;

    /// Ready (bit 0).
    pub fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status (bit 1).
    pub fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// Shutdown Status (bits 3:2).
    pub fn shst(self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }
    /// Builds CSTS from its fields.
    pub fn build(rdy: bool, cfs: bool, shst: u8) -> Self {
        Self(u32::from(rdy) | (u32::from(cfs) << 1) | (u32::from(shst & 0x3) << 2))
    }
}

/// Version (Base 3.1.3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vs(pub u32);

impl Vs {
    /// Major version (bits 31:16).
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor version (bits 15:8).
    pub fn minor(self) -> u8 {
        ((self.0 >> 8) & 0xff) as u8
    }
    /// Tertiary version (bits 7:0).
    pub fn tertiary(self) -> u8 {
        (self.0 & 0xff) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let cap = Cap::build(127, true, 30, 0, 1, 0, 4);
        assert_eq!(cap.mqes(), 127);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 30);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.css(), 1);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        // QEMU's emulated controller: MQES 2047, CQR, TO 15, CSS NVM, MPSMAX 4.
        let qemu = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(qemu.mqes(), 2047);
        assert!(qemu.cqr());
        assert_eq!(qemu.to(), 15);
        assert_eq!(qemu.css(), 1);
        assert_eq!(qemu.mpsmax(), 4);
        assert_eq!(Cap::build(0, false, 0, 5, 0, 3, 0).dstrd(), 5);
        assert_eq!(Cap::build(0, false, 0, 5, 0, 3, 0).mpsmin(), 3);
    }

    #[test]
    fn cc_fields() {
        // What Linux writes: EN, CSS 0, MPS 0, IOSQES 6, IOCQES 4.
        let cc = Cc(0x0046_0001);
        assert!(cc.en());
        assert_eq!(cc.css(), 0);
        assert_eq!(cc.mps(), 0);
        assert_eq!(cc.shn(), 0);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        let shut = Cc(0x0046_4001);
        assert_eq!(shut.shn(), 1);
        assert_eq!(Cc::build(true, 6, 2, 2, 6, 4), Cc(0x0046_8161));
        assert_eq!(Cc::build(true, 6, 2, 2, 6, 4).css(), 6);
        assert_eq!(Cc::build(true, 6, 2, 2, 6, 4).mps(), 2);
    }

    #[test]
    fn csts_fields() {
        let c = Csts::build(true, false, Csts::SHST_COMPLETE);
        assert!(c.rdy());
        assert!(!c.cfs());
        assert_eq!(c.shst(), 2);
        assert_eq!(c.0, 0b1001);
        assert!(Csts(2).cfs());
    }

    #[test]
    fn vs_fields() {
        let v = Vs(VERSION_1_3);
        assert_eq!(v.major(), 1);
        assert_eq!(v.minor(), 3);
        assert_eq!(v.tertiary(), 0);
    }
}
