//! Admin and I/O commands beyond the basics: identify bits, firmware slot and command
//! effects logs, Error Recovery, controller lists, Abort of a command
//! waiting for its data, the anonymous (empty) host NQN, and the host library's MDTS.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::rt;

use common::raw::{capsule, join_io_queue, status_of};
use common::{ALLOWED_HOST, Harness, LOCKED_NQN, OPEN_NQN, pattern};
use nvme_spec::command::{SglDescriptor, Sqe, admin_opcode, cns, feature, io_opcode};
use nvme_spec::log::{CommandEffectsLog, FirmwareSlotLog, effects, lid};
use nvme_spec::pdu::{CommonHeader, DataHeader, pdu_type};
use nvme_spec::{FromBytes, FromZeros, IntoBytes, get_str, status};
use nvme_target::host::{HostController, HostError, HostOptions, Namespace, Queue};

/// The status field of a failed host-library command (0 for success).
fn status_field<T>(r: Result<T, HostError>) -> u16 {
    match r {
        Ok(_) => 0,
        Err(HostError::Status { status, .. }) => status,
        Err(e) => panic!("not a command status: {e}"),
    }
}

async fn controller(h: &Harness) -> (HostController, Queue, Namespace) {
    let mut c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN))
        .await
        .unwrap();
    c.set_num_queues(2).await.unwrap();
    let q = c.connect_io_queue(1).await.unwrap();
    let ns = c.namespace(1).await.unwrap();
    (c, q, ns)
}

fn admin_sqe(opcode: u8, cdw10: u32, cdw11: u32) -> Sqe {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = opcode;
    sqe.cdw10.set(cdw10);
    sqe.cdw11.set(cdw11);
    sqe
}

#[test]
fn identify_reports_ports_logs_firmware_and_optional_commands() {
    let h = Harness::start();
    rt().block_on(async {
        let (mut c, _q, _ns) = controller(&h).await;
        let id = c.identify_controller().await.unwrap();
        // Two ports in the harness: multi-port (bit 0) and multi-controller (bit 1).
        assert_eq!(id.cmic & 0x3, 0x3, "CMIC");
        assert_eq!(id.lpa & 0x2, 0x2, "LPA commands supported and effects");
        assert_eq!(id.frmw, 0x3, "one read-only firmware slot");

        let fw = c.get_log_page(lid::FW_SLOT, 0, 512).await.unwrap();
        let fw = FirmwareSlotLog::read_from_bytes(&fw).unwrap();
        assert_eq!(fw.afi, 1, "slot 1 active");
        assert_eq!(
            get_str(&fw.frs[0]),
            get_str(&id.fr),
            "slot 1 holds the running firmware"
        );
        assert!(
            fw.frs[1..].iter().all(|f| f == &[0; 8]),
            "other slots empty"
        );

        let e = c.get_log_page(lid::CMD_EFFECTS, 0, 4096).await.unwrap();
        let e = CommandEffectsLog::read_from_bytes(&e).unwrap();
        let acs = |op: u8| e.acs[usize::from(op)].get();
        let iocs = |op: u8| e.iocs[usize::from(op)].get();
        assert_eq!(acs(admin_opcode::IDENTIFY), effects::CSUPP);
        assert_eq!(
            acs(admin_opcode::CREATE_SQ),
            0,
            "queue creation is Connect's job"
        );
        assert_eq!(iocs(io_opcode::WRITE), effects::CSUPP | effects::LBCC);
        assert_eq!(iocs(io_opcode::READ), effects::CSUPP);
        assert_eq!(iocs(io_opcode::DSM), effects::CSUPP | effects::LBCC);
        assert_eq!(iocs(0x7e), 0);
    });
    h.stop();
}

#[test]
fn error_recovery_feature_keeps_tler_and_refuses_dulbe() {
    let h = Harness::start();
    rt().block_on(async {
        let (mut c, _q, _ns) = controller(&h).await;
        let fid = u32::from(feature::ERROR_RECOVERY);
        c.admin_command(admin_sqe(admin_opcode::SET_FEATURES, fid, 7), None, 0)
            .await
            .unwrap();
        let (cqe, _) = c
            .admin_command(admin_sqe(admin_opcode::GET_FEATURES, fid, 0), None, 0)
            .await
            .unwrap();
        assert_eq!(cqe.result.get(), 7, "TLER read back");
        let r = c
            .admin_command(admin_sqe(admin_opcode::SET_FEATURES, fid, 1 << 16), None, 0)
            .await;
        assert_eq!(status_field(r) & 0x7ff, status::INVALID_FIELD, "DULBE");
    });
    h.stop();
}

