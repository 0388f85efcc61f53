//! The content store: a self-describing layout on a volume.
//!
//! ```text
//! offset 0            superblock (4 KiB): magic, version, block size, catalog size, CRC32C
//! offset 4 KiB        catalog: `entries` slots of 512 bytes, each with its own CRC32C
//! data_offset         data blocks (block size each), items stored contiguously
//! ```
//!
//! A put writes the item's data blocks, flushes, then writes its catalog slot (one 512-byte
//! sector) and flushes again: a crash at any point leaves either the old catalog (the new
//! blocks are simply unreferenced) or the new one. The allocation map is rebuilt from the
//! valid catalog entries when the store opens, so it can never disagree with the catalog.
//! Replacing an item writes the new entry (higher generation) before clearing the old one;
//! if both survive a crash, the higher generation wins at open.
//!
//! Space is held, not just computed: a put reserves its extent and catalog slot in
//! [`ContentStore::begin`], so concurrent puts never share blocks, and every session that
//! reads an item holds its extent ([`ContentStore::hold`]) so a remove or a replace cannot
//! free the blocks under a running stream: they return to the free space when the last
//! [`Hold`] drops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use bdev::IoError;
use bdev::blocking::Blocking;

const MAGIC: &[u8; 8] = b"BATONCS\0";
const VERSION: u32 = 1;
const SUPERBLOCK: u64 = 4096;
const SLOT: u64 = 512;
const SLOT_LEN: usize = 512;
const ENTRY_MAGIC: u32 = 0x544e_4543; // "CENT"
/// Most catalog entries a store may have (a 512 MiB catalog).
pub const MAX_ENTRIES: u32 = 1 << 20;
/// Longest item name.
pub const MAX_NAME: usize = 255;

/// A committed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// First data block (index from the data area).
    pub first_block: u64,
    /// Blocks used.
    pub blocks: u64,
    /// CRC32C of the whole content.
    pub crc: u32,
    /// Commit generation.
    pub generation: u64,
    /// Seconds since the Unix epoch at commit.
    pub created: u64,
    slot: u32,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Device I/O failed.
    #[error("content store I/O: {0}")]
    Io(#[from] io::Error),
    /// The volume's device failed a request.
    #[error("content store device: {0}")]
    Device(#[from] IoError),
    /// The volume holds something else, or a different layout.
    #[error("content store: {0}")]
    Format(String),
    /// No item of that name.
    #[error("no content named `{0}`")]
    NotFound(String),
    /// Name empty, too long or with '/' or control characters.
    #[error("invalid content name `{0}`: 1..=255 bytes, no '/', no control characters")]
    BadName(String),
    /// Not enough contiguous space or no free catalog slot.
    #[error("content store full: {0}")]
    Full(String),
    /// A put of a name that exists, without asking to replace it.
    #[error("content `{0}` exists (ask to replace it)")]
    Exists(String),
}

/// Extents (and catalog slots) that are in use without being committed items: uploads in
/// progress and extents read by sessions. Shared with the [`Hold`]s, which may drop on any
/// thread.
#[derive(Debug, Default)]
struct Holds {
    next: u64,
    held: HashMap<u64, Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    first_block: u64,
    blocks: u64,
    slot: Option<u32>,
}

type HoldTable = Arc<Mutex<Holds>>;

/// An extent kept out of the free space while it lives: an upload's reservation or a
/// session reading an item. Dropping it frees what the catalog no longer references.
#[derive(Debug)]
pub struct Hold {
    table: HoldTable,
    id: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .remove(&self.id);
    }
}

fn take_hold(table: &HoldTable, held: Held) -> Hold {
    let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
    let id = t.next;
    t.next += 1;
    t.held.insert(id, held);
    Hold {
        table: Arc::clone(table),
        id,
    }
}

/// What [`ContentStore::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Items in the catalog.
    pub items: usize,
    /// Blocks the catalog references.
    pub blocks: u64,
    /// Problems: overlapping extents, extents outside the data area, CRC mismatches.
    pub problems: Vec<String>,
}

/// The store, owned by the coordinator thread.
pub struct ContentStore<D: StoreDevice = Blocking> {
    dev: D,
    block_size: u64,
    entries: u32,
    data_offset: u64,
    data_blocks: u64,
    items: BTreeMap<String, Item>,
    generation: u64,
    holds: HoldTable,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("block_size", &self.block_size)
            .field("items", &self.items.len())
            .finish()
    }
}

