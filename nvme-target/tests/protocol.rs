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