#[test]
fn host_identifier_is_the_one_from_connect() {
    let h = Harness::start();
    rt().block_on(async {
        let (mut c, _q, _ns) = controller(&h).await;
        let fid = u32::from(feature::HOST_ID);
        let (_, d) = c
            .admin_command(admin_sqe(admin_opcode::GET_FEATURES, fid, 1), None, 16)
            .await
            .unwrap();
        assert_eq!(d, HostOptions::new(OPEN_NQN).hostid.to_vec());
        // Only the extended (128-bit) identifier exists on fabrics, and it cannot be set.
        let r = c
            .admin_command(admin_sqe(admin_opcode::GET_FEATURES, fid, 0), None, 16)
            .await;
        assert_eq!(status_field(r) & 0x7ff, status::INVALID_FIELD);
        let r = c
            .admin_command(admin_sqe(admin_opcode::SET_FEATURES, fid, 1), None, 0)
            .await;
        assert_eq!(status_field(r) & 0x7ff, status::COMMAND_SEQUENCE_ERROR);
    });
    h.stop();
}

#[test]
fn controller_lists_name_the_subsystems_controllers() {
    let h = Harness::start();
    rt().block_on(async {
        let (mut a, _qa, _) = controller(&h).await;
        let mut b = HostController::connect(h.ports[1], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        let list = |d: &[u8]| -> Vec<u16> {
            let n = usize::from(u16::from_le_bytes([d[0], d[1]]));
            (0..n)
                .map(|i| u16::from_le_bytes([d[2 + 2 * i], d[3 + 2 * i]]))
                .collect()
        };
        let (_, d) = a
            .admin_command(
                admin_sqe(admin_opcode::IDENTIFY, u32::from(cns::CTRL_LIST), 0),
                None,
                4096,
            )
            .await
            .unwrap();
        let ids = list(&d);
        assert!(
            ids.contains(&a.cntlid()) && ids.contains(&b.cntlid()),
            "{ids:?}"
        );
        // CNTID is the starting point.
        let from = a.cntlid().max(b.cntlid());
        let cdw10 = u32::from(cns::CTRL_LIST) | (u32::from(from) << 16);
        let (_, d) = b
            .admin_command(admin_sqe(admin_opcode::IDENTIFY, cdw10, 0), None, 4096)
            .await
            .unwrap();
        assert_eq!(list(&d), vec![from]);
        let mut sqe = admin_sqe(admin_opcode::IDENTIFY, u32::from(cns::NS_CTRL_LIST), 0);
        sqe.nsid.set(99);
        let r = a.admin_command(sqe, None, 4096).await;
        assert_eq!(status_field(r) & 0x7ff, status::INVALID_NS);
    });
    h.stop();
}

fn raw_write(cid: u16, slba: u64, nlb: u32, len: u32) -> Vec<u8> {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = io_opcode::WRITE;
    sqe.cid.set(cid);
    sqe.nsid.set(1);
    sqe.set_lba_range(slba, nlb);
    sqe.dptr.kind = SglDescriptor::TRANSPORT_DATA_BLOCK;
    sqe.dptr.length.set(len);
    capsule(sqe.as_bytes(), 0)
}

fn abort_sqe(sqid: u16, cid: u16) -> Sqe {
    admin_sqe(
        admin_opcode::ABORT,
        u32::from(sqid) | (u32::from(cid) << 16),
        0,
    )
}

#[test]
fn abort_stops_commands_waiting_for_data_and_reports_the_rest() {
    // One R2T slot: a second write waits for it without an R2T.
    let h = Harness::start_with(|cfg| cfg.max_r2t_in_flight = 1);
    let rt = rt();
    let opts = HostOptions {
        kato_ms: 120_000,
        ..HostOptions::new(OPEN_NQN)
    };
    let (mut c, mut q2, ns) = rt.block_on(async {
        let mut c = HostController::connect(h.ports[0], opts.clone())
            .await
            .unwrap();
        c.set_num_queues(2).await.unwrap();
        let ns = c.namespace(1).await.unwrap();
        let q2 = c.connect_io_queue(2).await.unwrap();
        (c, q2, ns)
    });
    let mut raw = join_io_queue(&h, 0, c.cntlid(), &opts.hostnqn);
    let bs = ns.block_size;
    let len = 8 * bs;
    raw.send(&raw_write(1, 0, 8, len));
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    assert_eq!(u16::from_le_bytes([r2t[8], r2t[9]]), 1, "R2T for cid 1");
    let ttag = u16::from_le_bytes([r2t[10], r2t[11]]);
    raw.send(&raw_write(2, 8, 8, len));
    // The I/O queue may be served by another thread than the admin queue: abort only once
    // the target holds both writes (one with its R2T out, one waiting for a slot).
    let port = &h.target.metrics().ports[0];
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while port.awaiting_data.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < until,
            "the writes never waited for data"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    let abort = |c: &mut HostController, sqid, cid| {
        rt.block_on(c.admin_command(abort_sqe(sqid, cid), None, 0))
            .unwrap()
            .0
            .result
            .get()
    };
    // Waiting for an R2T: aborted at once.
    assert_eq!(abort(&mut c, 1, 2), 0, "cid 2 aborted");
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(u16::from_le_bytes([r[20], r[21]]), 2, "completion of cid 2");
    assert_eq!(status_of(&r), status::ABORT_REQUESTED);
    // Its R2T went out: aborted, and completed when the data it asked for has arrived.
    assert_eq!(abort(&mut c, 1, 1), 0, "cid 1 aborted");
    // Nothing by that ID waits, on any queue: not aborted.
    assert_eq!(abort(&mut c, 1, 77), 1);
    assert_eq!(abort(&mut c, 0, 1), 1, "admin queue");
    assert_eq!(abort(&mut c, 9, 1), 1, "no such queue");
    let d = pattern(len as usize, 4);
    let mut h2c = DataHeader {
        ch: CommonHeader::new(pdu_type::H2C_DATA, 4, 24, 24, 24 + len),
        ..DataHeader::default()
    };
    h2c.cccid.set(1);
    h2c.ttag.set(ttag);
    h2c.datal.set(len);
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(&d);
    raw.send(&pdu);
    let r = raw.recv();
    assert_eq!(r[0], pdu_type::CAPSULE_RESP);
    assert_eq!(u16::from_le_bytes([r[20], r[21]]), 1, "completion of cid 1");
    assert_eq!(status_of(&r), status::ABORT_REQUESTED);
    // Neither write ran.
    let now = rt.block_on(q2.read(&ns, 0, 2 * len as usize)).unwrap();
    assert!(now[..len as usize] != d[..], "aborted write not executed");
    // The queue still serves writes.
    raw.send(&raw_write(3, 0, 8, len));
    let r2t = raw.recv();
    assert_eq!(r2t[0], pdu_type::R2T);
    h2c.cccid.set(3);
    h2c.ttag.set(u16::from_le_bytes([r2t[10], r2t[11]]));
    let mut pdu = h2c.as_bytes().to_vec();
    pdu.extend_from_slice(&d);
    raw.send(&pdu);
    assert_eq!(status_of(&raw.recv()), 0);
    assert!(rt.block_on(q2.read(&ns, 0, len as usize)).unwrap() == d);
    drop(raw);
    drop(c);
    h.stop();
}

#[test]
fn an_empty_host_nqn_is_anonymous() {
    let h = Harness::start();
    rt().block_on(async {
        let anon = |nqn: &str| HostOptions {
            hostnqn: String::new(),
            ..HostOptions::new(nqn)
        };
        // Where any host may connect, an anonymous one may too (SPDK's tools send none).
        let mut c = HostController::connect(h.ports[0], anon(OPEN_NQN))
            .await
            .unwrap();
        c.set_num_queues(1).await.unwrap();
        let mut q = c.connect_io_queue(1).await.unwrap();
        let ns = c.namespace(1).await.unwrap();
        q.write(&ns, 0, &pattern(4096, 1)).await.unwrap();
        // An allow-list names hosts: an anonymous host is never on it.
        let r = HostController::connect(h.ports[0], anon(LOCKED_NQN)).await;
        assert_eq!(
            status_field(r) & 0x7ff,
            status::CONNECT_INVALID_HOST,
            "anonymous host refused by the allow-list"
        );
        let named = HostOptions {
            hostnqn: ALLOWED_HOST.into(),
            ..HostOptions::new(LOCKED_NQN)
        };
        HostController::connect(h.ports[0], named).await.unwrap();
    });
    h.stop();
}

#[test]
fn host_library_respects_mdts() {
    let h = Harness::start_with(|cfg| cfg.max_transfer = 128 * 1024);
    rt().block_on(async {
        let (_c, mut q, ns) = controller(&h).await;
        assert_eq!(ns.max_transfer, 128 * 1024);
        // One-call transfers larger than MDTS go out in MDTS pieces.
        let d = pattern(1 << 20, 6);
        q.write(&ns, 0, &d).await.unwrap();
        assert!(q.read(&ns, 0, d.len()).await.unwrap() == d);
        // A single pipelined command cannot be split: it is refused before it is sent.
        match q.submit_write(&ns, 0, &d) {
            Err(HostError::TooLarge { len, max }) => assert_eq!((len, max), (1 << 20, 128 * 1024)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        match q.submit_read(&ns, 0, 256 * 1024) {
            Err(HostError::TooLarge { .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The queue is intact: nothing was half sent.
        let cid = q.submit_read(&ns, 0, 128 * 1024).unwrap();
        let c = q.next().await.unwrap();
        assert_eq!((c.cid, c.status()), (cid, 0));
        assert!(q.data(cid) == &d[..128 * 1024]);
        q.release(cid);
    });
    h.stop();
}
