//! Memory a device reads and writes by DMA.

use std::sync::Arc;

/// Storage behind DMA regions. Accesses are byte copies and volatile little-endian words;
/// the device may change the memory at any time, so no reference into it is handed out.
pub trait DmaBacking: Send + Sync + std::fmt::Debug {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the backing is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `buf.len()` bytes out from `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copies `buf` in at `offset`.
    fn write(&self, offset: usize, buf: &[u8]);
    /// Reads a 32-bit word (volatile).
    fn read_u32(&self, offset: usize) -> u32;
    /// Writes a 32-bit word (volatile).
    fn write_u32(&self, offset: usize, value: u32);
}

/// A DMA-visible region: its IOVA and a window on its backing.
#[derive(Clone, Debug)]
pub struct DmaRegion {
    iova: u64,
    offset: usize,
    len: usize,
    backing: Arc<dyn DmaBacking>,
}

impl DmaRegion {
    /// A region of `len` bytes at `offset` of `backing`, seen by the device at `iova`.
    pub fn new(backing: Arc<dyn DmaBacking>, offset: usize, len: usize, iova: u64) -> Self {
        assert!(
            offset + len <= backing.len(),
            "DMA region outside its backing"
        );
        Self {
            iova,
            offset,
            len,
            backing,
        }
    }

    /// Device address of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the memory behind the region (its whole backing) allocated and mapped for
    /// good: for memory the device may still write after its owner is gone.
    pub fn leak(&self) {
        std::mem::forget(Arc::clone(&self.backing));
    }

    fn at(&self, offset: usize, n: usize) -> usize {
        assert!(
            offset.checked_add(n).is_some_and(|e| e <= self.len),
            "DMA access out of range"
        );
        self.offset + offset
    }

    /// Copies bytes out.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.backing.read(self.at(offset, buf.len()), buf);
    }

    /// Copies bytes in.
    pub fn write(&self, offset: usize, buf: &[u8]) {
        self.backing.write(self.at(offset, buf.len()), buf);
    }

    /// Reads a 32-bit word.
    pub fn read_u32(&self, offset: usize) -> u32 {
        self.backing.read_u32(self.at(offset, 4))
    }

    /// Writes a 32-bit word.
    pub fn write_u32(&self, offset: usize, value: u32) {
        self.backing.write_u32(self.at(offset, 4), value);
    }

    /// The `len` bytes at `offset` as a region of their own (same backing, IOVA moved by
    /// `offset`), so one allocation can hold several queues and buffers.
    ///
    /// # Panics
    ///
    /// If the range is outside this region (a layout bug of the caller).
    pub fn sub(&self, offset: usize, len: usize) -> DmaRegion {
        let start = self.at(offset, len);
        Self {
            iova: self.iova + offset as u64,
            offset: start,
            len,
            backing: Arc::clone(&self.backing),
        }
    }

    /// Fills with zeroes.
    pub fn zero(&self) {
        let z = [0u8; 4096];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(z.len());
            self.write(at, &z[..n]);
            at += n;
        }
    }
}

/// Ordinary memory as a DMA backing: for device models in tests.
#[derive(Debug)]
pub struct VecBacking(std::sync::Mutex<Vec<u8>>);

impl VecBacking {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        Self(std::sync::Mutex::new(vec![0; len]))
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl DmaBacking for VecBacking {
    fn len(&self) -> usize {
        self.mem().len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.mem()[offset..offset + buf.len()]);
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        self.mem()[offset..offset + buf.len()].copy_from_slice(buf);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        let m = self.mem();
        u32::from_le_bytes([m[offset], m[offset + 1], m[offset + 2], m[offset + 3]])
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.mem()[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
}

/// Hugepage-backed memory mapped for a device (2 MiB pages, `MAP_HUGETLB`).
#[derive(Debug)]
pub struct HugePages {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is only accessed through copies and volatile word accesses; the device
// is the only other party, so sharing the handle between threads is sound.
unsafe impl Send for HugePages {}
// SAFETY: as above.
unsafe impl Sync for HugePages {}

/// Size of a hugepage.
pub const HUGEPAGE: usize = 2 << 20;

impl HugePages {
    /// Maps `len` bytes (rounded up to 2 MiB) of zeroed hugepage memory.
    pub fn new(len: usize) -> Result<Self, crate::Error> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
        let len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
        let size = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| crate::Error::Setup("empty DMA allocation".into()))?;
        // SAFETY: an anonymous private mapping at an address the kernel picks; nothing else
        // refers to it. MAP_POPULATE + MAP_LOCKED pin the pages so their physical addresses
        // (behind the IOMMU mapping) never change.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_HUGETLB | MapFlags::MAP_POPULATE | MapFlags::MAP_LOCKED,
            )
        }
        .map_err(|e| {
            crate::Error::Setup(format!(
                "cannot map {len} bytes of 2 MiB hugepages ({e}): reserve them with `baton setup-pci` or /proc/sys/vm/nr_hugepages"
            ))
        })?;
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    /// Process address of the first byte (for the IOMMU mapping).
    pub fn vaddr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn check(&self, offset: usize, n: usize) {
        assert!(
            offset.checked_add(n).is_some_and(|e| e <= self.len),
            "hugepage access out of range"
        );
    }
}

impl DmaBacking for HugePages {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // Order the copy after the volatile load that saw the device's completion.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: in bounds (checked); the source is live mapped memory and the destination a
        // distinct Rust buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().wrapping_add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        self.check(offset, buf.len());
        // SAFETY: in bounds (checked); distinct source and destination.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                self.base.as_ptr().wrapping_add(offset),
                buf.len(),
            )
        }
        // The copy must not sink below the volatile doorbell store that hands it to the device.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        assert!(offset % 4 == 0, "unaligned DMA word");
        // SAFETY: in bounds and aligned (checked); a volatile load of memory the device writes.
        u32::from_le(unsafe {
            self.base
                .as_ptr()
                .wrapping_add(offset)
                .cast::<u32>()
                .read_volatile()
        })
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.check(offset, 4);
        assert!(offset % 4 == 0, "unaligned DMA word");
        // SAFETY: in bounds and aligned (checked); a volatile store the device will read.
        unsafe {
            self.base
                .as_ptr()
                .wrapping_add(offset)
                .cast::<u32>()
                .write_volatile(value.to_le())
        }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        // SAFETY: created by mmap with this base and length; dropped once.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_copy_and_bounds_check() {
        let b: Arc<dyn DmaBacking> = Arc::new(VecBacking::new(8192));
        let r = DmaRegion::new(Arc::clone(&b), 4096, 4096, 0x10_0000);
        r.write(8, b"hello");
        let mut out = [0u8; 5];
        r.read(8, &mut out);
        assert_eq!(&out, b"hello");
        r.write_u32(16, 0xdead_beef);
        assert_eq!(r.read_u32(16), 0xdead_beef);
        let mut raw = [0u8; 4];
        b.read(4096 + 16, &mut raw);
        assert_eq!(u32::from_le_bytes(raw), 0xdead_beef);
        assert_eq!(r.iova(), 0x10_0000);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.read_u32(4094))).is_err()
        );
        let sub = r.sub(1024, 2048);
        assert_eq!(sub.iova(), 0x10_0000 + 1024);
        assert_eq!(sub.len(), 2048);
        assert_eq!(sub.read_u32(4), 0);
        sub.write_u32(0, 7);
        assert_eq!(r.read_u32(1024), 7);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.sub(4000, 200))).is_err()
        );
    }
}
