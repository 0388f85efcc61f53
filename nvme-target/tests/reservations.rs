//! Reservations over the wire: three hosts (different host NQNs and 128-bit host IDs) on
//! both ports (two controller threads) register, acquire, preempt, release and clear on one
//! namespace, and each other's reads and writes follow the reservation type's rules; Preempt
//! and Abort aborts the preempted host's writes that wait for their data (raw capsules).
#![allow(clippy::tests_outside_test_module)]

mod common;

use common::rt;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::raw::{Raw, capsule, join_io_queue_at};
use common::{Harness, OPEN_NQN, pattern};
use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode, feature, io_opcode};
use nvme_spec::log::lid;
use nvme_spec::pdu::{CommonHeader, DataHeader, pdu_type};
use nvme_spec::resv::{EXT_HEADER_LEN, RegisteredCtrlExt, ResvNotificationLog, ResvStatusHeader};
use nvme_spec::status;
use nvme_spec::{FromBytes, FromZeros, IntoBytes};
use nvme_target::host::{HostController, HostError, HostOptions, Namespace, Queue};

/// Namespace 2 of the open subsystem (4 KiB blocks, in memory).
const NS2: u32 = 2;
const CONFLICT: u16 = status::RESERVATION_CONFLICT | status::DNR;
const INVALID: u16 = status::INVALID_FIELD | status::DNR;

struct Host {
    ctrl: HostController,
    q: Queue,
    ns: Namespace,
    id: [u8; 16],
}

fn host_options(n: u8) -> HostOptions {
    let mut id = [0x40; 16];
    id[15] = n;
    HostOptions {
        hostnqn: format!(
            "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000{n:02x}"
        ),
        hostid: id,
        kato_ms: 60_000,
        ..HostOptions::new(OPEN_NQN)
    }
}

/// Host `n` (1, 2, 3...) with its own NQN and host ID, on port `port`.
async fn host(h: &Harness, n: u8, port: usize) -> Host {
    let opts = host_options(n);
    let id = opts.hostid;
    let mut ctrl = HostController::connect(h.ports[port], opts).await.unwrap();
    ctrl.set_num_queues(1).await.unwrap();
    let q = ctrl.connect_io_queue(1).await.unwrap();
    let ns = ctrl.namespace(NS2).await.unwrap();
    Host { ctrl, q, ns, id }
}

/// Host `n` on port `port` with two I/O queues: queue 2 through the host library, queue 1
/// a raw connection.
async fn host_with_raw(h: &Harness, n: u8, port: usize) -> (Host, Raw) {
    let opts = host_options(n);
    let id = opts.hostid;
    let mut ctrl = HostController::connect(h.ports[port], opts.clone())
        .await
        .unwrap();
    ctrl.set_num_queues(2).await.unwrap();
    let q = ctrl.connect_io_queue(2).await.unwrap();
    let ns = ctrl.namespace(NS2).await.unwrap();
    let raw = join_io_queue_at(h.ports[port], 0, ctrl.cntlid(), &opts.hostnqn);
    (Host { ctrl, q, ns, id }, raw)
}

async fn io(host: &mut Host, opcode: u8, cdw10: u32, data: &[u8]) -> u16 {
    let mut s = Sqe::new_zeroed();
    s.opcode = opcode;
    s.nsid.set(NS2);
    s.cdw10.set(cdw10);
    let (cqe, _) = host.q.execute(s, Some(data), 0).await.unwrap();
    cqe.status_field()
}

fn keys(a: u64, b: u64) -> Vec<u8> {
    [a.to_le_bytes(), b.to_le_bytes()].concat()
}

/// Reservation Register: action, IEKEY, CPTPL.
async fn register(host: &mut Host, action: u32, iekey: bool, cptpl: u32, cr: u64, nr: u64) -> u16 {
    let cdw10 = action | (u32::from(iekey) << 3) | (cptpl << 30);
    io(host, io_opcode::RESV_REGISTER, cdw10, &keys(cr, nr)).await
}

async fn acquire(host: &mut Host, action: u32, rtype: u32, cr: u64, pr: u64) -> u16 {
    io(
        host,
        io_opcode::RESV_ACQUIRE,
        action | (rtype << 8),
        &keys(cr, pr),
    )
    .await
}

async fn release(host: &mut Host, action: u32, rtype: u32, cr: u64) -> u16 {
    io(
        host,
        io_opcode::RESV_RELEASE,
        action | (rtype << 8),
        &cr.to_le_bytes(),
    )
    .await
}

