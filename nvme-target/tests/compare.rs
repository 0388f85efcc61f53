//! Compare, Verify and the fused Compare and Write at the byte level: raw capsules to the
//! target, the statuses and data that come back.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::{Duration, Instant};

use common::raw::{Raw, raw_io_queue, raw_io_queue_at, status_of};
use common::{Harness, pattern};
use nvme_spec::command::{DSM_ATTR_DEALLOCATE, DsmRange, SglDescriptor, Sqe, io_opcode};
use nvme_spec::pdu::{CommonHeader, DataHeader, pdu_type};
use nvme_spec::status;
use nvme_spec::{FromZeros, IntoBytes};
use nvme_target::CommandKind;
use std::sync::atomic::Ordering;

/// Namespace 2 of the open subsystem: 4 KiB blocks, in memory, with the read gate.
const NS2: u32 = 2;
const BS: usize = 4096;
const FIRST: u8 = 1;
const SECOND: u8 = 2;

fn sqe(opcode: u8, cid: u16, slba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::new_zeroed();
    s.opcode = opcode;
    s.cid.set(cid);
    s.nsid.set(NS2);
    s.set_lba_range(slba, nlb);
    s
}

/// A command with its data in the capsule.
fn with_data(mut s: Sqe, fuse: u8, data: &[u8]) -> Vec<u8> {
    s.flags = fuse;
    s.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    s.dptr.length.set(u32::try_from(data.len()).unwrap());
    let plen = u32::try_from(72 + data.len()).unwrap();
    let mut p = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, 72, plen)
        .as_bytes()
        .to_vec();
    p.extend_from_slice(s.as_bytes());
    p.extend_from_slice(data);
    p
}

/// A command whose `len` bytes move by R2T/H2CData or C2HData (no data in the capsule).
fn transport(mut s: Sqe, fuse: u8, len: usize) -> Vec<u8> {
    s.flags = fuse;
    s.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    s.dptr.length.set(u32::try_from(len).unwrap());
    let mut p = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, 0, 72)
        .as_bytes()
        .to_vec();
    p.extend_from_slice(s.as_bytes());
    p
}

fn h2c_data(cid: u16, ttag: u16, data: &[u8]) -> Vec<u8> {
    h2c_piece(cid, ttag, 0, data, true)
}

/// An H2CData PDU with `data` at offset `datao` of the command's data.
fn h2c_piece(cid: u16, ttag: u16, datao: usize, data: &[u8], last: bool) -> Vec<u8> {
    let plen = u32::try_from(24 + data.len()).unwrap();
    let flags = if last { 4 } else { 0 };
    let mut h = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, flags, 24, 24, plen),
        ..DataHeader::default()
    };
    h.cccid.set(cid);
    h.ttag.set(ttag);
    h.datao.set(u32::try_from(datao).unwrap());
    h.datal.set(u32::try_from(data.len()).unwrap());
    let mut p = h.as_bytes().to_vec();
    p.extend_from_slice(data);
    p
}

fn cid_of(resp: &[u8]) -> u16 {
    u16::from_le_bytes([resp[20], resp[21]])
}

/// The next response capsule: (cid, status field).
fn response(raw: &mut Raw) -> (u16, u16) {
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP, "a response");
    (cid_of(&r), status_of(&r))
}

/// Both responses of a pair, in the order they came, sorted by cid.
fn responses(raw: &mut Raw, n: usize) -> Vec<(u16, u16)> {
    let mut v: Vec<_> = (0..n).map(|_| response(raw)).collect();
    v.sort_unstable();
    v
}

fn write(raw: &mut Raw, cid: u16, slba: u64, data: &[u8]) {
    let nlb = u32::try_from(data.len() / BS).unwrap();
    raw.send(&with_data(sqe(io_opcode::WRITE, cid, slba, nlb), 0, data));
    assert_eq!(response(raw), (cid, 0), "write");
}

fn read(raw: &mut Raw, cid: u16, slba: u64, nlb: u32) -> Vec<u8> {
    raw.send(&transport(
        sqe(io_opcode::READ, cid, slba, nlb),
        0,
        nlb as usize * BS,
    ));
    let d = raw.recv();
    assert_eq!(d[0], pdu_type::C2H_DATA);
    assert_eq!(response(raw), (cid, 0), "read");
    d[24..].to_vec()
}

