//! The interface: requests, completions, and what a device handle offers.

use std::rc::Rc;
use std::sync::Arc;

use crate::IoBuf;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reads `len` bytes at `offset` into the request's buffer (from its start).
    Read,
    /// Writes the first `len` bytes of the request's buffer at `offset`.
    Write,
    /// Makes every completed write durable.
    Flush,
    /// Sets `len` bytes at `offset` to zero.
    WriteZeroes,
    /// Deallocates `len` bytes at `offset`; they read back as zeroes.
    Discard,
}

/// One block-I/O request. Offsets and lengths are in bytes and, for every engine, multiples
/// of the device's block size ([`crate::span`] rounds any range out to whole blocks).
#[derive(Debug)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// The data buffer: needed by reads (capacity at least `len`) and writes (the data in
    /// its first `len` bytes); `None` otherwise. Given back in the completion.
    pub buf: Option<IoBuf>,
    /// The caller's tag, given back in the completion.
    pub tag: u64,
}

impl Request {
    /// A read of `len` bytes at `offset` into `buf`.
    pub fn read(offset: u64, len: u64, buf: IoBuf, tag: u64) -> Self {
        Self {
            op: Op::Read,
            offset,
            len,
            buf: Some(buf),
            tag,
        }
    }

    /// A write of the first `len` bytes of `buf` at `offset`.
    pub fn write(offset: u64, len: u64, buf: IoBuf, tag: u64) -> Self {
        Self {
            op: Op::Write,
            offset,
            len,
            buf: Some(buf),
            tag,
        }
    }

