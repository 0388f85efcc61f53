//! Hostile lengths and resource limits at the byte level: every length a host chooses is
//! checked before memory is taken or an R2T goes out, R2T memory is bounded per connection,
//! and every wait on the host (handshake, idle, send, the drain at shutdown) has a deadline.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::rt;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{Raw, assert_term_req, capsule, others_unaffected, raw_io_queue, status_of};
use common::{Harness, OPEN_NQN, connect, pattern};
use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::fabrics::{ConnectCmd, ConnectData, DISCOVERY_NQN, fctype};
use nvme_spec::log::lid;
use nvme_spec::pdu::{CommonHeader, DataHeader, fes, flags, pdu_type};
use nvme_spec::{FromZeros, IntoBytes, put_str, status};
use nvme_target::TargetConfig;
use nvme_target::codec::digest;
use nvme_target::host::HostOptions;

/// Short deadlines so the tests see them pass.
/// Short idle and send deadlines; the handshake keeps a few seconds, so the tests' own
/// connections finish theirs on a loaded machine (see `short_handshake`).
fn short_deadlines(cfg: &mut TargetConfig) {
    cfg.limits.handshake_timeout = Duration::from_secs(5);
    cfg.limits.idle_timeout = Duration::from_millis(300);
    cfg.limits.send_timeout = Duration::from_millis(300);
}

/// An admin Connect SQE (no data pointer yet).
fn connect_sqe(kato_ms: u32) -> ConnectCmd {
    let mut cmd = ConnectCmd::new_zeroed();
    cmd.opcode = admin_opcode::FABRICS;
    cmd.fctype = fctype::CONNECT;
    cmd.cid.set(1);
    cmd.sqsize.set(31);
    cmd.kato.set(kato_ms);
    cmd
}

fn connect_data(subnqn: &str) -> ConnectData {
    let mut d = ConnectData::new_zeroed();
    d.cntlid.set(0xffff);
    put_str(&mut d.subnqn, subnqn);
    put_str(&mut d.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:limits");
    d
}

/// ICReq, then an in-capsule admin Connect to `subnqn` with `kato_ms`.
fn connect_raw(addr: SocketAddr, subnqn: &str, kato_ms: u32) -> Raw {
    let mut c = Raw::to(addr);
    c.ic(0);
    let mut cmd = connect_sqe(kato_ms);
    cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    cmd.dptr.length.set(1024);
    let mut pdu = capsule(cmd.as_bytes(), 1024);
    pdu.extend_from_slice(connect_data(subnqn).as_bytes());
    c.send(&pdu);
    let r = c.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r), 0, "connect");
    c
}

/// A command with `len` bytes to be moved by R2T or C2HData.
fn transport_sqe(opcode: u8, cid: u16, len: u32) -> Sqe {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = opcode;
    sqe.cid.set(cid);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(len);
    sqe
}

fn get_log_page(cid: u16, log: u8, len: u32) -> Sqe {
    let mut sqe = transport_sqe(admin_opcode::GET_LOG_PAGE, cid, len);
    let numd = len / 4 - 1;
    sqe.cdw10.set(u32::from(log) | ((numd & 0xffff) << 16));
    sqe.cdw11.set(numd >> 16);
    sqe
}

#[test]
fn connect_data_must_be_exactly_1024_bytes() {
    let h = Harness::start();
    // 1 GiB by R2T (the attack): a status, no R2T, before any host check.
    for len in [1u32 << 30, 4096, 1023, 0] {
        let mut c = Raw::open(&h);
        c.ic(0);
        let mut cmd = connect_sqe(0);
        cmd.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
        cmd.dptr.length.set(len);
        c.send(&capsule(cmd.as_bytes(), 0));
        let r = c.recv();
        assert_eq!(r[0], pdu_type::CAPSULE_RESP, "no R2T for {len} bytes");
        assert_eq!(status_of(&r) & 0x7ff, status::SGL_LENGTH_INVALID, "{len}");
    }
    // In-capsule data of the wrong length.
    let mut c = Raw::open(&h);
    c.ic(0);
    let mut cmd = connect_sqe(0);
    cmd.dptr.kind = SglDescriptor::DATA_BLOCK_OFFSET;
    cmd.dptr.length.set(2048);
    let mut pdu = capsule(cmd.as_bytes(), 2048);
    pdu.extend_from_slice(connect_data(OPEN_NQN).as_bytes());
    pdu.extend_from_slice(&[0; 1024]);
    c.send(&pdu);
    assert_eq!(status_of(&c.recv()) & 0x7ff, status::SGL_LENGTH_INVALID);
    // The same on the discovery port, which accepts any host.
    let mut c = Raw::to(h.discovery);
    c.ic(0);
    let mut cmd = connect_sqe(0);
    cmd.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    cmd.dptr.length.set(1 << 30);
    c.send(&capsule(cmd.as_bytes(), 0));
    let r = c.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP, "no R2T on the discovery port");
    assert_eq!(status_of(&r) & 0x7ff, status::SGL_LENGTH_INVALID);
    others_unaffected(&h);
    h.stop();
}

