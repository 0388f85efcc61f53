//! DMA-able host memory: pinned, mapped into the device's IOMMU domain at an IOVA.

use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};

use crate::error::{Error, Result};

/// Size of a hugepage backing DMA memory.
pub const HUGEPAGE_SIZE: usize = 2 << 20;

/// A buffer the device reaches at [`DmaBuffer::iova`].
///
/// The device may read or write the memory at any time, so no Rust reference into it is
/// ever created: words are read and written with volatile accesses and bytes are copied in
/// and out through raw pointers.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the memory is owned by `_owner` (Send + Sync) and only accessed through raw
// pointers in `&self`/`&mut self` methods, never through references.
unsafe impl Send for DmaBuffer {}
// SAFETY: see `Send`; concurrent access is the same as a device accessing the memory.
unsafe impl Sync for DmaBuffer {}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuffer {
    /// Wraps DMA memory.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be valid for reads and writes, 8-byte aligned, and mapped for
    /// device DMA at `iova..iova+len` for as long as `owner` lives (it unmaps on drop).
    /// No Rust reference to that memory may exist: the device writes it behind the
    /// compiler's back, which would make a `&T`/`&mut T` undefined behaviour.
    pub unsafe fn new(
        ptr: NonNull<u8>,
        len: usize,
        iova: u64,
        owner: Box<dyn Send + Sync>,
    ) -> Self {
        DmaBuffer {
            ptr,
            len,
            iova,
            _owner: owner,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device-side (IOMMU) address of byte 0.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    fn check(&self, offset: usize, len: usize) -> Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: offset <= len, so the pointer stays inside (or one past) the buffer.
                Ok(unsafe { self.ptr.as_ptr().add(offset) })
            }
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn word<T>(&self, offset: usize) -> *mut T {
        let size = size_of::<T>();
        match self.check(offset, size) {
            Ok(p) if offset % size == 0 => p.cast(),
            _ => panic!(
                "{size}-byte DMA word at offset {offset:#x} outside or misaligned in a {:#x}-byte buffer",
                self.len
            ),
        }
    }

    /// Volatile read of the little-endian `u32` at `offset`.
    ///
    /// # Panics
    ///
    /// If `offset` is misaligned or out of bounds (an internal offset computation bug).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let p = self.word::<u32>(offset);
        // SAFETY: `p` is aligned and inside the buffer (checked by `word`).
        u32::from_le(unsafe { p.read_volatile() })
    }

    /// Volatile write of `value` as a little-endian `u32` at `offset`.
    ///
    /// # Panics
    ///
    /// As [`DmaBuffer::read_u32`].
    pub fn write_u32(&self, offset: usize, value: u32) {
        let p = self.word::<u32>(offset);
        // SAFETY: `p` is aligned and inside the buffer (checked by `word`).
        unsafe { p.write_volatile(value.to_le()) }
    }

    /// Volatile read of the little-endian `u64` at `offset`.
    ///
    /// # Panics
    ///
    /// As [`DmaBuffer::read_u32`].
    pub fn read_u64(&self, offset: usize) -> u64 {
        let p = self.word::<u64>(offset);
        // SAFETY: `p` is aligned and inside the buffer (checked by `word`).
        u64::from_le(unsafe { p.read_volatile() })
    }

    /// Volatile write of `value` as a little-endian `u64` at `offset`.
    ///
    /// # Panics
    ///
    /// As [`DmaBuffer::read_u32`].
    pub fn write_u64(&self, offset: usize, value: u64) {
        let p = self.word::<u64>(offset);
        // SAFETY: `p` is aligned and inside the buffer (checked by `word`).
        unsafe { p.write_volatile(value.to_le()) }
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<()> {
        let dst = self.check(offset, src.len())?;
        // SAFETY: `dst..dst+src.len()` is inside the buffer (checked); `src` is ordinary
        // memory and cannot overlap DMA memory since no reference to DMA memory exists.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        fence(Ordering::Release);
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` out of the buffer.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let src = self.check(offset, dst.len())?;
        fence(Ordering::Acquire);
        // SAFETY: `src..src+dst.len()` is inside the buffer (checked); `dst` is ordinary
        // memory, disjoint from DMA memory.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Fills `len` bytes at `offset` with zero.
    pub fn zero(&self, offset: usize, len: usize) -> Result<()> {
        let dst = self.check(offset, len)?;
        // SAFETY: `dst..dst+len` is inside the buffer (checked).
        unsafe { std::ptr::write_bytes(dst, 0, len) };
        fence(Ordering::Release);
        Ok(())
    }
}
