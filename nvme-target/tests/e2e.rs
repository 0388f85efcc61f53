//! End-to-end tests: the host library against the target over loopback TCP.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

mod common;

use common::{rt, timeout};

use std::time::Duration;

use common::{ALLOWED_HOST, Harness, LOCKED_NQN, OPEN_NQN, connect, pattern};
use nvme_spec::fabrics::DISCOVERY_NQN;
use nvme_spec::log::lid;
use nvme_spec::{get_str, status};
use nvme_target::host::{Digests, HostController, HostError, HostOptions};

#[test]
fn identify_reports_a_multipath_capable_controller() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (mut c, _q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let id = c.identify_controller().await.unwrap();
        assert_eq!(id.cntlid.get(), c.cntlid());
        assert_eq!(id.cmic & 0b10, 0b10, "CMIC bit 1");
        assert_eq!(id.mdts, 8, "1 MiB max transfer");
        assert_eq!(get_str(&id.subnqn), OPEN_NQN);
        assert_eq!(get_str(&id.sn), "BATONTEST0001");
        assert_ne!(id.kas.get(), 0);
        assert_eq!(id.sgls.get() & 0x3, 1);
        assert!(id.ioccsz.get() >= 4 && id.iorcsz.get() >= 1);
        assert_eq!(id.cntrltype, 1);
        assert_eq!(id.oncs.get() & 0b1100, 0b1100, "DSM and Write Zeroes");
        assert_eq!(id.sqes, 0x66);
        // NN leaves room for namespaces beyond the configured ones; MNAN (the host sizes its
        // ANA log by it) must not pass NN.
        assert_eq!(id.nn.get(), 256);
        assert_eq!(id.mnan.get(), 256);
        assert_eq!(c.active_namespaces().await.unwrap(), vec![1, 2]);
        assert_eq!(ns.block_size, 512);
        assert_eq!(ns.blocks, (64 << 20) / 512);
        let idns = c.identify_namespace(2).await.unwrap();
        assert_eq!(idns.nmic, 1);
        assert_eq!(idns.lbaf[0].lbads, 12);
        assert_eq!(idns.noiob.get(), 32, "128 KiB stripe in 4 KiB blocks");
        assert_eq!(idns.dlfeat & 0x7, 1);
        let mut g = [0x5a; 16];
        g[15] = 2;
        assert_eq!(idns.nguid, g);
        let desc = c.ns_descriptors(2).await.unwrap();
        assert_eq!(&desc[..4], &[2, 16, 0, 0]);
        assert_eq!(&desc[4..20], &g);
        // An ID within NN with no namespace is inactive: zeroes (as nvmet answers); it has
        // no descriptors, and an ID past NN is invalid.
        assert_eq!(c.identify_namespace(9).await.unwrap().nsze.get(), 0);
        let invalid =
            |err: HostError| matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::INVALID_NS);
        assert!(invalid(c.ns_descriptors(9).await.unwrap_err()));
        let nn = c.identify_controller().await.unwrap().nn.get();
        assert!(invalid(c.identify_namespace(nn + 1).await.unwrap_err()));
    }));
    h.stop();
}

#[test]
fn controllers_get_unique_ids_and_the_same_namespace_identity() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut a = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        let mut b = HostController::connect(h.ports[1], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        let c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN))
            .await
            .unwrap();
        assert_ne!(a.cntlid(), b.cntlid());
        assert_ne!(a.cntlid(), c.cntlid());
        assert_ne!(b.cntlid(), c.cntlid());
        let na = a.identify_namespace(1).await.unwrap();
        let nb = b.identify_namespace(1).await.unwrap();
        assert_eq!(na.nguid, nb.nguid);
        let st = h.target.status();
        assert_eq!(st.subsystems[0].controllers.len(), 3);
    }));
    h.stop();
}

async fn round_trip(h: &Harness, digests: Digests) {
    let mut opts = HostOptions::new(OPEN_NQN);
    opts.digests = digests;
    let (_a, mut qa, ns) = connect(h.ports[0], opts.clone()).await;
    let (_b, mut qb, _) = connect(h.ports[1], opts).await;
    let sizes = [
        512,
        1024,
        4096,
        8192,
        8704,
        65536,
        131_072,
        131_584,
        1 << 20,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let slba = 4096 * i as u64 + 7;
        let data = pattern(len, slba);
        qa.write(&ns, slba, &data).await.unwrap();
        let back = qb.read(&ns, slba, len).await.unwrap();
        assert!(
            back == data,
            "{len} bytes at LBA {slba} ({digests:?}) differ"
        );
    }
}