const COMPARE_FAILURE: u16 = status::COMPARE_FAILURE | status::DNR;
const MISSING: u16 = status::ABORTED_MISSING_FUSED | status::DNR;

#[test]
fn compare_matches_and_mismatches() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let a = pattern(2 * BS, 11);
    write(&mut raw, 1, 40, &a);
    raw.send(&with_data(sqe(io_opcode::COMPARE, 2, 40, 2), 0, &a));
    assert_eq!(response(&mut raw), (2, 0));
    let mut b = a.clone();
    b[BS + 7] ^= 1;
    raw.send(&with_data(sqe(io_opcode::COMPARE, 3, 40, 2), 0, &b));
    assert_eq!(response(&mut raw), (3, COMPARE_FAILURE));
    // Host data after an R2T, and the namespace's bounds.
    raw.send(&transport(sqe(io_opcode::COMPARE, 4, 40, 2), 0, a.len()));
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    let ttag = u16::from_le_bytes([r2t[10], r2t[11]]);
    raw.send(&h2c_data(4, ttag, &a));
    assert_eq!(response(&mut raw), (4, 0));
    let blocks = (16 << 20) / BS as u64;
    raw.send(&with_data(sqe(io_opcode::COMPARE, 5, blocks - 1, 2), 0, &a));
    assert_eq!(
        response(&mut raw),
        (5, status::LBA_OUT_OF_RANGE | status::DNR)
    );
    // The SGL must carry exactly the range's bytes.
    raw.send(&with_data(sqe(io_opcode::COMPARE, 6, 40, 2), 0, &a[..BS]));
    assert_eq!(
        response(&mut raw),
        (6, status::SGL_LENGTH_INVALID | status::DNR)
    );
    // Counted as compares, not as "other" commands.
    let m = &h.target.metrics().ports[0];
    let count = |k: CommandKind| m.commands[k as usize].load(Ordering::Relaxed);
    assert_eq!(count(CommandKind::Compare), 5);
    assert_eq!(count(CommandKind::Other), 0);
    h.stop();
}

#[test]
fn verify_reads_any_range_without_moving_data() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    // 300 blocks = 1.2 MiB: more than MDTS (1 MiB), read piece by piece.
    raw.send(&transport(sqe(io_opcode::VERIFY, 1, 0, 300), 0, 0));
    assert_eq!(response(&mut raw), (1, 0));
    let blocks = (16 << 20) / BS as u64;
    raw.send(&transport(sqe(io_opcode::VERIFY, 2, blocks - 3, 4), 0, 0));
    assert_eq!(
        response(&mut raw),
        (2, status::LBA_OUT_OF_RANGE | status::DNR)
    );
    // Data with a Verify is refused: it moves none.
    raw.send(&with_data(sqe(io_opcode::VERIFY, 3, 0, 1), 0, &[0; BS]));
    assert_eq!(
        response(&mut raw),
        (3, status::SGL_LENGTH_INVALID | status::DNR)
    );
    h.stop();
}

#[test]
fn fused_compare_and_write_writes_only_on_a_match() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let a = pattern(BS, 1);
    let b = pattern(BS, 2);
    let c = pattern(BS, 3);
    write(&mut raw, 1, 7, &a);
    raw.send(&with_data(sqe(io_opcode::COMPARE, 2, 7, 1), FIRST, &a));
    raw.send(&with_data(sqe(io_opcode::WRITE, 3, 7, 1), SECOND, &b));
    assert_eq!(responses(&mut raw, 2), vec![(2, 0), (3, 0)]);
    assert_eq!(read(&mut raw, 4, 7, 1), b);
    // The data no longer matches A: the compare fails, the write is aborted.
    raw.send(&with_data(sqe(io_opcode::COMPARE, 5, 7, 1), FIRST, &a));
    raw.send(&with_data(sqe(io_opcode::WRITE, 6, 7, 1), SECOND, &c));
    assert_eq!(
        responses(&mut raw, 2),
        vec![(5, COMPARE_FAILURE), (6, status::ABORTED_FAILED_FUSED)]
    );
    assert_eq!(read(&mut raw, 7, 7, 1), b, "data unchanged");
    h.stop();
}

