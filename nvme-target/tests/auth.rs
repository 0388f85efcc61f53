//! DH-HMAC-CHAP against the target: the right secret connects (every hash, with and
//! without a DH exchange, with and without controller authentication, re-authentication);
//! each failure gets an AUTH_Failure1 and nothing else: no secret, a wrong secret, a hash
//! or DH group the controller does not select, a replayed reply, a wrong controller secret.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::rt;

use std::sync::atomic::Ordering;

use common::raw::{Raw, capsule, status_of};
use common::{Harness, OPEN_NQN, pattern};
use nvme_spec::auth::{CONNECT_AUTHREQ_ATR, dh_group, failure, hash_id};
use nvme_spec::command::{Sqe, admin_opcode};
use nvme_spec::fabrics::{PropertyCmd, fctype};
use nvme_spec::regs::offset;
use nvme_spec::{FromZeros, IntoBytes, status};
use nvme_target::auth::{Group, HashFn, Secret};
use nvme_target::host::{
    Dhchap, HostController, HostError, HostExchange, HostOptions, open_admin_queue,
};
use nvme_target::metrics::AuthFailure;
use nvme_target::{HostAuthConfig, TargetConfig};

/// The host NQN `HostOptions::new` uses.
fn host_nqn() -> String {
    HostOptions::new(OPEN_NQN).hostnqn
}

fn secret(fill: u8, transform: Option<HashFn>) -> Secret {
    let len = transform.map_or(32, HashFn::size);
    Secret::parse(&Secret::encode(&vec![fill; len], transform)).unwrap()
}

/// A target where `nqn` must authenticate with host key 1 (SHA-256 transformed) and
/// controller key 2, selecting `hash` and `group`.
fn harness(nqn: &str, hash: HashFn, group: Option<Group>) -> Harness {
    let nqn = nqn.to_owned();
    Harness::start_with(move |cfg: &mut TargetConfig| {
        cfg.hosts.push(HostAuthConfig {
            nqn,
            key: secret(1, Some(HashFn::Sha256)),
            ctrl_key: Some(secret(2, None)),
            hash,
            dh_group: group,
        });
    })
}

fn opts(key: Secret, ctrl_key: Option<Secret>) -> HostOptions {
    let mut d = Dhchap::new(key);
    d.ctrl_key = ctrl_key;
    HostOptions {
        dhchap: Some(d),
        ..HostOptions::new(OPEN_NQN)
    }
}

/// Connect, authenticate every queue, write and read back.
async fn works(h: &Harness, o: HostOptions) {
    let mut c = HostController::connect(h.ports[0], o).await.unwrap();
    c.set_num_queues(2).await.unwrap();
    let mut q = c.connect_io_queue(1).await.unwrap();
    let ns = c.namespace(1).await.unwrap();
    let d = pattern(8192, 5);
    q.write(&ns, 8, &d).await.unwrap();
    assert!(q.read(&ns, 8, d.len()).await.unwrap() == d);
}

#[test]
fn the_right_secret_connects_with_every_hash_and_group() {
    for (hash, group) in [
        (HashFn::Sha256, None),
        (HashFn::Sha384, Group::from_id(dh_group::FFDHE2048)),
        (HashFn::Sha512, Group::from_id(dh_group::FFDHE3072)),
    ] {
        let h = harness(&host_nqn(), hash, group);
        rt().block_on(async {
            works(&h, opts(secret(1, Some(HashFn::Sha256)), None)).await;
            // Bidirectional: the host checks the controller's response too.
            works(
                &h,
                opts(secret(1, Some(HashFn::Sha256)), Some(secret(2, None))),
            )
            .await;
        });
        h.stop();
    }
}

#[test]
fn reauthentication_keeps_the_queue_usable() {
    let h = harness(
        &host_nqn(),
        HashFn::Sha256,
        Group::from_id(dh_group::FFDHE2048),
    );
    rt().block_on(async {
        let o = opts(secret(1, Some(HashFn::Sha256)), Some(secret(2, None)));
        let mut c = HostController::connect(h.ports[0], o).await.unwrap();
        c.set_num_queues(1).await.unwrap();
        let mut q = c.connect_io_queue(1).await.unwrap();
        c.reauthenticate(7).await.unwrap();
        c.reauthenticate(8).await.unwrap();
        let ns = c.namespace(1).await.unwrap();
        q.write(&ns, 0, &pattern(4096, 2)).await.unwrap();
    });
    h.stop();
}

