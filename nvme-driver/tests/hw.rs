//! The driver against real controllers bound to vfio-pci (the QEMU lab runs these with
//! `--ignored`): `BATON_NVME_PCI` names controller A, `BATON_NVME_PCI2` a second controller
//! of the same NVM subsystem (shared namespace 1).
// An integration test crate: every function in it is a test, and test data may truncate.
#![allow(clippy::tests_outside_test_module, clippy::cast_possible_truncation)]

use std::sync::Arc;

use baton_tests::pattern;
use ffi::vfio::VfioPci;
use nvme_driver::{Controller, DriverError};

fn device(var: &str) -> Arc<VfioPci> {
    let bdf = std::env::var(var)
        .unwrap_or_else(|_| panic!("set {var} to a PCI address bound to vfio-pci"));
    Arc::new(VfioPci::open(&bdf).unwrap_or_else(|e| panic!("{bdf}: {e}")))
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
    let mut sizes = vec![
        bs,
        4096,
        4096 + bs,
        8192,
        8192 + bs,
        12288,
        64 * 1024,
        c.max_transfer() - bs,
        c.max_transfer(),
    ];
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

#[test]
#[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
fn hw_setup_gives_the_device_back_to_nvme_and_takes_it_again() {
    let bdf = std::env::var("BATON_NVME_PCI")
        .unwrap_or_else(|_| panic!("set BATON_NVME_PCI to a PCI address bound to vfio-pci"));
    assert!(ffi::setup::nvme_functions().contains(&bdf));
    ffi::setup::reset(std::slice::from_ref(&bdf)).unwrap();
    assert_eq!(ffi::vfio::bound_driver(&bdf).as_deref(), Some("nvme"));
    assert!(
        VfioPci::open(&bdf).is_err(),
        "a device on the kernel driver cannot be opened"
    );
    ffi::setup::setup(std::slice::from_ref(&bdf), 64).unwrap();
    assert_eq!(ffi::vfio::bound_driver(&bdf).as_deref(), Some("vfio-pci"));
    let mut c = Controller::new(device("BATON_NVME_PCI")).unwrap();
    assert!(c.namespace(1).unwrap().blocks > 0);
    c.shutdown().unwrap();
}

#[test]
#[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
fn hw_dma_memory_is_returned_when_dropped() {
    use ffi::PciDevice;
    let dev = device("BATON_NVME_PCI");
    // Far more 2 MiB allocations than the lab reserves hugepages (64): each must be unmapped
    // from the IOMMU and released when its last region goes.
    for i in 0..300u64 {
        let r = dev
            .alloc_dma(ffi::dma::HUGEPAGE)
            .unwrap_or_else(|e| panic!("allocation {i}: {e}"));
        r.write_u32(0, 0xdead_beef);
        assert_eq!(r.read_u32(0), 0xdead_beef);
    }
    // And a controller still works on the same function afterwards.
    let mut c = Controller::new(dev).unwrap();
    let ns = c.namespace(1).unwrap();
    let mut q = c.create_io_queue_pair(8).unwrap();
    let mut b = vec![0u8; ns.block_size as usize];
    q.read(&ns, 0, &mut b).unwrap();
}
