//! The target's data path is asynchronous: while a command is at the device, the connection
//! goes on parsing and answering others, and commands complete in the order the device
//! finishes them (raw NVMe/TCP at the byte level, against a device that holds reads of one
//! offset until the test lets them go).
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::{Duration, Instant};

use common::raw::{raw_io_queue, status_of};
use common::{Harness, pattern};
use nvme_spec::command::{SglDescriptor, Sqe, io_opcode};
use nvme_spec::pdu::{CommonHeader, pdu_type};
use nvme_spec::{FromZeros, IntoBytes};

/// Namespace 2 of the open subsystem: 4 KiB blocks, in memory, with the read gate.
const NS2: u32 = 2;

fn read(cid: u16, slba: u64) -> Vec<u8> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::READ;
    sqe.cid.set(cid);
    sqe.nsid.set(NS2);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(4096);
    sqe.set_lba_range(slba, 1);
    capsule(&sqe)
}

fn write_in_capsule(cid: u16, slba: u64, data: &[u8]) -> Vec<u8> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(cid);
    sqe.nsid.set(NS2);
    sqe.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    sqe.dptr.length.set(u32::try_from(data.len()).unwrap());
    sqe.set_lba_range(slba, 1);
    let mut pdu = capsule_with(&sqe, data.len());
    pdu.extend_from_slice(data);
    pdu
}

fn capsule(sqe: &Sqe) -> Vec<u8> {
    capsule_with(sqe, 0)
}

fn capsule_with(sqe: &Sqe, data: usize) -> Vec<u8> {
    let plen = u32::try_from(72 + data).unwrap();
    let pdo = if data == 0 { 0 } else { 72 };
    let mut p = CommonHeader::new(pdu_type::CAPSULE_CMD, 0, 72, pdo, plen)
        .as_bytes()
        .to_vec();
    p.extend_from_slice(sqe.as_bytes());
    p
}

fn cid_of_response(p: &[u8]) -> u16 {
    u16::from_le_bytes([p[20], p[21]])
}

fn cid_of_data(p: &[u8]) -> u16 {
    u16::from_le_bytes([p[8], p[9]])
}

#[test]
fn a_read_at_the_device_does_not_hold_up_the_commands_behind_it() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    let block0 = pattern(4096, 1);
    let block1 = pattern(4096, 2);
    raw.send(&write_in_capsule(10, 0, &block0));
    raw.send(&write_in_capsule(11, 1, &block1));
    for _ in 0..2 {
        assert_eq!(status_of(&raw.recv()), 0);
    }
    h.ns2.hold_reads_at(0);
    raw.send(&read(1, 0));
    let t = Instant::now();
    while h.ns2.held() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the read reached the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Behind the held read: another read and a write, both answered while it waits.
    raw.send(&read(2, 1));
    let data = raw.recv();
    assert_eq!((data[0], cid_of_data(&data)), (pdu_type::C2H_DATA, 2));
    assert_eq!(&data[24..], &block1[..]);
    let r = raw.recv();
    assert_eq!(
        (r[0], cid_of_response(&r), status_of(&r)),
        (pdu_type::CAPSULE_RESP, 2, 0)
    );
    raw.send(&write_in_capsule(3, 2, &block0));
    let r = raw.recv();
    assert_eq!((cid_of_response(&r), status_of(&r)), (3, 0));
    assert_eq!(h.ns2.held(), 1, "the first read is still at the device");
    // Let it go: it completes last, with its own data.
    h.ns2.open_gate();
    let data = raw.recv();
    assert_eq!((data[0], cid_of_data(&data)), (pdu_type::C2H_DATA, 1));
    assert_eq!(&data[24..], &block0[..]);
    let r = raw.recv();
    assert_eq!((cid_of_response(&r), status_of(&r)), (1, 0));
    h.stop();
}