#[test]
fn no_secret_gets_nothing_but_the_failure() {
    let raw_host = "nqn.2014-08.org.nvmexpress:uuid:raw";
    let h = harness(raw_host, HashFn::Sha256, None);
    // The host library sees AUTHREQ.ATR and has no secret.
    let o = HostOptions {
        hostnqn: raw_host.into(),
        ..HostOptions::new(OPEN_NQN)
    };
    let r = rt().block_on(HostController::connect(h.ports[0], o.clone()));
    assert!(matches!(r, Err(HostError::AuthRequired)), "{r:?}");
    let (_, result) = rt().block_on(open_admin_queue(h.ports[0], &o)).unwrap();
    assert_ne!(
        result & CONNECT_AUTHREQ_ATR,
        0,
        "Connect asks for authentication"
    );
    // A raw host that just carries on: every command fails with Authentication Required.
    let mut raw = Raw::open(&h);
    raw.connect_admin();
    let mut p = PropertyCmd::new_zeroed();
    p.opcode = admin_opcode::FABRICS;
    p.fctype = fctype::PROPERTY_GET;
    p.cid.set(2);
    p.attrib = 1;
    p.offset.set(offset::CAP);
    raw.send(&capsule(p.as_bytes(), 0));
    let r = raw.recv();
    assert_eq!(status_of(&r), status::status(1, 0x91) | status::DNR);
    assert_eq!(
        u64::from_le_bytes(r[8..16].try_into().unwrap()),
        0,
        "no CAP value"
    );
    let mut id = Sqe::new_zeroed();
    id.opcode = admin_opcode::IDENTIFY;
    id.cid.set(3);
    id.cdw10.set(1);
    raw.send(&capsule(id.as_bytes(), 0));
    let r = raw.recv();
    assert_eq!(
        r[0],
        nvme_spec::pdu::pdu_type::CAPSULE_RESP,
        "no identify data"
    );
    assert_eq!(status_of(&r), status::status(1, 0x91) | status::DNR);
    // Hosts without secrets are not asked.
    rt().block_on(async {
        let (_, result) = open_admin_queue(h.ports[0], &HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        assert_eq!(result & CONNECT_AUTHREQ_ATR, 0);
    });
    h.stop();
}

#[test]
fn a_wrong_secret_is_refused_and_the_connection_closed() {
    let h = harness(
        &host_nqn(),
        HashFn::Sha256,
        Group::from_id(dh_group::FFDHE2048),
    );
    rt().block_on(async {
        let r =
            HostController::connect(h.ports[0], opts(secret(9, Some(HashFn::Sha256)), None)).await;
        match r {
            Err(HostError::AuthFailed { explanation }) => assert_eq!(explanation, failure::FAILED),
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        // The same key without its transformation is a different key, too.
        let r = HostController::connect(h.ports[0], opts(secret(1, None), None)).await;
        assert!(matches!(r, Err(HostError::AuthFailed { .. })), "{r:?}");
        // After the failure the target closes: the queue takes no further command.
        let o = opts(secret(9, None), None);
        let (mut q, _) = open_admin_queue(h.ports[0], &o).await.unwrap();
        let d = o.dhchap.as_ref().unwrap();
        assert!(q.authenticate(d, &o.hostnqn, OPEN_NQN, 1).await.is_err());
        assert!(
            q.auth_receive(4096).await.is_err(),
            "connection closed after Failure1"
        );
        // The right key still works.
        works(&h, opts(secret(1, Some(HashFn::Sha256)), None)).await;
    });
    // Three wrong responses; the right key's admin queue and I/O queue authenticated.
    wait_for_auth_count(&h, AuthFailure::Failed, 3);
    assert!(
        h.target.metrics().ports[0]
            .auth_successes
            .load(Ordering::Relaxed)
            >= 2
    );
    h.stop();
}

#[test]
fn a_hash_or_group_the_controller_does_not_select_is_refused() {
    let h = harness(
        &host_nqn(),
        HashFn::Sha512,
        Group::from_id(dh_group::FFDHE2048),
    );
    rt().block_on(async {
        let mut o = opts(secret(1, Some(HashFn::Sha256)), None);
        o.dhchap.as_mut().unwrap().hashes = vec![hash_id::SHA256, hash_id::SHA384];
        match HostController::connect(h.ports[0], o).await {
            Err(HostError::AuthFailed { explanation }) => {
                assert_eq!(explanation, failure::HASH_UNUSABLE);
            }
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        let mut o = opts(secret(1, Some(HashFn::Sha256)), None);
        o.dhchap.as_mut().unwrap().dh_groups = vec![dh_group::NULL];
        match HostController::connect(h.ports[0], o).await {
            Err(HostError::AuthFailed { explanation }) => {
                assert_eq!(explanation, failure::DHGROUP_UNUSABLE);
            }
            other => panic!("expected AuthFailed, got {other:?}"),
        }
    });
    // Counted by reason, on the port that refused them.
    wait_for_auth_count(&h, AuthFailure::HashUnusable, 1);
    wait_for_auth_count(&h, AuthFailure::DhGroupUnusable, 1);
    let p = &h.target.metrics().ports[0];
    assert_eq!(p.auth_successes.load(Ordering::Relaxed), 0);
    assert_eq!(
        p.auth_failures[AuthFailure::Failed as usize].load(Ordering::Relaxed),
        0
    );
    h.stop();
}

/// Waits (at most 10 s) for port 0's failure counter of `why` to reach `n`.
fn wait_for_auth_count(h: &Harness, why: AuthFailure, n: u64) {
    let c = &h.target.metrics().ports[0].auth_failures[why as usize];
    let t = std::time::Instant::now();
    while c.load(Ordering::Relaxed) != n {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{why:?}: {} failures counted, not {n}",
            c.load(Ordering::Relaxed)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_replayed_reply_does_not_answer_a_new_challenge() {
    let h = harness(&host_nqn(), HashFn::Sha256, None);
    rt().block_on(async {
        let o = opts(secret(1, Some(HashFn::Sha256)), None);
        let d = o.dhchap.clone().unwrap();
        let host = o.hostnqn.clone();
        // A genuine exchange, recorded.
        let (mut q1, _) = open_admin_queue(h.ports[0], &o).await.unwrap();
        let mut x1 = HostExchange::new(&d, &host, OPEN_NQN, 1);
        q1.auth_send(&x1.negotiate()).await.unwrap();
        let reply = x1.reply(&q1.auth_receive(4096).await.unwrap()).unwrap();
        q1.auth_send(&reply).await.unwrap();
        assert_eq!(
            x1.success1(&q1.auth_receive(4096).await.unwrap()).unwrap(),
            None
        );
        // The same transaction ID, a new challenge, the old reply: refused.
        let (mut q2, _) = open_admin_queue(h.ports[0], &o).await.unwrap();
        let x2 = HostExchange::new(&d, &host, OPEN_NQN, 1);
        q2.auth_send(&x2.negotiate()).await.unwrap();
        q2.auth_receive(4096).await.unwrap();
        q2.auth_send(&reply).await.unwrap();
        let r = x2.success1(&q2.auth_receive(4096).await.unwrap());
        match r {
            Err(HostError::AuthFailed { explanation }) => assert_eq!(explanation, failure::FAILED),
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        // And sending it again on the first queue (its challenge is spent) is out of step.
        q1.auth_send(&reply).await.unwrap();
        assert!(matches!(
            HostExchange::new(&d, &host, OPEN_NQN, 1)
                .success1(&q1.auth_receive(4096).await.unwrap()),
            Err(HostError::AuthFailed { .. })
        ));
    });
    h.stop();
}

#[test]
fn a_wrong_controller_secret_makes_the_host_refuse() {
    let h = harness(&host_nqn(), HashFn::Sha256, None);
    rt().block_on(async {
        let r = HostController::connect(
            h.ports[0],
            opts(secret(1, Some(HashFn::Sha256)), Some(secret(3, None))),
        )
        .await;
        assert!(matches!(r, Err(HostError::CtrlAuthFailed)), "{r:?}");
    });
    wait_for_auth_count(&h, AuthFailure::HostRefused, 1);
    h.stop();
}

#[test]
fn auth_commands_are_checked() {
    let h = harness(&host_nqn(), HashFn::Sha256, None);
    rt().block_on(async {
        // A queue that was never asked to authenticate has nothing to exchange.
        let plain = HostOptions {
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:other".into(),
            ..HostOptions::new(OPEN_NQN)
        };
        let (mut q, _) = open_admin_queue(h.ports[0], &plain).await.unwrap();
        let r = q.auth_receive(4096).await;
        assert!(
            matches!(r, Err(HostError::Status { status: s, .. }) if s & 0x7ff == status::COMMAND_SEQUENCE_ERROR),
            "{r:?}"
        );
        // Too small an allocation for the challenge: refused, and the exchange can go on.
        let o = opts(secret(1, Some(HashFn::Sha256)), None);
        let d = o.dhchap.clone().unwrap();
        let (mut q, _) = open_admin_queue(h.ports[0], &o).await.unwrap();
        let mut x = HostExchange::new(&d, &o.hostnqn, OPEN_NQN, 4);
        q.auth_send(&x.negotiate()).await.unwrap();
        let r = q.auth_receive(16).await;
        assert!(
            matches!(r, Err(HostError::Status { status: s, .. }) if s & 0x7ff == status::INVALID_FIELD),
            "{r:?}"
        );
        let reply = x.reply(&q.auth_receive(4096).await.unwrap()).unwrap();
        q.auth_send(&reply).await.unwrap();
        assert_eq!(x.success1(&q.auth_receive(4096).await.unwrap()).unwrap(), None);
    });
    h.stop();
}