/// A length or offset that fits in memory (the store's sizes are bounded by the volume).
fn us(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks an item name.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(StoreError::BadName(name.chars().take(64).collect()));
    }
    Ok(())
}

/// What the content store needs of its volume: synchronous reads and writes of any range
/// (the appliance's is [`Blocking`], a volume handle on an I/O thread of its own).
pub trait StoreDevice {
    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError>;
    /// Makes completed writes durable.
    fn flush(&self) -> Result<(), IoError>;
}

impl StoreDevice for Blocking {
    fn size(&self) -> u64 {
        self.geometry().size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        Blocking::read_at(self, offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        Blocking::write_at(self, offset, data)
    }
    fn flush(&self) -> Result<(), IoError> {
        Blocking::flush(self)
    }
}

impl<D: StoreDevice> ContentStore<D> {
    /// Opens the store on `dev`, formatting an empty volume (all-zero superblock).
    pub fn open(dev: D, block_size: u64, entries: u32) -> Result<Self, StoreError> {
        let size = dev.size();
        if !(512..=1 << 30).contains(&block_size) || entries == 0 || entries > MAX_ENTRIES {
            return Err(StoreError::Format(format!(
                "block size {block_size} (512 B to 1 GiB) or {entries} catalog entries (1 to {MAX_ENTRIES}) out of range"
            )));
        }
        let catalog = u64::from(entries) * SLOT;
        let data_offset = (SUPERBLOCK + catalog).div_ceil(block_size) * block_size;
        if size < data_offset + block_size {
            return Err(StoreError::Format(format!(
                "volume of {size} bytes is too small for {entries} catalog entries and one {block_size}-byte block"
            )));
        }
        let mut sb = vec![0u8; us(SUPERBLOCK)];
        dev.read_at(0, &mut sb)?;
        if sb.iter().all(|&b| b == 0) {
            Self::format(&dev, block_size, entries, data_offset, size)?;
            dev.read_at(0, &mut sb)?;
        }
        if &sb[..8] != MAGIC {
            return Err(StoreError::Format(
                "the volume holds something else (no content store superblock)".into(),
            ));
        }
        if le32(&sb[60..64]) != crc(&sb[..60]) {
            return Err(StoreError::Format("superblock checksum mismatch".into()));
        }
        let (version, bs, n) = (
            le32(&sb[8..12]),
            u64::from(le32(&sb[12..16])),
            le32(&sb[16..20]),
        );
        if version != VERSION || bs != block_size || n != entries {
            return Err(StoreError::Format(format!(
                "layout version {version}, block size {bs}, {n} entries on disk; config asks for block size {block_size}, {entries} entries"
            )));
        }
        if le64(&sb[28..36]) != data_offset {
            return Err(StoreError::Format(
                "superblock data offset disagrees with its catalog size".into(),
            ));
        }
        let data_blocks = (size - data_offset) / block_size;
        let mut store = Self {
            dev,
            block_size,
            entries,
            data_offset,
            data_blocks,
            items: BTreeMap::new(),
            generation: 0,
            holds: HoldTable::default(),
        };
        store.load_catalog()?;
        Ok(store)
    }

    fn format(
        dev: &D,
        block_size: u64,
        entries: u32,
        data_offset: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        let zero = vec![0u8; 64 * 1024];
        let mut at = SUPERBLOCK;
        while at < SUPERBLOCK + u64::from(entries) * SLOT {
            let n = (SUPERBLOCK + u64::from(entries) * SLOT - at).min(zero.len() as u64);
            dev.write_at(at, &zero[..us(n)])?;
            at += n;
        }
        dev.flush()?;
        let mut sb = vec![0u8; us(SUPERBLOCK)];
        sb[..8].copy_from_slice(MAGIC);
        sb[8..12].copy_from_slice(&VERSION.to_le_bytes());
        sb[12..16].copy_from_slice(&u32::try_from(block_size).unwrap_or(0).to_le_bytes());
        sb[16..20].copy_from_slice(&entries.to_le_bytes());
        sb[20..28].copy_from_slice(&SUPERBLOCK.to_le_bytes());
        sb[28..36].copy_from_slice(&data_offset.to_le_bytes());
        sb[36..44].copy_from_slice(&size.to_le_bytes());
        let c = crc(&sb[..60]);
        sb[60..64].copy_from_slice(&c.to_le_bytes());
        dev.write_at(0, &sb)?;
        dev.flush()?;
        Ok(())
    }

