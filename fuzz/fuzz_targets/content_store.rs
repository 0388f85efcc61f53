//! The content store's superblock and catalog parsers: a store whose metadata blocks are
//! fuzz bytes, on a RAM device, opens with an error or as a consistent store (listing,
//! checking and a put work), never a panic or a huge allocation. The first byte's low bit
//! asks for the checksums to be fixed up, so the fuzzer reaches the fields behind them.
#![no_main]

use std::sync::Arc;

use baton::backplane::{DeviceEntry, FdDevice, Volume};
use baton::stream::store::ContentStore;
use libfuzzer_sys::fuzz_target;

const BLOCK: u64 = 4096;
const ENTRIES: u32 = 16;
const META: usize = 4096 + ENTRIES as usize * 512;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut meta = vec![0u8; META];
    let n = rest.len().min(META);
    meta[..n].copy_from_slice(&rest[..n]);
    if flags & 1 == 1 {
        let c = crc32c::crc32c(&meta[..60]);
        meta[60..64].copy_from_slice(&c.to_le_bytes());
        for e in meta[4096..].chunks_exact_mut(512) {
            let c = crc32c::crc32c(&e[..508]);
            e[508..512].copy_from_slice(&c.to_le_bytes());
        }
    }
    let dev = FdDevice::ram("fuzz", 256 * 1024).unwrap();
    let entry = DeviceEntry {
        device: Arc::new(dev),
        metrics: Arc::default(),
    };
    let vol = Arc::new(Volume::new("fuzz", vec![entry], 64 * 1024, 512).unwrap());
    let h = vol.open_blocking("fuzz-store", 0).unwrap();
    h.write_at(0, &meta).unwrap();
    let Ok(mut store) = ContentStore::open(h, BLOCK, ENTRIES) else {
        return;
    };
    let report = store.check().unwrap();
    assert!(report.problems.iter().all(|p| p.contains("CRC32C")), "{report:?}");
    let names: Vec<String> = store.list().map(|i| i.name.clone()).collect();
    assert_eq!(names.len(), report.items);
    // The store stays usable: a put fits around whatever the catalog holds, or is refused.
    if let Ok(mut up) = store.begin("fuzz-put", 3 * BLOCK, true) {
        store.write(&mut up, &[7u8; 3 * BLOCK as usize]).unwrap();
        store.commit(up).unwrap();
        let after = store.check().unwrap();
        assert!(after.problems.iter().all(|p| p.contains("CRC32C")), "{after:?}");
    }
});
