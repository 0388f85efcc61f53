//! The driver against real controllers bound to vfio-pci (the QEMU lab runs these with
//! `--ignored`): `BATON_NVME_PCI` names controller A, `BATON_NVME_PCI2` a second controller
//! of the same NVM subsystem (shared namespace 1).
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

use std::sync::Arc;

use ffi::vfio::VfioPci;
use nvme_driver::{Controller, DriverError};

fn device(var: &str) -> Arc<VfioPci> {
    let bdf = std::env::var(var)
        .unwrap_or_else(|_| panic!("set {var} to a PCI address bound to vfio-pci"));
    Arc::new(VfioPci::open(&bdf).unwrap_or_else(|e| panic!("{bdf}: {e}")))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
#[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
fn hw_bring_up_identify_and_io_up_to_mdts() {
    let mut c = Controller::new(device("BATON_NVME_PCI")).unwrap();
    let id = c.identity();
    assert_eq!(id.cmic & 2, 2, "a multi-controller subsystem");
    let ns = c.namespace(1).unwrap();
    assert!(ns.blocks > 0 && ns.block_size >= 512);
    assert!(c.set_num_queues(2).unwrap() >= 1);
    let mut q = c.create_io_queue_pair(64).unwrap();
    let bs = ns.block_size as usize;
    // One block, exactly one page, two pages (PRP2), three pages (a PRP list), MDTS.
    let mut sizes = vec![bs, 4096, 8192, 12288, 64 * 1024, c.max_transfer()];
    sizes.dedup();
    for (i, len) in sizes.into_iter().enumerate() {
        let slba = (i as u64) * 4096;
        let d = pattern(len, i as u64 + 1);
        q.write(&ns, slba, &d).unwrap();
        let mut b = vec![0u8; len];
        q.read(&ns, slba, &mut b).unwrap();
        assert!(b == d, "{len} bytes");
    }
    q.flush(&ns).unwrap();
    q.write_zeroes(&ns, 0, 8).unwrap();
    let mut b = vec![0xffu8; 4096];
    q.read(&ns, 0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "write zeroes");
}

#[test]
#[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
fn hw_queue_wrap_and_error_status() {
    let mut c = Controller::new(device("BATON_NVME_PCI")).unwrap();
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(16).unwrap();
    let bs = ns.block_size as usize;
    for i in 0..5000u64 {
        let d = pattern(bs, i);
        q.write(&ns, 100_000 + i % 512, &d).unwrap();
        if i % 250 == 0 {
            let mut b = vec![0u8; bs];
            q.read(&ns, 100_000 + i % 512, &mut b).unwrap();
            assert!(b == d);
        }
    }
    match q.read(&ns, ns.blocks, &mut vec![0u8; bs]) {
        Err(DriverError::Status { sc: 0x80, .. }) => {}
        r => panic!("expected LBA Out of Range, got {r:?}"),
    }
    c.shutdown().unwrap();
}

#[test]
#[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
fn hw_shared_namespace_written_by_a_read_by_b() {
    let mut a = Controller::new(device("BATON_NVME_PCI")).unwrap();
    let mut b = Controller::new(device("BATON_NVME_PCI2")).unwrap();
    let ns = a.namespace(1).unwrap();
    assert_eq!(b.namespace(1).unwrap(), ns);
    let mut qa = a.create_io_queue_pair(8).unwrap();
    let mut qb = b.create_io_queue_pair(8).unwrap();
    let d = pattern(64 * 1024, 77);
    qa.write(&ns, 50_000, &d).unwrap();
    qa.flush(&ns).unwrap();
    let mut back = vec![0u8; d.len()];
    qb.read(&ns, 50_000, &mut back).unwrap();
    assert!(back == d, "controller B sees what controller A wrote");
}
