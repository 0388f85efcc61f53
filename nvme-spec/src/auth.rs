//! In-band authentication with DH-HMAC-CHAP (Base 2.0 8.13.5, TP 8006): the messages that
//! Authentication Send and Authentication Receive carry, and their identifiers.
//!
//! Every message starts with AUTH-TYPE and AUTH-ID and a transaction identifier (T_ID); the
//! variable parts (challenge, response and DH values) follow the fixed headers below.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Security protocol of Authentication Send/Receive: NVMe in-band authentication (SECP).
pub const SECP_NVME: u8 = 0xe9;
/// SPSP0 and SPSP1 of the DH-HMAC-CHAP protocol.
pub const SPSP_DHCHAP: u8 = 0x01;
/// Authentication protocol identifier of DH-HMAC-CHAP in AUTH_Negotiate.
pub const AUTH_ID_DHCHAP: u8 = 0x01;
/// AUTH_Negotiate SC_C: no secure channel concatenation.
pub const SC_C_NONE: u8 = 0;

/// AUTH-TYPE values.
pub mod auth_type {
    /// Common messages (AUTH_Negotiate, AUTH_Failure1/2).
    pub const COMMON: u8 = 0x00;
    /// DH-HMAC-CHAP messages.
    pub const DHCHAP: u8 = 0x01;
}

/// AUTH-ID values (the message).
pub mod auth_id {
    /// AUTH_Negotiate (common).
    pub const NEGOTIATE: u8 = 0x00;
    /// DH-HMAC-CHAP_Challenge.
    pub const CHALLENGE: u8 = 0x01;
    /// DH-HMAC-CHAP_Reply.
    pub const REPLY: u8 = 0x02;
    /// DH-HMAC-CHAP_Success1.
    pub const SUCCESS1: u8 = 0x03;
    /// DH-HMAC-CHAP_Success2.
    pub const SUCCESS2: u8 = 0x04;
    /// AUTH_Failure2 (common, host to controller).
    pub const FAILURE2: u8 = 0xf0;
    /// AUTH_Failure1 (common, controller to host).
    pub const FAILURE1: u8 = 0xf1;
}

/// Hash function identifiers (HashIDList).
pub mod hash_id {
    /// SHA-256.
    pub const SHA256: u8 = 0x01;
    /// SHA-384.
    pub const SHA384: u8 = 0x02;
    /// SHA-512.
    pub const SHA512: u8 = 0x03;
}

/// Diffie-Hellman group identifiers (DHGIDList).
pub mod dh_group {
    /// No Diffie-Hellman exchange.
    pub const NULL: u8 = 0x00;
    /// ffdhe2048 (RFC 7919).
    pub const FFDHE2048: u8 = 0x01;
    /// ffdhe3072.
    pub const FFDHE3072: u8 = 0x02;
    /// ffdhe4096.
    pub const FFDHE4096: u8 = 0x03;
    /// ffdhe6144.
    pub const FFDHE6144: u8 = 0x04;
    /// ffdhe8192.
    pub const FFDHE8192: u8 = 0x05;
}

/// AUTH_Failure reason code explanations.
pub mod failure {
    /// Reason code: authentication failed.
    pub const REASON_FAILED: u8 = 0x01;
    /// Explanation: the response did not verify.
    pub const FAILED: u8 = 0x01;
    /// Explanation: no protocol offered is usable.
    pub const NOT_USABLE: u8 = 0x02;
    /// Explanation: secure channel concatenation mismatch.
    pub const CONCAT_MISMATCH: u8 = 0x03;
    /// Explanation: no hash function offered is usable.
    pub const HASH_UNUSABLE: u8 = 0x04;
    /// Explanation: no DH group offered is usable.
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    /// Explanation: a message's payload is malformed.
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    /// Explanation: a message out of sequence.
    pub const INCORRECT_PROTOCOL: u8 = 0x07;
}

/// AUTH_Negotiate header (Base 8.13.5.2): followed by NAPD protocol descriptors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct NegotiateHeader {
    /// AUTH-TYPE (common).
    pub auth_type: u8,
    /// AUTH-ID (negotiate).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Secure channel concatenation.
    pub sc_c: u8,
    /// Number of authentication protocol descriptors.
    pub napd: u8,
}
const _: () = assert!(size_of::<NegotiateHeader>() == 8);

