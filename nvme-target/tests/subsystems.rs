//! Subsystems added and removed while hosts are connected: a pending subsystem is neither
//! connectable nor discoverable, a published one is both (and persistent discovery
//! controllers hear of it), a removed one's controllers are torn down and its slot is not
//! reused while any is left.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, OPEN_NQN, rt, timeout};
use nvme_spec::command::{Sqe, admin_opcode, feature};
use nvme_spec::{FromZeros, get_str, status};
use nvme_target::host::{HostController, HostError, HostOptions};
use nvme_target::{SubsystemConfig, SubsystemError};

const NEW_NQN: &str = "nqn.2026-11.io.baton:added";

fn new_subsystem() -> SubsystemConfig {
    SubsystemConfig {
        nqn: NEW_NQN.into(),
        serial: "BATONADDED01".into(),
        model: "Baton added".into(),
        allow_any_host: true,
        allowed_hosts: Vec::new(),
        namespaces: Vec::new(),
    }
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    match HostController::connect(addr, HostOptions::new(NEW_NQN)).await {
        Err(HostError::Status { status: s, .. }) => s & 0x7ff == status::CONNECT_INVALID_PARAM,
        Err(e) => panic!("expected Connect Invalid Parameters, got {e}"),
        Ok(_) => false,
    }
}

fn nqns(log: &[nvme_spec::log::DiscoveryLogEntry]) -> Vec<String> {
    let mut v: Vec<String> = log.iter().map(|e| get_str(&e.subnqn).to_owned()).collect();
    v.dedup();
    v
}

#[test]
fn a_subsystem_added_at_run_time_is_served_and_one_removed_is_torn_down() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        // A persistent discovery controller that asked for Discovery Log Page Change notices.
        let mut d = HostController::connect(h.discovery, HostOptions::discovery())
            .await
            .unwrap();
        let mut sqe = Sqe::new_zeroed();
        sqe.opcode = admin_opcode::SET_FEATURES;
        sqe.cdw10.set(u32::from(feature::ASYNC_EVENT));
        sqe.cdw11.set(1 << 31);
        d.admin_command(sqe, None, 0).await.unwrap();
        assert!(!nqns(&d.discovery_log().await.unwrap()).contains(&NEW_NQN.to_owned()));
        let mut aer = Sqe::new_zeroed();
        aer.opcode = admin_opcode::ASYNC_EVENT;
        let cid = d.admin().submit(aer, None, 0).unwrap();
        d.admin().flush().await.unwrap();
        d.keep_alive().await.unwrap();

        // Pending: refused and not discovered.
        h.target.add_subsystem(&new_subsystem()).unwrap();
        assert!(refused(h.ports[0]).await);
        assert_eq!(
            h.target.add_subsystem(&new_subsystem()),
            Err(SubsystemError::Exists(NEW_NQN.into()))
        );
        h.target.publish_subsystem(NEW_NQN).unwrap();
        let done = d.admin().next().await.unwrap();
        assert_eq!((done.cid, done.cqe.result.get()), (cid, 0x0070_f002));
        d.admin().release(cid);
        assert!(nqns(&d.discovery_log().await.unwrap()).contains(&NEW_NQN.to_owned()));

        // Served on both ports: Identify names it, it has no namespaces yet.
        let mut c = HostController::connect(h.ports[1], HostOptions::new(NEW_NQN))
            .await
            .unwrap();
        let id = c.identify_controller().await.unwrap();
        assert_eq!(get_str(&id.subnqn), NEW_NQN);
        assert_eq!(get_str(&id.sn), "BATONADDED01");
        assert!(c.active_namespaces().await.unwrap().is_empty());
        c.set_num_queues(1).await.unwrap();
        let _q = c.connect_io_queue(1).await.unwrap();
        assert!(
            h.target
                .status()
                .subsystems
                .iter()
                .any(|s| s.nqn == NEW_NQN)
        );

        // Removed: its controller is torn down, new connects are refused, discovery drops
        // it; the other subsystems carry on.
        let (mut other, _oq, _) = common::connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        h.target.remove_subsystem(NEW_NQN).unwrap();
        let t = Instant::now();
        while c.keep_alive().await.is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "controller not torn down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused(h.ports[0]).await);
        assert!(!nqns(&d.discovery_log().await.unwrap()).contains(&NEW_NQN.to_owned()));
        other.keep_alive().await.unwrap();
        assert_eq!(
            h.target.remove_subsystem(NEW_NQN),
            Err(SubsystemError::Unknown(NEW_NQN.into()))
        );
        // Added again once its controllers are gone.
        let t = Instant::now();
        while h.target.status().subsystems.len() > 2
            || h.target.add_subsystem(&new_subsystem()).is_err()
        {
            assert!(t.elapsed() < Duration::from_secs(10), "slot not freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.target.publish_subsystem(NEW_NQN).unwrap();
        HostController::connect(h.ports[0], HostOptions::new(NEW_NQN))
            .await
            .unwrap();
    }));
    h.stop();
}
