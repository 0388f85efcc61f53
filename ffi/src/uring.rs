//! io_uring for positional file I/O into [`IoChunk`]s, with a safe interface: the ring owns
//! each command's chunk (and keeps its file open) from submission until the kernel posts the
//! completion, so the kernel never writes memory the process has given back.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, types};

use crate::IoChunk;

/// A command's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingOp {
    /// Read into the chunk.
    Read,
    /// Write from the chunk.
    Write,
    /// `fdatasync`.
    Fsync,
    /// `fallocate` with these mode flags (`FALLOC_FL_*`).
    Fallocate(i32),
}

struct Lent {
    chunk: Option<IoChunk>,
    _file: Arc<File>,
    tag: u64,
}

/// Where a command's data goes: `len` bytes at file `offset`, to or from the chunk's bytes
/// from `at`.
#[derive(Clone, Copy, Debug)]
pub struct RingCmd {
    /// The operation.
    pub op: RingOp,
    /// Position in the chunk.
    pub at: usize,
    /// Bytes to move (for `Fallocate`, the range length).
    pub len: u32,
    /// Offset in the file.
    pub offset: u64,
    /// Returned with the completion.
    pub tag: u64,
}

/// One thread's ring.
pub struct Ring {
    ring: IoUring,
    lent: Vec<Option<Lent>>,
    free: Vec<u32>,
    in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A completion: the command's tag, its result (bytes moved, or a negative errno), and the
/// chunk it had.
#[derive(Debug)]
pub struct RingCompletion {
    /// The tag given at submission.
    pub tag: u64,
    /// `res` of the CQE: bytes transferred, or `-errno`.
    pub result: i32,
    /// The command's chunk, back.
    pub chunk: Option<IoChunk>,
}

impl Ring {
    /// A ring of `entries` submission entries (at most that many commands in flight).
    pub fn new(entries: u32) -> std::io::Result<Self> {
        let entries = entries.clamp(2, 4096).next_power_of_two();
        let ring = IoUring::new(entries)?;
        Ok(Self {
            ring,
            lent: (0..entries).map(|_| None).collect(),
            free: (0..entries).rev().collect(),
            in_flight: 0,
        })
    }

    /// The ring's descriptor: readable when completions are waiting.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// The ring's descriptor registered with the current tokio reactor: readable when
    /// completions are waiting. (A duplicate the returned value owns, so it stays open as
    /// long as the registration.)
    pub fn readiness(&self) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
        use std::os::fd::BorrowedFd;
        // SAFETY: the ring's descriptor is open for as long as `self`, which outlives this
        // borrow; it is only duplicated.
        let fd = unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }.try_clone_to_owned()?;
        // SAFETY: the AsyncFd owns the duplicate, so the descriptor stays open and refers to
        // the same ring for the AsyncFd's whole life.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)
    }

    /// Whether another command fits.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Commands submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues one command on `file`. The command goes to the kernel at the next [`Ring::submit`].
    ///
    /// # Errors
    ///
    /// Gives the chunk back if the ring is full or the range is outside the chunk.
    pub fn push(
        &mut self,
        file: &Arc<File>,
        mut chunk: Option<IoChunk>,
        cmd: RingCmd,
    ) -> Result<(), Option<IoChunk>> {
        let RingCmd {
            op,
            at,
            len,
            offset,
            tag,
        } = cmd;
        let fd = types::Fd(file.as_raw_fd());
        let data = match (op, chunk.as_mut()) {
            (RingOp::Read | RingOp::Write, Some(c)) => {
                if at.checked_add(len as usize).is_none_or(|e| e > c.len()) {
                    return Err(chunk);
                }
                Some(c.as_mut_slice()[at..].as_mut_ptr())
            }
            (RingOp::Read | RingOp::Write, None) => return Err(chunk),
            _ => None,
        };
        let Some(slot) = self.free.pop() else {
            return Err(chunk);
        };
        let entry = match (op, data) {
            (RingOp::Read, Some(p)) => opcode::Read::new(fd, p, len).offset(offset).build(),
            (RingOp::Write, Some(p)) => opcode::Write::new(fd, p, len).offset(offset).build(),
            (RingOp::Fsync, _) => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (RingOp::Fallocate(mode), _) => opcode::Fallocate::new(fd, u64::from(len))
                .offset(offset)
                .mode(mode)
                .build(),
            _ => unreachable!("data operations have their pointer"),
        }
        .user_data(u64::from(slot));
        // SAFETY: the entry's buffer (if any) is the chunk's memory, which the ring keeps in
        // `lent` (with the file) until the kernel posts this command's completion; the chunk
        // is not touched by anyone else meanwhile, and is never freed while in flight (see
        // Drop).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(chunk);
        }
        self.lent[slot as usize] = Some(Lent {
            chunk,
            _file: Arc::clone(file),
            tag,
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Hands queued commands to the kernel.
    pub fn submit(&mut self) -> std::io::Result<usize> {
        self.ring.submit()
    }

    /// Takes every completion the kernel has posted.
    pub fn reap(&mut self, mut f: impl FnMut(RingCompletion)) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let slot = usize::try_from(cqe.user_data()).unwrap_or(usize::MAX);
            let Some(lent) = self.lent.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(u32::try_from(slot).unwrap_or(0));
            self.in_flight -= 1;
            f(RingCompletion {
                tag: lent.tag,
                result: cqe.result(),
                chunk: lent.chunk,
            });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into chunks of commands in flight after the ring is
        // gone: keep that memory for good rather than let it be reused.
        for lent in self.lent.iter_mut().filter_map(Option::take) {
            std::mem::forget(lent.chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoSlab;
    use std::os::unix::fs::FileExt;

    #[test]
    fn reads_and_writes_complete_with_their_chunks() {
        let f = Arc::new(tempfile_in_tmp());
        f.write_all_at(&[9u8; 8192], 0).unwrap();
        let mut ring = match Ring::new(8) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("io_uring unavailable here: {e}");
                return;
            }
        };
        let mut chunks = IoSlab::new(16384).unwrap().carve(4096, 4).unwrap();
        let c = chunks.pop().unwrap();
        ring.push(&f, Some(c), cmd(RingOp::Read, 0, 4096, 77))
            .unwrap();
        let mut w = chunks.pop().unwrap();
        w.as_mut_slice().fill(3);
        ring.push(&f, Some(w), cmd(RingOp::Write, 0, 0, 78))
            .unwrap();
        assert_eq!(ring.in_flight(), 2);
        ring.submit().unwrap();
        let mut done = Vec::new();
        let t = std::time::Instant::now();
        while done.len() < 2 && t.elapsed() < std::time::Duration::from_secs(10) {
            ring.reap(|c| done.push(c));
        }
        done.sort_by_key(|c| c.tag);
        assert_eq!((done[0].tag, done[0].result), (77, 4096));
        assert!(
            done[0]
                .chunk
                .as_ref()
                .unwrap()
                .as_slice()
                .iter()
                .all(|&b| b == 9)
        );
        assert_eq!((done[1].tag, done[1].result), (78, 4096));
        let mut back = [0u8; 4];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [3; 4]);
        let c = chunks.pop().unwrap();
        let past = RingCmd {
            at: 1,
            ..cmd(RingOp::Read, 0, 0, 1)
        };
        assert!(ring.push(&f, Some(c), past).is_err(), "past the chunk");
    }

    fn cmd(op: RingOp, at: usize, offset: u64, tag: u64) -> RingCmd {
        RingCmd {
            op,
            at,
            len: 4096,
            offset,
            tag,
        }
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("baton-ring-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