#[test]
fn a_fused_write_may_get_its_data_after_an_r2t() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let a = pattern(2 * BS, 4);
    let b = pattern(2 * BS, 5);
    write(&mut raw, 1, 100, &a);
    // Both capsules first; the write's data follows its R2T.
    raw.send(&with_data(sqe(io_opcode::COMPARE, 2, 100, 2), FIRST, &a));
    raw.send(&transport(
        sqe(io_opcode::WRITE, 3, 100, 2),
        SECOND,
        b.len(),
    ));
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T, "the write's R2T");
    assert_eq!(u16::from_le_bytes([r2t[8], r2t[9]]), 3);
    let ttag = u16::from_le_bytes([r2t[10], r2t[11]]);
    // The data in two H2CData PDUs, LAST on the second.
    raw.send(&h2c_piece(3, ttag, 0, &b[..BS], false));
    raw.send(&h2c_piece(3, ttag, BS, &b[BS..], true));
    assert_eq!(responses(&mut raw, 2), vec![(2, 0), (3, 0)]);
    assert_eq!(read(&mut raw, 4, 100, 2), b);
    h.stop();
}

#[test]
fn a_fused_command_without_its_partner_is_aborted() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let a = pattern(BS, 6);
    write(&mut raw, 1, 9, &a);
    // A first command followed by something else: missing; the other one runs.
    raw.send(&with_data(sqe(io_opcode::COMPARE, 2, 9, 1), FIRST, &a));
    raw.send(&transport(sqe(io_opcode::READ, 3, 9, 1), 0, BS));
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = raw.recv();
        if p[0] == pdu_type::CAPSULE_RESP {
            got.push((cid_of(&p), status_of(&p)));
        } else {
            assert_eq!(&p[24..], &a[..]);
        }
    }
    got.sort_unstable();
    assert_eq!(got, vec![(2, MISSING), (3, 0)]);
    // A second command with no first.
    raw.send(&with_data(
        sqe(io_opcode::WRITE, 4, 9, 1),
        SECOND,
        &pattern(BS, 7),
    ));
    assert_eq!(response(&mut raw), (4, MISSING));
    // A pair over two ranges: invalid.
    raw.send(&with_data(sqe(io_opcode::COMPARE, 5, 9, 1), FIRST, &a));
    raw.send(&with_data(
        sqe(io_opcode::WRITE, 6, 10, 1),
        SECOND,
        &pattern(BS, 7),
    ));
    assert_eq!(
        responses(&mut raw, 2),
        vec![
            (5, status::INVALID_FIELD | status::DNR),
            (6, status::INVALID_FIELD | status::DNR)
        ]
    );
    // Only Compare and Write fuse.
    raw.send(&transport(sqe(io_opcode::READ, 7, 9, 1), FIRST, BS));
    assert_eq!(response(&mut raw), (7, status::INVALID_FIELD | status::DNR));
    assert_eq!(read(&mut raw, 8, 9, 1), a, "nothing was written");
    h.stop();
}

#[test]
fn a_write_from_another_thread_waits_for_the_fused_operation() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    // The other connection is served by the other port's thread.
    let mut other = raw_io_queue_at(&h, 1, 0);
    let a = pattern(BS, 8);
    let b = pattern(BS, 9);
    let c = pattern(BS, 10);
    write(&mut raw, 1, 20, &a);
    let (landed, submitted) = (h.ns2.landed(), h.ns2.writes());
    assert!(
        landed > 0,
        "a write without a fused operation lands in the mapping"
    );
    // The fused operation's read is held at the device: it holds its range meanwhile.
    h.ns2.hold_reads_at(20 * BS as u64);
    raw.send(&with_data(sqe(io_opcode::COMPARE, 2, 20, 1), FIRST, &a));
    raw.send(&with_data(sqe(io_opcode::WRITE, 3, 20, 1), SECOND, &b));
    let t = Instant::now();
    while h.ns2.held() == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "the compare's read");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A write to the range, then a read elsewhere, from the other thread: the read is
    // answered while the write still waits (a RAM write would have been answered first).
    other.send(&with_data(sqe(io_opcode::WRITE, 1, 20, 1), 0, &c));
    other.send(&transport(sqe(io_opcode::READ, 2, 21, 1), 0, BS));
    let d = other.recv();
    assert_eq!(d[0], pdu_type::C2H_DATA, "the read's data comes first");
    assert_eq!(u16::from_le_bytes([d[8], d[9]]), 2);
    assert_eq!(response(&mut other), (2, 0));
    // Let the fused read go: the compare sees A (not C), so B is written, then C.
    h.ns2.open_gate();
    assert_eq!(responses(&mut raw, 2), vec![(2, 0), (3, 0)]);
    assert_eq!(response(&mut other), (1, 0));
    assert_eq!(read(&mut raw, 4, 20, 1), c);
    // The fused write and the write that waited for its range went to the device through
    // buffers: a write never lands inside a range a fused operation holds.
    assert_eq!((h.ns2.landed(), h.ns2.writes()), (landed, submitted + 2));
    // With no fused operation active, writes take no lock and run at once.
    write(&mut other, 3, 20, &a);
    assert_eq!(h.ns2.landed(), landed + 1);
    h.stop();
}