    fn load_catalog(&mut self) -> Result<(), StoreError> {
        let mut cat = vec![0u8; us(u64::from(self.entries) * SLOT)];
        self.dev.read_at(SUPERBLOCK, &mut cat)?;
        let mut stale = Vec::new();
        let mut found = Vec::new();
        for (slot, e) in cat.chunks_exact(us(SLOT)).enumerate() {
            let Some(item) = decode_entry(e, u32::try_from(slot).unwrap_or(u32::MAX)) else {
                continue;
            };
            if item
                .first_block
                .checked_add(item.blocks)
                .is_none_or(|end| end > self.data_blocks)
                || item.blocks != item.size.div_ceil(self.block_size)
            {
                warn!(slot, name = %item.name, "catalog entry outside the data area; ignored");
                continue;
            }
            found.push(item);
        }
        // Newest first: a replace interrupted between its two catalog writes keeps the new
        // entry, and an extent claimed twice (damage) keeps its newest owner.
        found.sort_by_key(|i| std::cmp::Reverse(i.generation));
        let mut extents: Vec<(u64, u64)> = Vec::new();
        for item in found {
            self.generation = self.generation.max(item.generation);
            if self.items.contains_key(&item.name) {
                stale.push(item.slot);
                continue;
            }
            let end = item.first_block + item.blocks;
            if item.blocks > 0
                && extents
                    .iter()
                    .any(|&(s, e)| item.first_block < e && s < end)
            {
                warn!(slot = item.slot, name = %item.name, "catalog entry overlaps a newer item; ignored");
                continue;
            }
            extents.push((item.first_block, end));
            self.items.insert(item.name.clone(), item);
        }
        // Finish interrupted replaces.
        for slot in stale {
            self.clear_slot(slot)?;
        }
        Ok(())
    }

    /// Content block size.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Byte offset on the volume of data block `b`.
    pub fn block_offset(&self, b: u64) -> u64 {
        self.data_offset + b * self.block_size
    }

    /// Bytes of data area in use (committed items, uploads in progress and removed items
    /// still being streamed) and in all.
    pub fn usage(&self) -> (u64, u64) {
        let used: u64 = self.extents().iter().map(|&(_, n)| n).sum();
        (
            used.saturating_mul(self.block_size),
            self.data_blocks * self.block_size,
        )
    }

    /// Every item, by name.
    pub fn list(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// Items whose names sort after `after` (all of them for `None`), by name.
    pub fn list_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a Item> + 'a {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.items.range((from, Bound::Unbounded)).map(|(_, i)| i)
    }

    /// An item by name.
    pub fn get(&self, name: &str) -> Result<&Item, StoreError> {
        self.items
            .get(name)
            .ok_or_else(|| StoreError::NotFound(name.chars().take(64).collect()))
    }

    /// Keeps `item`'s blocks allocated while the returned hold lives, even if the item is
    /// removed or replaced meanwhile (a session reading it holds one).
    pub fn hold(&self, item: &Item) -> Hold {
        take_hold(
            &self.holds,
            Held {
                first_block: item.first_block,
                blocks: item.blocks,
                slot: None,
            },
        )
    }