/// Reservation Report of `len` bytes: (status, header, registrants).
async fn report(
    host: &mut Host,
    len: usize,
    eds: bool,
) -> (u16, ResvStatusHeader, Vec<RegisteredCtrlExt>) {
    let mut s = Sqe::new_zeroed();
    s.opcode = io_opcode::RESV_REPORT;
    s.nsid.set(NS2);
    s.cdw10.set(u32::try_from(len / 4 - 1).unwrap());
    s.cdw11.set(u32::from(eds));
    let (cqe, d) = host.q.execute(s, None, len).await.unwrap();
    if cqe.status_field() != 0 {
        return (
            cqe.status_field(),
            ResvStatusHeader::new_zeroed(),
            Vec::new(),
        );
    }
    let (hdr, _) = ResvStatusHeader::read_from_prefix(&d).unwrap();
    // Only the registrants that fit the reply.
    let n = usize::from(hdr.regctl.get()).min(d.len().saturating_sub(EXT_HEADER_LEN) / 64);
    let regs = (0..n)
        .map(|i| {
            let at = EXT_HEADER_LEN + i * 64;
            RegisteredCtrlExt::read_from_bytes(&d[at..at + 64]).unwrap()
        })
        .collect();
    (0, hdr, regs)
}

fn status_of<T>(r: Result<T, HostError>) -> u16 {
    match r {
        Ok(_) => 0,
        Err(HostError::Status { status, .. }) => status,
        Err(e) => panic!("not a command status: {e}"),
    }
}

/// (read status, write status) of `host` on block 5.
async fn access(host: &mut Host) -> (u16, u16) {
    let ns = host.ns;
    let r = status_of(host.q.read(&ns, 5, 4096).await);
    let w = status_of(host.q.write(&ns, 5, &pattern(4096, 1)).await);
    (r, w)
}

#[test]
fn register_replace_unregister_and_report() {
    let h = Harness::start();
    rt().block_on(async {
        let mut a = host(&h, 1, 0).await;
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa1).await, 0);
        let (st, hdr, regs) = report(&mut a, 4096, true).await;
        assert_eq!(st, 0);
        assert_eq!(
            (hdr.generation.get(), hdr.rtype, hdr.regctl.get(), hdr.ptpls),
            (1, 0, 1, 0)
        );
        assert_eq!(regs[0].hostid, a.id);
        assert_eq!(
            (regs[0].rkey.get(), regs[0].rcsts, regs[0].cntlid.get()),
            (0xa1, 0, 0xffff)
        );
        // The 64-bit host ID structure cannot carry fabrics host IDs.
        assert_eq!(
            report(&mut a, 4096, false).await.0,
            status::HOST_ID_INCONSISTENT | status::DNR
        );
        // A report shorter than the registrants: truncated, still the header.
        let (st, hdr, _) = report(&mut a, 64, true).await;
        assert_eq!((st, hdr.regctl.get()), (0, 1));
        // Registering again: the same key is fine, another is a conflict.
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa1).await, 0);
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa2).await, CONFLICT);
        // Replace needs the current key, unless IEKEY.
        assert_eq!(register(&mut a, 2, false, 0, 0xbad, 0xa2).await, CONFLICT);
        assert_eq!(register(&mut a, 2, false, 0, 0xa1, 0xa2).await, 0);
        assert_eq!(register(&mut a, 2, true, 0, 0xbad, 0xa3).await, 0);
        let (_, hdr, regs) = report(&mut a, 4096, true).await;
        assert_eq!((hdr.generation.get(), regs[0].rkey.get()), (3, 0xa3));
        // Persist Through Power Loss is not offered; clearing it is a no-op.
        assert_eq!(register(&mut a, 2, false, 3, 0xa3, 0xa3).await, INVALID);
        assert_eq!(register(&mut a, 2, false, 2, 0xa3, 0xa3).await, 0);
        // Another host cannot unregister A; A can, with its key.
        let mut b = host(&h, 2, 1).await;
        assert_eq!(register(&mut b, 1, false, 0, 0xa3, 0).await, CONFLICT);
        assert_eq!(register(&mut a, 1, false, 0, 0xa3, 0).await, 0);
        assert_eq!(report(&mut b, 4096, true).await.1.regctl.get(), 0);
        // Malformed: the wrong data length, an unknown action.
        assert_eq!(
            io(&mut a, io_opcode::RESV_REGISTER, 0, &[0; 8]).await,
            status::SGL_LENGTH_INVALID | status::DNR
        );
        assert_eq!(
            io(&mut a, io_opcode::RESV_REGISTER, 5, &keys(0, 1)).await,
            INVALID
        );
    });
    h.stop();
}

