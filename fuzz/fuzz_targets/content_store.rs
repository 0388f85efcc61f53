//! The content store's superblock and catalog parsers: a store whose metadata blocks are
//! fuzz bytes, on memory, opens with an error or as a consistent store (listing, checking
//! and a put work), never a panic or a huge allocation. The first byte's low bit
//! asks for the checksums to be fixed up, so the fuzzer reaches the fields behind them.
#![no_main]

use std::cell::RefCell;

use stream::store::{ContentStore, StoreDevice};
use bdev::IoError;
use libfuzzer_sys::fuzz_target;

/// 256 KiB of memory as the store's volume (the parsers are what is fuzzed, not the I/O
/// path: one input is microseconds, not an I/O thread's start).
struct Mem(RefCell<Vec<u8>>);

impl Mem {
    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, IoError> {
        let start = usize::try_from(offset).map_err(|_| IoError::Invalid("offset".into()))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.0.borrow().len())
            .ok_or_else(|| IoError::Invalid("past the end".into()))?;
        Ok(start..end)
    }
}

impl StoreDevice for Mem {
    fn size(&self) -> u64 {
        self.0.borrow().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.borrow()[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let r = self.range(offset, data.len())?;
        self.0.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }
}

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
    let h = Mem(RefCell::new(vec![0u8; 256 * 1024]));
    h.write_at(0, &meta).unwrap();
    let Ok(mut store) = ContentStore::open(h, BLOCK, ENTRIES) else {
        return;
    };
    let report = store.check().unwrap();
    assert!(
        report.problems.iter().all(|p| p.contains("CRC32C")),
        "{report:?}"
    );
    let names: Vec<String> = store.list().map(|i| i.name.clone()).collect();
    assert_eq!(names.len(), report.items);
    // The store stays usable: a put fits around whatever the catalog holds, or is refused.
    if let Ok(mut up) = store.begin("fuzz-put", 3 * BLOCK, true) {
        store.write(&mut up, &[7u8; 3 * BLOCK as usize]).unwrap();
        store.commit(up).unwrap();
        let after = store.check().unwrap();
        assert!(
            after.problems.iter().all(|p| p.contains("CRC32C")),
            "{after:?}"
        );
    }
});