#[test]
fn writes_through_one_controller_read_back_through_another() {
    let h = Harness::start();
    rt().block_on(timeout(round_trip(&h, Digests::default())));
    h.stop();
}

/// Reads of a RAM namespace that offers its mapping: without data digests they go out
/// straight from the mapping (never submitted to the device), gathered with the responses
/// at queue depth; with data digests every read goes through a buffer. Each read returns
/// its own bytes either way.
async fn mapped_reads(h: &Harness, digests: Digests) -> usize {
    let mut opts = HostOptions::new(LOCKED_NQN);
    opts.hostnqn = ALLOWED_HOST.into();
    opts.digests = digests;
    let (_c, mut q, ns) = connect(h.ports[0], opts).await;
    let span = 4u64 << 20;
    let image = pattern(span as usize, 11);
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        q.write(&ns, (i as u64) << 11, chunk).await.unwrap();
    }
    let before = h.locked.reads();
    // Sizes from 512 B to 1 MiB, at odd block offsets.
    let sizes = [4096, 16_384, 512, 131_072, 16_896, 1 << 20, 8192, 65_536];
    let mut want = std::collections::HashMap::new();
    for round in 0..4u64 {
        for (i, &len) in sizes.iter().enumerate() {
            let slba = (round * 977 + i as u64 * 1531) % ((span - len as u64) / 512);
            let cid = q.submit_read(&ns, slba, len).unwrap();
            want.insert(cid, (slba, len));
        }
        for _ in 0..sizes.len() {
            let done = q.next().await.unwrap();
            assert_eq!(done.status(), 0);
            let (slba, len) = want.remove(&done.cid).unwrap();
            let at = (slba * 512) as usize;
            assert!(
                q.data(done.cid) == &image[at..at + len],
                "{len} bytes at LBA {slba} ({digests:?}) differ"
            );
            q.release(done.cid);
        }
    }
    h.locked.reads() - before
}

#[test]
fn reads_of_mapped_memory_go_out_without_a_device_read() {
    let h = Harness::start();
    let submitted = rt().block_on(timeout(mapped_reads(&h, Digests::default())));
    assert_eq!(submitted, 0, "sent from the mapping");
    let submitted = rt().block_on(timeout(mapped_reads(
        &h,
        Digests {
            header: true,
            data: true,
        },
    )));
    assert_eq!(
        submitted,
        4 * 8,
        "with data digests every read is submitted"
    );
    h.stop();
}

/// Writes to a RAM namespace that offers its mapping, at queue depth: in-capsule data,
/// H2CData through the input buffer and H2CData read straight from the socket, at odd block
/// offsets. Without data digests their data lands in the mapping (no write is submitted to
/// the device); with data digests every write goes through a device buffer. Returns
/// (writes landed, writes submitted), and checks every byte read back.
async fn landed_writes(h: &Harness, digests: Digests) -> (usize, usize) {
    let mut opts = HostOptions::new(LOCKED_NQN);
    opts.hostnqn = ALLOWED_HOST.into();
    opts.digests = digests;
    let (_c, mut q, ns) = connect(h.ports[1], opts).await;
    let (landed, submitted) = (h.locked.landed(), h.locked.writes());
    // In capsule (up to 8 KiB), by R2T through the input buffer (under 16 KiB), by R2T
    // straight into the mapping (16 KiB and more, in one or several H2CData PDUs).
    let sizes = [512, 4096, 8192, 12_288, 16_384, 131_072, 16_896, 1 << 20];
    let span = 4u64 << 20;
    let mut image = vec![0u8; span as usize];
    for round in 0..3u64 {
        let mut at = Vec::new();
        // Disjoint ranges within a round (so the order they land in does not matter), one
        // after another with a few blocks between, a little further on each round.
        let mut slba = 1 + round * 3;
        for &len in &sizes {
            let data = pattern(len, slba + round);
            let cid = q.submit_write(&ns, slba, &data).unwrap();
            at.push((cid, slba, data));
            slba += (len / 512) as u64 + 7;
        }
        for _ in 0..sizes.len() {
            let done = q.next().await.unwrap();
            assert_eq!(done.status(), 0);
        }
        for (_, slba, data) in at {
            let o = (slba * 512) as usize;
            image[o..o + data.len()].copy_from_slice(&data);
        }
    }
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        let back = q.read(&ns, (i as u64) << 11, chunk.len()).await.unwrap();
        assert!(back == chunk, "MiB {i} ({digests:?}) differs");
    }
    (h.locked.landed() - landed, h.locked.writes() - submitted)
}

