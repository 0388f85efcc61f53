//! The NVMe/TCP PDU codec: framing, header checks and digests. Any bytes give a frame, "need
//! more" or a fatal error, never a panic; a frame never points outside its bytes; a strict
//! prefix of a frame never errors; the encoders round-trip.
//!
//! Input: one mode byte (bit 0 header digests, bit 1 data digests, bits 2-3 the PDU size
//! limit), then a stream of PDUs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_spec::IntoBytes;
use nvme_spec::pdu::{CommonHeader, DataHeader, flags, pdu_type};
use nvme_target::buf::OutBuf;
use nvme_target::codec::{self, Digests};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let dg = Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    // The limits a connection uses: before ICReq, admin, I/O (MAXH2CDATA), and none.
    let max_plen =
        [128, 8192 + 80, (128 << 10) + 32, u32::MAX as usize][usize::from(mode >> 2) & 3];
    let any = |_: u8| true;
    while !rest.is_empty() {
        match codec::next_frame(rest, dg, max_plen, any) {
            Ok(Some(f)) => {
                assert!(f.plen >= 8 && f.plen <= rest.len() && f.plen <= max_plen.max(128));
                assert!(f.data.start <= f.data.end && f.data.end <= f.plen);
                // Every strict prefix of a frame only asks for more bytes.
                for cut in [0, 7, 8, f.plen / 2, f.plen - 1] {
                    if cut < f.plen {
                        assert_eq!(codec::next_frame(&rest[..cut], dg, max_plen, any), Ok(None));
                    }
                }
                rest = &rest[f.plen..];
            }
            Ok(None) | Err(_) => break,
        }
    }

    // What the encoders write, the parser reads back.
    let payload = &data[..data.len().min(4096)];
    let mut out = OutBuf::with_capacity(0);
    let (pdo, plen) = codec::data_pdu_lengths(24, payload.len(), dg);
    let h = DataHeader {
        ch: CommonHeader::new(
            pdu_type::C2H_DATA,
            dg.flags(!payload.is_empty()) | flags::LAST_PDU,
            24,
            pdo,
            plen,
        ),
        ..DataHeader::default()
    };
    codec::put_data_pdu(&mut out, h.as_bytes(), dg, payload.len()).copy_from_slice(payload);
    codec::seal_data(&mut out, dg, payload.len());
    let f = codec::next_frame(out.pending(), dg, usize::MAX, any)
        .expect("own PDU valid")
        .expect("own PDU complete");
    assert_eq!(f.plen, out.len());
    assert_eq!(&out.pending()[f.data.clone()], payload);
    assert!(!f.data_digest_error);
});
