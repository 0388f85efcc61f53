//! The block-device trait that namespaces are served from.

use std::io;

/// A namespace's backing store, as seen by one Baton controller thread.
///
/// Instances are created per controller thread (like SPDK's per-thread I/O channels), so an
/// implementation may own per-thread resources such as a device queue pair; it need not be
/// `Send` or `Sync`. All offsets and lengths are in bytes and are multiples of
/// [`BlockDevice::block_size`]; callers have already checked them against the capacity.
pub trait BlockDevice {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in logical blocks.
    fn num_blocks(&self) -> u64;
    /// Optimal I/O boundary in logical blocks (the stripe size), or 0 for none.
    fn optimal_io_boundary(&self) -> u32 {
        0
    }
    /// Whether the device has a volatile write cache that [`BlockDevice::flush`] commits.
    fn volatile_write_cache(&self) -> bool {
        false
    }
    /// Reads `buf.len()` bytes at byte `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Sets `len` bytes at `offset` to zero.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Deallocates `len` bytes at `offset`; later reads return zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Where the `len` bytes at `offset` live in files, so a read can be sent to the host
    /// by the kernel without a copy through user space (`sendfile`). Appends the pieces in
    /// order and returns true, or returns false (the default) when the device cannot;
    /// the caller then uses [`BlockDevice::read_at`]. Counts the read like `read_at` would.
    fn file_extents(&self, offset: u64, len: u64, out: &mut Vec<FileExtent>) -> bool {
        let _ = (offset, len, out);
        false
    }
}

/// A piece of a read served straight from a file.
#[derive(Clone, Debug)]
pub struct FileExtent {
    /// The file (kept open while the piece waits to be sent).
    pub file: std::sync::Arc<std::fs::File>,
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: usize,
}