    /// Every allocated extent `(first block, blocks)`, sorted: committed items, and held
    /// extents (uploads in progress, items still being read after their removal).
    fn extents(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .items
            .values()
            .map(|i| (i.first_block, i.blocks))
            .collect();
        v.extend(
            self.holds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .held
                .values()
                .map(|h| (h.first_block, h.blocks)),
        );
        v.retain(|&(_, n)| n > 0);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// First fit for `blocks` contiguous free blocks.
    fn allocate(&self, blocks: u64) -> Option<u64> {
        let mut at = 0u64;
        for (start, n) in self.extents() {
            if start >= at.checked_add(blocks)? {
                return Some(at);
            }
            at = at.max(start + n);
        }
        (at.checked_add(blocks)? <= self.data_blocks).then_some(at)
    }

    fn free_slot(&self) -> Option<u32> {
        let mut used: HashSet<u32> = self.items.values().map(|i| i.slot).collect();
        used.extend(
            self.holds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .held
                .values()
                .filter_map(|h| h.slot),
        );
        (0..self.entries).find(|s| !used.contains(s))
    }

    /// Starts storing `size` bytes under `name`: reserves the blocks and a catalog slot at
    /// once (so no other put can take them); data goes through [`ContentStore::write`] and
    /// becomes visible only at [`ContentStore::commit`]. A name that exists is refused unless
    /// `replace`; a dropped upload gives its reservation back.
    pub fn begin(&self, name: &str, size: u64, replace: bool) -> Result<Upload, StoreError> {
        check_name(name)?;
        if !replace && self.items.contains_key(name) {
            return Err(StoreError::Exists(name.to_owned()));
        }
        let blocks = size.div_ceil(self.block_size);
        let first_block = self.allocate(blocks).ok_or_else(|| {
            StoreError::Full(format!(
                "no {} contiguous free bytes",
                blocks.saturating_mul(self.block_size)
            ))
        })?;
        let slot = self
            .free_slot()
            .ok_or_else(|| StoreError::Full("every catalog entry is in use".into()))?;
        let hold = take_hold(
            &self.holds,
            Held {
                first_block,
                blocks,
                slot: Some(slot),
            },
        );
        Ok(Upload {
            name: name.to_owned(),
            size,
            replace,
            first_block,
            blocks,
            slot,
            written: 0,
            crc: 0,
            pending: Vec::with_capacity(us(self.block_size)),
            _hold: hold,
        })
    }

    /// Writes the next bytes of an upload (any length; buffered to whole blocks).
    pub fn write(&self, up: &mut Upload, mut data: &[u8]) -> Result<(), StoreError> {
        if up.written + up.pending.len() as u64 + data.len() as u64 > up.size {
            return Err(StoreError::Format("more data than announced".into()));
        }
        up.crc = crc32c::crc32c_append(up.crc, data);
        while !data.is_empty() {
            let room = us(self.block_size) - up.pending.len();
            let n = room.min(data.len());
            up.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if up.pending.len() == us(self.block_size) {
                self.flush_pending(up)?;
            }
        }
        Ok(())
    }

    fn flush_pending(&self, up: &mut Upload) -> Result<(), StoreError> {
        if up.pending.is_empty() {
            return Ok(());
        }
        let block = up.first_block + up.written / self.block_size;
        // Whole blocks (zero-padded tail) keep the volume's alignment rules simple.
        up.pending.resize(us(self.block_size), 0);
        self.dev.write_at(self.block_offset(block), &up.pending)?;
        up.written += self.block_size.min(up.size - up.written);
        up.pending.clear();
        Ok(())
    }

    /// Makes an upload visible: data first, flush, catalog entry, flush; then the entry it
    /// replaces (if any) is cleared. Readers see the old item or the new one, never a mix.
    pub fn commit(&mut self, mut up: Upload) -> Result<Item, StoreError> {
        self.flush_pending(&mut up)?;
        if up.written != up.size {
            return Err(StoreError::Format(format!(
                "got {} of {} bytes",
                up.written, up.size
            )));
        }
        // Another put of the same name may have committed while this one was uploading.
        if !up.replace && self.items.contains_key(&up.name) {
            return Err(StoreError::Exists(up.name));
        }
        self.dev.flush()?;
        self.generation += 1;
        let item = Item {
            name: up.name.clone(),
            size: up.size,
            first_block: up.first_block,
            blocks: up.blocks,
            crc: up.crc,
            generation: self.generation,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            slot: up.slot,
        };
        self.dev.write_at(
            SUPERBLOCK + u64::from(item.slot) * SLOT,
            &encode_entry(&item),
        )?;
        self.dev.flush()?;
        if let Some(old) = self.items.insert(item.name.clone(), item.clone()) {
            // A crash before this clear leaves both entries; the newer wins at open.
            self.clear_slot(old.slot)?;
        }
        // The upload's hold drops here: the extent is now the catalog's.
        drop(up);
        Ok(item)
    }

    /// Removes an item from the catalog. Its blocks stay allocated while sessions still
    /// hold them.
    pub fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        let item = self
            .items
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(name.chars().take(64).collect()))?;
        if let Err(e) = self.clear_slot(item.slot) {
            // Still on the device: keep it allocated, or a restart would revive an item
            // whose blocks were reused.
            self.items.insert(item.name.clone(), item);
            return Err(e);
        }
        Ok(())
    }