#[test]
fn writes_to_mapped_memory_land_without_a_device_write() {
    let h = Harness::start();
    let (landed, submitted) = rt().block_on(timeout(landed_writes(&h, Digests::default())));
    assert_eq!((landed, submitted), (3 * 8, 0), "landed in the mapping");
    let digests = Digests {
        header: true,
        data: true,
    };
    let (landed, submitted) = rt().block_on(timeout(landed_writes(&h, digests)));
    // In-capsule data was checked with its PDU: it still lands; the rest goes to buffers.
    assert_eq!(
        (landed, submitted),
        (3 * 3, 3 * 5),
        "with data digests, R2T data goes through buffers"
    );
    h.stop();
}

#[test]
fn round_trip_with_header_and_data_digests() {
    let h = Harness::start();
    rt().block_on(timeout(round_trip(
        &h,
        Digests {
            header: true,
            data: true,
        },
    )));
    h.stop();
}

#[test]
fn small_h2c_pdus_and_r2t_queueing() {
    // 4 KiB H2CData and a single R2T slot: large writes queue behind each other.
    let h = Harness::start_with(|c| {
        c.max_h2c_data = 4096;
        c.max_r2t_in_flight = 1;
    });
    rt().block_on(timeout(async {
        let (_c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let writes: Vec<Vec<u8>> = (0..8).map(|i| pattern(96 * 1024, i)).collect();
        let mut cids = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            cids.push(q.submit_write(&ns, 1000 * i as u64, w).unwrap());
        }
        for _ in 0..writes.len() {
            let c = q.next().await.unwrap();
            assert_eq!(c.status(), 0);
            q.release(c.cid);
        }
        for (i, w) in writes.iter().enumerate() {
            assert!(&q.read(&ns, 1000 * i as u64, w.len()).await.unwrap() == w);
        }
    }));
    h.stop();
}

#[test]
fn pipelined_reads_at_queue_depth_32() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (_c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let data = pattern(1 << 20, 9);
        q.write(&ns, 0, &data).await.unwrap();
        let mut outstanding = std::collections::HashMap::new();
        let mut done = 0;
        let mut next = 0u64;
        while done < 1000 {
            while outstanding.len() < 32 && next < 1000 {
                let slba = (next * 7) % 2040;
                outstanding.insert(q.submit_read(&ns, slba, 4096).unwrap(), slba);
                next += 1;
            }
            let c = q.next().await.unwrap();
            assert_eq!(c.status(), 0);
            let slba = outstanding.remove(&c.cid).unwrap() as usize;
            assert!(q.data(c.cid) == &data[slba * 512..slba * 512 + 4096]);
            q.release(c.cid);
            done += 1;
        }
    }));
    h.stop();
}

#[test]
fn discovery_lists_the_ports_of_the_subsystems_the_host_may_use() {
    let h = Harness::start_with(|cfg| {
        cfg.referrals = vec!["192.0.2.7:8009".parse().unwrap()];
    });
    rt().block_on(timeout(async {
        // Every port of every subsystem the host may connect to, then the current discovery
        // subsystem and the referral.
        let entries_of = |entries: &[nvme_spec::log::DiscoveryLogEntry]| {
            let mut seen: Vec<(u8, String, u16, String, String)> = entries
                .iter()
                .map(|e| {
                    assert_eq!(e.trtype, 3);
                    assert_eq!(e.adrfam, 1);
                    assert_eq!(e.cntlid.get(), 0xffff);
                    (
                        e.subtype,
                        get_str(&e.subnqn).to_owned(),
                        e.portid.get(),
                        get_str(&e.traddr).to_owned(),
                        get_str(&e.trsvcid).to_owned(),
                    )
                })
                .collect();
            seen.sort();
            seen
        };
        let want = |nqns: &[&str]| {
            let mut want = vec![
                (
                    1,
                    DISCOVERY_NQN.to_owned(),
                    0,
                    "192.0.2.7".to_owned(),
                    "8009".to_owned(),
                ),
                (
                    3,
                    DISCOVERY_NQN.to_owned(),
                    0,
                    "127.0.0.1".to_owned(),
                    h.discovery.port().to_string(),
                ),
            ];
            for nqn in nqns {
                for (i, p) in h.ports.iter().enumerate() {
                    want.push((
                        2,
                        (*nqn).to_owned(),
                        u16::try_from(i + 1).unwrap(),
                        "127.0.0.1".to_owned(),
                        p.port().to_string(),
                    ));
                }
            }
            want.sort();
            want
        };
        let mut d = HostController::connect(h.discovery, HostOptions::discovery()).await.unwrap();
        let id = d.identify_controller().await.unwrap();
        assert_eq!(id.cntrltype, 2);
        // An unlisted host does not learn of the subsystem that would refuse it.
        assert_eq!(entries_of(&d.discovery_log().await.unwrap()), want(&[OPEN_NQN]));
        let listed = HostOptions {
            hostnqn: ALLOWED_HOST.into(),
            ..HostOptions::discovery()
        };
        let mut d = HostController::connect(h.discovery, listed.clone()).await.unwrap();
        assert_eq!(
            entries_of(&d.discovery_log().await.unwrap()),
            want(&[LOCKED_NQN, OPEN_NQN])
        );
        // The discovery controller refuses I/O subsystems and I/O queues.
        let err = HostController::connect(h.discovery, HostOptions::new(OPEN_NQN)).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::CONNECT_INVALID_PARAM));
        // Any port also answers as a discovery controller.
        let mut d2 = HostController::connect(h.ports[1], listed).await.unwrap();
        assert_eq!(d2.discovery_log().await.unwrap().len(), 6);
    }));
    h.stop();
}