#[test]
fn every_type_follows_its_access_rules() {
    let h = Harness::start();
    rt().block_on(async {
        // A holds, B is registered (on the other port's thread), C is not.
        let mut a = host(&h, 1, 0).await;
        let mut b = host(&h, 2, 1).await;
        let mut c = host(&h, 3, 0).await;
        assert_eq!(register(&mut a, 0, false, 0, 0, 1).await, 0);
        assert_eq!(register(&mut b, 0, false, 0, 0, 2).await, 0);
        let ok = (0, 0);
        let ro = (0, CONFLICT);
        let none = (CONFLICT, CONFLICT);
        // (type, registrant B, non-registrant C)
        let table = [
            (1, ro, ro),
            (2, none, none),
            (3, ok, ro),
            (4, ok, none),
            (5, ok, ro),
            (6, ok, none),
        ];
        for (t, registrant, other) in table {
            assert_eq!(acquire(&mut a, 0, t, 1, 0).await, 0, "type {t}");
            let (_, hdr, regs) = report(&mut c, 4096, true).await;
            assert_eq!(u32::from(hdr.rtype), t);
            let holders: Vec<bool> = regs.iter().map(|r| r.rcsts == 1).collect();
            // The All Registrants types make every registrant a holder.
            assert_eq!(holders, vec![true, t >= 5], "type {t}");
            assert_eq!(access(&mut a).await, ok, "type {t}: holder");
            assert_eq!(access(&mut b).await, registrant, "type {t}: registrant");
            assert_eq!(access(&mut c).await, other, "type {t}: not registered");
            // Another host cannot take it; the holder cannot change its type by acquiring.
            assert_eq!(acquire(&mut c, 0, t, 0, 0).await, CONFLICT);
            if t < 5 {
                assert_eq!(acquire(&mut b, 0, t, 2, 0).await, CONFLICT);
            }
            let t2 = if t == 1 { 2 } else { 1 };
            assert_eq!(acquire(&mut a, 0, t2, 1, 0).await, CONFLICT);
            // Releasing with the wrong type is invalid; with the right one it is gone.
            assert_eq!(release(&mut a, 0, t2, 1).await, INVALID);
            assert_eq!(release(&mut a, 0, t, 1).await, 0);
            assert_eq!(access(&mut c).await, ok, "type {t}: released");
        }
    });
    h.stop();
}

#[test]
fn preempt_clear_and_the_notification_log() {
    let h = Harness::start();
    rt().block_on(async {
        let mut a = host(&h, 1, 0).await;
        let mut b = host(&h, 2, 1).await;
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa).await, 0);
        assert_eq!(register(&mut b, 0, false, 0, 0, 0xb).await, 0);
        assert_eq!(acquire(&mut a, 0, 1, 0xa, 0).await, 0);
        // A waits for an event on its admin queue.
        let mut aer = Sqe::new_zeroed();
        aer.opcode = admin_opcode::ASYNC_EVENT;
        let aer_cid = a.ctrl.admin().submit(aer, None, 0).unwrap();
        a.ctrl.admin().flush().await.unwrap();
        // B preempts A: B holds Exclusive Access, A is no longer registered.
        assert_eq!(
            acquire(&mut b, 1, 2, 0xa, 0xa).await,
            CONFLICT,
            "B's key is 0xb"
        );
        assert_eq!(acquire(&mut b, 1, 2, 0xb, 0xa).await, 0);
        assert_eq!(access(&mut a).await, (CONFLICT, CONFLICT));
        let (_, hdr, regs) = report(&mut b, 4096, true).await;
        assert_eq!((hdr.rtype, hdr.regctl.get(), regs[0].hostid), (2, 1, b.id));
        assert_eq!(register(&mut a, 2, false, 0, 0xa, 0xa).await, CONFLICT);
        // A's held event: Reservation Log Page Available.
        let ev = a.ctrl.admin().next().await.unwrap();
        assert_eq!((ev.cid, ev.status()), (aer_cid, 0));
        assert_eq!(ev.cqe.result.get(), 0x0080_0006);
        a.ctrl.admin().release(ev.cid);
        let log = a
            .ctrl
            .get_log_page(lid::RESV_NOTIFICATION, 0, 64)
            .await
            .unwrap();
        let e = ResvNotificationLog::read_from_bytes(&log).unwrap();
        assert_eq!(
            (e.count.get(), e.kind, e.available, e.nsid.get()),
            (1, 1, 0, NS2)
        );
        // Read again: empty.
        let log = a
            .ctrl
            .get_log_page(lid::RESV_NOTIFICATION, 0, 64)
            .await
            .unwrap();
        assert_eq!(
            ResvNotificationLog::read_from_bytes(&log)
                .unwrap()
                .count
                .get(),
            0
        );
        // Preempt and abort, then clear: everyone may write again.
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa).await, 0);
        assert_eq!(acquire(&mut a, 2, 1, 0xa, 0xb).await, 0);
        assert_eq!(access(&mut b).await, (0, CONFLICT));
        assert_eq!(
            release(&mut b, 1, 0, 0xb).await,
            CONFLICT,
            "B was preempted"
        );
        assert_eq!(release(&mut a, 1, 0, 0xa).await, 0);
        let (_, hdr, _) = report(&mut b, 4096, true).await;
        assert_eq!((hdr.rtype, hdr.regctl.get()), (0, 0));
        assert_eq!(access(&mut b).await, (0, 0));
    });
    h.stop();
}

