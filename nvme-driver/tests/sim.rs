//! The driver against the simulated controller: bring-up, identify, I/O sizes, PRP lists,
//! queue wrap and phase flips, error statuses, timeouts, shutdown.
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

use std::sync::Arc;

use baton_tests::pattern;
use nvme_driver::sim::SimNvme;
use nvme_driver::{Controller, DriverError};

fn bring_up(mdts: u8) -> (Arc<SimNvme>, Controller<SimNvme>) {
    let dev = Arc::new(SimNvme::new(2, 8192, mdts));
    let c = Controller::new(Arc::clone(&dev)).unwrap();
    (dev, c)
}

#[test]
fn bring_up_and_identify() {
    let (_dev, mut c) = bring_up(5);
    assert_eq!(c.identity().mdts, 5);
    assert_eq!(c.identity().nn.get(), 2);
    assert_eq!(c.max_transfer(), 128 * 1024);
    let ns = c.namespace(2).unwrap();
    assert_eq!((ns.block_size, ns.blocks), (512, 8192));
    assert!(matches!(
        c.namespace(3),
        Err(DriverError::Status { sc: 0x0b, .. })
    ));
    assert_eq!(c.set_num_queues(4).unwrap(), 4);
}

#[test]
fn io_from_one_block_to_mdts_reads_back() {
    let (dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(16).unwrap();
    // 512 B, one page, two pages, three pages (a PRP list), and the maximum transfer.
    for (i, len) in [512usize, 4096, 8192, 12288, 65536, 128 * 1024]
        .into_iter()
        .enumerate()
    {
        let slba = 300 * i as u64;
        let data = pattern(len, i as u64);
        q.write(&ns, slba, &data).unwrap();
        let mut back = vec![0u8; len];
        q.read(&ns, slba, &mut back).unwrap();
        assert!(back == data, "{len} bytes");
        assert!(
            dev.media(1, slba as usize * 512, len) == data,
            "{len} bytes reached the media"
        );
    }
    assert!(
        matches!(
            q.read(&ns, 0, &mut vec![0u8; 256 * 1024]),
            Err(DriverError::Invalid(_))
        ),
        "past MDTS"
    );
    assert!(
        matches!(q.write(&ns, 0, &[0u8; 100]), Err(DriverError::Invalid(_))),
        "not whole blocks"
    );
}

#[test]
fn thousands_of_commands_wrap_the_queues_and_flip_the_phase() {
    let (dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(8).unwrap();
    let before = dev.commands();
    for i in 0..3000u64 {
        let d = pattern(512, i);
        q.write(&ns, i % 8000, &d).unwrap();
        if i % 97 == 0 {
            let mut b = vec![0u8; 512];
            q.read(&ns, i % 8000, &mut b).unwrap();
            assert!(b == d);
        }
    }
    assert!(dev.commands() - before >= 3000);
}

#[test]
fn errors_carry_the_nvme_status() {
    let (_dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(4).unwrap();
    match q.read(&ns, 8190, &mut [0u8; 4096]) {
        Err(DriverError::Status {
            sct: 0,
            sc: 0x80,
            opcode: 0x02,
            ..
        }) => {}
        r => panic!("expected LBA out of range, got {r:?}"),
    }
    // The queue still works after an error.
    q.write_zeroes(&ns, 0, 8).unwrap();
    q.write(&ns, 16, &pattern(4096, 1)).unwrap();
    q.deallocate(&ns, &[(16, 4)]).unwrap();
    let mut b = vec![0xffu8; 4096];
    q.read(&ns, 16, &mut b).unwrap();
    assert!(b[..2048].iter().all(|&x| x == 0) && b[2048..] == pattern(4096, 1)[2048..]);
    q.flush(&ns).unwrap();
    assert!(matches!(
        q.deallocate(&ns, &[(8192, 1)]),
        Err(DriverError::Status { sc: 0x80, .. })
    ));
    // NLB is 16 bits: more than 65536 blocks must be refused, not silently truncated.
    assert!(matches!(
        q.write_zeroes(&ns, 0, 65537),
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        q.write_zeroes(&ns, 0, 0),
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        q.deallocate(&ns, &[(0, 0)]),
        Err(DriverError::Invalid(_))
    ));
}

#[test]
fn a_silent_controller_times_out_and_shutdown_completes() {
    let (dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(4).unwrap();
    dev.drop_completions(true);
    let t = std::time::Instant::now();
    assert!(matches!(q.flush(&ns), Err(DriverError::Timeout(_))));
    assert!(t.elapsed() >= std::time::Duration::from_secs(5));
    dev.drop_completions(false);
    assert!(matches!(q.flush(&ns), Err(DriverError::QueueBroken(1))));
    c.shutdown().unwrap();
}

#[test]
fn queues_are_deleted_and_a_fatal_controller_is_reset() {
    let (dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let q = c.create_io_queue_pair(8).unwrap();
    c.delete_io_queue_pair(q).unwrap();
    let mut q = c.create_io_queue_pair(8).unwrap();
    q.write(&ns, 0, &pattern(512, 5)).unwrap();
    dev.fail();
    assert!(
        matches!(q.flush(&ns), Err(DriverError::Fatal)),
        "fatal status surfaced"
    );
    c.reset().unwrap();
    let mut q = c.create_io_queue_pair(8).unwrap();
    let mut b = vec![0u8; 512];
    q.read(&ns, 0, &mut b).unwrap();
    assert!(b == pattern(512, 5), "data survives the reset");
}

#[test]
fn a_reset_that_fails_can_be_tried_again_and_queue_ids_start_over() {
    let (dev, mut c) = bring_up(5);
    let ns = c.namespace(1).unwrap();
    let mut q1 = c.create_io_queue_pair(8).unwrap();
    let q2 = c.create_io_queue_pair(8).unwrap();
    assert_eq!((q1.qid(), q2.qid()), (1, 2));
    q1.write(&ns, 8, &pattern(512, 9)).unwrap();
    dev.fail();
    dev.fail_resets(2);
    for _ in 0..2 {
        assert!(
            matches!(c.reset(), Err(DriverError::Fatal)),
            "the controller is fatal again when enabled"
        );
    }
    assert!(
        c.create_io_queue_pair(8).is_err(),
        "a controller that did not come up runs no admin command"
    );
    c.reset().unwrap();
    // The queues of before the reset are gone: their IDs are free again.
    let mut q = c.create_io_queue_pair(8).unwrap();
    assert_eq!(q.qid(), 1);
    let mut b = vec![0u8; 512];
    q.read(&ns, 8, &mut b).unwrap();
    assert!(b == pattern(512, 9));
}
