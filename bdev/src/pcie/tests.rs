use super::*;
use crate::testing::{local, read, run, write};
use crate::{CompletionQueue, PoolClass};
use nvme_driver::sim::SimNvme;

fn namespace(paths: usize, timeout: Duration) -> (Vec<Arc<SimNvme>>, PcieNamespace<SimNvme>) {
    let sim = SimNvme::new(1, 16384, 5);
    // Controllers of one subsystem share its namespaces.
    let devs: Vec<Arc<SimNvme>> = (0..paths).map(|_| Arc::new(sim.sibling())).collect();
    let ns = PcieNamespace::new(devs.clone(), 1, 8, timeout).unwrap();
    (devs, ns)
}

fn pool() -> BufPool {
    BufPool::new(&[
        PoolClass {
            size: 4096,
            count: 16,
        },
        PoolClass {
            size: 1 << 20,
            count: 2,
        },
    ])
    .unwrap()
}

#[test]
fn requests_are_commands_in_flight_completing_in_any_order() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let pool = pool();
        let io = ns.open(0, &pool).unwrap();
        assert_eq!(io.depth(), 7);
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        devs[0].hold_io(true);
        // Ten requests on a queue of seven: three wait in the engine.
        for i in 0..10u64 {
            let mut b = pool.get(4096).unwrap();
            b.as_mut_slice().fill(u8::try_from(i).unwrap() + 1);
            io.submit(Request::write(i * 4096, 4096, b, i), &sink);
        }
        assert_eq!((io.in_flight(), devs[0].held()), (10, 7));
        devs[0].release(true);
        let mut tags = Vec::new();
        while tags.len() < 7 {
            let c = cq.next().await;
            c.result.unwrap();
            tags.push(c.tag);
        }
        assert_eq!(
            tags,
            vec![6, 5, 4, 3, 2, 1, 0],
            "the device's order, not submission's"
        );
        let rest: Vec<u64> = [cq.next().await, cq.next().await, cq.next().await]
            .into_iter()
            .map(|c| c.tag)
            .collect();
        assert_eq!(rest, vec![7, 8, 9]);
        assert_eq!(devs[0].media(1, 9 * 4096, 2), vec![10, 10]);
        assert_eq!(
            read(&io, &pool, 3 * 4096, 4096).await.unwrap(),
            vec![4u8; 4096]
        );
        assert_eq!(pool.free(), 18, "every buffer came back");
    });
}

#[test]
fn large_requests_split_at_mdts_and_data_is_shared_across_paths() {
    let (_devs, ns) = namespace(2, Duration::from_secs(10));
    local(async {
        let (p0, p1) = (pool(), pool());
        let a = ns.open(0, &p0).unwrap();
        let b = ns.open(1, &p1).unwrap();
        assert_eq!(ns.queue_pairs(), 2);
        // 1 MiB with MDTS 128 KiB: eight commands.
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 249) as u8).collect();
        write(&a, &p0, 512, &data).await.unwrap();
        assert_eq!(read(&b, &p1, 512, 1 << 20).await.unwrap(), data);
        run(&b, Op::WriteZeroes, 512, 4096).await.unwrap();
        run(&b, Op::Discard, 4608, 4096).await.unwrap();
        run(&a, Op::Flush, 0, 0).await.unwrap();
        let back = read(&a, &p0, 512, 8192).await.unwrap();
        assert!(back.iter().all(|&x| x == 0));
    });
}