#[test]
fn connect_data_by_r2t_of_exactly_1024_bytes_connects() {
    let h = Harness::start();
    let mut c = Raw::open(&h);
    c.ic(0);
    let mut cmd = connect_sqe(0);
    cmd.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    cmd.dptr.length.set(1024);
    c.send(&capsule(cmd.as_bytes(), 0));
    let r2t = c.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    assert_eq!(u32::from_le_bytes(r2t[16..20].try_into().unwrap()), 1024);
    let mut h2c = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, flags::LAST_PDU, 24, 24, 24 + 1024),
        ..DataHeader::default()
    };
    h2c.cccid.set(1);
    h2c.ttag.set(u16::from_le_bytes([r2t[10], r2t[11]]));
    h2c.datal.set(1024);
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(connect_data(OPEN_NQN).as_bytes());
    c.send(&pdu);
    let r = c.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r), 0);
    h.stop();
}

#[test]
fn admin_transfers_are_bounded_by_what_the_command_returns() {
    // The discovery log this host gets: the open subsystem's 2 ports, the current discovery
    // subsystem and one referral.
    let h = Harness::start_with(|cfg| cfg.referrals = vec!["192.0.2.7:8009".parse().unwrap()]);
    let mut c = connect_raw(h.discovery, DISCOVERY_NQN, 0);
    // 1 GiB of discovery log (past MDTS), then 64 KiB (past the page): refused, no data.
    for (cid, len) in [(2u16, 1u32 << 30), (3, 64 << 10)] {
        c.send(&capsule(
            get_log_page(cid, lid::DISCOVERY, len).as_bytes(),
            0,
        ));
        let r = c.recv();
        assert_eq!(r[0], pdu_type::CAPSULE_RESP, "no C2HData for {len} bytes");
        assert_eq!(status_of(&r) & 0x7ff, status::INVALID_FIELD, "{len}");
    }
    // The header plus those 4 entries (5 KiB) read as 8 KiB: the tail is zeroes.
    c.send(&capsule(
        get_log_page(4, lid::DISCOVERY, 8192).as_bytes(),
        0,
    ));
    let d = c.recv();
    assert_eq!(d[0], pdu_type::C2H_DATA);
    assert_eq!(d.len(), 24 + 8192);
    assert_eq!(
        u64::from_le_bytes(d[32..40].try_into().unwrap()),
        4,
        "NUMREC"
    );
    assert!(d[24 + 5 * 1024..].iter().all(|&b| b == 0));
    assert_eq!(status_of(&c.recv()), 0);
    // Identify returns 4 KiB: more is refused.
    let mut id = transport_sqe(admin_opcode::IDENTIFY, 5, 1 << 20);
    id.cdw10.set(u32::from(cns::CONTROLLER));
    c.send(&capsule(id.as_bytes(), 0));
    let r = c.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r) & 0x7ff, status::SGL_LENGTH_INVALID);
    // The admin queue still answers.
    id.dptr.length.set(4096);
    c.send(&capsule(id.as_bytes(), 0));
    assert_eq!(c.recv().len(), 24 + 4096);
    assert_eq!(status_of(&c.recv()), 0);
    h.stop();
}