#[test]
fn notification_mask_and_persistence_features() {
    let h = Harness::start();
    rt().block_on(async {
        let mut a = host(&h, 1, 0).await;
        let mut b = host(&h, 2, 1).await;
        let feat = |opcode: u8, fid: u8, nsid: u32, cdw11: u32| {
            let mut s = Sqe::new_zeroed();
            s.opcode = opcode;
            s.nsid.set(nsid);
            s.cdw10.set(u32::from(fid));
            s.cdw11.set(cdw11);
            s
        };
        let st = |r: Result<(nvme_spec::command::Cqe, Vec<u8>), HostError>| status_of(r);
        // Persistence: off, and it cannot be turned on.
        let set = feat(admin_opcode::SET_FEATURES, feature::RESV_PERSIST, NS2, 1);
        assert_eq!(st(a.ctrl.admin_command(set, None, 0).await), INVALID);
        let get = feat(admin_opcode::GET_FEATURES, feature::RESV_PERSIST, NS2, 0);
        let (cqe, _) = a.ctrl.admin_command(get, None, 0).await.unwrap();
        assert_eq!(cqe.result.get(), 0);
        // Mask Registration Preempted on every namespace.
        let set = feat(
            admin_opcode::SET_FEATURES,
            feature::RESV_MASK,
            u32::MAX,
            1 << 1,
        );
        a.ctrl.admin_command(set, None, 0).await.unwrap();
        let get = feat(admin_opcode::GET_FEATURES, feature::RESV_MASK, NS2, 0);
        let (cqe, _) = a.ctrl.admin_command(get, None, 0).await.unwrap();
        assert_eq!(cqe.result.get(), 1 << 1);
        let bad = feat(admin_opcode::GET_FEATURES, feature::RESV_MASK, 99, 0);
        assert_eq!(
            st(a.ctrl.admin_command(bad, None, 0).await),
            status::INVALID_NS | status::DNR
        );
        assert_eq!(register(&mut a, 0, false, 0, 0, 1).await, 0);
        assert_eq!(register(&mut b, 0, false, 0, 0, 2).await, 0);
        assert_eq!(acquire(&mut b, 1, 1, 2, 1).await, 0);
        let log = a
            .ctrl
            .get_log_page(lid::RESV_NOTIFICATION, 0, 64)
            .await
            .unwrap();
        assert_eq!(
            ResvNotificationLog::read_from_bytes(&log)
                .unwrap()
                .count
                .get(),
            0,
            "masked"
        );
        // B (not masked) hears of a release of a Registrants Only reservation by A.
        assert_eq!(register(&mut a, 0, false, 0, 0, 1).await, 0);
        assert_eq!(acquire(&mut b, 0, 3, 2, 0).await, 0);
        assert_eq!(release(&mut b, 0, 3, 2).await, 0);
        let log = a
            .ctrl
            .get_log_page(lid::RESV_NOTIFICATION, 0, 64)
            .await
            .unwrap();
        let e = ResvNotificationLog::read_from_bytes(&log).unwrap();
        assert_eq!(
            (e.count.get(), e.kind),
            (1, 2),
            "Reservation Released reaches A"
        );
    });
    h.stop();
}

