//! Tests against real NVMe controllers bound to vfio-pci (the QEMU lab).
//!
//! `BATON_NVME_PCI` names the controller (e.g. `0000:00:04.0`); `BATON_NVME_PCI2` a second
//! controller of the same subsystem sharing namespace 1. The tests overwrite namespace 1.
//! Run with `cargo test -p nvme-driver --test hardware -- --ignored --test-threads=1`.

#[cfg(test)]
mod lab {
    use std::sync::{Mutex, MutexGuard};

    use nvme_driver::{Controller, Error, Namespace};

    /// A VFIO group can be opened once: the tests take turns.
    static DEVICE: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        DEVICE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bdf(var: &str) -> String {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => v,
            _ => panic!("{var} must name an NVMe controller bound to vfio-pci (e.g. 0000:00:04.0)"),
        }
    }

    fn open(var: &str) -> (Controller, Namespace) {
        let bdf = bdf(var);
        let ctrl = Controller::open(&bdf).unwrap_or_else(|e| panic!("opening {bdf}: {e}"));
        let ns = ctrl
            .namespace(1)
            .unwrap_or_else(|e| panic!("identify namespace 1 of {bdf}: {e}"));
        (ctrl, ns)
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn bring_up_and_identify() {
        let _g = serial();
        let (ctrl, ns) = open("BATON_NVME_PCI");
        let info = ctrl.info();
        println!("{info:?}\n{ns:?}");
        assert!(!info.model.is_empty());
        assert!(info.namespaces >= 1);
        assert!(info.io_queues >= 1);
        assert!(info.max_queue_entries >= 2);
        assert!(ns.blocks > 0);
        assert!(ns.block_size == 512 || ns.block_size == 4096);
        ctrl.shutdown().unwrap();
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn io_from_one_block_to_beyond_mdts() {
        let _g = serial();
        let (ctrl, ns) = open("BATON_NVME_PCI");
        let mut qp = ctrl.create_io_queue_pair(64).unwrap();
        let bs = ns.block_size as usize;
        let max = qp.max_transfer();
        // One block, page edges (PRP2 as data pointer vs PRP list), MDTS and beyond (split).
        let sizes = [
            bs,
            4096,
            4096 + bs,
            8192,
            8192 + bs,
            12288,
            64 << 10,
            max - bs,
            max,
            max + bs,
            2 * max,
        ];
        let mut lba = 0u64;
        for (i, len) in sizes.into_iter().enumerate() {
            let data = pattern(len, i as u64 + 1);
            qp.write(&ns, lba, &data)
                .unwrap_or_else(|e| panic!("write of {len} bytes at {lba}: {e}"));
            let mut back = vec![0u8; len];
            qp.read(&ns, lba, &mut back)
                .unwrap_or_else(|e| panic!("read of {len} bytes at {lba}: {e}"));
            assert!(back == data, "data mismatch for {len} bytes at LBA {lba}");
            lba += (len / bs) as u64;
        }
        qp.flush(&ns).unwrap();
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn queue_wraps_over_thousands_of_commands() {
        let _g = serial();
        let (ctrl, ns) = open("BATON_NVME_PCI");
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let bs = ns.block_size as usize;
        let start = std::time::Instant::now();
        for i in 0..3000u64 {
            let lba = i % 256;
            let data = pattern(bs, i);
            qp.write(&ns, lba, &data).unwrap();
            let mut back = vec![0u8; bs];
            qp.read(&ns, lba, &mut back).unwrap();
            assert!(back == data, "command pair {i}");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "6000 commands of {bs} bytes at queue depth 1 in {secs:.2} s ({:.0}/s)",
            6000.0 / secs
        );
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn lba_out_of_range_is_an_nvme_status() {
        let _g = serial();
        let (ctrl, ns) = open("BATON_NVME_PCI");
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let bs = ns.block_size as usize;
        let mut buf = vec![0u8; 2 * bs];
        for lba in [ns.blocks, ns.blocks - 1] {
            let e = qp.read(&ns, lba, &mut buf).unwrap_err();
            let st = e
                .status()
                .unwrap_or_else(|| panic!("expected an NVMe status, got {e}"));
            assert_eq!((st.sct(), st.sc()), (0, 0x80), "{e}");
        }
        // The queue keeps working after an error completion.
        qp.read(&ns, ns.blocks - 2, &mut buf).unwrap();
        assert!(matches!(
            qp.read(&ns, 0, &mut buf[..bs - 1]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn write_zeroes_and_deallocate() {
        let _g = serial();
        let (ctrl, ns) = open("BATON_NVME_PCI");
        let mut qp = ctrl.create_io_queue_pair(8).unwrap();
        let bs = ns.block_size as usize;
        let base = 4096u64;
        qp.write(&ns, base, &vec![0xa5; 4 * bs]).unwrap();
        if ctrl.info().supports_write_zeroes() {
            qp.write_zeroes(&ns, base + 1, 2).unwrap();
            let mut back = vec![0u8; 4 * bs];
            qp.read(&ns, base, &mut back).unwrap();
            assert!(back[..bs].iter().all(|b| *b == 0xa5));
            assert!(back[bs..3 * bs].iter().all(|b| *b == 0));
            assert!(back[3 * bs..].iter().all(|b| *b == 0xa5));
        }
        if ctrl.info().supports_dsm() {
            qp.deallocate(&ns, base, 4).unwrap();
        }
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn shared_namespace_a_writes_b_reads() {
        let _g = serial();
        let (a, ns_a) = open("BATON_NVME_PCI");
        let (b, ns_b) = open("BATON_NVME_PCI2");
        assert_eq!(
            ns_a.blocks, ns_b.blocks,
            "both controllers must see the same namespace 1"
        );
        assert_ne!(
            a.info().cntlid,
            b.info().cntlid,
            "two different controllers"
        );
        let mut qa = a.create_io_queue_pair(16).unwrap();
        let mut qb = b.create_io_queue_pair(16).unwrap();
        let bs = ns_a.block_size as usize;
        for round in 0..20u64 {
            let lba = 8192 + round * 16;
            let data = pattern(16 * bs, 1000 + round);
            qa.write(&ns_a, lba, &data).unwrap();
            qa.flush(&ns_a).unwrap();
            let mut back = vec![0u8; data.len()];
            qb.read(&ns_b, lba, &mut back).unwrap();
            assert!(back == data, "B does not see A's write at LBA {lba}");
        }
    }

    #[test]
    #[ignore = "needs NVMe controllers bound to vfio-pci (QEMU lab)"]
    fn setup_returns_the_device_to_nvme_and_takes_it_back() {
        let _g = serial();
        let bdf = bdf("BATON_NVME_PCI");
        let host = nvme_driver::setup::Host::default();
        assert!(host.nvme_devices().unwrap().contains(&bdf));
        host.reset(std::slice::from_ref(&bdf)).unwrap();
        assert_eq!(host.driver(&bdf).unwrap().as_deref(), Some("nvme"));
        let e = Controller::open(&bdf).err().unwrap();
        assert!(e.to_string().contains("bound to nvme"), "{e}");
        host.setup(std::slice::from_ref(&bdf), 64).unwrap();
        assert_eq!(host.driver(&bdf).unwrap().as_deref(), Some("vfio-pci"));
        let (ctrl, _ns) = open("BATON_NVME_PCI");
        ctrl.shutdown().unwrap();
    }
}