#[test]
fn a_full_queue_of_reads_is_at_the_device_at_once() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    h.ns2.hold_reads_at(0);
    // The raw queue's SQ has 32 entries: 31 reads of the held block are outstanding at once.
    for cid in 0..31u16 {
        raw.send(&read(cid, 0));
    }
    let t = Instant::now();
    while h.ns2.held() < 31 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} of 31 reads at the device",
            h.ns2.held()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The queue depth the exporter shows is the reads at the device.
    let port = &h.target.metrics().ports[0];
    let in_flight = || port.in_flight.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(in_flight(), 31);
    h.ns2.open_gate();
    let mut answered = Vec::new();
    while answered.len() < 31 {
        let p = raw.recv();
        if p[0] == pdu_type::CAPSULE_RESP {
            assert_eq!(status_of(&p), 0);
            answered.push(cid_of_response(&p));
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (0..31).collect::<Vec<_>>());
    // A read completes when its data has gone: the target counts that right after the
    // write that handed it to the socket, which the client may see first.
    let t = Instant::now();
    while in_flight() != 0 || port.read_latency.counts().iter().sum::<u64>() != 31 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "in flight {} after every response",
            in_flight()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    h.stop();
}

fn read_1m(cid: u16) -> Vec<u8> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::READ;
    sqe.cid.set(cid);
    sqe.nsid.set(NS2);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(1 << 20);
    sqe.set_lba_range(0, 256);
    capsule(&sqe)
}

#[test]
fn abort_takes_back_a_read_waiting_for_a_buffer() {
    use nvme_spec::command::admin_opcode;
    use nvme_target::host::{HostController, HostOptions};
    let h = Harness::start();
    let rt = common::rt();
    let opts = HostOptions {
        kato_ms: 120_000,
        ..HostOptions::new(common::OPEN_NQN)
    };
    let mut c = rt.block_on(async {
        let mut c = HostController::connect(h.ports[0], opts.clone())
            .await
            .unwrap();
        c.set_num_queues(1).await.unwrap();
        c
    });
    let mut raw = common::raw::join_io_queue(&h, 0, c.cntlid(), &opts.hostnqn);
    // Eight 1 MiB reads held at the device take the thread's eight 1 MiB buffers; the ninth
    // waits for one.
    h.ns2.hold_reads_at(0);
    for cid in 1..=9 {
        raw.send(&read_1m(cid));
    }
    let t = Instant::now();
    while h.ns2.held() < 8 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "8 reads at the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut abort = Sqe::new_zeroed();
    abort.opcode = admin_opcode::ABORT;
    abort.cdw10.set(1 | (9 << 16));
    // The ninth read cannot get a buffer while the gate holds the eight: once the target
    // has parsed it (another thread may serve the I/O queue), it is aborted.
    let t = Instant::now();
    loop {
        let dw0 = rt
            .block_on(c.admin_command(abort, None, 0))
            .unwrap()
            .0
            .result
            .get();
        if dw0 == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the waiting read was never aborted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = raw.recv();
    assert_eq!(
        (r[0], cid_of_response(&r), status_of(&r)),
        (
            pdu_type::CAPSULE_RESP,
            9,
            nvme_spec::status::ABORT_REQUESTED
        )
    );
    // One at the device is not abortable.
    abort.cdw10.set(1 | (1 << 16));
    let dw0 = rt
        .block_on(c.admin_command(abort, None, 0))
        .unwrap()
        .0
        .result
        .get();
    assert_eq!(dw0, 1, "a read at the device is not aborted");
    h.ns2.open_gate();
    let mut done = Vec::new();
    while done.len() < 8 {
        let p = raw.recv();
        if p[0] == pdu_type::CAPSULE_RESP {
            assert_eq!(status_of(&p), 0);
            done.push(cid_of_response(&p));
        }
    }
    done.sort_unstable();
    assert_eq!(done, (1..=8).collect::<Vec<_>>());
    h.stop();
}