    fn clear_slot(&self, slot: u32) -> Result<(), StoreError> {
        self.dev
            .write_at(SUPERBLOCK + u64::from(slot) * SLOT, &[0u8; SLOT_LEN])?;
        self.dev.flush()?;
        Ok(())
    }

    /// Checks the store against itself: extents inside the data area and disjoint, and
    /// every item's data matching its catalog CRC32C (reads every block).
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport {
            items: self.items.len(),
            ..CheckReport::default()
        };
        let mut by_start: Vec<&Item> = self.items.values().filter(|i| i.blocks > 0).collect();
        by_start.sort_by_key(|i| i.first_block);
        for w in by_start.windows(2) {
            if w[0].first_block + w[0].blocks > w[1].first_block {
                report
                    .problems
                    .push(format!("`{}` overlaps `{}`", w[0].name, w[1].name));
            }
        }
        let mut buf = vec![0u8; us(self.block_size)];
        for item in self.items.values() {
            report.blocks += item.blocks;
            if item.first_block + item.blocks > self.data_blocks {
                report
                    .problems
                    .push(format!("`{}` ends past the data area", item.name));
                continue;
            }
            let mut c = 0u32;
            let mut left = item.size;
            for b in item.first_block..item.first_block + item.blocks {
                let n = us(left.min(self.block_size));
                self.dev.read_at(self.block_offset(b), &mut buf[..n])?;
                c = crc32c::crc32c_append(c, &buf[..n]);
                left -= n as u64;
            }
            if c != item.crc {
                report.problems.push(format!(
                    "`{}`: data CRC32C {c:08x}, catalog says {:08x}",
                    item.name, item.crc
                ));
            }
        }
        Ok(report)
    }
}

/// An item being stored; holds its blocks and catalog slot until it commits or drops.
#[derive(Debug)]
pub struct Upload {
    name: String,
    size: u64,
    replace: bool,
    first_block: u64,
    blocks: u64,
    slot: u32,
    written: u64,
    crc: u32,
    pending: Vec<u8>,
    _hold: Hold,
}

