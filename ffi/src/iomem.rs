//! I/O memory: buffers the process owns and lends to devices for the length of a command.
//!
//! An [`IoSlab`] is one anonymous mapping (2 MiB hugepages when the machine has them free,
//! ordinary pages otherwise), carved once into fixed-size [`IoChunk`]s. A chunk is an owned,
//! disjoint range: while its owner holds it, it is plain memory (`&[u8]`/`&mut [u8]`, so it
//! goes to a socket or comes from one without a copy); while a command owns it, only the
//! device touches it. A device sees the slab through its IOMMU mapping
//! ([`crate::PciDevice::map_slab`]) or, for simulated devices, through
//! [`IoSlab::device_view`].

use std::ptr::NonNull;
use std::sync::Arc;

use crate::dma::{DmaBacking, HUGEPAGE};

/// The mapping behind a slab, unmapped when the slab and every chunk are gone.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    huge: bool,
}

// SAFETY: the mapping is plain process memory; who may touch which range is decided by the
// chunks' ownership (one owner per range), not by the thread holding the handle.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access only reads the base pointer and length.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: created by mmap with this base and length; dropped once, after every chunk
        // and view (they hold the Arc) is gone.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

/// One mapping of I/O memory, to be carved into chunks and mapped for devices.
#[derive(Debug, Clone)]
pub struct IoSlab {
    map: Arc<Mapping>,
}

impl IoSlab {
    /// Maps `len` bytes (rounded up to 4 KiB, or to 2 MiB when hugepages are used) of zeroed
    /// memory, populated so a device never faults on it.
    pub fn new(len: usize) -> Result<Self, crate::Error> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
        let page = 4096;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        if len >= HUGEPAGE {
            let huge_len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
            if let Some(size) = std::num::NonZeroUsize::new(huge_len) {
                // SAFETY: an anonymous private mapping at an address the kernel picks;
                // nothing else refers to it.
                let r = unsafe { mmap_anonymous(None, size, prot, flags | MapFlags::MAP_HUGETLB) };
                if let Ok(base) = r {
                    return Ok(Self::from_raw(base.cast(), huge_len, true));
                }
            }
        }
        let len = len.max(1).div_ceil(page) * page;
        let size = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| crate::Error::Setup("empty I/O memory".into()))?;
        // SAFETY: as above, with ordinary pages.
        let base = unsafe { mmap_anonymous(None, size, prot, flags) }.map_err(|e| {
            crate::Error::Setup(format!("cannot map {len} bytes of I/O memory: {e}"))
        })?;
        Ok(Self::from_raw(base.cast(), len, false))
    }

    fn from_raw(base: NonNull<u8>, len: usize, huge: bool) -> Self {
        Self {
            map: Arc::new(Mapping { base, len, huge }),
        }
    }

    /// Process address of the first byte (for IOMMU mappings and registered buffers).
    pub fn vaddr(&self) -> u64 {
        self.map.base.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Whether the slab is empty (never: slabs have at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    /// Whether the slab is made of 2 MiB hugepages.
    pub fn is_huge(&self) -> bool {
        self.map.huge
    }

    /// Carves the slab into `count` chunks of `size` bytes from its start. Each range is
    /// handed out once: the chunks are the only safe way to touch the memory.
    ///
    /// # Errors
    ///
    /// If the chunks do not fit or `size` is 0.
    pub fn carve(self, size: usize, count: usize) -> Result<Vec<IoChunk>, crate::Error> {
        if size == 0 || size.checked_mul(count).is_none_or(|n| n > self.map.len) {
            return Err(crate::Error::Setup(format!(
                "{count} chunks of {size} bytes do not fit a slab of {}",
                self.map.len
            )));
        }
        Ok((0..count)
            .map(|i| IoChunk {
                map: Arc::clone(&self.map),
                offset: i * size,
                len: size,
            })
            .collect())
    }

    /// The slab as a simulated device sees it: byte copies at offsets from its start. Only
    /// device models use it, and only on ranges a command owns.
    pub fn device_view(&self) -> Arc<dyn DmaBacking> {
        Arc::new(DeviceView {
            map: Arc::clone(&self.map),
        })
    }
}

/// A disjoint, owned range of an [`IoSlab`].
#[derive(Debug)]
pub struct IoChunk {
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl IoChunk {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chunk is empty (never: carving refuses size 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the chunk in its slab (its device address is the slab's plus this).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Process address of the slab the chunk belongs to (identifies the slab).
    pub fn slab_vaddr(&self) -> u64 {
        self.map.base.as_ptr() as u64
    }

    /// Process address of the chunk's first byte.
    pub fn vaddr(&self) -> u64 {
        self.slab_vaddr() + self.offset as u64
    }

    /// Splits the chunk at `at`: `self` keeps `[0, at)`, the returned chunk owns the rest
    /// (so parts of one buffer can go to different devices at once).
    ///
    /// # Panics
    ///
    /// If `at` is past the end (a caller bug).
    pub fn split_off(&mut self, at: usize) -> IoChunk {
        assert!(at <= self.len, "split at {at} of a {}-byte chunk", self.len);
        let tail = IoChunk {
            map: Arc::clone(&self.map),
            offset: self.offset + at,
            len: self.len - at,
        };
        self.len = at;
        tail
    }

    /// Joins `next` back onto the end of `self`, if it is the range right after it in the
    /// same slab; gives it back otherwise.
    pub fn unsplit(&mut self, next: IoChunk) -> Result<(), IoChunk> {
        if Arc::ptr_eq(&self.map, &next.map) && self.offset + self.len == next.offset {
            self.len += next.len;
            Ok(())
        } else {
            Err(next)
        }
    }

    /// The chunk's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // Order reads after the completion that handed the chunk back from a device.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: the range is inside the live mapping (carve checked it) and belongs to this
        // chunk alone (carve hands each range out once, chunks are not Clone); a device
        // touches it only while a command owns the chunk, never while a borrow of it exists.
        unsafe {
            std::slice::from_raw_parts(self.map.base.as_ptr().wrapping_add(self.offset), self.len)
        }
    }

    /// The chunk's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.map.base.as_ptr().wrapping_add(self.offset),
                self.len,
            )
        }
    }
}