#[test]
fn r2t_memory_is_bounded_per_connection() {
    let h = Harness::start();
    let mut raw = raw_io_queue(&h, 0);
    // 16 writes of 1 MiB (MDTS): only 4 MiB (the R2T budget) is asked for at once.
    for cid in 0..16u16 {
        let mut sqe = transport_sqe(io_opcode::WRITE, cid, 1 << 20);
        sqe.nsid.set(1);
        sqe.set_lba_range(u64::from(cid) * 2048, 2048);
        raw.send(&capsule(sqe.as_bytes(), 0));
    }
    let mut flush = Sqe::new_zeroed();
    flush.opcode = io_opcode::FLUSH;
    flush.cid.set(100);
    flush.nsid.set(1);
    raw.send(&capsule(flush.as_bytes(), 0));
    let mut tags = Vec::new();
    loop {
        let p = raw.recv();
        if p[0] == pdu_type::CAPSULE_RESP {
            assert_eq!(u16::from_le_bytes([p[20], p[21]]), 100, "the flush answers");
            break;
        }
        assert_eq!(p[0], pdu_type::R2T);
        tags.push((
            u16::from_le_bytes([p[8], p[9]]),
            u16::from_le_bytes([p[10], p[11]]),
        ));
    }
    assert_eq!(tags.len(), 4, "R2Ts within the 4 MiB budget: {tags:?}");
    // Every write is in flight (queue depth), and all of them wait for data.
    let port = &h.target.metrics().ports[0];
    let gauge = |g: &std::sync::atomic::AtomicI64| g.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(gauge(&port.in_flight), 16);
    assert_eq!(gauge(&port.awaiting_data), 16);
    // Answering the first lets the fifth write have its R2T.
    let (cid, ttag) = tags[0];
    let data = pattern(1 << 20, 9);
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        let last = if i == 7 { flags::LAST_PDU } else { 0 };
        let mut h2c = DataHeader {
            ch: CommonHeader::new(pdu_type::H2C_DATA, last, 24, 24, 24 + (128 << 10)),
            ..DataHeader::default()
        };
        h2c.cccid.set(cid);
        h2c.ttag.set(ttag);
        h2c.datao.set((i << 17) as u32);
        h2c.datal.set(128 << 10);
        let mut pdu = h2c.as_bytes().to_vec();
        pdu.extend_from_slice(chunk);
        raw.send(&pdu);
    }
    // The fifth write's R2T goes out once the first one's data is in, and the first write
    // completes when the device has it: in either order.
    let mut two = [raw.recv(), raw.recv()];
    two.sort_by_key(|p| p[0] != pdu_type::CAPSULE_RESP);
    let [r, next] = two;
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(status_of(&r), 0, "the first write completes");
    assert_eq!(gauge(&port.in_flight), 15);
    assert_eq!(gauge(&port.awaiting_data), 15);
    assert_eq!(next[0], pdu_type::R2T);
    assert_eq!(u16::from_le_bytes([next[8], next[9]]), 4, "the fifth write");
    others_unaffected(&h);
    h.stop();
}

#[test]
fn h2c_data_past_maxh2cdata_is_fatal() {
    let h = Harness::start();
    // Without digests the PDU fits the PDU limit and DATAL is past MAXH2CDATA; with them it
    // is already past the PDU limit (PLEN): both end the connection before the data is read.
    for (dgst, fes, fei) in [
        (0u8, fes::DATA_LIMIT_EXCEEDED, 0),
        (3, fes::INVALID_HEADER_FIELD, 4),
    ] {
        let mut raw = raw_io_queue(&h, dgst);
        let hd = if dgst & 1 != 0 { 4 } else { 0 };
        let dd = if dgst & 2 != 0 { 4 } else { 0 };
        let mut sqe = transport_sqe(io_opcode::WRITE, 1, 256 << 10);
        sqe.nsid.set(1);
        sqe.set_lba_range(0, 512);
        let mut pdu = CommonHeader::new(pdu_type::CAPSULE_CMD, dgst & 1, 72, 0, 72 + hd)
            .as_bytes()
            .to_vec();
        pdu.extend_from_slice(sqe.as_bytes());
        if hd != 0 {
            let d = digest(&pdu);
            pdu.extend_from_slice(&d.to_le_bytes());
        }
        raw.send(&pdu);
        let r2t = raw.recv();
        assert_eq!(r2t[0], pdu_type::R2T);
        let datal = (128 << 10) + 4;
        let mut h2c = DataHeader {
            ch: CommonHeader::new(
                pdu_type::H2C_DATA,
                dgst,
                24,
                (24 + hd) as u8,
                24 + hd + datal + dd,
            ),
            ..DataHeader::default()
        };
        h2c.cccid.set(1);
        h2c.ttag.set(u16::from_le_bytes([r2t[10], r2t[11]]));
        h2c.datal.set(datal);
        let mut pdu = h2c.as_bytes().to_vec();
        if hd != 0 {
            let d = digest(&pdu);
            pdu.extend_from_slice(&d.to_le_bytes());
        }
        pdu.resize(pdu.len() + datal as usize + dd as usize, 0);
        // The target may stop reading (and close) before all of it is sent.
        let _ = std::io::Write::write_all(&mut raw.0, &pdu);
        assert_term_req(&raw.recv(), fes, fei);
        raw.expect_eof();
    }
    others_unaffected(&h);
    h.stop();
}

