//! Shared memory that many threads read and write by copying: the RAM device's storage.
//!
//! A [`SharedMap`] maps a whole file (a memfd) shared, so every controller thread copies to
//! and from the same pages (they fault in on first touch). Like a device's memory, other
//! threads may write any range at any time: it is only ever copied in and out through raw
//! pointers, bounds checked, or handed to the kernel as an [`IoVec`] of a socket write
//! ([`writev`]) or an [`IoVecMut`] of a socket read ([`readv`]); no Rust reference ever
//! points into it.

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
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

    /// The `len` bytes at `offset`, for the kernel to read in a [`writev`].
    pub fn iovec(&self, offset: u64, len: usize) -> Result<IoVec<'_>, Error> {
        let at = self.at(offset, len)?;
        Ok(IoVec {
            iov: nix::libc::iovec {
                iov_base: at.cast(),
                iov_len: len,
            },
            _mem: PhantomData,
        })
    }

    /// The `len` bytes at `offset`, for the kernel to fill in a [`readv`].
    pub fn iovec_mut(&self, offset: u64, len: usize) -> Result<IoVecMut<'_>, Error> {
        let at = self.at(offset, len)?;
        Ok(IoVecMut {
            iov: nix::libc::iovec {
                iov_base: at.cast(),
                iov_len: len,
            },
            _mem: PhantomData,
        })
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

/// One buffer of a vectored socket write: memory of the caller's or a range of a
/// [`SharedMap`], alive for `'a`. The kernel reads it; Rust code never does.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct IoVec<'a> {
    iov: nix::libc::iovec,
    _mem: PhantomData<&'a [u8]>,
}

impl<'a> IoVec<'a> {
    /// The bytes of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self {
            iov: nix::libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            },
            _mem: PhantomData,
        }
    }
}

/// One buffer of a vectored socket read: a range of a [`SharedMap`] or memory the caller
/// holds exclusively, alive for `'a`. The kernel writes it.
#[repr(transparent)]
pub struct IoVecMut<'a> {
    iov: nix::libc::iovec,
    _mem: PhantomData<&'a [u8]>,
}

impl<'a> IoVecMut<'a> {
    /// The bytes of `b`.
    pub fn new(b: &'a mut [u8]) -> Self {
        Self {
            iov: nix::libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
            _mem: PhantomData,
        }
    }
}

/// What both kinds of socket buffer offer: the empty one, the length, `Debug`.
macro_rules! iovec_common {
    ($t:ident) => {
        impl $t<'_> {
            /// An empty buffer.
            pub const EMPTY: $t<'static> = $t {
                iov: nix::libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                _mem: PhantomData,
            };

            /// Its length in bytes.
            pub fn len(&self) -> usize {
                self.iov.iov_len
            }

            /// Whether it is empty.
            pub fn is_empty(&self) -> bool {
                self.iov.iov_len == 0
            }
        }

        impl std::fmt::Debug for $t<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("len", &self.len())
                    .finish()
            }
        }
    };
}

iovec_common!(IoVec);
iovec_common!(IoVecMut);

/// Reads from `fd` into the buffers of `iov` in order with one `readv`; returns the bytes
/// read (0 at the end of the stream; a non-blocking socket with nothing to read gives
/// `WouldBlock`).
pub fn readv(fd: BorrowedFd<'_>, iov: &mut [IoVecMut<'_>]) -> std::io::Result<usize> {
    // At most IOV_MAX entries go in one call.
    let n = i32::try_from(iov.len().min(1024)).unwrap_or(1024);
    // SAFETY: `IoVecMut` is a transparent `iovec` whose memory lives for its lifetime, which
    // outlasts this call, and is either the caller's exclusively (`IoVecMut::new` took a
    // `&mut`) or a shared mapping that no Rust reference points into; the kernel writes at
    // most the first `n` entries' bytes. Other threads copying a shared mapping's bytes
    // meanwhile see some interleaving of old and new bytes, as with concurrent DMA.
    let r = unsafe { nix::libc::readv(fd.as_raw_fd(), iov.as_ptr().cast(), n) };
    usize::try_from(r).map_err(|_| std::io::Error::last_os_error())
}

/// Writes the buffers of `iov` in order to `fd` with one `writev`; returns the bytes taken
/// (a non-blocking socket that takes nothing gives `WouldBlock`).
pub fn writev(fd: BorrowedFd<'_>, iov: &[IoVec<'_>]) -> std::io::Result<usize> {
    // At most IOV_MAX entries go in one call.
    let n = i32::try_from(iov.len().min(1024)).unwrap_or(1024);
    // SAFETY: `IoVec` is a transparent `iovec` whose memory lives for its lifetime, which
    // outlasts this call; the kernel only reads the first `n` entries and the bytes they
    // point to. Other threads writing a shared mapping's bytes meanwhile only change which
    // bytes are sent.
    let r = unsafe { nix::libc::writev(fd.as_raw_fd(), iov.as_ptr().cast(), n) };
    usize::try_from(r).map_err(|_| std::io::Error::last_os_error())
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

    #[test]
    fn writev_sends_slices_and_mapped_ranges_in_order() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let f = tempfile_like(8192);
        let m = SharedMap::new(&f, 8192).unwrap();
        m.write(100, b"mapped").unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let iov = [
            IoVec::new(b"head "),
            m.iovec(100, 6).unwrap(),
            IoVec::EMPTY,
            IoVec::new(b" tail"),
        ];
        assert_eq!(iov[1].len(), 6);
        assert_eq!(writev(a.as_fd(), &iov).unwrap(), 16);
        let mut got = [0u8; 16];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head mapped tail");
        assert!(m.iovec(8190, 3).is_err());
    }

    #[test]
    fn readv_fills_mapped_ranges_and_slices_in_order() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let f = tempfile_like(8192);
        let m = SharedMap::new(&f, 8192).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"head mapped tail").unwrap();
        let mut head = [0u8; 5];
        let mut iov = [
            IoVecMut::new(&mut head),
            IoVecMut::EMPTY,
            m.iovec_mut(4094, 6).unwrap(),
        ];
        assert_eq!(iov[2].len(), 6);
        assert_eq!(readv(b.as_fd(), &mut iov).unwrap(), 11);
        assert_eq!(&head, b"head ");
        let mut back = [0u8; 8];
        m.read(4093, &mut back).unwrap();
        assert_eq!(&back, b"\0mapped\0");
        assert!(m.iovec_mut(8190, 3).is_err());
        // The peer gone: the end of the stream.
        drop(a);
        assert_eq!(
            readv(b.as_fd(), &mut [IoVecMut::new(&mut head)]).unwrap(),
            5
        );
        assert_eq!(&head, b" tail");
        assert_eq!(
            readv(b.as_fd(), &mut [IoVecMut::new(&mut head)]).unwrap(),
            0
        );
    }

    fn tempfile_like(len: u64) -> File {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let f = File::from(memfd_create("shm-test", MFdFlags::MFD_CLOEXEC).unwrap());
        f.set_len(len).unwrap();
        f
    }
}