/// A DH-HMAC-CHAP protocol descriptor in AUTH_Negotiate (Base 8.13.5.2).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ProtocolDescriptor {
    /// Authentication protocol (DH-HMAC-CHAP).
    pub authid: u8,
    /// Reserved.
    pub rsvd: u8,
    /// Entries in the hash list.
    pub halen: u8,
    /// Entries in the DH group list.
    pub dhlen: u8,
    /// Hash identifiers (bytes 0..30) then DH group identifiers (bytes 30..60).
    pub idlist: [u8; 60],
}
const _: () = assert!(size_of::<ProtocolDescriptor>() == 64);

impl Default for ProtocolDescriptor {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl ProtocolDescriptor {
    /// The hash identifiers offered (at most 30).
    pub fn hashes(&self) -> &[u8] {
        &self.idlist[..usize::from(self.halen).min(30)]
    }

    /// The DH group identifiers offered (at most 30).
    pub fn dh_groups(&self) -> &[u8] {
        &self.idlist[30..30 + usize::from(self.dhlen).min(30)]
    }
}

/// DH-HMAC-CHAP_Challenge header (Base 8.13.5.3): followed by HL bytes of challenge and
/// DHVLEN bytes of the controller's DH value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ChallengeHeader {
    /// AUTH-TYPE (DH-HMAC-CHAP).
    pub auth_type: u8,
    /// AUTH-ID (challenge).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd1: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Hash length.
    pub hl: u8,
    /// Reserved.
    pub rsvd2: u8,
    /// Hash function selected.
    pub hashid: u8,
    /// DH group selected.
    pub dhgid: u8,
    /// Length of the DH value.
    pub dhvlen: U16,
    /// Sequence number S1.
    pub seqnum: U32,
}
const _: () = assert!(size_of::<ChallengeHeader>() == 16);

/// DH-HMAC-CHAP_Reply header (Base 8.13.5.4): followed by HL bytes of response, HL bytes of
/// the host's challenge (meaningful if CVALID) and DHVLEN bytes of the host's DH value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct ReplyHeader {
    /// AUTH-TYPE (DH-HMAC-CHAP).
    pub auth_type: u8,
    /// AUTH-ID (reply).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd1: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Hash length.
    pub hl: u8,
    /// Reserved.
    pub rsvd2: u8,
    /// The host's challenge is valid: it asks the controller to authenticate too.
    pub cvalid: u8,
    /// Reserved.
    pub rsvd3: u8,
    /// Length of the DH value.
    pub dhvlen: U16,
    /// Sequence number S2 (0 when the controller is not to authenticate).
    pub seqnum: U32,
}
const _: () = assert!(size_of::<ReplyHeader>() == 16);

/// DH-HMAC-CHAP_Success1 header (Base 8.13.5.5): followed by HL bytes of the controller's
/// response if RVALID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Success1Header {
    /// AUTH-TYPE (DH-HMAC-CHAP).
    pub auth_type: u8,
    /// AUTH-ID (success 1).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd1: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Hash length.
    pub hl: u8,
    /// Reserved.
    pub rsvd2: u8,
    /// The controller's response follows.
    pub rvalid: u8,
    /// Reserved.
    pub rsvd3: [u8; 7],
}
const _: () = assert!(size_of::<Success1Header>() == 16);

/// DH-HMAC-CHAP_Success2 (Base 8.13.5.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Success2 {
    /// AUTH-TYPE (DH-HMAC-CHAP).
    pub auth_type: u8,
    /// AUTH-ID (success 2).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd1: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Reserved.
    pub rsvd2: [u8; 10],
}
const _: () = assert!(size_of::<Success2>() == 16);

/// AUTH_Failure1 / AUTH_Failure2 (Base 8.13.5.7, 8.13.5.8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Failure {
    /// AUTH-TYPE (common).
    pub auth_type: u8,
    /// AUTH-ID (failure 1 or 2).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd1: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
    /// Reason code.
    pub rescode: u8,
    /// Reason code explanation.
    pub rescode_exp: u8,
}
const _: () = assert!(size_of::<Failure>() == 8);

/// Connect response dword 0, bit 17: the queue must authenticate (AUTHREQ.ATR).
pub const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;