/// A one-second handshake deadline (and the short others).
fn short_handshake(cfg: &mut TargetConfig) {
    short_deadlines(cfg);
    cfg.limits.handshake_timeout = Duration::from_secs(1);
}

#[test]
fn handshakes_must_finish_within_the_handshake_timeout() {
    let h = Harness::start_with(short_handshake);
    // Nothing at all; half an ICReq; an ICReq and half a Connect capsule.
    let mut silent = Raw::open(&h);
    let mut half_ic = Raw::open(&h);
    half_ic.send(&[pdu_type::IC_REQ, 0, 128, 0, 128, 0, 0, 0]);
    let mut half_connect = Raw::open(&h);
    half_connect.ic(0);
    half_connect.send(&capsule(connect_sqe(0).as_bytes(), 1024)[..40]);
    let mut no_connect = Raw::open(&h);
    no_connect.ic(0);
    for c in [
        &mut silent,
        &mut half_ic,
        &mut half_connect,
        &mut no_connect,
    ] {
        c.expect_eof();
    }
    // A finished handshake with keep-alive is not bound by it.
    let mut ok = connect_raw(h.ports[0], OPEN_NQN, 60_000);
    std::thread::sleep(Duration::from_secs(2));
    let mut ka = Sqe::new_zeroed();
    ka.opcode = admin_opcode::KEEP_ALIVE;
    ka.cid.set(2);
    ok.send(&capsule(ka.as_bytes(), 0));
    assert_eq!(status_of(&ok.recv()), 0);
    h.stop();
}

#[test]
fn silent_connections_without_keep_alive_are_closed_when_idle() {
    let h = Harness::start_with(short_deadlines);
    let mut c = connect_raw(h.ports[0], OPEN_NQN, 0);
    c.expect_eof();
    let mut d = connect_raw(h.discovery, DISCOVERY_NQN, 0);
    d.expect_eof();
    // A host that owes R2T data is closed too, keep-alive or not.
    let mut raw = raw_io_queue(&h, 0);
    let mut sqe = transport_sqe(io_opcode::WRITE, 1, 4096);
    sqe.nsid.set(1);
    sqe.set_lba_range(0, 8);
    raw.send(&capsule(sqe.as_bytes(), 0));
    assert_eq!(raw.recv()[0], pdu_type::R2T);
    raw.expect_eof();
    others_unaffected(&h);
    h.stop();
}

/// An I/O queue whose host asked for 64 MiB of reads and reads none of it.
fn stalled_reader(h: &Harness) -> Raw {
    let mut raw = raw_io_queue(h, 0);
    for cid in 0..64u16 {
        let mut sqe = transport_sqe(io_opcode::READ, cid, 1 << 20);
        sqe.nsid.set(1);
        sqe.set_lba_range(0, 2048);
        raw.send(&capsule(sqe.as_bytes(), 0));
    }
    raw
}

#[test]
fn zero_copy_reads_stay_in_flight_until_their_last_byte_is_sent() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::start();
    let raw = stalled_reader(&h);
    let port = &h.target.metrics().ports[0];
    let reads = &port.commands[nvme_target::CommandKind::Read as usize];
    let sent = || port.read_latency.counts().iter().sum::<u64>();
    // Wait (bounded) until all 64 reads arrived and the socket took what it can hold.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = (u64::MAX, i64::MAX);
    loop {
        let now = (sent(), port.in_flight.load(Relaxed));
        if reads.load(Relaxed) == 64 && now == last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reads never settled");
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (completed, in_flight) = last;
    // 64 MiB do not fit in loopback socket buffers: most reads are still being sent.
    assert!(in_flight > 0, "reads waiting for the socket are in flight");
    assert_eq!(u64::try_from(in_flight).unwrap() + completed, 64);
    drop(raw);
    h.stop();
}

