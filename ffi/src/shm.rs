//! Shared memory that many threads read and write by copying: the RAM device's storage.
//!
//! A [`SharedMap`] maps a whole file (a memfd) shared, so every controller thread copies to
//! and from the same pages the kernel's `sendfile` reads (pages fault in on first touch). Like a device's
//! memory, other threads may write any range at any time: it is only ever copied in and out
//! through raw pointers, bounds checked; no Rust reference ever points into it.

use std::fs::File;
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::Error;

/// A shared mapping of a whole file.
#[derive(Debug)]
pub struct SharedMap {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory that is only accessed by copies through raw pointers
// (never references), so any thread may copy in or out at any time; concurrent copies of one
// range give some interleaving of the bytes, as concurrent DMA to one range does.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `file` (which must be at least that long) shared,
    /// readable and writable.
    pub fn new(file: &File, len: usize) -> Result<Self, Error> {
        let Some(size) = std::num::NonZeroUsize::new(len) else {
            return Ok(Self {
                base: NonNull::dangling(),
                len: 0,
            });
        };
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let flags = MapFlags::MAP_SHARED;
        // SAFETY: a new shared mapping of the file at an address the kernel picks; nothing
        // else refers to that address range.
        let base = unsafe { mmap(None, size, prot, flags, file, 0) }
            .map_err(|e| Error::sys("mapping the RAM device")(e.into()))?;
        Ok(Self {
            base: base.cast(),
            len,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the `n` bytes at `offset`, if they are inside the mapping.
    fn at(&self, offset: u64, n: usize) -> Result<*mut u8, Error> {
        let at = usize::try_from(offset)
            .ok()
            .filter(|&o| o.checked_add(n).is_some_and(|end| end <= self.len))
            .ok_or_else(|| {
                Error::Device(format!(
                    "{n} bytes at {offset} are outside the {} byte mapping",
                    self.len
                ))
            })?;
        // SAFETY: `at` is at most `len`, so the result is inside the mapping or one past
        // its end.
        Ok(unsafe { self.base.as_ptr().add(at) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let src = self.at(offset, buf.len())?;
        // SAFETY: `src` starts `buf.len()` bytes inside the mapping (checked by `at`), which
        // lives as long as `self`; `buf` is the caller's own memory, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` to `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        let dst = self.at(offset, buf.len())?;
        // SAFETY: as in `read`, with the copy the other way.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: mapped by `new` with this base and length, unmapped once here.
            let _ = unsafe { munmap(self.base.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_and_out_and_refuses_ranges_outside() {
        let f = tempfile_like(8192);
        let m = SharedMap::new(&f, 8192).unwrap();
        m.write(4000, &[7u8; 200]).unwrap();
        let mut back = [0u8; 300];
        m.read(3950, &mut back).unwrap();
        assert!(back[..50].iter().all(|&b| b == 0));
        assert!(back[50..250].iter().all(|&b| b == 7));
        assert!(back[250..].iter().all(|&b| b == 0));
        assert!(m.write(8100, &[1u8; 100]).is_err());
        assert!(m.read(u64::MAX, &mut [0u8; 1]).is_err());
        // The file sees what went through the mapping.
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 4100).unwrap();
        assert_eq!(b[0], 7);
    }

    fn tempfile_like(len: u64) -> File {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let f = File::from(memfd_create("shm-test", MFdFlags::MFD_CLOEXEC).unwrap());
        f.set_len(len).unwrap();
        f
    }
}
