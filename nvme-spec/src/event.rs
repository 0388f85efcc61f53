//! Asynchronous events (Base 5.2): the completion of an Asynchronous Event Request, and the
//! Asynchronous Event Configuration feature bits that enable the notices.

/// Asynchronous event types (Base figure 146, Dword 0 bits 2:0).
pub mod kind {
    /// Notice.
    pub const NOTICE: u8 = 0x02;
}

/// Notice information (Base figure 150, Dword 0 bits 15:8).
pub mod notice {
    /// Namespace Attribute Changed (Changed Namespace List log).
    pub const NS_ATTR_CHANGED: u8 = 0x00;
    /// Asymmetric Namespace Access Change (ANA log).
    pub const ANA_CHANGE: u8 = 0x03;
    /// Discovery Log Page Change (discovery log; discovery controllers).
    pub const DISCOVERY_CHANGE: u8 = 0xf0;
}

/// Asynchronous Event Configuration feature bits (Base figure 317).
pub mod config {
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Asymmetric Namespace Access Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery Log Page Change Notices.
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// Dword 0 of an Asynchronous Event Request completion: event type, information and the
/// log page that tells more.
pub const fn result(kind: u8, info: u8, log_page: u8) -> u32 {
    (kind as u32 & 0x7) | ((info as u32) << 8) | ((log_page as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ana_change_notice_names_log_0c() {
        assert_eq!(
            result(kind::NOTICE, notice::ANA_CHANGE, crate::log::lid::ANA),
            0x000c_0302
        );
        assert_eq!(
            result(
                kind::NOTICE,
                notice::NS_ATTR_CHANGED,
                crate::log::lid::CHANGED_NS
            ),
            0x0004_0002
        );
    }
}