/// Dataset Management deallocating `ranges` (first block, blocks), the ranges in the capsule.
fn deallocate(cid: u16, ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut s = Sqe::new_zeroed();
    s.opcode = io_opcode::DSM;
    s.cid.set(cid);
    s.nsid.set(NS2);
    s.cdw10.set(u32::try_from(ranges.len() - 1).unwrap());
    s.cdw11.set(DSM_ATTR_DEALLOCATE);
    let mut data = Vec::new();
    for &(slba, nlb) in ranges {
        let mut r = DsmRange::new_zeroed();
        r.slba.set(slba);
        r.nlb.set(nlb);
        data.extend_from_slice(r.as_bytes());
    }
    with_data(s, 0, &data)
}

#[test]
fn a_deallocate_from_another_thread_waits_for_the_fused_operation() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let mut other = raw_io_queue_at(&h, 1, 0);
    let a = pattern(BS, 12);
    let b = pattern(BS, 13);
    write(&mut raw, 1, 30, &a);
    write(&mut raw, 2, 60, &a);
    // The fused operation's read is held at the device: it holds block 30 meanwhile.
    h.ns2.hold_reads_at(30 * BS as u64);
    raw.send(&with_data(sqe(io_opcode::COMPARE, 3, 30, 1), FIRST, &a));
    raw.send(&with_data(sqe(io_opcode::WRITE, 4, 30, 1), SECOND, &b));
    let t = Instant::now();
    while h.ns2.held() == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "the compare's read");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A deallocate of two ranges, one of them the fused range, then one of another range
    // only: the second is answered while the first waits (in RAM it would have been
    // answered first).
    other.send(&deallocate(1, &[(45, 2), (30, 1)]));
    other.send(&deallocate(2, &[(60, 1)]));
    assert_eq!(response(&mut other), (2, 0), "another range is not held up");
    // The compare still sees A (nothing landed inside its window): B is written, then the
    // deallocate runs.
    h.ns2.open_gate();
    assert_eq!(responses(&mut raw, 2), vec![(3, 0), (4, 0)]);
    assert_eq!(response(&mut other), (1, 0));
    assert_eq!(
        read(&mut raw, 5, 30, 1),
        vec![0; BS],
        "deallocated after the write"
    );
    assert_eq!(read(&mut raw, 6, 60, 1), vec![0; BS]);
    h.stop();
}

#[test]
fn identify_reports_compare_verify_fused_and_reservations() {
    let h = Harness::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut c, _q, _ns) = common::connect(
            h.ports[0],
            nvme_target::host::HostOptions::new(common::OPEN_NQN),
        )
        .await;
        let id = c.identify_controller().await.unwrap();
        let oncs = id.oncs.get();
        assert_eq!(oncs & 1, 1, "Compare");
        assert_ne!(oncs & (1 << 5), 0, "Reservations");
        assert_ne!(oncs & (1 << 7), 0, "Verify");
        assert_eq!(id.fuses.get(), 1);
        // MDTS 1 MiB over 4 KiB blocks (the smaller count), 0's based.
        assert_eq!(id.acwu.get(), 255);
        let ns = c.identify_namespace(2).await.unwrap();
        assert_eq!(ns.rescap, 0xfe);
    });
    h.stop();
}
