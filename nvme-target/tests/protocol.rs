//! Byte-level protocol tests: raw PDUs to a target on 127.0.0.1, checking the bytes that
//! come back, and that malformed input never disturbs other connections.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::raw::{Raw, assert_term_req, capsule, others_unaffected, raw_io_queue, status_of};
use common::{Harness, pattern};
use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode, io_opcode};
use nvme_spec::fabrics::fctype;
use nvme_spec::pdu::{CommonHeader, DataHeader, pdu_type};
use nvme_spec::{FromZeros, IntoBytes, status};
use nvme_target::codec::digest;

#[test]
fn icresp_echoes_digests_and_announces_maxh2cdata() {
    let h = Harness::start();
    for dgst in [0u8, 1, 2, 3] {
        let mut c = Raw::open(&h);
        let r = c.ic(dgst);
        assert_eq!(r.len(), 128);
        assert_eq!(&r[..8], &[pdu_type::IC_RESP, 0, 128, 0, 128, 0, 0, 0]);
        assert_eq!(u16::from_le_bytes([r[8], r[9]]), 0, "PFV");
        assert_eq!(r[10], 0, "CPDA");
        assert_eq!(r[11], dgst, "DGST echoed");
        assert_eq!(
            u32::from_le_bytes(r[12..16].try_into().unwrap()),
            128 * 1024
        );
        assert!(r[16..].iter().all(|&b| b == 0));
    }
    h.stop();
}

#[test]
fn connect_then_property_get_cap() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    let cntlid = c.connect_admin();
    assert_ne!(cntlid, 0);
    let mut sqe = [0u8; 64];
    sqe[0] = admin_opcode::FABRICS;
    sqe[2] = 7; // CID
    sqe[4] = fctype::PROPERTY_GET;
    sqe[39] = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe[40] = 1; // 8 bytes
    c.send(&capsule(&sqe, 0));
    let r = c.recv();
    assert_eq!(&r[..8], &[pdu_type::CAPSULE_RESP, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!(u16::from_le_bytes([r[20], r[21]]), 7, "CID");
    assert_eq!(status_of(&r), 0);
    let cap = u64::from_le_bytes(r[8..16].try_into().unwrap());
    assert_eq!(cap & 0xffff, 127, "MQES");
    assert_eq!((cap >> 37) & 1, 1, "NVM command set");
    h.stop();
}

#[test]
fn commands_before_connect_are_sequence_errors() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.ic(0);
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::IDENTIFY;
    sqe.cid.set(3);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(4096);
    sqe.cdw10.set(1);
    c.send(&capsule(sqe.as_bytes(), 0));
    let r = c.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r) & 0x7ff, status::COMMAND_SEQUENCE_ERROR);
    h.stop();
}

#[test]
fn capsule_before_icreq_is_fatal() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.send(&capsule(&[0; 64], 0));
    assert_term_req(&c.recv(), 1, 0);
    assert!(c.closed());
    others_unaffected(&h);
    h.stop();
}

#[test]
fn unknown_pdu_type_is_fatal() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.ic(0);
    c.send(&[0x08, 0, 24, 0, 24, 0, 0, 0]);
    c.send(&[0; 16]);
    let t = c.recv();
    assert_term_req(&t, 1, 0);
    assert_eq!(
        &t[24..32],
        &[0x08, 0, 24, 0, 24, 0, 0, 0],
        "offending header echoed"
    );
    assert!(c.closed());
    others_unaffected(&h);
    h.stop();
}

#[test]
fn controller_to_host_types_from_the_host_are_fatal() {
    let h = Harness::start();
    for t in [
        pdu_type::CAPSULE_RESP,
        pdu_type::C2H_DATA,
        pdu_type::R2T,
        pdu_type::IC_REQ,
    ] {
        let mut c = Raw::open(&h);
        c.ic(0);
        let hlen: u8 = if t == pdu_type::IC_REQ { 128 } else { 24 };
        let mut pdu = vec![0u8; usize::from(hlen)];
        pdu[..8].copy_from_slice(&[t, 0, hlen, 0, hlen, 0, 0, 0]);
        c.send(&pdu);
        assert_term_req(&c.recv(), 1, 0);
        assert!(c.closed());
    }
    others_unaffected(&h);
    h.stop();
}