/// A simulated device's access to a slab (see [`IoSlab::device_view`]).
#[derive(Debug)]
struct DeviceView {
    map: Arc<Mapping>,
}

impl DeviceView {
    fn check(&self, offset: usize, n: usize) -> *mut u8 {
        assert!(
            offset.checked_add(n).is_some_and(|e| e <= self.map.len),
            "device access outside the slab"
        );
        self.map.base.as_ptr().wrapping_add(offset)
    }
}

impl DmaBacking for DeviceView {
    fn len(&self) -> usize {
        self.map.len
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = self.check(offset, buf.len());
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: in bounds (checked) of the live mapping; the destination is a distinct Rust
        // buffer. The range belongs to a command in flight, so no Rust borrow of it exists.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) }
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        let dst = self.check(offset, buf.len());
        // SAFETY: as in `read`, in the other direction.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_disjoint_and_seen_by_the_device_view() {
        let slab = IoSlab::new(64 * 1024).unwrap();
        let view = slab.device_view();
        let base = slab.vaddr();
        let mut chunks = slab.carve(16 * 1024, 4).unwrap();
        assert_eq!(chunks[2].offset(), 32 * 1024);
        assert_eq!(chunks[2].vaddr(), base + 32 * 1024);
        chunks[1].as_mut_slice().fill(0xab);
        chunks[2].as_mut_slice()[0] = 7;
        assert!(chunks[0].as_slice().iter().all(|&b| b == 0));
        let mut out = [0u8; 2];
        view.read(32 * 1024 - 1, &mut out);
        assert_eq!(out, [0xab, 7]);
        view.write(48 * 1024, b"dev");
        assert_eq!(&chunks[3].as_slice()[..3], b"dev");
    }

    #[test]
    fn split_chunks_rejoin_only_with_their_neighbour() {
        let slab = IoSlab::new(16 * 1024).unwrap();
        let mut chunks = slab.carve(8192, 2).unwrap();
        let (mut b, mut a) = (chunks.pop().unwrap(), chunks.pop().unwrap());
        let mut tail = a.split_off(4096);
        tail.as_mut_slice()[0] = 5;
        assert_eq!((a.len(), tail.len(), tail.offset()), (4096, 4096, 4096));
        let tail = b.unsplit(tail).unwrap_err();
        a.unsplit(tail).unwrap();
        assert_eq!(a.len(), 8192);
        assert_eq!(a.as_slice()[4096], 5);
        b.as_mut_slice()[0] = 1;
    }

    #[test]
    fn carving_past_the_slab_is_refused() {
        let slab = IoSlab::new(8192).unwrap();
        assert!(slab.clone().carve(4096, 3).is_err());
        assert!(slab.clone().carve(0, 1).is_err());
        assert_eq!(slab.carve(4096, 2).unwrap().len(), 2);
    }
}