#[test]
fn a_timeout_fails_the_request_and_the_queue_is_replaced() {
    let (devs, ns) = namespace(1, Duration::from_millis(50));
    local(async {
        let pool = pool();
        let io = ns.open(0, &pool).unwrap();
        write(&io, &pool, 0, &[0x5a; 4096]).await.unwrap();
        assert_eq!(ns.queue_pairs(), 1);
        devs[0].hold_io(true);
        let before = pool.free();
        assert!(matches!(
            read(&io, &pool, 0, 4096).await,
            Err(IoError::Timeout(_))
        ));
        // The broken queue pair was deleted, which aborted the command the device still
        // held (its buffer is free again), and a new one took its place.
        assert_eq!(ns.queue_pairs(), 2, "a new queue pair");
        assert_eq!(devs[0].held(), 0, "the held command went with its queue");
        assert_eq!(pool.free(), before, "the timed-out buffer is free again");
        devs[0].hold_io(false);
        assert_eq!(read(&io, &pool, 0, 4096).await.unwrap(), vec![0x5a; 4096]);
        // A second timeout on the new queue is recovered the same way.
        devs[0].hold_io(true);
        assert!(read(&io, &pool, 0, 4096).await.is_err());
        devs[0].hold_io(false);
        write(&io, &pool, 4096, &[7; 4096]).await.unwrap();
        assert_eq!(read(&io, &pool, 4096, 4096).await.unwrap(), vec![7; 4096]);
        assert_eq!(ns.queue_pairs(), 3);
    });
}

/// Longest a test waits for a path to come back.
const BACK: Duration = Duration::from_secs(20);

