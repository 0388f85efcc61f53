//! Namespaces added and removed while hosts are connected: the Namespace Attribute Changed
//! notice, the Changed Namespace List log (04h), the active namespace list, I/O to the new
//! namespace through queues on both controller threads, and commands to a removed one.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, OPEN_NQN, connect, pattern, rt, timeout};
use nvme_spec::command::{Sqe, admin_opcode, feature};
use nvme_spec::log::lid;
use nvme_spec::{FromZeros, status};
use nvme_target::NamespaceError;
use nvme_target::host::{HostController, HostError, HostOptions};

fn aer() -> Sqe {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::ASYNC_EVENT;
    sqe
}

/// Enables Namespace Attribute Changed notices (AEC bit 8).
async fn enable_ns_notices(c: &mut HostController) {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::SET_FEATURES;
    sqe.cdw10.set(u32::from(feature::ASYNC_EVENT));
    sqe.cdw11.set(1 << 8);
    c.admin_command(sqe, None, 0).await.unwrap();
}

/// The Changed Namespace List: its IDs up to the first zero.
async fn changed_list(c: &mut HostController) -> Vec<u32> {
    let log = c.get_log_page(lid::CHANGED_NS, 0, 4096).await.unwrap();
    assert_eq!(log.len(), 4096);
    log.chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .take_while(|&id| id != 0)
        .collect()
}

fn status_of(e: &HostError) -> u16 {
    match e {
        HostError::Status { status, .. } => *status,
        other => panic!("expected an NVMe status, got {other:?}"),
    }
}

/// Holds an AER and waits (with a Keep Alive behind it) until the target has it.
async fn hold_aer(c: &mut HostController) -> u16 {
    let cid = c.admin().submit(aer(), None, 0).unwrap();
    c.admin().flush().await.unwrap();
    c.keep_alive().await.unwrap();
    cid
}

#[test]
fn a_namespace_added_while_connected_is_announced_and_served() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (mut c1, _q1, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        // A second controller with two I/O queues: they are served by both threads.
        let mut c2 = HostController::connect(h.ports[1], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        c2.set_num_queues(2).await.unwrap();
        let qa = c2.connect_io_queue(1).await.unwrap();
        let qb = c2.connect_io_queue(2).await.unwrap();
        enable_ns_notices(&mut c1).await;
        let cid = hold_aer(&mut c1).await;
        assert_eq!(c1.active_namespaces().await.unwrap(), [1, 2]);

        h.add_spare(5);
        let done = c1.admin().next().await.unwrap();
        assert_eq!(done.cid, cid);
        assert_eq!(done.status(), 0);
        // Notice (2), Namespace Attribute Changed (00h), log page 04h.
        assert_eq!(done.cqe.result.get(), 0x0004_0002);
        c1.admin().release(cid);
        assert_eq!(c1.active_namespaces().await.unwrap(), [1, 2, 5]);
        assert_eq!(changed_list(&mut c1).await, [5]);
        // Reading the log cleared it.
        assert_eq!(changed_list(&mut c1).await, Vec::<u32>::new());
        let id = c1.identify_namespace(5).await.unwrap();
        assert_eq!(id.nsze.get(), (8 << 20) / 4096);

        // The controller that did not enable notices got none, but its log lists the change.
        assert_eq!(changed_list(&mut c2).await, [5]);
        let ns = c2.namespace(5).await.unwrap();
        for (q, lba) in [(qa, 0u64), (qb, 64)] {
            let mut q = q;
            let data = pattern(64 << 10, lba);
            q.write(&ns, lba, &data).await.unwrap();
            assert_eq!(q.read(&ns, lba, data.len()).await.unwrap(), data);
        }
        assert_eq!(h.spare.flushes(), 0);

        // Adding it twice is refused; so is an ID past NN.
        assert!(matches!(
            h.target.add_namespace(
                OPEN_NQN,
                h.target.config().subsystems[0].namespaces[0].clone()
            ),
            Err(NamespaceError::Exists { nsid: 1, .. })
        ));
        let nn = c1.identify_controller().await.unwrap().nn.get();
        let mut past = h.target.config().subsystems[0].namespaces[0].clone();
        past.nsid = nn + 1;
        assert!(matches!(
            h.target.add_namespace(OPEN_NQN, past),
            Err(NamespaceError::BadNsid { .. })
        ));
    }));
    h.stop();
}

#[test]
fn a_removed_namespace_is_announced_and_refuses_new_commands() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (mut c, mut q, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let ns2 = c.namespace(2).await.unwrap();
        enable_ns_notices(&mut c).await;
        // A read of namespace 2 held at its device while the namespace goes.
        h.ns2.hold_reads_at(0);
        let read = q.submit_read(&ns2, 0, 4096).unwrap();
        q.flush().await.unwrap();
        let t = Instant::now();
        while h.ns2.held() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the read reached the device"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cid = hold_aer(&mut c).await;
        h.remove_namespace(2);
        let done = c.admin().next().await.unwrap();
        assert_eq!((done.cid, done.cqe.result.get()), (cid, 0x0004_0002));
        c.admin().release(cid);
        assert_eq!(c.active_namespaces().await.unwrap(), [1]);
        assert_eq!(changed_list(&mut c).await, [2]);
        // New commands for it fail; the one at its device finishes with its data.
        let e = q.read(&ns2, 8, 4096).await.unwrap_err();
        assert_eq!(status_of(&e) & 0x7ff, status::INVALID_NS);
        h.ns2.open_gate();
        let r = q.next().await.unwrap();
        assert_eq!((r.cid, r.status()), (read, 0));
        q.release(read);
        // An inactive ID within NN identifies as zeroes (as nvmet answers); NN + 1 is
        // invalid.
        let id = c.identify_namespace(2).await.unwrap();
        assert_eq!(id.nsze.get(), 0);
        let nn = c.identify_controller().await.unwrap().nn.get();
        let e = c.identify_namespace(nn + 1).await.unwrap_err();
        assert_eq!(status_of(&e) & 0x7ff, status::INVALID_NS);
        // Gone from the status too, and it can come back.
        let st = h.target.status();
        assert_eq!(st.subsystems[0].namespaces, [1]);
        assert!(matches!(
            h.target.remove_namespace(OPEN_NQN, 2),
            Err(NamespaceError::UnknownNamespace { nsid: 2, .. })
        ));
        h.add_spare(2);
        assert_eq!(c.active_namespaces().await.unwrap(), [1, 2]);
    }));
    h.stop();
}

#[test]
fn changes_before_a_controller_connects_are_not_news_to_it() {
    let h = Harness::start();
    h.add_spare(7);
    rt().block_on(timeout(async {
        let (mut c, _q, _) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        enable_ns_notices(&mut c).await;
        assert_eq!(changed_list(&mut c).await, Vec::<u32>::new());
        assert_eq!(c.active_namespaces().await.unwrap(), [1, 2, 7]);
        // Nothing is owed: a held AER stays held (the keep-alive behind it completes).
        let cid = hold_aer(&mut c).await;
        h.remove_namespace(7);
        let done = c.admin().next().await.unwrap();
        assert_eq!((done.cid, done.cqe.result.get()), (cid, 0x0004_0002));
        assert_eq!(changed_list(&mut c).await, [7]);
    }));
    h.stop();
}