#[test]
fn wrong_header_length_is_fatal() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.ic(0);
    let mut pdu = capsule(&[0; 64], 0);
    pdu[2] = 64;
    c.send(&pdu);
    assert_term_req(&c.recv(), 1, 2);
    assert!(c.closed());
    others_unaffected(&h);
    h.stop();
}

#[test]
fn plen_past_the_limit_is_fatal_before_any_allocation() {
    let h = Harness::start();
    for plen in [u32::MAX, 64 << 20, 71] {
        let mut c = Raw::open(&h);
        c.ic(0);
        let mut pdu = capsule(&[0; 64], 0);
        pdu[4..8].copy_from_slice(&plen.to_le_bytes());
        c.send(&pdu[..8]);
        assert_term_req(&c.recv(), 1, 4);
        assert!(c.closed());
    }
    others_unaffected(&h);
    h.stop();
}

#[test]
fn data_offset_inside_the_header_is_fatal() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.ic(0);
    let mut pdu = capsule(&[0; 64], 16);
    pdu[3] = 40;
    pdu.extend_from_slice(&[0; 16]);
    c.send(&pdu);
    assert_term_req(&c.recv(), 1, 3);
    others_unaffected(&h);
    h.stop();
}

#[test]
fn header_digest_mismatch_is_fatal() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    assert_eq!(c.ic(1)[11], 1);
    let ch = CommonHeader::new(pdu_type::CAPSULE_CMD, 1, 72, 0, 76);
    let mut pdu = ch.as_bytes().to_vec();
    pdu.extend_from_slice(&[0; 64]);
    let good = digest(&pdu);
    pdu.extend_from_slice(&(good ^ 1).to_le_bytes());
    c.send(&pdu);
    assert_term_req(&c.recv(), 3, 0);
    assert!(c.closed());
    assert_eq!(
        h.target.metrics().ports[0]
            .digest_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    others_unaffected(&h);
    h.stop();
}

#[test]
fn data_digest_mismatch_fails_the_command_only() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 3);
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(9);
    sqe.nsid.set(1);
    sqe.set_lba_range(0, 8);
    sqe.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    sqe.dptr.length.set(4096);
    let ch = CommonHeader::new(pdu_type::CAPSULE_CMD, 3, 72, 76, 76 + 4096 + 4);
    let mut pdu = ch.as_bytes().to_vec();
    pdu.extend_from_slice(sqe.as_bytes());
    let hd = digest(&pdu);
    pdu.extend_from_slice(&hd.to_le_bytes());
    let data = pattern(4096, 1);
    pdu.extend_from_slice(&data);
    pdu.extend_from_slice(&(digest(&data) ^ 0xff).to_le_bytes());
    raw.send(&pdu);
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(r.len(), 28, "response carries a header digest");
    assert_eq!(status_of(&r) & 0x7ff, status::TRANSIENT_TRANSPORT_ERROR);
    others_unaffected(&h);
    h.stop();
}

#[test]
fn h2c_data_out_of_range_is_fatal() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(4);
    sqe.nsid.set(1);
    sqe.set_lba_range(0, 64);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(32768);
    raw.send(&capsule(sqe.as_bytes(), 0));
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    assert_eq!(u16::from_le_bytes([r2t[8], r2t[9]]), 4, "CCCID");
    assert_eq!(
        u32::from_le_bytes(r2t[16..20].try_into().unwrap()),
        32768,
        "R2TL"
    );
    let ttag = u16::from_le_bytes([r2t[10], r2t[11]]);
    // Data at offset 32768: past the command's data.
    let mut h2c = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, 4, 24, 24, 24 + 512),
        ..DataHeader::default()
    };
    h2c.cccid.set(4);
    h2c.ttag.set(ttag);
    h2c.datao.set(32768);
    h2c.datal.set(512);
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(&[0; 512]);
    raw.send(&pdu);
    assert_term_req(&raw.recv(), 4, 12);
    assert!(raw.closed());
    others_unaffected(&h);
    h.stop();
}