/// A write of `nlb` 4 KiB blocks of namespace 2 whose data follows an R2T.
fn raw_write(cid: u16, slba: u64, nlb: u32) -> Vec<u8> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(cid);
    sqe.nsid.set(NS2);
    sqe.set_lba_range(slba, nlb);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(nlb * 4096);
    capsule(sqe.as_bytes(), 0)
}

/// All of a command's data in one H2CData PDU (LAST).
fn h2c_data(cid: u16, ttag: u16, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).unwrap();
    let mut h = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, 4, 24, 24, 24 + len),
        ..DataHeader::default()
    };
    h.cccid.set(cid);
    h.ttag.set(ttag);
    h.datal.set(len);
    let mut pdu = h.as_bytes().to_vec();
    pdu.extend_from_slice(data);
    pdu
}

/// The R2T for command `cid`: its transfer tag.
fn r2t_for(raw: &mut Raw, cid: u16) -> u16 {
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    assert_eq!(
        u16::from_le_bytes([r2t[8], r2t[9]]),
        cid,
        "R2T for cid {cid}"
    );
    u16::from_le_bytes([r2t[10], r2t[11]])
}

/// The next PDU, a response: (cid, status field).
fn response(raw: &mut Raw) -> (u16, u16) {
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP, "a response");
    (
        u16::from_le_bytes([r[20], r[21]]),
        common::raw::status_of(&r),
    )
}

/// Waits until port `port` holds `n` commands waiting for their data (the raw queue may be
/// served by another thread than the one the test talks to next).
fn until_awaiting(h: &Harness, port: usize, n: i64) {
    let m = &h.target.metrics().ports[port];
    let until = Instant::now() + Duration::from_secs(10);
    while m.awaiting_data.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < until, "the writes never waited for data");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn preempt_and_abort_aborts_the_preempted_hosts_waiting_writes() {
    // One R2T slot: B's second write waits for it without an R2T.
    let h = Harness::start_with(|cfg| cfg.max_r2t_in_flight = 1);
    let rt = rt();
    let mut a = rt.block_on(host(&h, 1, 0));
    // B on the other port (another controller thread).
    let (mut b, mut raw) = rt.block_on(host_with_raw(&h, 2, 1));
    rt.block_on(async {
        assert_eq!(register(&mut a, 0, false, 0, 0, 0xa).await, 0);
        assert_eq!(register(&mut b, 0, false, 0, 0, 0xb).await, 0);
        assert_eq!(
            acquire(&mut b, 0, 1, 0xb, 0).await,
            0,
            "B holds Write Exclusive"
        );
    });
    let d = pattern(8 * 4096, 21);
    // cid 1 has its R2T out, cid 2 waits for the slot.
    raw.send(&raw_write(1, 0, 8));
    let ttag = r2t_for(&mut raw, 1);
    raw.send(&raw_write(2, 8, 8));
    until_awaiting(&h, 1, 2);
    // A preempts and aborts B: the write still queued ends at once, without its R2T.
    assert_eq!(rt.block_on(acquire(&mut a, 2, 1, 0xa, 0xb)), 0);
    assert_eq!(response(&mut raw), (2, status::ABORTED_PREEMPT_ABORT));
    // The one whose R2T went out ends when the data it asked for has come, unexecuted.
    raw.send(&h2c_data(1, ttag, &d));
    assert_eq!(response(&mut raw), (1, status::ABORTED_PREEMPT_ABORT));
    rt.block_on(async {
        let ns = a.ns;
        let now = a.q.read(&ns, 0, 16 * 4096).await.unwrap();
        assert!(now[..d.len()] != d[..], "an aborted write was executed");
        // B is no longer registered: A's Write Exclusive keeps B from writing.
        assert_eq!(access(&mut b).await, (0, CONFLICT));
        assert_eq!(register(&mut b, 0, false, 0, 0, 0xb).await, 0);
    });
    // A plain Preempt aborts nothing: B's writes wait for their data, then meet the
    // reservation as it is when they run.
    raw.send(&raw_write(4, 0, 8));
    let ttag = r2t_for(&mut raw, 4);
    raw.send(&raw_write(5, 8, 8));
    until_awaiting(&h, 1, 2);
    assert_eq!(rt.block_on(acquire(&mut a, 1, 1, 0xa, 0xb)), 0);
    raw.send(&h2c_data(4, ttag, &d));
    // (Had cid 5 been aborted, its response would come first: the queue completes aborts
    // before it reads more input.)
    assert_eq!(response(&mut raw), (4, CONFLICT));
    let ttag = r2t_for(&mut raw, 5);
    raw.send(&h2c_data(5, ttag, &d));
    assert_eq!(response(&mut raw), (5, CONFLICT));
    drop(raw);
    drop((a, b));
    h.stop();
}

