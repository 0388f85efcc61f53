//! Asymmetric Namespace Access at the byte level: Identify fields, the ANA log with and
//! without RGO, path status on I/O, and ANA change notices on held and later AERs.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::{Harness, OPEN_NQN, connect, rt, timeout};
use nvme_spec::command::{Sqe, admin_opcode, feature};
use nvme_spec::log::{GetLogPage, ana, lid};
use nvme_spec::{FromBytes, FromZeros, status};
use nvme_target::host::{HostController, HostError, HostOptions};
use nvme_target::{AnaSetting, AnaState};

/// Namespace 2 of the open subsystem in ANA group 2, non-optimized on port 2.
fn start() -> Harness {
    Harness::start_with(|cfg| {
        cfg.subsystems[0].namespaces[1].ana_group = 2;
        cfg.ana = vec![AnaSetting {
            port: 2,
            group: 2,
            state: AnaState::NonOptimized,
        }];
    })
}

/// One group descriptor of an ANA log, with its namespace IDs.
#[derive(Debug, PartialEq, Eq)]
struct Group {
    id: u32,
    state: u8,
    chgcnt: u64,
    nsids: Vec<u32>,
}

/// Reads the ANA log (Return Groups Only if `rgo`): its change count and groups.
async fn ana_log(c: &mut HostController, rgo: bool) -> (u64, Vec<Group>) {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::GET_LOG_PAGE;
    sqe.nsid.set(u32::MAX);
    // The size the Linux host asks for: header, 32 descriptors and MNAN namespace IDs.
    let len = 16 + 32 * 32 + 256 * 4;
    GetLogPage {
        lid: lid::ANA,
        lsp: if rgo { ana::LSP_RGO } else { 0 },
        rae: false,
        len: len as u64,
        offset: 0,
    }
    .encode(&mut sqe);
    let (_, data) = c.admin_command(sqe, None, len).await.unwrap();
    assert_eq!(data.len(), len);
    let (h, mut rest) = ana::Header::read_from_prefix(&data).unwrap();
    let mut groups = Vec::new();
    for _ in 0..h.ngrps.get() {
        let (d, tail) = ana::GroupDescriptor::read_from_prefix(rest).unwrap();
        let n = d.nnsids.get() as usize;
        let nsids = tail[..n * 4]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        rest = &tail[n * 4..];
        groups.push(Group {
            id: d.grpid.get(),
            state: d.state & 0xf,
            chgcnt: d.chgcnt.get(),
            nsids,
        });
    }
    assert!(rest.iter().all(|&b| b == 0), "zeroes after the last group");
    (h.chgcnt.get(), groups)
}

/// Enables ANA change notices (AEC bit 11).
async fn enable_ana_notices(c: &mut HostController) {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::SET_FEATURES;
    sqe.cdw10.set(u32::from(feature::ASYNC_EVENT));
    sqe.cdw11.set(1 << 11);
    c.admin_command(sqe, None, 0).await.unwrap();
}

fn aer() -> Sqe {
    let mut sqe = Sqe::new_zeroed();
    sqe.opcode = admin_opcode::ASYNC_EVENT;
    sqe
}

fn status_of(e: &HostError) -> u16 {
    match e {
        HostError::Status { status, .. } => *status,
        other => panic!("expected a status, got {other}"),
    }
}

