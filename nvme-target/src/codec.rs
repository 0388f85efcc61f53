//! PDU framing shared by the target and the host: header validation, digests and encoders.

use nvme_spec::pdu::{self, CommonHeader, DIGEST_LEN, flags, pdu_type};
use nvme_spec::{FromBytes, IntoBytes};

use crate::buf::OutBuf;

/// CRC32C as NVMe/TCP digests use it (seed and final XOR are inside the crate).
pub fn digest(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Negotiated digest settings of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// Header digests on.
    pub header: bool,
    /// Data digests on.
    pub data: bool,
}

impl Digests {
    /// Header digest length.
    pub fn hd(self) -> usize {
        if self.header { DIGEST_LEN } else { 0 }
    }
    /// Data digest length.
    pub fn dd(self) -> usize {
        if self.data { DIGEST_LEN } else { 0 }
    }
    /// Flags to put in a PDU header (data digest only if the PDU carries data).
    pub fn flags(self, has_data: bool) -> u8 {
        let mut f = 0;
        if self.header {
            f |= flags::HDGSTF;
        }
        if self.data && has_data {
            f |= flags::DDGSTF;
        }
        f
    }
}

/// A fatal framing error: answered by a TermReq and the end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fatal PDU error (FES {fes:#x}, FEI {fei})")]
pub struct Fatal {
    /// Fatal error status.
    pub fes: u16,
    /// Fatal error information (offending byte offset or value).
    pub fei: u32,
}

impl Fatal {
    /// An invalid header field at byte `offset`.
    pub fn field(offset: u32) -> Self {
        Self {
            fes: pdu::fes::INVALID_HEADER_FIELD,
            fei: offset,
        }
    }
}

/// A complete PDU located in a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The common header.
    pub ch: CommonHeader,
    /// Total length of the PDU.
    pub plen: usize,
    /// Data range within the PDU (empty if none).
    pub data: std::ops::Range<usize>,
    /// Whether the data digest did not match (a non-fatal error for the command).
    pub data_digest_error: bool,
}

/// A validated PDU header whose data may not have arrived yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The common header.
    pub ch: CommonHeader,
    /// Total length of the PDU.
    pub plen: usize,
    /// Data range within the PDU (empty if none).
    pub data: std::ops::Range<usize>,
    /// Length of the data digest after the data (0 or 4).
    pub dd: usize,
}

