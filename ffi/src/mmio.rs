//! Typed volatile access to device registers (a memory-mapped BAR).

use std::ptr::NonNull;

/// 32/64-bit register access to a device's register window.
///
/// Implemented by [`Mmio`] (a real BAR mapping) and by simulated devices in tests.
pub trait RegisterIo: Send + Sync {
    /// Size of the register window in bytes.
    fn len(&self) -> usize;
    /// Whether the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads the 32-bit register at `offset` (4-byte aligned, inside the window).
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset` (4-byte aligned, inside the window).
    fn write32(&self, offset: usize, value: u32);
    /// Reads a 64-bit register as two 32-bit reads, low half first.
    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }
    /// Writes a 64-bit register as two 32-bit writes, low half first.
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, (value & 0xffff_ffff) as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A memory-mapped register window accessed only with volatile loads and stores.
///
/// Never hands out references into the mapping.
pub struct Mmio {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the window is device memory (or memory owned by `_owner`, which is Send + Sync);
// all access is volatile through `&self` with no Rust references into it, so sharing and
// sending the handle between threads cannot create aliasing references.
unsafe impl Send for Mmio {}
// SAFETY: see the `Send` impl; concurrent volatile register accesses are what devices expect.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps a register window.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must stay mapped, readable and writable for as long as `owner` lives
    /// (the owner unmaps it on drop), `ptr` must be 4-byte aligned, and no Rust reference
    /// to that memory may exist.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Box<dyn Send + Sync>) -> Self {
        Mmio {
            ptr,
            len,
            _owner: owner,
        }
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        assert!(
            offset % 4 == 0 && offset.checked_add(4).is_some_and(|end| end <= self.len),
            "register offset {offset:#x} outside a {:#x}-byte window",
            self.len
        );
        // SAFETY: offset + 4 <= len, checked above, so the result stays inside the mapping.
        unsafe { self.ptr.as_ptr().add(offset) }.cast::<u32>()
    }
}

impl RegisterIo for Mmio {
    fn len(&self) -> usize {
        self.len
    }

    fn read32(&self, offset: usize) -> u32 {
        let reg = self.reg(offset);
        // SAFETY: `reg` is aligned and inside the live mapping (checked in `reg`, guaranteed
        // by `new`'s contract).
        unsafe { reg.read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        let reg = self.reg(offset);
        // SAFETY: as in `read32`.
        unsafe { reg.write_volatile(value) }
    }
}