#[test]
fn identify_reports_ana_capabilities_and_groups() {
    let h = start();
    rt().block_on(timeout(async {
        let (mut c, _q, _ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let id = c.identify_controller().await.unwrap();
        assert_eq!(id.cmic & (1 << 3), 1 << 3, "CMIC bit 3: ANA reporting");
        assert_eq!(id.oaes.get() & (1 << 11), 1 << 11, "ANA change notices");
        assert!(id.anatt > 0);
        // Optimized, non-optimized, inaccessible, persistent loss and change.
        assert_eq!(id.anacap, 0x1f);
        assert_eq!(id.anagrpmax.get(), 32);
        assert_eq!(id.nanagrpid.get(), 32);
        assert!(id.mnan.get() > 0 && id.mnan.get() <= id.nn.get());
        // The same fields at their byte offsets (Base figure 275: ANATT 342, ANACAP 343,
        // ANAGRPMAX 347:344, NANAGRPID 351:348, MNAN 543:540), as the Linux host reads them.
        let raw = nvme_spec::IntoBytes::as_bytes(&id);
        assert_eq!(raw[342], 10);
        assert_eq!(raw[343], 0x1f);
        assert_eq!(&raw[344..352], &[32, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(&raw[540..544], &256u32.to_le_bytes());
        assert_eq!(c.identify_namespace(1).await.unwrap().anagrpid.get(), 1);
        assert_eq!(c.identify_namespace(2).await.unwrap().anagrpid.get(), 2);
        // The discovery controller reports no ANA.
        let mut d = HostController::connect(h.discovery, HostOptions::discovery())
            .await
            .unwrap();
        assert_eq!(d.identify_controller().await.unwrap().cmic & (1 << 3), 0);
    }));
    h.stop();
}

#[test]
fn the_ana_log_lists_groups_per_port_with_and_without_namespaces() {
    let h = start();
    rt().block_on(timeout(async {
        let (mut c1, _q1, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let (mut c2, _q2, _) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        let (count, groups) = ana_log(&mut c1, false).await;
        assert_eq!(count, 0);
        assert_eq!(
            groups,
            vec![
                Group {
                    id: 1,
                    state: ana::state::OPTIMIZED,
                    chgcnt: 0,
                    nsids: vec![1]
                },
                Group {
                    id: 2,
                    state: ana::state::OPTIMIZED,
                    chgcnt: 0,
                    nsids: vec![2]
                },
            ]
        );
        let (_, groups) = ana_log(&mut c2, false).await;
        assert_eq!(
            groups[1].state,
            ana::state::NON_OPTIMIZED,
            "port 2's own state"
        );
        assert_eq!(groups[1].nsids, vec![2]);
        // Return Groups Only: the same descriptors, no namespace lists.
        let (_, groups) = ana_log(&mut c2, true).await;
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().all(|g| g.nsids.is_empty()));
        assert_eq!(groups[0].state, ana::state::OPTIMIZED);
        assert_eq!(groups[1].state, ana::state::NON_OPTIMIZED);
        // A change shows in the log's and the group's change counts, on its port only.
        assert!(h.target.ana().set(1, 2, AnaState::Change).unwrap());
        let (count, groups) = ana_log(&mut c1, false).await;
        assert_eq!(count, 1);
        assert_eq!(groups[1].state, ana::state::CHANGE);
        assert_eq!(groups[1].chgcnt, 1);
        assert_eq!(groups[0].chgcnt, 0);
        let (_, groups) = ana_log(&mut c2, false).await;
        assert_eq!(groups[1].state, ana::state::NON_OPTIMIZED);
    }));
    h.stop();
}

#[test]
fn io_through_a_path_that_serves_none_fails_with_the_ana_status() {
    let h = start();
    rt().block_on(timeout(async {
        let (mut c1, mut q1, ns1) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let (_c2, mut q2, ns2) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        let data = vec![0xa5; 4096];
        q1.write(&ns1, 0, &data).await.unwrap();
        for (st, code) in [
            (AnaState::Inaccessible, status::ANA_INACCESSIBLE),
            (AnaState::Change, status::ANA_TRANSITION),
            (AnaState::PersistentLoss, status::ANA_PERSISTENT_LOSS),
        ] {
            h.target.ana().set(1, 1, st).unwrap();
            let e = q1.read(&ns1, 0, 4096).await.unwrap_err();
            assert_eq!(status_of(&e), code, "read in state {st}");
            assert_eq!(status_of(&e) & status::DNR, 0, "another path may serve it");
            let e = q1.write(&ns1, 0, &data).await.unwrap_err();
            assert_eq!(status_of(&e), code, "write in state {st}");
            let e = q1.flush_ns(&ns1).await.unwrap_err();
            assert_eq!(status_of(&e), code, "flush in state {st}");
            // The other port still serves the namespace; admin commands still work here.
            assert_eq!(q2.read(&ns2, 0, 4096).await.unwrap(), data);
            c1.keep_alive().await.unwrap();
            assert_eq!(c1.identify_namespace(1).await.unwrap().anagrpid.get(), 1);
        }
        // Namespace 2 is in another group: unaffected.
        let other = c1.namespace(2).await.unwrap();
        q1.read(&other, 0, 4096).await.unwrap();
        // Non-optimized serves I/O, as optimized does.
        h.target.ana().set(1, 1, AnaState::NonOptimized).unwrap();
        assert_eq!(q1.read(&ns1, 0, 4096).await.unwrap(), data);
        h.target.ana().set(1, 1, AnaState::Optimized).unwrap();
        q1.write(&ns1, 8, &data).await.unwrap();
    }));
    h.stop();
}

#[test]
fn a_held_aer_completes_with_the_ana_change_notice() {
    let h = start();
    rt().block_on(timeout(async {
        let (mut c1, _q1, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let (mut c2, _q2, _) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        enable_ana_notices(&mut c1).await;
        let cid = c1.admin().submit(aer(), None, 0).unwrap();
        c1.admin().flush().await.unwrap();
        // The keep-alive completes first: the request is held.
        c1.keep_alive().await.unwrap();
        h.target.ana().set(1, 1, AnaState::Inaccessible).unwrap();
        let done = c1.admin().next().await.unwrap();
        assert_eq!(done.cid, cid);
        assert_eq!(done.status(), 0);
        // Notice (2), ANA change (03h), log page 0Ch.
        assert_eq!(done.cqe.result.get(), 0x000c_0302);
        c1.admin().release(cid);
        let (count, groups) = ana_log(&mut c1, false).await;
        assert_eq!(count, 1);
        assert_eq!(groups[0].state, ana::state::INACCESSIBLE);
        // Port 2's controller did not enable notices and its port did not change: nothing
        // completes there; its log is as before.
        let (_, groups) = ana_log(&mut c2, false).await;
        assert_eq!(groups[0].state, ana::state::OPTIMIZED);
    }));
    h.stop();
}

#[test]
fn a_change_without_a_held_aer_is_delivered_on_the_next_one() {
    let h = start();
    rt().block_on(timeout(async {
        let (mut c, _q, _) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        enable_ana_notices(&mut c).await;
        h.target.ana().set(2, 2, AnaState::Optimized).unwrap();
        // Let the connection see the change before the request arrives.
        c.keep_alive().await.unwrap();
        let (cqe, _) = c.admin_command(aer(), None, 0).await.unwrap();
        assert_eq!(cqe.result.get(), 0x000c_0302);
        // Read the log (unmasks) and hold a request: the next change completes it.
        let (_, groups) = ana_log(&mut c, false).await;
        assert_eq!(groups[1].state, ana::state::OPTIMIZED);
        let cid = c.admin().submit(aer(), None, 0).unwrap();
        c.admin().flush().await.unwrap();
        c.keep_alive().await.unwrap();
        h.target.ana().set(2, 2, AnaState::PersistentLoss).unwrap();
        let done = c.admin().next().await.unwrap();
        assert_eq!((done.cid, done.cqe.result.get()), (cid, 0x000c_0302));
    }));
    h.stop();
}
