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
