//! Raw NVMe/TCP bytes for byte-level tests: a blocking connection, one PDU at a time, and the
//! few PDUs and fields such tests build and read by hand.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nvme_spec::IntoBytes;
use nvme_spec::pdu::{CommonHeader, pdu_type};

/// A blocking connection to `addr` with a 10 s read timeout (a test never waits forever).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one PDU: the common header and whatever its PLEN says (at most 2 MiB).
pub fn read_pdu(s: &mut impl Read) -> Vec<u8> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).unwrap();
    let plen = usize::try_from(u32::from_le_bytes(ch[4..8].try_into().unwrap())).unwrap();
    assert!((8..=1 << 21).contains(&plen), "sane PLEN {plen}");
    let mut pdu = ch.to_vec();
    pdu.resize(plen, 0);
    s.read_exact(&mut pdu[8..]).unwrap();
    pdu
}

/// A CapsuleCmd header (no digests) and SQE for a command with `data_len` bytes of
/// in-capsule data to follow.
pub fn capsule(sqe: &[u8], data_len: usize) -> Vec<u8> {
    let pdo = if data_len > 0 { 72 } else { 0 };
    let plen = u32::try_from(72 + data_len).unwrap();
    let ch = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, pdo, plen);
    let mut v = ch.as_bytes().to_vec();
    v.extend_from_slice(sqe);
    v
}

/// The status field (SCT and SC, without the phase bit) of a CapsuleResp PDU.
pub fn status_of(resp: &[u8]) -> u16 {
    u16::from_le_bytes([resp[22], resp[23]]) >> 1
}
