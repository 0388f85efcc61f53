//! Allowed hosts changed at run time: a host added is admitted at its next Connect, a host
//! removed is refused at its next Connect while its existing association keeps working.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::{ALLOWED_HOST, Harness, LOCKED_NQN, connect, rt, timeout};
use nvme_spec::status;
use nvme_target::host::{HostController, HostError, HostOptions};

const NEW_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000bb";

fn as_host(nqn: &str) -> HostOptions {
    let mut o = HostOptions::new(LOCKED_NQN);
    o.hostnqn = nqn.into();
    o
}

async fn refused(h: &Harness, nqn: &str) -> bool {
    match HostController::connect(h.ports[0], as_host(nqn)).await {
        Err(HostError::Status { status: s, .. }) => s & 0x7ff == status::CONNECT_INVALID_HOST,
        Err(e) => panic!("expected Connect Invalid Host, got {e}"),
        Ok(_) => false,
    }
}

#[test]
fn hosts_added_and_removed_at_run_time() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        assert!(refused(&h, NEW_HOST).await);
        let access = h.target.access();
        assert!(access.add_host(LOCKED_NQN, NEW_HOST).unwrap());
        let (_c, mut q, ns) = connect(h.ports[0], as_host(NEW_HOST)).await;
        q.write(&ns, 0, &[7; 512]).await.unwrap();
        // The configured host is removed while connected: its association stays, its next
        // Connect (a new association, or an I/O queue of a new one) is refused.
        let (mut c2, mut q2, ns2) = connect(h.ports[1], as_host(ALLOWED_HOST)).await;
        assert!(access.remove_host(LOCKED_NQN, ALLOWED_HOST).unwrap());
        assert_eq!(q2.read(&ns2, 0, 512).await.unwrap(), vec![7; 512]);
        c2.keep_alive().await.unwrap();
        assert!(refused(&h, ALLOWED_HOST).await);
        assert_eq!(
            access.get(LOCKED_NQN).unwrap(),
            (false, vec![NEW_HOST.to_owned()])
        );
        // Refusals are counted per subsystem.
        let refusals = h.target.metrics().subsystems[1]
            .refused_hosts
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(refusals, 2);
    }));
    h.stop();
}

/// The discovery log header's generation counter.
async fn genctr(d: &mut HostController) -> u64 {
    let h = d
        .get_log_page(nvme_spec::log::lid::DISCOVERY, 0, 1024)
        .await
        .unwrap();
    u64::from_le_bytes(h[..8].try_into().unwrap())
}

#[test]
fn a_persistent_discovery_controller_hears_of_access_changes() {
    use nvme_spec::FromZeros;
    use nvme_spec::command::{Sqe, admin_opcode, feature};
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut o = HostOptions::discovery();
        o.hostnqn = NEW_HOST.into();
        let mut d = HostController::connect(h.discovery, o).await.unwrap();
        // Discovery Log Page Change notices are offered (OAES bit 31); enable them.
        let id = d.identify_controller().await.unwrap();
        assert_eq!(id.oaes.get() & (1 << 31), 1 << 31);
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::SET_FEATURES;
        sqe.cdw10.set(u32::from(feature::ASYNC_EVENT));
        sqe.cdw11.set(1 << 31);
        d.admin_command(sqe, None, 0).await.unwrap();
        let before = genctr(&mut d).await;
        let n = d.discovery_log().await.unwrap().len();
        let mut aer = Sqe::new_zeroed();
        aer.opcode = admin_opcode::ASYNC_EVENT;
        let cid = d.admin().submit(aer, None, 0).unwrap();
        d.admin().flush().await.unwrap();
        d.keep_alive().await.unwrap();

        // The host is allowed into the locked subsystem: its log has that subsystem's ports.
        assert!(h.target.access().add_host(LOCKED_NQN, NEW_HOST).unwrap());
        let done = d.admin().next().await.unwrap();
        assert_eq!(done.cid, cid);
        // Notice (2), Discovery Log Page Change (F0h), log page 70h.
        assert_eq!(done.cqe.result.get(), 0x0070_f002);
        d.admin().release(cid);
        assert!(genctr(&mut d).await > before);
        assert_eq!(d.discovery_log().await.unwrap().len(), n + 2);

        // A change that changes nothing (the same list again) moves nothing.
        let now = genctr(&mut d).await;
        let (any, hosts) = h.target.access().get(LOCKED_NQN).unwrap();
        h.target.access().replace(LOCKED_NQN, any, &hosts).unwrap();
        assert_eq!(genctr(&mut d).await, now);
        // Removed again: the next request completes at once (the log was read since).
        assert!(h.target.access().remove_host(LOCKED_NQN, NEW_HOST).unwrap());
        let (cqe, _) = d.admin_command(aer, None, 0).await.unwrap();
        assert_eq!(cqe.result.get(), 0x0070_f002);
        assert_eq!(d.discovery_log().await.unwrap().len(), n);
    }));
    h.stop();
}
