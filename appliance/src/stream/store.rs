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

use std::collections::BTreeMap;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backplane::VolumeHandle;

const MAGIC: &[u8; 8] = b"BATONCS\0";
const VERSION: u32 = 1;
const SUPERBLOCK: u64 = 4096;
const SLOT: u64 = 512;
const SLOT_LEN: usize = 512;
const ENTRY_MAGIC: u32 = 0x544e_4543; // "CENT"
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
}

/// The store, owned by the coordinator thread.
pub struct ContentStore {
    dev: VolumeHandle,
    block_size: u64,
    entries: u32,
    data_offset: u64,
    data_blocks: u64,
    items: BTreeMap<String, Item>,
    generation: u64,
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

impl ContentStore {
    /// Opens the store on `dev`, formatting an empty volume (all-zero superblock).
    pub fn open(dev: VolumeHandle, block_size: u64, entries: u32) -> Result<Self, StoreError> {
        let size = dev.volume().size();
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
        let data_blocks = (size - data_offset) / block_size;
        let mut store = Self {
            dev,
            block_size,
            entries,
            data_offset,
            data_blocks,
            items: BTreeMap::new(),
            generation: 0,
        };
        store.load_catalog()?;
        Ok(store)
    }

    fn format(
        dev: &VolumeHandle,
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
        for (slot, e) in cat.chunks_exact(us(SLOT)).enumerate() {
            let Some(item) = decode_entry(e, u32::try_from(slot).unwrap_or(u32::MAX)) else {
                continue;
            };
            if item.first_block + item.blocks > self.data_blocks {
                continue;
            }
            self.generation = self.generation.max(item.generation);
            match self.items.get(&item.name) {
                Some(old) if old.generation > item.generation => stale.push(item.slot),
                Some(old) => {
                    stale.push(old.slot);
                    self.items.insert(item.name.clone(), item);
                }
                None => {
                    self.items.insert(item.name.clone(), item);
                }
            }
        }
        // A replace interrupted between its two catalog writes: finish it.
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

    /// Bytes of data area in use and in all.
    pub fn usage(&self) -> (u64, u64) {
        let used: u64 = self.items.values().map(|i| i.blocks).sum();
        (used * self.block_size, self.data_blocks * self.block_size)
    }

    /// Every item, by name.
    pub fn list(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// An item by name.
    pub fn get(&self, name: &str) -> Result<&Item, StoreError> {
        self.items
            .get(name)
            .ok_or_else(|| StoreError::NotFound(name.chars().take(64).collect()))
    }

    /// First fit for `blocks` contiguous free blocks.
    fn allocate(&self, blocks: u64) -> Option<u64> {
        let mut used: Vec<(u64, u64)> = self
            .items
            .values()
            .map(|i| (i.first_block, i.blocks))
            .collect();
        used.sort_unstable();
        let mut at = 0;
        for (start, n) in used {
            if start >= at + blocks {
                return Some(at);
            }
            at = at.max(start + n);
        }
        (at + blocks <= self.data_blocks).then_some(at)
    }

    fn free_slot(&self) -> Option<u32> {
        let used: std::collections::HashSet<u32> = self.items.values().map(|i| i.slot).collect();
        (0..self.entries).find(|s| !used.contains(s))
    }

    /// Starts storing `size` bytes under `name`; data goes through [`Upload::write`] and
    /// becomes visible only at [`ContentStore::commit`].
    pub fn begin(&self, name: &str, size: u64) -> Result<Upload, StoreError> {
        check_name(name)?;
        let blocks = size.div_ceil(self.block_size);
        let first_block = self.allocate(blocks).ok_or_else(|| {
            StoreError::Full(format!(
                "no {} contiguous free bytes",
                blocks * self.block_size
            ))
        })?;
        if self.free_slot().is_none() {
            return Err(StoreError::Full("every catalog entry is in use".into()));
        }
        Ok(Upload {
            name: name.to_owned(),
            size,
            first_block,
            blocks,
            written: 0,
            crc: 0,
            pending: Vec::with_capacity(us(self.block_size)),
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

    /// Makes an upload visible: data first, flush, catalog entry, flush.
    pub fn commit(&mut self, mut up: Upload) -> Result<Item, StoreError> {
        self.flush_pending(&mut up)?;
        if up.written != up.size {
            return Err(StoreError::Format(format!(
                "got {} of {} bytes",
                up.written, up.size
            )));
        }
        self.dev.flush()?;
        let slot = self
            .free_slot()
            .ok_or_else(|| StoreError::Full("every catalog entry is in use".into()))?;
        self.generation += 1;
        let item = Item {
            name: up.name,
            size: up.size,
            first_block: up.first_block,
            blocks: up.blocks,
            crc: up.crc,
            generation: self.generation,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            slot,
        };
        self.dev
            .write_at(SUPERBLOCK + u64::from(slot) * SLOT, &encode_entry(&item))?;
        self.dev.flush()?;
        if let Some(old) = self.items.insert(item.name.clone(), item.clone()) {
            self.clear_slot(old.slot)?;
        }
        Ok(item)
    }

    /// Removes an item.
    pub fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        let item = self
            .items
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(name.chars().take(64).collect()))?;
        self.clear_slot(item.slot)
    }

    fn clear_slot(&self, slot: u32) -> Result<(), StoreError> {
        self.dev
            .write_at(SUPERBLOCK + u64::from(slot) * SLOT, &[0u8; SLOT_LEN])?;
        self.dev.flush()?;
        Ok(())
    }
}

/// An item being stored.
#[derive(Debug)]
pub struct Upload {
    name: String,
    size: u64,
    first_block: u64,
    blocks: u64,
    written: u64,
    crc: u32,
    pending: Vec<u8>,
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