#[test]
fn a_host_that_stops_reading_is_dropped_after_the_send_timeout() {
    let h = Harness::start_with(short_deadlines);
    let mut raw = stalled_reader(&h);
    std::thread::sleep(Duration::from_secs(2));
    // What the socket buffers hold, then the end: not 64 MiB and a stall.
    raw.expect_eof();
    others_unaffected(&h);
    h.stop();
}

#[test]
fn shutdown_finishes_while_a_host_stops_reading() {
    let h = Harness::start_with(short_deadlines);
    let mut c = rt().block_on(async {
        let mut c =
            nvme_target::host::HostController::connect(h.ports[1], HostOptions::new(OPEN_NQN))
                .await
                .unwrap();
        c.keep_alive().await.unwrap();
        c
    });
    // The stalled host's output fills the socket; the drain at shutdown ends at its
    // deadline instead of waiting for the host.
    let raw = stalled_reader(&h);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.stop();
        let _ = tx.send(());
    });
    // A generous bound that only a hang exceeds.
    rx.recv_timeout(Duration::from_secs(60))
        .expect("shutdown finished");
    drop(raw);
    assert!(rt().block_on(c.keep_alive()).is_err(), "target gone");
}

/// Get Features Volatile Write Cache.
async fn vwc(c: &mut nvme_target::host::HostController) -> u32 {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::GET_FEATURES;
    sqe.cdw10.set(u32::from(feature::VOLATILE_WC));
    c.admin_command(sqe, None, 0).await.unwrap().0.result.get()
}

#[test]
fn disabling_the_write_cache_makes_every_write_durable() {
    let h = Harness::start();
    rt().block_on(async {
        let (mut c, mut q, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let ns = c.namespace(2).await.unwrap();
        assert_eq!(vwc(&mut c).await, 1, "enabled by default");
        let data = pattern(8192, 5);
        let before = h.ns2.flushes();
        q.write(&ns, 0, &data).await.unwrap();
        assert_eq!(h.ns2.flushes(), before, "write-back: no flush per write");

        let mut set = Sqe::new_zeroed();
        set.opcode = admin_opcode::SET_FEATURES;
        set.cdw10.set(u32::from(feature::VOLATILE_WC));
        set.cdw11.set(0);
        c.admin_command(set, None, 0).await.unwrap();
        assert_eq!(vwc(&mut c).await, 0, "Get Features reflects VWC = 0");
        let after_set = h.ns2.flushes();
        assert!(after_set > before, "disabling flushes what was cached");
        for i in 0..3 {
            q.write(&ns, i * 2, &data).await.unwrap();
        }
        q.write_zeroes(&ns, 0, 4).await.unwrap();
        assert_eq!(
            h.ns2.flushes(),
            after_set + 4,
            "each write and write zeroes flushed before completing"
        );
        assert!(q.read(&ns, 4, 8192).await.unwrap() == data);
    });
    h.stop();
}

#[test]
fn a_quiet_admin_queue_beside_busy_io_queues_is_not_idle() {
    let h = Harness::start_with(short_deadlines);
    rt().block_on(async {
        let opts = HostOptions {
            kato_ms: 0,
            ..HostOptions::new(OPEN_NQN)
        };
        let (mut c, mut q, ns) = connect(h.ports[0], opts).await;
        let data = pattern(4096, 7);
        // I/O for several idle timeouts while the admin queue says nothing.
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(1200) {
            q.write(&ns, 0, &data).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.identify_controller()
            .await
            .expect("admin queue still open");
        // Once the whole controller is silent, it goes, with its I/O queues.
        let t = std::time::Instant::now();
        while q.read(&ns, 0, 4096).await.is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "idle controller closed"
            );
            // Each probe is activity: wait well past the idle timeout between them.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        assert!(c.identify_controller().await.is_err(), "admin queue closed");
    });
    h.stop();
}