/// Waits until `io` serves requests again: while its path is being reset they fail at once
/// as "path down".
async fn back(io: &PcieIo<SimNvme>) {
    tokio::time::timeout(BACK, async {
        loop {
            match run(io, Op::Flush, 0, 0).await {
                Ok(()) => return,
                Err(IoError::PathDown(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the path comes back");
}

/// Waits until the namespace reports a path down.
async fn down(ns: &PcieNamespace<SimNvme>) {
    tokio::time::timeout(BACK, async {
        while !ns.is_down() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the path gives up");
}

fn data(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}

#[test]
fn a_fatal_controller_is_reset_and_both_handles_come_back() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let (pa, pb) = (pool(), pool());
        let a = ns.open(0, &pa).unwrap();
        let b = ns.open(0, &pb).unwrap();
        write(&a, &pa, 0, &data(1)).await.unwrap();
        let (free_a, free_b) = (pa.free(), pb.free());
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        devs[0].hold_io(true);
        a.submit(Request::read(0, 4096, pa.get(4096).unwrap(), 1), &sink);
        for tag in 2..4u64 {
            let mut buf = pb.get(4096).unwrap();
            buf.as_mut_slice().fill(0xee);
            b.submit(Request::write(tag * 4096, 4096, buf, tag), &sink);
        }
        assert_eq!(devs[0].held(), 3);
        devs[0].fail();
        devs[0].hold_io(false);
        // What each handle had in flight fails with an error, not a hang.
        let mut tags = Vec::new();
        for _ in 0..3 {
            let c = tokio::time::timeout(BACK, cq.next()).await.unwrap();
            assert!(matches!(c.result, Err(IoError::PathDown(_))), "{c:?}");
            assert!(c.buf.is_none(), "the device could still write the buffer");
            tags.push(c.tag);
        }
        tags.sort_unstable();
        assert_eq!(tags, vec![1, 2, 3]);
        back(&a).await;
        back(&b).await;
        assert_eq!(
            ns.resets(),
            1,
            "one reset for the path, shared by its handles"
        );
        assert_eq!(ns.queue_pairs(), 4, "a fresh queue pair per handle");
        assert!(!ns.is_down());
        // The controller dropped the held writes when it was disabled: they never land.
        assert_eq!(devs[0].held(), 0);
        assert_eq!(devs[0].media(1, 2 * 4096, 8192), vec![0; 8192]);
        // Once the controller was disabled, the buffers kept from it are free again.
        assert_eq!((pa.free(), pb.free()), (free_a, free_b));
        assert_eq!(read(&b, &pb, 0, 4096).await.unwrap(), data(1));
        write(&b, &pb, 5 * 4096, &data(2)).await.unwrap();
        assert_eq!(read(&a, &pa, 5 * 4096, 4096).await.unwrap(), data(2));
        write(&a, &pa, 6 * 4096, &data(3)).await.unwrap();
        assert_eq!(read(&b, &pb, 6 * 4096, 4096).await.unwrap(), data(3));
    });
}

#[test]
fn a_reset_fails_what_the_other_handle_has_in_flight_and_waiting() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let (pa, pb) = (pool(), pool());
        let a = ns.open(0, &pa).unwrap();
        let b = ns.open(0, &pb).unwrap();
        let free_b = pb.free();
        let cq = Rc::new(CompletionQueue::default());
        let sink: Rc<dyn Sink> = cq.clone();
        devs[0].hold_io(true);
        // Ten writes on a queue of seven: seven on the device, three waiting in the engine.
        for tag in 0..10u64 {
            let mut buf = pb.get(4096).unwrap();
            buf.as_mut_slice().fill(0x77);
            b.submit(Request::write(tag * 4096, 4096, buf, tag), &sink);
        }
        assert_eq!((b.in_flight(), devs[0].held()), (10, 7));
        devs[0].fail();
        // Handle a, idle until now, sees the fatal controller on its next request.
        assert!(matches!(
            run(&a, Op::Flush, 0, 0).await,
            Err(IoError::PathDown(_))
        ));
        let mut failed = 0;
        while failed < 10 {
            let c = tokio::time::timeout(BACK, cq.next()).await.unwrap();
            assert!(c.result.is_err(), "{c:?}");
            failed += 1;
        }
        assert_eq!(b.in_flight(), 0);
        devs[0].hold_io(false);
        back(&b).await;
        back(&a).await;
        assert_eq!(ns.resets(), 1);
        assert_eq!(pb.free(), free_b, "every buffer came back after the reset");
        devs[0].release(false);
        assert_eq!(
            devs[0].media(1, 0, 10 * 4096),
            vec![0; 10 * 4096],
            "nothing of before the reset is replayed"
        );
        write(&b, &pb, 0, &data(4)).await.unwrap();
        assert_eq!(read(&a, &pa, 0, 4096).await.unwrap(), data(4));
    });
}

#[test]
fn a_queue_that_cannot_be_deleted_resets_the_controller_for_every_handle() {
    let (devs, ns) = namespace(1, Duration::from_millis(50));
    local(async {
        let (pa, pb) = (pool(), pool());
        let a = ns.open(0, &pa).unwrap();
        let b = ns.open(0, &pb).unwrap();
        write(&b, &pb, 0, &data(5)).await.unwrap();
        devs[0].hold_io(true);
        devs[0].fail_queue_deletes(1);
        assert!(matches!(
            read(&a, &pa, 0, 4096).await,
            Err(IoError::Timeout(_))
        ));
        devs[0].hold_io(false);
        back(&a).await;
        // b was idle: it is told the generation moved on, and reconnects too.
        back(&b).await;
        assert_eq!(ns.resets(), 1, "a reset, not a queue replacement");
        assert_eq!(ns.queue_pairs(), 4);
        assert_eq!(devs[0].held(), 0);
        assert_eq!(read(&a, &pa, 0, 4096).await.unwrap(), data(5));
        write(&a, &pa, 4096, &data(6)).await.unwrap();
        assert_eq!(read(&b, &pb, 4096, 4096).await.unwrap(), data(6));
    });
}

#[test]
fn resets_back_off_and_a_controller_that_keeps_failing_stays_down() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let p = pool();
        let io = ns.open(0, &p).unwrap();
        // Two failed resets, then it comes back.
        devs[0].fail_resets(2);
        devs[0].fail();
        assert!(run(&io, Op::Flush, 0, 0).await.is_err());
        back(&io).await;
        assert_eq!(ns.resets(), 1);
        write(&io, &p, 0, &data(7)).await.unwrap();
        // Now every reset fails: the path gives up after the last attempt.
        devs[0].fail_resets(MAX_RESET_ATTEMPTS);
        devs[0].fail();
        assert!(run(&io, Op::Flush, 0, 0).await.is_err());
        down(&ns).await;
        assert_eq!(ns.resets(), 1);
        match read(&io, &p, 0, 4096).await {
            Err(IoError::PathDown(m)) => assert!(m.contains("stays down"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert!(
            matches!(ns.open(0, &pool()), Err(DriverError::Fatal)),
            "no new handle on a path that is down"
        );
    });
}

#[test]
fn buffers_of_another_pool_are_refused() {
    let (_devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let (mine, other) = (pool(), pool());
        let io = ns.open(0, &mine).unwrap();
        assert!(matches!(
            read(&io, &other, 0, 4096).await,
            Err(IoError::Invalid(_))
        ));
        assert!(read(&io, &mine, 0, 4096).await.is_ok());
    });
}

#[test]
fn a_closed_handle_deletes_its_queue_so_opens_never_run_out_of_queue_ids() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let pool = pool();
        let keep = ns.open(0, &pool).unwrap();
        let rounds = 3 * usize::from(nvme_driver::sim::MAX_IO_QUEUES);
        for round in 0..rounds {
            let io = ns
                .open(0, &pool)
                .unwrap_or_else(|e| panic!("open {round}: {e}"));
            write(&io, &pool, 4096, &data(7)).await.unwrap();
            drop(io);
        }
        assert_eq!(ns.queue_pairs(), 1 + rounds as u64);
        assert_eq!(ns.resets(), 0);
        assert_eq!(read(&keep, &pool, 4096, 4096).await.unwrap(), data(7));
        assert_eq!(devs[0].held(), 0);
        assert_eq!(pool.free(), 18);
    });
}