#[test]
fn unknown_hosts_get_invalid_host_and_nothing_else() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let err = HostController::connect(h.ports[0], HostOptions::new(LOCKED_NQN))
            .await
            .unwrap_err();
        match err {
            HostError::Status { status: s, .. } => {
                assert_eq!(s & 0x7ff, status::CONNECT_INVALID_HOST)
            }
            e => panic!("expected invalid host, got {e}"),
        }
        let mut ok = HostOptions::new(LOCKED_NQN);
        ok.hostnqn = ALLOWED_HOST.into();
        let (_c, mut q, ns) = connect(h.ports[1], ok).await;
        q.write(&ns, 0, &[7; 512]).await.unwrap();
        assert_eq!(
            h.target.metrics().subsystems[1]
                .refused_hosts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }));
    h.stop();
}

#[test]
fn range_and_length_errors_are_nvme_statuses() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (mut c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let err = q.read(&ns, ns.blocks - 1, 1024).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::LBA_OUT_OF_RANGE));
        let err = q.write(&ns, u64::MAX - 1, &[0; 1024]).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::LBA_OUT_OF_RANGE));
        // More than MDTS, in one raw command (the library's own reads split at MDTS).
        let mut sqe = nvme_spec::command::Sqe {
            opcode: nvme_spec::command::io_opcode::READ,
            ..Default::default()
        };
        sqe.nsid.set(ns.nsid);
        sqe.set_lba_range(0, (2 << 20) / ns.block_size);
        let (cqe, _) = q.execute(sqe, None, 2 << 20).await.unwrap();
        assert_eq!(cqe.status_field() & 0x7ff, status::INVALID_FIELD);
        let err = q.deallocate(&ns, &[(ns.blocks, 8)]).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::LBA_OUT_OF_RANGE));
        // The queue still works, and the error log recorded the failures, newest first.
        q.write(&ns, 0, &[1; 512]).await.unwrap();
        let log = c.get_log_page(lid::ERROR, 0, 4096).await.unwrap();
        let count = u64::from_le_bytes(log[..8].try_into().unwrap());
        assert_eq!(count, 4);
        assert_eq!(u16::from_le_bytes([log[12], log[13]]) >> 1 & 0x7ff, status::LBA_OUT_OF_RANGE);
        let smart = c.get_log_page(lid::SMART, 0, 512).await.unwrap();
        assert!(u128::from_le_bytes(smart[80..96].try_into().unwrap()) >= 1, "host writes counted");
        let err = c.get_log_page(0x70, 0, 1024).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::INVALID_LOG_PAGE));
    }));
    h.stop();
}

#[test]
fn write_zeroes_and_deallocate_read_back_zeroes() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (_c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        q.write(&ns, 100, &pattern(64 * 1024, 1)).await.unwrap();
        q.write_zeroes(&ns, 100, 64).await.unwrap();
        let back = q.read(&ns, 100, 64 * 1024).await.unwrap();
        assert!(back[..32 * 1024].iter().all(|&b| b == 0));
        assert!(back[32 * 1024..] == pattern(64 * 1024, 1)[32 * 1024..]);
        // Written blocks 100..228, zeroed 100..164; deallocate 170..186 and 200..208.
        q.deallocate(&ns, &[(170, 16), (200, 8)]).await.unwrap();
        let back = q.read(&ns, 170, 16 * 512).await.unwrap();
        assert!(back.iter().all(|&b| b == 0));
        let back = q.read(&ns, 186, 22 * 512).await.unwrap();
        assert!(
            back[..14 * 512] == pattern(64 * 1024, 1)[86 * 512..100 * 512],
            "outside the ranges untouched"
        );
        assert!(back[14 * 512..].iter().all(|&b| b == 0));
        q.flush_ns(&ns).await.unwrap();
    }));
    h.stop();
}

