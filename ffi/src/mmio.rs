//! Register and doorbell access.

/// Little-endian registers at byte offsets (BAR space). Implementations perform volatile,
/// naturally aligned accesses and panic-free bounds checks (out-of-range reads return all
/// ones, like a PCI master abort; out-of-range writes are dropped).
pub trait Mmio {
    /// Reads a 32-bit register.
    fn read32(&self, offset: usize) -> u32;
    /// Writes a 32-bit register.
    fn write32(&self, offset: usize, value: u32);
    /// Reads a 64-bit register (two 32-bit reads, low first, as NVMe allows).
    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }
    /// Writes a 64-bit register (two 32-bit writes, low first).
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, (value & 0xffff_ffff) as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A mapped BAR (or any MMIO window).
#[derive(Debug)]
pub struct MmioMapping {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain device memory; accesses are single volatile loads and stores
// that the device serializes, so sharing the handle between threads is sound.
unsafe impl Send for MmioMapping {}
// SAFETY: as above; no Rust reference into the mapping is ever created.
unsafe impl Sync for MmioMapping {}

impl MmioMapping {
    /// Wraps a mapping of `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base..base+len` must be a live mapping of device registers for the lifetime of the
    /// value (it is unmapped when the value drops) and must not be accessed through Rust
    /// references.
    pub unsafe fn new(base: std::ptr::NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    fn ok(&self, offset: usize, size: usize) -> bool {
        offset % size == 0 && offset.checked_add(size).is_some_and(|e| e <= self.len)
    }
}

impl Mmio for MmioMapping {
    fn read32(&self, offset: usize) -> u32 {
        if !self.ok(offset, 4) {
            return u32::MAX;
        }
        // SAFETY: in bounds and 4-byte aligned (checked above) within a live mapping.
        unsafe {
            self.base
                .as_ptr()
                .wrapping_add(offset)
                .cast::<u32>()
                .read_volatile()
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if !self.ok(offset, 4) {
            return;
        }
        // SAFETY: in bounds and 4-byte aligned (checked above) within a live mapping.
        unsafe {
            self.base
                .as_ptr()
                .wrapping_add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }
}

impl Drop for MmioMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by mmap with this base and length and is dropped
        // once; nothing refers into it afterwards.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}