/// Validates the header of the PDU at the front of `buf` (including its header digest).
///
/// Returns `Ok(None)` until the header and its digest are complete. `max_plen` bounds any
/// PDU this side accepts; `allowed` says whether a PDU type may arrive in this direction.
pub fn parse_header(
    buf: &[u8],
    dg: Digests,
    max_plen: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<Option<Header>, Fatal> {
    let Ok((ch, _)) = CommonHeader::read_from_prefix(buf) else {
        return Ok(None);
    };
    if !allowed(ch.pdu_type) {
        return Err(Fatal::field(0));
    }
    let Some(hlen) = pdu::expected_hlen(ch.pdu_type) else {
        return Err(Fatal::field(0));
    };
    if ch.hlen != hlen {
        return Err(Fatal::field(2));
    }
    let hlen = usize::from(hlen);
    let plen = ch.plen.get() as usize;
    let ic = matches!(ch.pdu_type, pdu_type::IC_REQ | pdu_type::IC_RESP);
    let term = matches!(ch.pdu_type, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
    if ic {
        if plen != pdu::IC_LEN {
            return Err(Fatal::field(4));
        }
        if buf.len() < plen {
            return Ok(None);
        }
        return Ok(Some(Header {
            ch,
            plen,
            data: 0..0,
            dd: 0,
        }));
    }
    // TermReqs carry no digests; everything else carries them as negotiated.
    let hd = if term { 0 } else { dg.hd() };
    if plen < hlen + hd || plen > max_plen {
        return Err(Fatal::field(4));
    }
    let has_hd = ch.flags & flags::HDGSTF != 0;
    if !term && has_hd != dg.header {
        return Err(Fatal::field(1));
    }
    let pdo = usize::from(ch.pdo);
    let has_data = plen > hlen + hd && !term;
    let dd = if has_data && dg.data { DIGEST_LEN } else { 0 };
    if has_data {
        if ch.flags & flags::DDGSTF != 0 && !dg.data {
            return Err(Fatal::field(1));
        }
        if pdo < hlen + hd || pdo + dd > plen {
            return Err(Fatal::field(3));
        }
    } else if pdo != 0 && !term && pdo != hlen + hd {
        return Err(Fatal::field(3));
    }
    if buf.len() < hlen + hd {
        return Ok(None);
    }
    if hd != 0 {
        let want = u32::from_le_bytes([buf[hlen], buf[hlen + 1], buf[hlen + 2], buf[hlen + 3]]);
        if digest(&buf[..hlen]) != want {
            return Err(Fatal {
                fes: pdu::fes::HEADER_DIGEST_ERROR,
                fei: 0,
            });
        }
    }
    let data = if has_data { pdo..plen - dd } else { 0..0 };
    Ok(Some(Header { ch, plen, data, dd }))
}

/// Locates the next complete PDU in `buf` (see [`parse_header`]) and checks its data
/// digest.
pub fn next_frame(
    buf: &[u8],
    dg: Digests,
    max_plen: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<Option<Frame>, Fatal> {
    let Some(h) = parse_header(buf, dg, max_plen, allowed)? else {
        return Ok(None);
    };
    if buf.len() < h.plen {
        return Ok(None);
    }
    let mut data_digest_error = false;
    if h.dd != 0 {
        let d = &buf[h.plen - h.dd..h.plen];
        let want = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        data_digest_error = digest(&buf[h.data.clone()]) != want;
    }
    Ok(Some(Frame {
        ch: h.ch,
        plen: h.plen,
        data: h.data,
        data_digest_error,
    }))
}

/// Appends a header-only PDU (`hdr` is its full header), with a header digest if on.
pub fn put_header(out: &mut OutBuf, hdr: &[u8], dg: Digests) {
    out.extend(hdr);
    if dg.header {
        out.extend(&digest(hdr).to_le_bytes());
    }
}

/// Appends a PDU whose `data_len` bytes of data the caller fills in the returned slice;
/// call [`seal_data`] afterwards with the returned offset to add the data digest.
///
/// `hdr` must already carry the right type, hlen, pdo, plen and flags
/// (see [`data_pdu_lengths`]).
pub fn put_data_pdu<'a>(
    out: &'a mut OutBuf,
    hdr: &[u8],
    dg: Digests,
    data_len: usize,
) -> &'a mut [u8] {
    put_header(out, hdr, dg);
    // A PDU without data carries no data digest either.
    let dd = if data_len == 0 { 0 } else { dg.dd() };
    let region = out.append(data_len + dd);
    &mut region[..data_len]
}

/// Adds the data digest over the last `data_len` bytes before the digest slot.
pub fn seal_data(out: &mut OutBuf, dg: Digests, data_len: usize) {
    if !dg.data || data_len == 0 {
        return;
    }
    let p = out.pending();
    let end = p.len();
    let crc = digest(&p[end - DIGEST_LEN - data_len..end - DIGEST_LEN]);
    let m = out.mark();
    out.truncate(m - DIGEST_LEN);
    out.extend(&crc.to_le_bytes());
}

/// `(pdo, plen)` of a PDU with header length `hlen` and `data_len` bytes of data.
pub fn data_pdu_lengths(hlen: usize, data_len: usize, dg: Digests) -> (u8, u32) {
    if data_len == 0 {
        return (0, u32::try_from(hlen + dg.hd()).unwrap_or(u32::MAX));
    }
    let pdo = hlen + dg.hd();
    let plen = pdo + data_len + dg.dd();
    (
        u8::try_from(pdo).unwrap_or(u8::MAX),
        u32::try_from(plen).unwrap_or(u32::MAX),
    )
}

/// Appends a TermReq echoing up to 128 bytes of the offending PDU header.
pub fn put_term_req(out: &mut OutBuf, pdu_type: u8, f: Fatal, offending: &[u8]) {
    let echo = &offending[..offending.len().min(pdu::TERM_REQ_MAX_ECHO)];
    let mut t = pdu::TermReq::default();
    let plen = size_of::<pdu::TermReq>() + echo.len();
    t.ch = CommonHeader::new(
        pdu_type,
        0,
        pdu::SHORT_HLEN,
        0,
        u32::try_from(plen).unwrap_or(0),
    );
    t.fes.set(f.fes);
    t.fei.set(f.fei);
    out.extend(t.as_bytes());
    out.extend(echo);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_spec::pdu::{CapsuleResp, DataHeader};
    use proptest::prelude::*;

    fn any_type(_: u8) -> bool {
        true
    }

    fn data_pdu(dg: Digests, payload: &[u8]) -> Vec<u8> {
        let mut out = OutBuf::with_capacity(0);
        let (pdo, plen) = data_pdu_lengths(24, payload.len(), dg);
        let h = DataHeader {
            ch: CommonHeader::new(
                pdu_type::C2H_DATA,
                dg.flags(!payload.is_empty()),
                24,
                pdo,
                plen,
            ),
            datal: u32::try_from(payload.len()).unwrap().into(),
            ..DataHeader::default()
        };
        let d = put_data_pdu(&mut out, h.as_bytes(), dg, payload.len());
        d.copy_from_slice(payload);
        seal_data(&mut out, dg, payload.len());
        out.pending().to_vec()
    }

    #[test]
    fn crc32c_matches_the_rfc_3720_vector() {
        assert_eq!(digest(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn header_only_pdu_round_trip() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut r = CapsuleResp::default();
        let (pdo, plen) = data_pdu_lengths(24, 0, dg);
        r.ch = CommonHeader::new(pdu_type::CAPSULE_RESP, dg.flags(false), 24, pdo, plen);
        let mut out = OutBuf::with_capacity(0);
        put_header(&mut out, r.as_bytes(), dg);
        let f = next_frame(out.pending(), dg, 1 << 20, any_type)
            .unwrap()
            .unwrap();
        assert_eq!(f.plen, 28);
        assert!(f.data.is_empty());
    }

    #[test]
    fn header_digest_mismatch_is_fatal() {
        let dg = Digests {
            header: true,
            data: false,
        };
        let mut bytes = data_pdu(dg, b"abcd");
        bytes[24] ^= 1;
        let e = next_frame(&bytes, dg, 1 << 20, any_type).unwrap_err();
        assert_eq!(e.fes, pdu::fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn data_digest_mismatch_is_reported() {
        let dg = Digests {
            header: false,
            data: true,
        };
        let mut bytes = data_pdu(dg, b"abcdefgh");
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        let f = next_frame(&bytes, dg, 1 << 20, any_type).unwrap().unwrap();
        assert!(f.data_digest_error);
    }

    #[test]
    fn bad_type_hlen_and_plen_are_fatal() {
        let dg = Digests::default();
        let mut bytes = data_pdu(dg, b"xy");
        bytes[0] = 0x08;
        assert_eq!(
            next_frame(&bytes, dg, 1 << 20, any_type).unwrap_err(),
            Fatal::field(0)
        );
        let mut bytes = data_pdu(dg, b"xy");
        bytes[2] = 25;
        assert_eq!(
            next_frame(&bytes, dg, 1 << 20, any_type).unwrap_err(),
            Fatal::field(2)
        );
        let bytes = data_pdu(dg, &[0; 100]);
        assert_eq!(
            next_frame(&bytes, dg, 64, any_type).unwrap_err(),
            Fatal::field(4)
        );
        let mut bytes = data_pdu(dg, b"xy");
        bytes[3] = 30;
        assert_eq!(
            next_frame(&bytes, dg, 1 << 20, any_type).unwrap_err(),
            Fatal::field(3)
        );
    }

    proptest! {
        #[test]
        fn data_pdus_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096),
                                header in any::<bool>(), data in any::<bool>(), cut in 0usize..8192) {
            let dg = Digests { header, data };
            let bytes = data_pdu(dg, &payload);
            let f = next_frame(&bytes, dg, 1 << 20, any_type).unwrap().unwrap();
            prop_assert_eq!(f.plen, bytes.len());
            prop_assert_eq!(&bytes[f.data.clone()], &payload[..]);
            prop_assert!(!f.data_digest_error);
            // Any strict prefix asks for more bytes, never errors.
            let cut = cut % bytes.len();
            prop_assert_eq!(next_frame(&bytes[..cut], dg, 1 << 20, any_type).unwrap(), None);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       header in any::<bool>(), data in any::<bool>()) {
            let dg = Digests { header, data };
            if let Ok(Some(f)) = next_frame(&bytes, dg, 4096, any_type) {
                prop_assert!(f.plen <= bytes.len());
                prop_assert!(f.data.end <= f.plen);
            }
        }
    }
}