/// Host A on port 0, host B with a raw queue on port 1, nobody registered, and the first
/// 64 KiB of namespace 2 written by A with a pattern of `seed` (returned).
fn landing_hosts(
    h: &Harness,
    rt: &tokio::runtime::Runtime,
    seed: u8,
) -> (Host, Host, Raw, Vec<u8>) {
    let mut a = rt.block_on(host(h, 1, 0));
    let (b, raw) = rt.block_on(host_with_raw(h, 2, 1));
    let old = pattern(16 * 4096, seed.into());
    let ns = a.ns;
    rt.block_on(async { a.q.write(&ns, 0, &old).await.unwrap() });
    (a, b, raw, old)
}

#[test]
fn a_write_landing_in_memory_stops_when_a_host_registers() {
    let h = Harness::start();
    let rt = rt();
    let (mut a, _b, mut raw, old) = landing_hosts(&h, &rt, 40);
    let ns = a.ns;
    // Nobody is registered: both R2Ts' data would land straight in the device's memory
    // (8 KiB through the input buffer, 32 KiB mostly read from the socket into it).
    let landed = h.ns2.landed();
    raw.send(&raw_write(1, 0, 2));
    let small = r2t_for(&mut raw, 1);
    raw.send(&raw_write(2, 4, 8));
    let large = r2t_for(&mut raw, 2);
    assert_eq!(h.ns2.landed(), landed + 2);
    // A registers before the data comes: A could be about to fence B off, so none of it
    // lands, and the writes fail with a status the host retries.
    assert_eq!(rt.block_on(register(&mut a, 0, false, 0, 0, 0xa)), 0);
    raw.send(&h2c_data(1, small, &pattern(2 * 4096, 41)));
    assert_eq!(response(&mut raw), (1, status::COMMAND_INTERRUPTED));
    let new = pattern(8 * 4096, 42);
    raw.send(&h2c_data(2, large, &new));
    assert_eq!(response(&mut raw), (2, status::COMMAND_INTERRUPTED));
    let now = rt.block_on(async { a.q.read(&ns, 0, 16 * 4096).await.unwrap() });
    assert!(now == old, "nothing landed");
    // The retry goes through a buffer and meets the reservation as it is (registered, none
    // held: B may write).
    raw.send(&raw_write(3, 4, 8));
    let ttag = r2t_for(&mut raw, 3);
    raw.send(&h2c_data(3, ttag, &new));
    assert_eq!(response(&mut raw), (3, 0));
    assert_eq!(h.ns2.landed(), landed + 2, "the retry did not land");
    let now = rt.block_on(async { a.q.read(&ns, 4, 8 * 4096).await.unwrap() });
    assert!(now == new, "the retry was written");
    h.stop();
}

#[test]
fn a_registration_in_the_middle_of_landing_data_stops_the_rest() {
    let h = Harness::start();
    let rt = rt();
    let (mut a, _b, mut raw, old) = landing_hosts(&h, &rt, 50);
    let ns = a.ns;
    raw.send(&raw_write(1, 0, 16));
    let ttag = r2t_for(&mut raw, 1);
    // The first 24 KiB of the payload, then a pause (it has most likely landed by the time
    // A registers; the checks below hold either way).
    let pdu = h2c_data(1, ttag, &pattern(16 * 4096, 51));
    let cut = 24 + 24 * 1024;
    raw.send(&pdu[..cut]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rt.block_on(register(&mut a, 0, false, 0, 0, 0xa)), 0);
    raw.send(&pdu[cut..]);
    assert_eq!(response(&mut raw), (1, status::COMMAND_INTERRUPTED));
    // What came after the registration did not land (what came before may have: a failed
    // write leaves its blocks indeterminate).
    let now = rt.block_on(async { a.q.read(&ns, 0, 16 * 4096).await.unwrap() });
    assert!(
        now[32 * 1024..] == old[32 * 1024..],
        "the rest did not land"
    );
    // The connection goes on.
    assert_eq!(
        rt.block_on(async { a.q.read(&ns, 0, 4096).await.unwrap().len() }),
        4096
    );
    raw.send(&raw_write(2, 0, 1));
    let ttag = r2t_for(&mut raw, 2);
    raw.send(&h2c_data(2, ttag, &old[..4096]));
    assert_eq!(response(&mut raw), (2, 0));
    h.stop();
}