/// `n` 4 KiB reads submitted on `io` while `dev` holds its I/O commands.
fn held_reads(dev: &SimNvme, io: &PcieIo<SimNvme>, pool: &BufPool, n: u64) -> Rc<CompletionQueue> {
    let cq = Rc::new(CompletionQueue::default());
    let sink: Rc<dyn Sink> = cq.clone();
    dev.hold_io(true);
    for i in 0..n {
        io.submit(
            Request::read(i * 4096, 4096, pool.get(4096).unwrap(), i),
            &sink,
        );
    }
    cq
}

#[test]
fn closing_a_handle_with_commands_at_the_device_aborts_and_fails_them() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let pool = pool();
        let io = ns.open(0, &pool).unwrap();
        let cq = held_reads(&devs[0], &io, &pool, 3);
        assert_eq!(devs[0].held(), 3);
        drop(io);
        // The poller owned the handle's state too: let it go.
        tokio::task::yield_now().await;
        for _ in 0..3 {
            assert!(matches!(cq.next().await.result, Err(IoError::PathDown(_))));
        }
        assert_eq!(devs[0].held(), 0, "the queue's deletion aborted them");
        assert_eq!(pool.free(), 18, "buffers the device cannot write come back");
        assert_eq!(ns.resets(), 0);
        devs[0].hold_io(false);
        let again = ns.open(0, &pool).unwrap();
        write(&again, &pool, 0, &data(8)).await.unwrap();
    });
}

#[test]
fn a_closed_handle_whose_queue_cannot_be_deleted_keeps_its_buffers_from_reuse() {
    let (devs, ns) = namespace(1, Duration::from_secs(10));
    local(async {
        let pool = pool();
        let io = ns.open(0, &pool).unwrap();
        let cq = held_reads(&devs[0], &io, &pool, 1);
        devs[0].fail_queue_deletes(1);
        drop(io);
        tokio::task::yield_now().await;
        assert!(matches!(cq.next().await.result, Err(IoError::PathDown(_))));
        assert_eq!(pool.free(), 17, "the device may still write that buffer");
        devs[0].hold_io(false);
        // The next open resets the controller first.
        let again = ns.open(0, &pool).unwrap();
        assert_eq!(ns.resets(), 1);
        write(&again, &pool, 0, &data(9)).await.unwrap();
        assert_eq!(read(&again, &pool, 0, 4096).await.unwrap(), data(9));
    });
}