#[test]
fn h2c_data_for_an_unknown_tag_is_fatal() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let mut h2c = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, 4, 24, 24, 24 + 512),
        ..DataHeader::default()
    };
    h2c.ttag.set(77);
    h2c.datal.set(512);
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(&[0; 512]);
    raw.send(&pdu);
    assert_term_req(&raw.recv(), 1, 10);
    others_unaffected(&h);
    h.stop();
}

#[test]
fn hostile_lengths_get_nvme_errors() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    // SGL length that disagrees with NLB.
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::READ;
    sqe.cid.set(1);
    sqe.nsid.set(1);
    sqe.set_lba_range(0, 8);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(1 << 30);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(status_of(&raw.recv()) & 0x7ff, status::SGL_LENGTH_INVALID);
    // A write of 1 GiB: refused before any R2T.
    sqe.opcode = io_opcode::WRITE;
    sqe.set_lba_range(0, 65536);
    raw.send(&capsule(sqe.as_bytes(), 0));
    let r = raw.recv();
    assert_eq!(
        r[0],
        pdu_type::CAPSULE_RESP,
        "no R2T for an oversized write"
    );
    assert_eq!(status_of(&r) & 0x7ff, status::INVALID_FIELD);
    // In-capsule data longer than the SGL says.
    sqe.set_lba_range(0, 1);
    sqe.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    sqe.dptr.length.set(512);
    let mut pdu = capsule(sqe.as_bytes(), 1024);
    pdu.extend_from_slice(&[0; 1024]);
    raw.send(&pdu);
    assert_eq!(status_of(&raw.recv()) & 0x7ff, status::SGL_LENGTH_INVALID);
    // Unknown opcode and unknown namespace.
    sqe.opcode = 0x7e;
    sqe.dptr.length.set(0);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(status_of(&raw.recv()) & 0x7ff, status::INVALID_OPCODE);
    sqe.opcode = io_opcode::FLUSH;
    sqe.nsid.set(99);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(status_of(&raw.recv()) & 0x7ff, status::INVALID_NS);
    // The queue still works.
    sqe.nsid.set(1);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(status_of(&raw.recv()), 0);
    others_unaffected(&h);
    h.stop();
}

/// A PDU with digests as `dgst` (bit 0 header, bit 1 data) negotiated: `hdr` (its common
/// header's digest flags, PDO and PLEN are set here), then `data`, whose digest is spoiled
/// if `spoil`.
fn pdu_with(dgst: u8, mut hdr: Vec<u8>, data: &[u8], spoil: bool) -> Vec<u8> {
    let hd = if dgst & 1 != 0 { 4 } else { 0 };
    let dd = if dgst & 2 != 0 && !data.is_empty() {
        4
    } else {
        0
    };
    let pdo = if data.is_empty() { 0 } else { hdr.len() + hd };
    let plen = hdr.len() + hd + data.len() + dd;
    hdr[1] = (hdr[1] & !3) | (dgst & 1) | if dd != 0 { 2 } else { 0 };
    hdr[3] = pdo as u8;
    hdr[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    let mut v = hdr.clone();
    if hd != 0 {
        v.extend_from_slice(&digest(&hdr).to_le_bytes());
    }
    v.extend_from_slice(data);
    if dd != 0 {
        let d = digest(data) ^ if spoil { 0xff } else { 0 };
        v.extend_from_slice(&d.to_le_bytes());
    }
    v
}

/// Sends `bytes` in pieces with pauses, so the target sees them in separate reads.
fn dribble(raw: &mut Raw, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let c = c.min(bytes.len());
        if c > at {
            raw.send(&bytes[at..c]);
            std::thread::sleep(std::time::Duration::from_millis(5));
            at = c;
        }
    }
}