    /// A request without data (flush, write zeroes, discard).
    pub fn bare(op: Op, offset: u64, len: u64, tag: u64) -> Self {
        Self {
            op,
            offset,
            len,
            buf: None,
            tag,
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// What happened.
    pub result: Result<(), IoError>,
    /// The request's buffer, back to the caller (for a read: the data). `None` when the
    /// request had none, or when the device may still write it (a timed-out command): such
    /// a buffer is never reused.
    pub buf: Option<IoBuf>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The request is malformed (unaligned, past the end, missing or short buffer).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A system call failed.
    #[error("I/O error: {0}")]
    Os(#[from] std::io::Error),
    /// The device completed the command with an NVMe error status.
    #[error("device status {status:#x} (SCT {sct}, SC {sc:#x})")]
    Status {
        /// The NVMe status field (SCT, SC, DNR...).
        status: u16,
        /// Status code type.
        sct: u8,
        /// Status code.
        sc: u8,
    },
    /// The device did not complete the command in time.
    #[error("the device did not complete the command within {0:?}")]
    Timeout(std::time::Duration),
    /// The device path is unusable for now (a fatal controller status, a controller being
    /// reset, or a queue broken by an earlier timeout) or for good (a controller whose
    /// resets keep failing); the request was not carried out and may be retried elsewhere.
    #[error("device path unusable: {0}")]
    PathDown(String),
}

impl IoError {
    /// Whether a write or read that failed this way may have changed or produced nothing
    /// (for error reporting: device errors are media errors, the rest internal).
    pub fn is_media(&self) -> bool {
        matches!(self, Self::Status { .. } | Self::Os(_))
    }
}

/// Where completions go. An engine calls [`Sink::complete`] on the thread the request was
/// submitted on, possibly from inside [`BlockIo::submit`] (an engine that completes at once):
/// a sink must not assume the caller is not on its stack (queue the completion, do not run
/// the caller's continuation from it).
pub trait Sink {
    /// Takes one completion.
    fn complete(&self, c: Completion);
}

/// A device's shape as the layers above see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size in bytes: offsets and lengths are multiples of it.
    pub block_size: u32,
    /// Capacity in bytes (a multiple of the block size).
    pub size: u64,
    /// Optimal I/O boundary in bytes (the stripe unit), 0 for none.
    pub optimal_boundary: u64,
    /// Whether writes sit in a volatile cache until a flush.
    pub volatile_cache: bool,
}

/// A piece of a read the kernel can send without the engine copying it first.
#[derive(Clone, Debug)]
pub enum Extent {
    /// Bytes of a file, sent with `sendfile` (the file is kept open while the piece waits).
    File {
        /// The file.
        file: Arc<std::fs::File>,
        /// Offset in the file.
        offset: u64,
        /// Length in bytes.
        len: usize,
    },
    /// Bytes of a device's shared mapping (a RAM device), gathered into the socket write
    /// (the mapping is kept while the piece waits).
    Mapped {
        /// The mapping.
        map: Arc<ffi::SharedMap>,
        /// Offset in the mapping.
        offset: u64,
        /// Length in bytes.
        len: usize,
    },
}

impl Extent {
    /// Bytes left to send.
    pub fn len(&self) -> usize {
        match self {
            Extent::File { len, .. } | Extent::Mapped { len, .. } => *len,
        }
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (they were sent).
    pub fn advance(&mut self, n: usize) {
        match self {
            Extent::File { offset, len, .. } | Extent::Mapped { offset, len, .. } => {
                let n = n.min(*len);
                *offset += n as u64;
                *len -= n;
            }
        }
    }

    /// Copies `data` into the pieces of `extents` (mapped ranges, in order), starting `at`
    /// bytes into them. Fails, having copied a prefix, if they are shorter or one is a file.
    pub fn copy_in(extents: &[Extent], at: usize, data: &[u8]) -> Result<(), IoError> {
        let mut skip = at;
        let mut data = data;
        for e in extents {
            if data.is_empty() {
                return Ok(());
            }
            let Extent::Mapped { map, offset, len } = e else {
                return Err(IoError::Invalid("a write into a file piece".into()));
            };
            if skip >= *len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(data.len());
            map.write(offset + skip as u64, &data[..n])
                .map_err(|e| IoError::Invalid(e.to_string()))?;
            data = &data[n..];
            skip = 0;
        }
        if data.is_empty() {
            Ok(())
        } else {
            Err(IoError::Invalid(format!(
                "{} bytes past the end of the pieces",
                data.len()
            )))
        }
    }

    /// The mapped bytes `[from, to)` of `extents` (counted across the pieces, in order) as
    /// buffers for the kernel to fill, in `iov`; returns how many entries it used (fewer
    /// bytes than asked when `iov` is full, none past the pieces' end or at a file piece).
    pub fn iovecs_mut<'a>(
        extents: &'a [Extent],
        from: usize,
        to: usize,
        iov: &mut [ffi::IoVecMut<'a>],
    ) -> usize {
        let mut n = 0;
        let mut base = 0;
        for e in extents {
            if n == iov.len() || base >= to {
                break;
            }
            let Extent::Mapped { map, offset, len } = e else {
                break;
            };
            let (s, t) = (from.max(base), to.min(base + len));
            if s < t {
                match map.iovec_mut(offset + (s - base) as u64, t - s) {
                    Ok(v) => iov[n] = v,
                    Err(_) => break,
                }
                n += 1;
            }
            base += len;
        }
        n
    }

    /// The `len` bytes at `offset` of a device of `size` bytes, if they are inside it.
    fn inside(size: u64, offset: u64, len: u64) -> Option<usize> {
        let n = usize::try_from(len).ok()?;
        offset.checked_add(len).filter(|&e| e <= size).map(|_| n)
    }

    /// The `len` bytes at `offset` of a device that is `file` itself (`size` bytes of it),
    /// appended to `out`; false (nothing appended) if the range is outside the device.
    pub(crate) fn whole_file(
        file: &Arc<std::fs::File>,
        size: u64,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> bool {
        let Some(len) = Self::inside(size, offset, len) else {
            return false;
        };
        out.push(Extent::File {
            file: Arc::clone(file),
            offset,
            len,
        });
        true
    }

    /// The `len` bytes at `offset` of a device that is all of `map`, appended to `out`;
    /// false (nothing appended) if the range is outside it.
    pub(crate) fn whole_map(
        map: &Arc<ffi::SharedMap>,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> bool {
        let Some(len) = Self::inside(map.len() as u64, offset, len) else {
            return false;
        };
        out.push(Extent::Mapped {
            map: Arc::clone(map),
            offset,
            len,
        });
        true
    }
}

/// One controller thread's handle on a device. Not `Send`: it belongs to its thread, like
/// an SPDK I/O channel; the engines behind it keep per-thread queues and need no locks.
pub trait BlockIo {
    /// The device's shape.
    fn geometry(&self) -> Geometry;

    /// Starts `req`; its completion goes to `sink`, on this thread, once. Never blocks and
    /// never fails here: a request the engine refuses completes with the error. Requests
    /// past the device's queue depth wait inside the engine, in order.
    fn submit(&self, req: Request, sink: &Rc<dyn Sink>);

    /// Requests submitted and not yet completed.
    fn in_flight(&self) -> usize;

    /// Where the `len` bytes at `offset` live in mapped memory, or also in files if `files`,
    /// if reads may bypass the handle (zero-copy sends): appends the pieces in order and
    /// returns true, or returns false (the default) and appends nothing.
    fn extents(&self, offset: u64, len: u64, files: bool, out: &mut Vec<Extent>) -> bool {
        let _ = (offset, len, files, out);
        false
    }

    /// Where a write of the `len` bytes at `offset` may put its data itself, without a
    /// request (SPDK's zero-copy bdev I/O): ranges of mapped memory, in order, appended to
    /// `out`, returning true; or false (the default) and nothing appended. Bytes copied into
    /// them are the device's at once, with no completion; a flush still goes through
    /// [`BlockIo::submit`]. Devices that count their I/O count the write here.
    fn write_extents(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> bool {
        let _ = (offset, len, out);
        false
    }
}

/// Checks a request against a device's geometry: block-aligned, inside the device, with a
/// buffer that holds the data. Engines call it first.
pub(crate) fn check(req: &Request, g: &Geometry) -> Result<(), IoError> {
    let bs = u64::from(g.block_size);
    if req.op != Op::Flush {
        if req.offset % bs != 0 || req.len % bs != 0 {
            return Err(IoError::Invalid(format!(
                "{} bytes at {} are not whole blocks of {bs}",
                req.len, req.offset
            )));
        }
        if req.offset.checked_add(req.len).is_none_or(|e| e > g.size) {
            return Err(IoError::Invalid(format!(
                "{} bytes at {} end past the device ({} bytes)",
                req.len, req.offset, g.size
            )));
        }
    }
    if matches!(req.op, Op::Read | Op::Write) {
        let cap = req.buf.as_ref().map_or(0, |b| b.capacity() as u64);
        if cap < req.len {
            return Err(IoError::Invalid(format!(
                "a buffer of {cap} bytes for a {}-byte transfer",
                req.len
            )));
        }
    }
    Ok(())
}

/// Completes `req` with `result`, giving its buffer back.
pub(crate) fn finish(req: Request, result: Result<(), IoError>, sink: &Rc<dyn Sink>) {
    sink.complete(Completion {
        tag: req.tag,
        result,
        buf: req.buf,
    });
}