fn encode_entry(i: &Item) -> [u8; SLOT_LEN] {
    let mut e = [0u8; SLOT_LEN];
    e[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    e[4] = 1;
    e[5] = u8::try_from(i.name.len()).unwrap_or(0);
    e[8..16].copy_from_slice(&i.generation.to_le_bytes());
    e[16..24].copy_from_slice(&i.size.to_le_bytes());
    e[24..32].copy_from_slice(&i.first_block.to_le_bytes());
    e[32..40].copy_from_slice(&i.blocks.to_le_bytes());
    e[40..44].copy_from_slice(&i.crc.to_le_bytes());
    e[44..52].copy_from_slice(&i.created.to_le_bytes());
    e[56..56 + i.name.len()].copy_from_slice(i.name.as_bytes());
    let c = crc(&e[..508]);
    e[508..512].copy_from_slice(&c.to_le_bytes());
    e
}

fn decode_entry(e: &[u8], slot: u32) -> Option<Item> {
    if le32(&e[0..4]) != ENTRY_MAGIC || e[4] != 1 || le32(&e[508..512]) != crc(&e[..508]) {
        return None;
    }
    let len = usize::from(e[5]);
    let name = std::str::from_utf8(&e[56..56 + len]).ok()?.to_owned();
    check_name(&name).ok()?;
    Some(Item {
        name,
        generation: le64(&e[8..16]),
        size: le64(&e[16..24]),
        first_block: le64(&e[24..32]),
        blocks: le64(&e[32..40]),
        crc: le32(&e[40..44]),
        created: le64(&e[44..52]),
        slot,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use backplane::{DeviceEntry, FdDevice, Volume};

    const BS: u64 = 4096;

    fn volume() -> Arc<Volume> {
        let entry = DeviceEntry {
            device: Arc::new(FdDevice::ram("t", 1 << 20).unwrap()),
            metrics: Arc::default(),
        };
        Arc::new(Volume::new("t", vec![entry], 64 * 1024, 512).unwrap())
    }

    fn store() -> ContentStore {
        ContentStore::open(volume().open_blocking("test-store", 0).unwrap(), BS, 16).unwrap()
    }

    #[test]
    fn damaged_catalog_entries_are_ignored_not_trusted() {
        let vol = volume();
        let s = ContentStore::open(vol.open_blocking("test-store", 0).unwrap(), BS, 16).unwrap();
        let entry = |name: &str, first_block: u64, blocks: u64, size: u64, generation: u64| Item {
            name: name.into(),
            size,
            first_block,
            blocks,
            crc: 0,
            generation,
            created: 0,
            slot: 0,
        };
        for (slot, item) in [
            // first_block + blocks overflows (this panicked at open).
            entry("wrap", u64::MAX - 1, 4, 4 * BS, 1),
            // Past the data area.
            entry("far", 1 << 40, 1, BS, 2),
            // Blocks that disagree with the size.
            entry("lie", 0, 1, 100 * BS, 3),
            // Two items claiming the same blocks: the newer one stays.
            entry("old", 0, 2, 2 * BS, 4),
            entry("new", 1, 2, 2 * BS, 5),
        ]
        .into_iter()
        .enumerate()
        {
            s.dev
                .write_at(SUPERBLOCK + slot as u64 * SLOT, &encode_entry(&item))
                .unwrap();
        }
        drop(s);
        let s = ContentStore::open(vol.open_blocking("test-store", 0).unwrap(), BS, 16).unwrap();
        let names: Vec<&str> = s.list().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["new"]);
        let report = s.check().unwrap();
        assert!(
            report.problems.iter().all(|p| p.contains("CRC32C")),
            "{report:?}"
        );
    }

    fn put(s: &mut ContentStore, name: &str, fill: u8, blocks: u64, replace: bool) -> Item {
        let mut up = s.begin(name, blocks * BS, replace).unwrap();
        s.write(&mut up, &vec![fill; us(blocks * BS)]).unwrap();
        s.commit(up).unwrap()
    }

    #[test]
    fn concurrent_uploads_get_disjoint_extents_and_slots() {
        let mut s = store();
        let a = s.begin("a", 3 * BS, false).unwrap();
        let b = s.begin("b", 3 * BS, false).unwrap();
        assert!(
            a.first_block + a.blocks <= b.first_block || b.first_block + b.blocks <= a.first_block
        );
        assert_ne!(a.slot, b.slot);
        // A dropped upload gives its reservation back.
        let first = a.first_block;
        drop(a);
        let c = s.begin("c", 3 * BS, false).unwrap();
        assert_eq!(c.first_block, first);
        drop((b, c));
        put(&mut s, "a", 1, 2, false);
        assert!(s.check().unwrap().problems.is_empty());
    }

    #[test]
    fn held_extents_survive_remove_and_replace() {
        let mut s = store();
        let old = put(&mut s, "v", 1, 4, false);
        let hold = s.hold(&old);
        s.remove("v").unwrap();
        let other = put(&mut s, "w", 2, 4, false);
        assert!(
            other.first_block >= old.first_block + old.blocks,
            "{other:?}"
        );
        let replaced = put(&mut s, "w", 3, 4, true);
        assert_ne!(replaced.first_block, other.first_block);
        drop(hold);
        // Freed now: the next put may take the removed item's blocks.
        let next = put(&mut s, "x", 4, 4, false);
        assert_eq!(next.first_block, old.first_block);
        assert!(s.check().unwrap().problems.is_empty());
    }

    #[test]
    fn existing_names_and_a_full_store_are_refused() {
        let mut s = store();
        put(&mut s, "n", 1, 1, false);
        assert!(matches!(s.begin("n", 1, false), Err(StoreError::Exists(_))));
        // Two uploads of one new name: the second commit is refused.
        let mut a = s.begin("m", BS, false).unwrap();
        let mut b = s.begin("m", BS, false).unwrap();
        s.write(&mut a, &vec![5; us(BS)]).unwrap();
        s.write(&mut b, &vec![6; us(BS)]).unwrap();
        s.commit(a).unwrap();
        assert!(matches!(s.commit(b), Err(StoreError::Exists(_))));
        assert!(matches!(
            s.begin("big", 1 << 30, false),
            Err(StoreError::Full(_))
        ));
        assert!(s.check().unwrap().problems.is_empty());
    }
}