/// Large H2CData payloads go from the socket straight into the command's buffer: sent in
/// odd pieces (a header alone, a payload cut anywhere, a data digest cut in two) they land
/// whole, with and without digests; a spoiled data digest fails that command only, and the
/// queue goes on.
#[test]
fn large_h2c_payloads_arriving_in_pieces_land_whole() {
    let h = Harness::start();
    for dgst in [0u8, 3] {
        let mut raw = raw_io_queue(&h, dgst);
        for (cid, spoil) in [(1u16, false), (2, dgst & 2 != 0), (3, false)] {
            let slba = 1000 * u64::from(cid) + u64::from(dgst);
            let mut sqe = Sqe::new_zeroed();
            sqe.opcode = io_opcode::WRITE;
            sqe.cid.set(cid);
            sqe.nsid.set(1);
            sqe.set_lba_range(slba, 128);
            sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
            sqe.dptr.length.set(65536);
            let mut cap = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, 0, 0)
                .as_bytes()
                .to_vec();
            cap.extend_from_slice(sqe.as_bytes());
            raw.send(&pdu_with(dgst, cap, &[], false));
            let r2t = raw.recv();
            assert_eq!(r2t[0], pdu_type::R2T);
            let ttag = u16::from_le_bytes([r2t[10], r2t[11]]);
            let data = pattern(65536, slba);
            // Two PDUs of 32 KiB; the second one's digest is the spoiled one.
            for (i, half) in data.chunks(32768).enumerate() {
                let mut h2c = DataHeader {
                    ch: CommonHeader::new(pdu_type::H2C_DATA, 0, 24, 0, 0),
                    ..DataHeader::default()
                };
                if i == 1 {
                    h2c.ch.flags |= 4;
                }
                h2c.cccid.set(cid);
                h2c.ttag.set(ttag);
                h2c.datao.set(32768 * i as u32);
                h2c.datal.set(32768);
                let pdu = pdu_with(dgst, h2c.as_bytes().to_vec(), half, spoil && i == 1);
                let n = pdu.len();
                dribble(&mut raw, &pdu, &[20, 30, 5000, n - 2]);
            }
            let r = raw.recv();
            assert_eq!(r[0], pdu_type::CAPSULE_RESP, "digests {dgst}, cid {cid}");
            let want = if spoil {
                status::TRANSIENT_TRANSPORT_ERROR
            } else {
                status::SUCCESS
            };
            assert_eq!(status_of(&r) & 0x7ff, want, "digests {dgst}, cid {cid}");
        }
        // What landed reads back through another connection.
        let rt = common::rt();
        rt.block_on(async {
            let (_c, mut q, ns) = common::connect(
                h.ports[1],
                nvme_target::host::HostOptions::new(common::OPEN_NQN),
            )
            .await;
            for cid in [1u64, 2, 3].into_iter().filter(|&c| c != 2 || dgst == 0) {
                let slba = 1000 * cid + u64::from(dgst);
                let back = q.read(&ns, slba, 65536).await.unwrap();
                assert!(back == pattern(65536, slba), "digests {dgst}, LBA {slba}");
            }
        });
    }
    others_unaffected(&h);
    h.stop();
}

/// A large H2CData PDU whose header names the wrong tag is fatal before its payload is read.
#[test]
fn large_h2c_data_for_an_unknown_tag_is_fatal() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(4);
    sqe.nsid.set(1);
    sqe.set_lba_range(0, 128);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(65536);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(raw.recv()[0], pdu_type::R2T);
    let mut h2c = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, 4, 24, 24, 24 + 65536),
        ..DataHeader::default()
    };
    h2c.cccid.set(4);
    h2c.ttag.set(9);
    h2c.datal.set(65536);
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(&[0; 4096]);
    raw.send(&pdu);
    assert_term_req(&raw.recv(), 1, 10);
    others_unaffected(&h);
    h.stop();
}