#[test]
fn queues_are_limited_to_what_set_features_granted() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN)).await.unwrap();
        assert_eq!(c.set_num_queues(64).await.unwrap(), 8);
        let mut c = HostController::connect(h.ports[0], HostOptions::new(OPEN_NQN)).await.unwrap();
        assert_eq!(c.set_num_queues(2).await.unwrap(), 2);
        c.connect_io_queue(1).await.unwrap();
        let _q2 = c.connect_io_queue(2).await.unwrap();
        let err = c.connect_io_queue(3).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::CONNECT_INVALID_PARAM));
        let err = c.connect_io_queue(2).await.unwrap_err();
        assert!(matches!(err, HostError::Status { status: s, .. } if s & 0x7ff == status::CONNECT_INVALID_PARAM));
        // Queue 1 closed when its Queue was dropped: it can be connected again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.connect_io_queue(1).await.unwrap();
    }));
    h.stop();
}

#[test]
fn shutdown_completes_at_once() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (mut c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        q.write(&ns, 0, &[3; 4096]).await.unwrap();
        let t = std::time::Instant::now();
        c.shutdown().await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
    }));
    h.stop();
}

#[test]
fn keep_alive_expiry_tears_the_controller_down() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let mut opts = HostOptions::new(OPEN_NQN);
        opts.kato_ms = 200;
        let (mut c, mut q, ns) = connect(h.ports[0], opts).await;
        // Within KATO, keep-alives keep it up.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.keep_alive().await.unwrap();
        }
        q.read(&ns, 0, 512).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(c.keep_alive().await.is_err(), "admin queue must be gone");
        assert!(q.read(&ns, 0, 512).await.is_err(), "I/O queues go with it");
        assert!(h.target.status().subsystems[0].controllers.is_empty());
        let expiries = &h.target.metrics().ports[0].keep_alive_expiries;
        assert_eq!(expiries.load(std::sync::atomic::Ordering::Relaxed), 1);
    }));
    h.stop();
}

#[test]
fn every_command_is_in_flight_until_it_completes_and_its_latency_is_observed() {
    use std::sync::atomic::Ordering::Relaxed;
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (_c, mut q, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        // Namespace 1 is file-backed: 64 KiB reads go out with sendfile.
        let data = pattern(64 << 10, 3);
        for i in 0..4 {
            q.submit_write(&ns, i * 128, &data).unwrap();
        }
        for i in 0..8 {
            q.submit_read(&ns, (i % 4) * 128, 64 << 10).unwrap();
        }
        for _ in 0..12 {
            let done = q.next().await.unwrap();
            assert_eq!(done.status(), 0);
            q.release(done.cid);
        }
        let port = &h.target.metrics().ports[0];
        let count = |h: &nvme_target::metrics::Histogram| h.counts().iter().sum::<u64>();
        // A read is counted done right after the write that handed its last byte to the
        // socket, which this host may see first: wait (bounded) for the target's count.
        let t = std::time::Instant::now();
        while count(&port.read_latency) < 8 || port.in_flight.load(Relaxed) != 0 {
            assert!(t.elapsed() < Duration::from_secs(20), "reads never counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            count(&port.read_latency),
            8,
            "zero-copy reads observed when sent"
        );
        assert_eq!(count(&port.write_latency), 4);
        assert_eq!(
            port.in_flight.load(Relaxed),
            0,
            "every answered command left"
        );
        assert_eq!(port.awaiting_data.load(Relaxed), 0);
    }));
    h.stop();
}

#[test]
fn dropping_one_ports_connections_leaves_the_other_path_working() {
    let h = Harness::start();
    rt().block_on(timeout(async {
        let (_a, mut qa, ns) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        let (_b, mut qb, _) = connect(h.ports[1], HostOptions::new(OPEN_NQN)).await;
        h.drop_connections(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(qa.read(&ns, 0, 512).await.is_err());
        qb.write(&ns, 8, &[9; 512]).await.unwrap();
        // The port still listens: the host reconnects.
        let (_a, mut qa, _) = connect(h.ports[0], HostOptions::new(OPEN_NQN)).await;
        assert_eq!(qa.read(&ns, 8, 512).await.unwrap(), vec![9; 512]);
    }));
    h.stop();
}
